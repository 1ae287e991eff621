//! Every packet type's body parser, as MQTT 3.1.1 and as MQTT 5: the first byte is the packet type and
//! flags, the rest is the body, behind a correct remaining length (so the fuzzer does not have to find one).
//! Never panics. A decoded MQTT 3.1.1 packet re-encodes to exactly the input; an MQTT 5 one re-encodes to
//! the same packet in no more bytes (MQTT 5 lets acknowledgements, DISCONNECT and AUTH leave out a Success
//! reason and empty properties, and the encoder writes the shortest form).
#![no_main]
use libfuzzer_sys::fuzz_target;
use qmqtt::codec::{decode, primitives::write_remaining_length, DecodeOptions, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&b1, body)) = data.split_first() else {
        return;
    };
    // Type 0 is reserved and refused before any body parser; 15 is AUTH (MQTT 5).
    let b1 = (b1 >> 4).max(1) << 4 | (b1 & 0x0f);
    let mut pkt = vec![b1];
    write_remaining_length(&mut pkt, body.len()).expect("fuzz inputs are small");
    pkt.extend_from_slice(body);
    for protocol in [Protocol::V311, Protocol::V5] {
        let opts = DecodeOptions {
            protocol,
            ..DecodeOptions::default()
        };
        match decode(&pkt, &opts) {
            Ok(Some((p, n))) => {
                assert_eq!(n, pkt.len());
                let mut out = Vec::new();
                p.encode(protocol, &mut out)
                    .expect("a decoded packet re-encodes");
                if protocol == Protocol::V5 {
                    assert!(out.len() <= pkt.len());
                    let (again, _) = decode(&out, &opts).expect("re-encoded bytes decode").expect("complete");
                    assert_eq!(again, p);
                } else {
                    assert_eq!(out, pkt);
                }
            }
            Ok(None) => panic!("a whole packet was given"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
