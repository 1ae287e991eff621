//! Every packet type's body parser: the first byte is the packet type and flags, the rest is the body, behind
//! a correct remaining length (so the fuzzer does not have to find one). Never panics; a decoded packet
//! re-encodes to exactly the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qmqtt::codec::{decode, primitives::write_remaining_length, DecodeOptions, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&b1, body)) = data.split_first() else {
        return;
    };
    // Types 1..=14 only (0 and 15 are reserved and refused before any body parser).
    let b1 = (b1 >> 4).clamp(1, 14) << 4 | (b1 & 0x0f);
    let mut pkt = vec![b1];
    write_remaining_length(&mut pkt, body.len()).expect("fuzz inputs are small");
    pkt.extend_from_slice(body);
    match decode(&pkt, &DecodeOptions::default()) {
        Ok(Some((p, n))) => {
            assert_eq!(n, pkt.len());
            let mut out = Vec::new();
            p.encode(Protocol::V311, &mut out)
                .expect("a decoded packet re-encodes");
            assert_eq!(out, pkt);
        }
        Ok(None) => panic!("a whole packet was given"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
