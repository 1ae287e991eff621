//! The order the client offers its TLS cipher suites in, by what the CPU has ([`suite_order`]): AES-GCM first
//! where the CPU has AES and carry-less multiply instructions (x86 AES-NI + PCLMULQDQ, the ARMv8 crypto
//! extensions), ChaCha20-Poly1305 first where it has not (Raspberry Pi 3/4's Cortex-A53/A72) and in 32-bit ARM
//! builds (ring has no AES-instruction code for them): there AES-GCM runs in constant-time software at
//! several times ChaCha20's cost, unless `enabledCipherSuites` gives the order. A server that enforces its
//! own order keeps it.
use rustls::SupportedCipherSuite;

use super::tls::suite_name;
use super::TlsOptions;

/// The CPU's AES-GCM support, as the cipher order needs it: AES rounds and the carry-less multiply GHASH
/// uses, both in hardware. Detected once per configuration ([`CpuAes::detect`]); given in the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuAes {
    /// Both present (what was checked).
    Present(&'static str),
    /// One or both missing (what was checked): AES-GCM runs in constant-time software, several times
    /// slower than ChaCha20-Poly1305.
    Missing(&'static str),
    /// Not known on this platform: the provider's order is kept.
    Unknown,
}

impl CpuAes {
    /// Ask the CPU (x86/x86_64: CPUID; Linux on ARM: the kernel's hardware capabilities, `getauxval`).
    pub fn detect() -> CpuAes {
        detect_aes()
    }

    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        all(target_os = "linux", target_arch = "aarch64")
    ))]
    fn of(present: bool, what: &'static str) -> CpuAes {
        if present {
            CpuAes::Present(what)
        } else {
            CpuAes::Missing(what)
        }
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
fn detect_aes() -> CpuAes {
    CpuAes::of(
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq"),
        "AES-NI and PCLMULQDQ",
    )
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn detect_aes() -> CpuAes {
    let want = libc::HWCAP_AES | libc::HWCAP_PMULL;
    // SAFETY: getauxval has no preconditions; it returns 0 for a type the kernel does not give.
    let caps = unsafe { libc::getauxval(libc::AT_HWCAP) };
    CpuAes::of(caps & want == want, "ARMv8 AES and PMULL (AT_HWCAP)")
}

#[cfg(all(target_os = "linux", target_arch = "arm"))]
fn detect_aes() -> CpuAes {
    // Linux's arch/arm/include/uapi/asm/hwcap.h: AArch32 on an ARMv8 core with the crypto extensions
    // (ARMv7 has neither).
    const HWCAP2_AES: libc::c_ulong = 1 << 0;
    const HWCAP2_PMULL: libc::c_ulong = 1 << 1;
    let want = HWCAP2_AES | HWCAP2_PMULL;
    // SAFETY: as above.
    let caps = unsafe { libc::getauxval(libc::AT_HWCAP2) };
    // Missing either way: ring has AES/PMULL code for aarch64 and x86 only, so a 32-bit ARM build runs
    // AES-GCM in software even on a core with the extensions (under qemu the `max` core executes as many
    // instructions per message as the `cortex-a15`: benches/README.md, "TLS cipher by CPU").
    if caps & want == want {
        CpuAes::Missing(
            "ARMv8 AES and PMULL usable by 32-bit code: AT_HWCAP2 lists them, but ring uses them \
             only in aarch64 and x86 builds",
        )
    } else {
        CpuAes::Missing("ARMv8 AES and PMULL (AT_HWCAP2)")
    }
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    all(target_os = "linux", any(target_arch = "aarch64", target_arch = "arm"))
)))]
fn detect_aes() -> CpuAes {
    CpuAes::Unknown
}

/// The order the client offers its cipher suites in, and why ([`suite_order`]; `qmqtt check` prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuiteOrder {
    /// `enabledCipherSuites` (`--ciphers`) gives the suites and their order.
    Configured,
    /// AES-GCM first (the provider's order): the CPU has the instructions.
    AesFirst(CpuAes),
    /// ChaCha20-Poly1305 first within each TLS version: the CPU lacks them.
    ChaChaFirst(&'static str),
}

impl std::fmt::Display for SuiteOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuiteOrder::Configured => f.write_str("as enabledCipherSuites (--ciphers) gives them"),
            SuiteOrder::AesFirst(CpuAes::Present(what)) => {
                write!(f, "AES-GCM first: this CPU has {what}")
            }
            SuiteOrder::AesFirst(_) => {
                f.write_str("AES-GCM first (rustls' order): this CPU's AES support is not known")
            }
            SuiteOrder::ChaChaFirst(what) => write!(
                f,
                "ChaCha20-Poly1305 first: this CPU lacks {what}, so AES-GCM would run in software \
                 at several times the cost"
            ),
        }
    }
}

/// The order for these options on a CPU with this AES support.
pub fn suite_order(opts: &TlsOptions, cpu: CpuAes) -> SuiteOrder {
    match cpu {
        _ if !opts.cipher_suites.is_empty() => SuiteOrder::Configured,
        CpuAes::Missing(what) => SuiteOrder::ChaChaFirst(what),
        c => SuiteOrder::AesFirst(c),
    }
}

/// The provider's suites in `order`: for [`SuiteOrder::ChaChaFirst`], a stable sort that keeps TLS 1.3
/// before TLS 1.2 and puts ChaCha20-Poly1305 first within each (the server picks from the client's list
/// in its order unless it enforces its own).
pub(super) fn order_suites(suites: &mut [SupportedCipherSuite], order: &SuiteOrder) {
    if let SuiteOrder::ChaChaFirst(_) = order {
        suites.sort_by_key(|s| {
            let tls12 = matches!(s, SupportedCipherSuite::Tls12(_));
            let chacha = suite_name(s).contains("CHACHA20");
            (tls12, !chacha)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tls::select_suites;
    use super::*;

    #[test]
    fn cpu_aes_is_detected_on_the_platforms_that_say() {
        let cpu = CpuAes::detect();
        // Shown with --nocapture: under qemu-user, QEMU_CPU picks the emulated core (e.g. cortex-a15 for
        // armv7: no AES instructions, ChaCha20 first).
        eprintln!("{cpu:?}: {}", suite_order(&TlsOptions::default(), cpu));
        if cfg!(any(
            target_arch = "x86_64",
            target_arch = "x86",
            all(
                target_os = "linux",
                any(target_arch = "aarch64", target_arch = "arm")
            )
        )) {
            assert_ne!(cpu, CpuAes::Unknown);
        }
        // 32-bit ARM: ChaCha20 first on every core (QEMU_CPU=cortex-a15 has no AES, max has it in AArch32).
        if cfg!(target_arch = "arm") {
            assert!(matches!(cpu, CpuAes::Missing(_)), "{cpu:?}");
        }
    }

    fn names(s: &[SupportedCipherSuite]) -> Vec<&'static str> {
        s.iter().map(suite_name).collect()
    }

    #[test]
    fn suites_ordered_by_cpu() {
        let default = rustls::crypto::ring::default_provider().cipher_suites;
        let opts = TlsOptions::default();
        // No AES instructions (a Cortex-A53/A72, ARMv7): ChaCha20 first, TLS 1.3 still before TLS 1.2.
        let order = suite_order(&opts, CpuAes::Missing("ARMv8 AES and PMULL (AT_HWCAP)"));
        assert_eq!(
            order,
            SuiteOrder::ChaChaFirst("ARMv8 AES and PMULL (AT_HWCAP)")
        );
        let mut s = default.clone();
        order_suites(&mut s, &order);
        let n = names(&s);
        assert_eq!(n[0], "TLS13_CHACHA20_POLY1305_SHA256", "{n:?}");
        assert!(n[1].starts_with("TLS13_AES"), "{n:?}");
        assert!(n[2].starts_with("TLS13_AES"), "{n:?}");
        let first12 = n.iter().position(|x| !x.starts_with("TLS13_")).unwrap();
        assert!(n[first12].contains("CHACHA20"), "{n:?}");
        assert!(
            n[first12 + 1..].iter().all(|x| !x.starts_with("TLS13_")),
            "{n:?}"
        );
        assert_eq!(s.len(), default.len());
        assert!(
            order.to_string().contains("ChaCha20-Poly1305 first"),
            "{order}"
        );
        // AES-NI (or the ARMv8 crypto extensions): the provider's order, AES-GCM first.
        for cpu in [CpuAes::Present("AES-NI and PCLMULQDQ"), CpuAes::Unknown] {
            let order = suite_order(&opts, cpu);
            assert_eq!(order, SuiteOrder::AesFirst(cpu));
            let mut s = default.clone();
            order_suites(&mut s, &order);
            assert_eq!(names(&s), names(&default));
            assert!(names(&s)[0].starts_with("TLS13_AES"));
        }
        // enabledCipherSuites: the user's order, whatever the CPU.
        let opts = TlsOptions {
            cipher_suites: vec![
                "TLS13_AES_128_GCM_SHA256".into(),
                "TLS13_CHACHA20_POLY1305_SHA256".into(),
            ],
            ..TlsOptions::default()
        };
        let order = suite_order(&opts, CpuAes::Missing("x"));
        assert_eq!(order, SuiteOrder::Configured);
        let mut s = select_suites(&default, &opts.cipher_suites).unwrap();
        order_suites(&mut s, &order);
        assert_eq!(
            names(&s),
            ["TLS13_AES_128_GCM_SHA256", "TLS13_CHACHA20_POLY1305_SHA256"]
        );
    }
}
