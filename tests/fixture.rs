//! The fixture itself works: mosquitto starts with all four listeners and mosquitto_sub sees publishes.
mod common;
use std::process::Command;
use std::time::Duration;

#[test]
fn broker_starts_and_relays() {
    let b = common::Broker::start();
    let sub = common::Sub::start(&b, "fixture/#", 1, &["-v"]);
    let st = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &b.tls_port.to_string(), "--cafile"])
        .arg(&b.certs.ca)
        .args(["-t", "fixture/a", "-m", "hello", "-q", "1"])
        .status()
        .unwrap();
    assert!(
        st.success(),
        "TLS publish with the test CA failed: {}",
        b.log()
    );
    assert_eq!(sub.wait_for(1, Duration::from_secs(5)), 1);
    assert_eq!(sub.take(), vec!["fixture/a hello".to_string()]);
    // The mutual-TLS listener refuses a client without a certificate.
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &b.mtls_port.to_string(),
            "--cafile",
        ])
        .arg(&b.certs.ca)
        .args(["-t", "fixture/b", "-m", "x"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
}
