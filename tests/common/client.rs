//! Helpers for tests of the Rust API ([`Client`]): quick configs, connect-and-wait, and an event collector
//! that waits on the client's event descriptor with poll(2), as the q layer's `sd1` would.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use qmqtt::client::{Client, Config, Event};
use qmqtt::QoS;

/// A config with test-friendly timings: short connect timeout and fast reconnects.
pub fn cfg(uri: &str, id: &str) -> Config {
    let mut c = Config::new(uri, id);
    c.connect_timeout = Duration::from_secs(5);
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c
}

/// Connect and wait for the CONNACK (panics with the error otherwise).
pub fn connect(c: Config) -> Client {
    let client = Client::connect(c).expect("config accepted");
    client
        .wait_connected(super::slow(Duration::from_secs(10)))
        .expect("connected");
    client
}

/// poll(2) the descriptor for readability.
pub fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    r == 1 && p.revents & libc::POLLIN != 0
}

/// Everything a client reported, owned.
#[derive(Default, Debug)]
pub struct Seen {
    pub msgs: Vec<(String, Vec<u8>, QoS, bool)>,
    pub delivered: Vec<(u64, QoS)>,
    pub connected: Vec<bool>,
    pub lost: Vec<String>,
    pub reconnecting: Vec<(Duration, u32)>,
    pub subscribed: Vec<(String, Option<QoS>)>,
    pub unsubscribed: Vec<String>,
    /// The raw MQTT 5 properties of each message in `msgs` (empty under MQTT 3.1.1).
    pub msg_props: Vec<Vec<u8>>,
    /// Failed deliveries: token and cause.
    pub failed: Vec<(u64, String)>,
}

impl Seen {
    pub fn take(&mut self, e: Event<'_>) {
        match e {
            Event::Connected { session_present } => self.connected.push(session_present),
            Event::Message {
                topic,
                payload,
                qos,
                retain,
                properties,
            } => {
                self.msgs
                    .push((topic.to_string(), payload.to_vec(), qos, retain));
                self.msg_props.push(properties.as_bytes().to_vec());
            }
            Event::Failed { token, cause, .. } => self.failed.push((token, cause.to_string())),
            Event::Delivered { token, qos } => self.delivered.push((token, qos)),
            Event::ConnectionLost { cause } => self.lost.push(cause.to_string()),
            Event::Reconnecting { delay, attempt } => self.reconnecting.push((delay, attempt)),
            Event::Subscribed { filter, granted } => {
                self.subscribed.push((filter.to_string(), granted))
            }
            Event::Unsubscribed { filter } => self.unsubscribed.push(filter.to_string()),
        }
    }

    /// Drain `c`'s events until `n` publishes have been settled (delivered or failed); fail the test when
    /// `timeout` passes first.
    pub fn settle(&mut self, c: &Client, timeout: Duration, n: usize) {
        let done = self.until(c, timeout, |s| s.delivered.len() + s.failed.len() >= n);
        assert!(done, "{self:?}");
    }

    /// Drain `c`'s events (waiting on its fd) until `done(self)` or `timeout`. Returns `done(self)`.
    pub fn until(&mut self, c: &Client, timeout: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if readable(c.event_fd(), left.as_millis().clamp(1, 100) as i32) {
                let n = c.poll_events(1000, &mut |e| self.take(e));
                assert!(n > 0, "event fd readable but no event waiting");
            }
        }
    }
}
