//! The decoder on arbitrary byte streams: never panics; whatever decodes re-encodes to the same bytes and
//! decodes again to the same packet. The first byte picks the size limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qmqtt::codec::{decode, DecodeOptions, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, mut b)) = data.split_first() else {
        return;
    };
    let opts = DecodeOptions {
        protocol: Protocol::V311,
        max_packet_size: 2 + limit as usize * 16,
    };
    while let Ok(Some((p, n))) = decode(b, &opts) {
        assert!(n > 0 && n <= b.len());
        let mut out = Vec::new();
        p.encode(Protocol::V311, &mut out)
            .expect("a decoded packet re-encodes");
        // Non-minimal remaining-length encodings decode but re-encode shorter; compare packets, not bytes.
        let (again, m) = decode(&out, &DecodeOptions::default())
            .expect("re-encoded bytes decode")
            .expect("complete");
        assert_eq!(m, out.len());
        assert_eq!(again, p);
        b = &b[n..];
    }
});
