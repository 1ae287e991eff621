//! The library's logger: one line per record on stderr, the level held in an atomic and settable from q
//! (`.mqtt.loglevel`, the `logLevel` connection option, or the `QMQTT_LOG` environment variable at load).
//!
//! q owns stdout; stderr is where q itself reports. Logging is off the hot path (errors, warnings and
//! connection events; per-message tracing only at `trace`).
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

static LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Warn as usize);

struct StderrLog;

static LOGGER: StderrLog = StderrLog;

const LEVELS: [LevelFilter; 6] = [
    LevelFilter::Off,
    LevelFilter::Error,
    LevelFilter::Warn,
    LevelFilter::Info,
    LevelFilter::Debug,
    LevelFilter::Trace,
];

impl Log for StderrLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        (m.level() as usize) <= LEVEL.load(Ordering::Relaxed)
    }
    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let lvl = match r.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // One write per line so that lines from the I/O threads do not interleave.
        let line = format!("qmqtt {lvl} {}: {}\n", r.target(), r.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    fn flush(&self) {}
}

/// Install the logger (idempotent; if the host already installed another `log` logger, that one stays).
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        if let Some(l) = std::env::var("QMQTT_LOG")
            .ok()
            .and_then(|v| parse(v.as_bytes()))
        {
            set(l);
        } else {
            set(current());
        }
    }
}

/// Parse `off error warn info debug trace` (or 0..5).
pub fn parse(s: &[u8]) -> Option<LevelFilter> {
    Some(match s {
        b"off" | b"0" => LevelFilter::Off,
        b"error" | b"1" => LevelFilter::Error,
        b"warn" | b"warning" | b"2" => LevelFilter::Warn,
        b"info" | b"3" => LevelFilter::Info,
        b"debug" | b"4" => LevelFilter::Debug,
        b"trace" | b"5" => LevelFilter::Trace,
        _ => return None,
    })
}

/// The level for a number 0 (off) ..= 5 (trace).
pub fn from_number(n: i64) -> Option<LevelFilter> {
    usize::try_from(n).ok().and_then(|i| LEVELS.get(i).copied())
}

pub fn set(l: LevelFilter) {
    LEVEL.store(l as usize, Ordering::Relaxed);
    log::set_max_level(l);
}

pub fn current() -> LevelFilter {
    LEVELS
        .get(LEVEL.load(Ordering::Relaxed))
        .copied()
        .unwrap_or(LevelFilter::Warn)
}

/// The level's name as a static C string (for q symbols).
pub fn name(l: LevelFilter) -> &'static std::ffi::CStr {
    match l {
        LevelFilter::Off => c"off",
        LevelFilter::Error => c"error",
        LevelFilter::Warn => c"warn",
        LevelFilter::Info => c"info",
        LevelFilter::Debug => c"debug",
        LevelFilter::Trace => c"trace",
    }
}
