//! `qmqtt`: publish, subscribe and check a broker without q — for gateway operators proving connectivity
//! and TLS, and for our tests and benchmarks. A thin command over the Rust API ([`qmqtt::Client`]) with
//! flags that follow mosquitto_pub / mosquitto_sub.
//!
//! - `qmqtt pub` ([`publish`]): one message, stdin, stdin line by line (`-l`, surviving broker restarts),
//!   or a synthetic stream (`--repeat N --size B`); a summary line on stderr at exit.
//! - `qmqtt sub` ([`subscribe`]): print what arrives, one message per line.
//! - `qmqtt check` ([`check`]): TCP, TLS (version, suite, chain, ALPN) and CONNACK, or what to fix.
//!
//! No clap: the parser ([`args`]) is a few hundred lines and keeps the binary lean. The submodules live in
//! `src/bin/qmqtt/` (crate roots look beside themselves, hence the `#[path]`s).
/// `print!` that ignores a closed stdout (`qmqtt check | head`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}
/// `println!` that ignores a closed stdout.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

#[path = "qmqtt/args.rs"]
mod args;
#[path = "qmqtt/check.rs"]
mod check;
#[path = "qmqtt/format.rs"]
mod format;
#[path = "qmqtt/publish.rs"]
mod publish;
#[path = "qmqtt/subscribe.rs"]
mod subscribe;
#[path = "qmqtt/util.rs"]
mod util;

use std::ffi::OsString;

const HELP: &str = "\
qmqtt: MQTT publish / subscribe / connectivity check (the qmqtt engine, without q)

Usage:
  qmqtt pub   -h HOST -p PORT -t TOPIC (-m MSG | -l | -s) [-q 0|1|2] [-r] [TLS/auth flags]
  qmqtt sub   -h HOST -p PORT -t FILTER… [-q 0|1|2] [-C COUNT] [-v] [-W SECONDS] [-c -i ID]
  qmqtt check -L mqtts://HOST:PORT [--cafile F] [--cert F --key F] [-u USER -P PASS]
  qmqtt COMMAND --help     flags of one command
  qmqtt --version

Flags follow mosquitto_pub / mosquitto_sub. TLS is on with --cafile, --capath, --cert, -p 8883 or an
mqtts:// (ssl://) URL; the broker's certificate and host name are verified unless told otherwise.
";

fn main() {
    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if argv.is_empty() {
        errln!("{}", HELP.trim_end());
        std::process::exit(args::USAGE_EXIT);
    }
    let cmd = argv.remove(0);
    let code = match cmd.to_str() {
        Some("pub") => publish::run(argv),
        Some("sub") => subscribe::run(argv),
        Some("check") => check::run(argv),
        Some("--help" | "-help" | "help") => {
            out!("{HELP}");
            0
        }
        Some("--version" | "-V") => {
            outln!("qmqtt {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            errln!(
                "qmqtt: unknown command '{}' (use pub, sub or check; see qmqtt --help)",
                cmd.to_string_lossy()
            );
            args::USAGE_EXIT
        }
    };
    std::process::exit(code);
}
