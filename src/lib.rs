//! # qmqtt — MQTT for q/kdb+ on constrained gateways
//!
//! The engine is a stack of layers, each a module that depends only on those below it:
//!
//! 1. [`codec`] — MQTT 3.1/3.1.1/5 packets ⇄ bytes. Pure functions, a borrowing decoder, no I/O.
//! 2. [`session`] — the sans-I/O protocol state machine of one connection: fed received bytes, commands and
//!    the current time; emits bytes to send, the next deadline and events. No sockets, threads or clocks.
//! 3. [`transport`] — URIs, TCP and TLS (rustls with the ring provider), HTTP proxies, WebSockets: turns
//!    options into a connected, non-blocking stream, and failures into [`Error`] values. Beside it,
//!    [`spool`] — the bounded, crash-safe disk store-and-forward (no knowledge of sockets).
//! 4. [`client`] — the driver: one I/O thread per connection that owns the socket and the session, drains a
//!    bounded publish queue into few large TLS writes, reconnects with backoff and hands events to the owner
//!    through a bounded queue signalled on a file descriptor. [`Client`] is the Rust API.
//! 5. `q` (feature `q`, on by default) — the q extension: the thin K ⇄ Rust translation behind `.mqtt.*`.
//!
//! Beside them, shared by every layer: [`error`] — why a connection failed or a configuration cannot work,
//! as typed values worded once ([`Error`], [`ConfigError`]) — [`Secret`] (passwords: never shown, wiped)
//! and [`clock`] (wall clock, deadlines, dates).
//! The `qmqtt` command (`src/bin/qmqtt.rs`) is an operator's tool over the Rust API.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod client;
pub mod clock;
pub mod codec;
pub mod error;
pub mod secret;
pub mod session;
pub mod spool;
pub mod transport;

#[cfg(feature = "q")]
mod q;

pub use client::{Client, Config, Event, FullPolicy, PublishError, Stats};
pub use codec::QoS;
pub use error::{ConfigError, Error};
pub use secret::Secret;
