//! Encrypted private keys made by openssl itself (at test time, never committed) are decrypted to the same
//! key as the unencrypted original, with the right password; a wrong password is `WrongPassword`, no
//! password `NeedPassword`. End to end: mutual TLS with mosquitto from the Rust API and from `qmqtt check`
//! with an encrypted client key, right and wrong password.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64ct::Encoding;
use qmqtt::client::{Client, ClientError, Config};
use qmqtt::error::{Fault, Key};
use qmqtt::transport::keys::{decode, KeyError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

const PW: &str = "corr3ct horse";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (tools/env.sh: openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl rsa`/`ec` with `-traditional` where openssl has it (3.x: otherwise it writes PKCS#8).
fn openssl_traditional(dir: &Path, args: &[&str]) {
    let mut with = args.to_vec();
    with.push("-traditional");
    let ok = Command::new("openssl")
        .args(&with)
        .current_dir(dir)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        openssl(dir, args);
    }
}

fn read(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap()
}

fn der(k: &PrivateKeyDer<'_>) -> Vec<u8> {
    k.secret_der().to_vec()
}

/// The decrypted key equals `plain` (an unencrypted PEM of the same key in the same format); a wrong or no
/// password fails with the typed error.
fn check(dir: &Path, encrypted: &str, plain: &str, header: &str) {
    let enc = read(dir, encrypted);
    assert!(
        String::from_utf8_lossy(&enc).contains(header),
        "{encrypted} is not what the test wants ({header}):\n{}",
        String::from_utf8_lossy(&enc)
    );
    let want = PrivateKeyDer::from_pem_slice(&read(dir, plain)).unwrap();
    let got = decode(&enc, Some(PW.as_bytes())).unwrap_or_else(|e| panic!("{encrypted}: {e}"));
    assert_eq!(der(&got), der(&want), "{encrypted}");
    assert_eq!(
        std::mem::discriminant(&got),
        std::mem::discriminant(&want),
        "{encrypted}: key format"
    );
    assert_eq!(
        decode(&enc, Some(b"wrong password")),
        Err(KeyError::WrongPassword),
        "{encrypted}"
    );
    assert_eq!(
        decode(&enc, None),
        Err(KeyError::NeedPassword),
        "{encrypted}"
    );
    // The key usable by rustls' provider (what tls_config does with it).
    rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(got)
        .unwrap_or_else(|e| panic!("{encrypted}: {e}"));
}

#[test]
fn keys_encrypted_by_openssl() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pass = format!("pass:{PW}");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.p8",
        ],
    );
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.p8",
        ],
    );

    // PKCS#8, PBES2: PBKDF2 + AES-256-CBC, scrypt + AES-256-CBC, PBKDF2 + 3DES.
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "rsa.p8",
            "-out",
            "rsa-aes.p8e",
            "-passout",
            &pass,
        ],
    );
    check(dir, "rsa-aes.p8e", "rsa.p8", "BEGIN ENCRYPTED PRIVATE KEY");
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-scrypt",
            "-in",
            "ec.p8",
            "-out",
            "ec-scrypt.p8e",
            "-passout",
            &pass,
        ],
    );
    check(dir, "ec-scrypt.p8e", "ec.p8", "BEGIN ENCRYPTED PRIVATE KEY");
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "des3",
            "-in",
            "ec.p8",
            "-out",
            "ec-des3.p8e",
            "-passout",
            &pass,
        ],
    );
    check(dir, "ec-des3.p8e", "ec.p8", "BEGIN ENCRYPTED PRIVATE KEY");

    // Legacy OpenSSL PEM encryption: RSA (PKCS#1) with AES-256/128, EC (SEC1) with 3DES and AES-192.
    openssl_traditional(dir, &["rsa", "-in", "rsa.p8", "-out", "rsa.pk1"]);
    openssl_traditional(
        dir,
        &[
            "rsa",
            "-aes256",
            "-in",
            "rsa.p8",
            "-out",
            "rsa-aes256.pem",
            "-passout",
            &pass,
        ],
    );
    check(dir, "rsa-aes256.pem", "rsa.pk1", "DEK-Info: AES-256-CBC");
    openssl_traditional(
        dir,
        &[
            "rsa",
            "-aes128",
            "-in",
            "rsa.p8",
            "-out",
            "rsa-aes128.pem",
            "-passout",
            &pass,
        ],
    );
    check(dir, "rsa-aes128.pem", "rsa.pk1", "DEK-Info: AES-128-CBC");
    openssl(dir, &["ec", "-in", "ec.p8", "-out", "ec.sec1"]);
    openssl(
        dir,
        &[
            "ec",
            "-des3",
            "-in",
            "ec.p8",
            "-out",
            "ec-des3.pem",
            "-passout",
            &pass,
        ],
    );
    check(dir, "ec-des3.pem", "ec.sec1", "DEK-Info: DES-EDE3-CBC");
    openssl(
        dir,
        &[
            "ec",
            "-aes192",
            "-in",
            "ec.p8",
            "-out",
            "ec-aes192.pem",
            "-passout",
            &pass,
        ],
    );
    check(dir, "ec-aes192.pem", "ec.sec1", "DEK-Info: AES-192-CBC");

    // Unencrypted keys load with or without a password (as OpenSSL: the password is not needed).
    for f in ["rsa.p8", "rsa.pk1", "ec.sec1"] {
        let want = PrivateKeyDer::from_pem_slice(&read(dir, f)).unwrap();
        assert_eq!(der(&decode(&read(dir, f), None).unwrap()), der(&want));
        assert_eq!(der(&decode(&read(dir, f), Some(b"x")).unwrap()), der(&want));
    }
}

#[test]
fn unsupported_schemes_say_how_to_re_encrypt() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pass = format!("pass:{PW}");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.p8",
        ],
    );
    // scrypt asking for 256 MiB (r = 127 instead of 8; openssl itself refuses to make such a key): refused
    // before anything is allocated.
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-scrypt", "-in", "ec.p8", "-out", "ec.p8e", "-passout", &pass,
        ],
    );
    let pem = String::from_utf8(read(dir, "ec.p8e")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64ct::Base64::decode_vec(&body).unwrap();
    let at = der
        .windows(7)
        .position(|w| w == [0x02, 0x02, 0x40, 0x00, 0x02, 0x01, 0x08])
        .expect("scrypt N=16384 r=8 in openssl's key");
    der[at + 6] = 0x7f;
    let big = format!(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\n{}\n-----END ENCRYPTED PRIVATE KEY-----\n",
        base64ct::Base64::encode_string(&der)
    );
    std::fs::write(dir.join("big.p8e"), big).unwrap();
    let e = decode(&read(dir, "big.p8e"), Some(PW.as_bytes())).unwrap_err();
    assert!(matches!(e, KeyError::Unsupported(_)), "{e:?}");
    assert!(
        e.to_string().contains("MiB")
            && e.to_string()
                .contains("openssl pkcs8 -topk8 -v2 aes-256-cbc"),
        "{e}"
    );
}

#[test]
fn mutual_tls_with_an_encrypted_client_key() {
    let b = common::Broker::start();
    let dir = &b.certs.dir;
    let pass = format!("pass:{PW}");
    let key = b.certs.client_key.to_str().unwrap();
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            key,
            "-out",
            "client-enc.key",
            "-passout",
            &pass,
        ],
    );
    openssl_traditional(
        dir,
        &[
            "ec",
            "-aes256",
            "-in",
            key,
            "-out",
            "client-legacy.key",
            "-passout",
            &pass,
        ],
    );
    let cfg = |keyfile: &str, pw: Option<&str>| {
        let mut c = Config::new(b.mtls_uri(), "enc-key");
        c.tls.ca_file = Some(b.certs.ca.clone());
        c.tls.cert_file = Some(b.certs.client_cert.clone());
        c.tls.key_file = Some(dir.join(keyfile));
        c.tls.key_password = pw.map(qmqtt::Secret::from);
        c
    };
    for f in ["client-enc.key", "client-legacy.key"] {
        let c = Client::connect(cfg(f, Some(PW))).unwrap();
        c.wait_connected(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        match Client::connect(cfg(f, Some("nope"))).map(|_| ()) {
            Err(ClientError::Config(e)) => {
                assert_eq!(
                    (e.key, e.fault),
                    (Key::PrivateKeyPassword, Fault::Invalid),
                    "{e}"
                );
                let m = e.to_string();
                assert!(
                    m.contains("privateKeyPassword: wrong password or not an encrypted key")
                        && m.contains(f),
                    "{m}"
                );
                assert!(!m.contains("nope") && !m.contains(PW), "{m}");
            }
            other => panic!("{f}: expected the wrong password refused, got {other:?}"),
        }
        match Client::connect(cfg(f, None)).map(|_| ()) {
            Err(ClientError::Config(e)) => {
                assert_eq!(
                    (e.key, e.fault),
                    (Key::PrivateKeyPassword, Fault::Missing),
                    "{e}"
                )
            }
            other => panic!("{f}: expected the missing password refused, got {other:?}"),
        }
    }
    // The same from the command line.
    let run = |pw: &str| {
        let o = common::qmqtt_run(
            &[
                "check",
                "--timeout",
                "5",
                "-L",
                &format!("mqtts://localhost:{}", b.mtls_port),
                "--cafile",
                b.certs.ca.to_str().unwrap(),
                "--cert",
                b.certs.client_cert.to_str().unwrap(),
                "--key",
                dir.join("client-enc.key").to_str().unwrap(),
                "--keypass",
                pw,
            ],
            b"",
            Duration::from_secs(30),
        );
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, out) = run(PW);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("CONNACK accepted"), "{out}");
    let (code, out) = run("nope");
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("privateKeyPassword: wrong password or not an encrypted key"),
        "{out}"
    );
}
