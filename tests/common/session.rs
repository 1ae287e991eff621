//! The session configuration the sans-I/O tests start from: the given client id and protocol, keep-alive
//! 60 s, response timeout 5 s, clean session, no credentials or will, 10 in flight, packets up to 4 KiB.
//! A test changes what it is about with struct update syntax (`SessionConfig { max_inflight: 3, ..config(…) }`).
use std::time::Duration;

use qmqtt::codec::Protocol;
use qmqtt::session::SessionConfig;

pub fn config(client_id: &str, protocol: Protocol) -> SessionConfig {
    SessionConfig {
        client_id: client_id.into(),
        protocol,
        keep_alive: Duration::from_secs(60),
        response_timeout: Duration::from_secs(5),
        clean_session: true,
        username: None,
        password: None,
        will: None,
        max_inflight: 10,
        max_packet_size: 4096,
        mqtt5: Default::default(),
    }
}
