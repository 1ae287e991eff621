//! The transport's hops on arbitrary input, cut anywhere: the proxy's answer to CONNECT, the broker's answer
//! to the WebSocket upgrade, and WebSocket frames. Never a panic; the deframer never grows its buffer, and
//! what it gives for a stream is the same however the stream is cut.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qmqtt::transport::proxy::{Choice, Proxy, Source, Tunnel};
use qmqtt::transport::ws::{Deframer, Upgrade};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(stream.len());
    let (a, b) = stream.split_at(cut);

    let choice = Choice {
        proxy: Proxy::parse("http://u:p@proxy:3128").unwrap(),
        source: Source::Option,
    };
    let mut t = Tunnel::new(&choice, "broker", 8883);
    if let Ok(None) = t.feed(a) {
        if let Ok(Some(n)) = t.feed(b) {
            assert!(n <= b.len());
        }
    }

    let mut u = Upgrade::with_key("broker", 80, 80, "/mqtt", b"the sample nonce");
    if let Ok(None) = u.feed(a) {
        if let Ok(Some(n)) = u.feed(b) {
            assert!(n <= b.len());
        }
    }

    // Whole, then in two pieces: the same payload bytes (up to the first error).
    let mut whole = stream.to_vec();
    let whole_ok = Deframer::default().unframe(&mut whole, 0).is_ok();
    assert!(whole.len() <= stream.len());
    let mut d = Deframer::default();
    let mut got = a.to_vec();
    if d.unframe(&mut got, 0).is_ok() {
        let from = got.len();
        got.extend_from_slice(b);
        if d.unframe(&mut got, from).is_ok() && whole_ok {
            assert_eq!(got, whole);
        }
    }
});
