//! The decoder on arbitrary byte streams, as MQTT 3.1.1 and as MQTT 5: never panics; whatever decodes
//! re-encodes and decodes again to the same packet. The first byte picks the size limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qmqtt::codec::{decode, DecodeOptions, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, stream)) = data.split_first() else {
        return;
    };
    for protocol in [Protocol::V311, Protocol::V5] {
        let opts = DecodeOptions {
            protocol,
            max_packet_size: 2 + limit as usize * 16,
        };
        let mut b = stream;
        while let Ok(Some((p, n))) = decode(b, &opts) {
            assert!(n > 0 && n <= b.len());
            let mut out = Vec::new();
            p.encode(protocol, &mut out)
                .expect("a decoded packet re-encodes");
            // Non-minimal remaining-length encodings (and MQTT 5's long forms of short packets) decode but
            // re-encode shorter; compare packets, not bytes.
            let (again, m) = decode(
                &out,
                &DecodeOptions {
                    protocol,
                    ..DecodeOptions::default()
                },
            )
            .expect("re-encoded bytes decode")
            .expect("complete");
            assert_eq!(m, out.len());
            assert_eq!(again, p);
            b = &b[n..];
        }
    }
});
