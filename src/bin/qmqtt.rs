//! `qmqtt`: publish, subscribe and check a broker without q (STUB).
fn main() {}
