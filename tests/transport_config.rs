//! `tls_config` without a broker: wrong files and options give Config errors naming the file / option,
//! and turning verification off or a loosely-permitted key file logs a warning.
mod common;

use std::path::PathBuf;
use std::sync::Mutex;

use qmqtt::transport::{supported_cipher_suites, tls_config, TlsOptions, TlsVersion};

/// Collects warnings from every test thread of this binary.
struct Capture;
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            LOG.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}
static CAPTURE: Capture = Capture;

fn init_log() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Warn);
}

fn logged(needle: &str) -> bool {
    LOG.lock().unwrap().iter().any(|l| l.contains(needle))
}

fn config_err(opts: &TlsOptions) -> String {
    match tls_config(opts) {
        Ok(_) => panic!("{opts:?} accepted"),
        Err(e) => e.to_string(),
    }
}

fn certs() -> (tempfile::TempDir, common::Certs) {
    let d = tempfile::tempdir().unwrap();
    let c = common::Certs::generate(&d.path().join("certs"));
    (d, c)
}

fn client(c: &common::Certs, key: PathBuf) -> TlsOptions {
    TlsOptions {
        ca_file: Some(c.ca.clone()),
        cert_file: Some(c.client_cert.clone()),
        key_file: Some(key),
        ..TlsOptions::default()
    }
}

fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn default_config_builds_with_mozilla_roots() {
    let cfg = tls_config(&TlsOptions::default()).unwrap();
    assert!(cfg.alpn_protocols.is_empty());
    let cfg = tls_config(&TlsOptions {
        alpn: vec![b"x-amzn-mqtt-ca".to_vec()],
        ..TlsOptions::default()
    })
    .unwrap();
    assert_eq!(cfg.alpn_protocols, vec![b"x-amzn-mqtt-ca".to_vec()]);
}

#[test]
fn key_file_errors_name_the_file() {
    let (d, c) = certs();
    chmod(&c.client_key, 0o600);
    assert!(tls_config(&client(&c, c.client_key.clone())).is_ok());

    let missing = d.path().join("nope.key");
    let m = config_err(&client(&c, missing.clone()));
    assert!(
        m.contains("cannot read") && m.contains(missing.to_str().unwrap()),
        "{m}"
    );

    let not_pem = d.path().join("junk.key");
    std::fs::write(&not_pem, "hello, not a key\n").unwrap();
    let m = config_err(&client(&c, not_pem.clone()));
    assert!(
        m.contains("no private key") && m.contains("junk.key"),
        "{m}"
    );

    // A certificate where the key should be: PEM, but no key in it.
    let m = config_err(&client(&c, c.ca.clone()));
    assert!(m.contains("no private key") && m.contains("ca.pem"), "{m}");

    let enc = d.path().join("enc.key");
    std::fs::write(
        &enc,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let m = config_err(&client(&c, enc));
    assert!(m.contains("encrypted") && m.contains("enc.key"), "{m}");

    // The key of another certificate.
    let m = config_err(&client(&c, c.server_key.clone()));
    assert!(m.contains("does not belong"), "{m}");
}

#[test]
fn certificate_and_key_come_together() {
    let (_d, c) = certs();
    let m = config_err(&TlsOptions {
        cert_file: Some(c.client_cert.clone()),
        ..TlsOptions::default()
    });
    assert!(
        m.contains("needs its private key") && m.contains("privateKey"),
        "{m}"
    );
    let m = config_err(&TlsOptions {
        key_file: Some(c.client_key.clone()),
        ..TlsOptions::default()
    });
    assert!(
        m.contains("needs its client certificate") && m.contains("keyStore"),
        "{m}"
    );
}

#[test]
fn ca_file_and_dir_errors() {
    let (d, c) = certs();
    let m = config_err(&TlsOptions {
        ca_file: Some(d.path().join("missing-ca.pem")),
        ..TlsOptions::default()
    });
    assert!(
        m.contains("cannot read the CA file") && m.contains("missing-ca.pem"),
        "{m}"
    );
    let m = config_err(&TlsOptions {
        ca_file: Some(c.client_key.clone()),
        ..TlsOptions::default()
    });
    assert!(
        m.contains("no certificate") && m.contains("client.key"),
        "{m}"
    );
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("x.txt"), "nothing").unwrap();
    let m = config_err(&TlsOptions {
        ca_dir: Some(empty.path().to_path_buf()),
        ..TlsOptions::default()
    });
    assert!(
        m.contains("no PEM CA certificate") && m.contains("CApath"),
        "{m}"
    );
    let m = config_err(&TlsOptions {
        ca_dir: Some(d.path().join("no-such-dir")),
        ..TlsOptions::default()
    });
    assert!(m.contains("cannot read the CA directory"), "{m}");
}

#[test]
fn cipher_suites() {
    let m = config_err(&TlsOptions {
        cipher_suites: vec!["TLS13_AES_128_GCM_SHA256".into(), "AES128-SHA".into()],
        ..TlsOptions::default()
    });
    assert!(m.contains("unknown cipher suite 'AES128-SHA'"), "{m}");
    for s in supported_cipher_suites() {
        assert!(m.contains(s), "{m} lacks {s}");
    }
    // Only TLS 1.2 suites with TLS 1.3 as the minimum: nothing could be negotiated.
    let m = config_err(&TlsOptions {
        cipher_suites: vec!["ECDHE-RSA-AES128-GCM-SHA256".into()],
        min_version: TlsVersion::Tls13,
        ..TlsOptions::default()
    });
    assert!(m.contains("TLS 1.3"), "{m}");
    assert!(tls_config(&TlsOptions {
        cipher_suites: vec!["TLS_AES_256_GCM_SHA384".into()],
        min_version: TlsVersion::Tls13,
        ..TlsOptions::default()
    })
    .is_ok());
}

#[test]
fn warnings_for_verification_off_and_loose_key() {
    init_log();
    let (_d, c) = certs();
    tls_config(&TlsOptions {
        verify_certificate: false,
        ..TlsOptions::default()
    })
    .unwrap();
    assert!(logged("certificate verification is off"));
    tls_config(&TlsOptions {
        verify_hostname: false,
        ..TlsOptions::default()
    })
    .unwrap();
    assert!(logged("host name verification is off"));
    let key = c.dir.join("loose.key");
    std::fs::copy(&c.client_key, &key).unwrap();
    chmod(&key, 0o644);
    tls_config(&client(&c, key.clone())).unwrap();
    assert!(logged("loose.key' is readable by group or others"));
    // No key material in any log line.
    let pem = std::fs::read_to_string(&key).unwrap();
    let body = pem.lines().nth(1).unwrap();
    assert!(!LOG.lock().unwrap().iter().any(|l| l.contains(body)));
}
