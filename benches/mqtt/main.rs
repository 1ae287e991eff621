//! Benchmark: qmqtt against the other ways of getting telemetry from a program to an MQTT broker over TLS,
//! measured in one run on one local mosquitto and reported as ratios (issue 6).
//!
//! `benches/run [--quick] [--json FILE] [--md FILE] [--only a,b] [--reps N] [--no-callgrind]` builds this
//! and runs it. The orchestrator (this process) starts one mosquitto on 127.0.0.1 (TLS listener for the
//! publishers, plain TCP for the counting subscriber), then runs every contender as a separate process
//! (this binary again, `--contender NAME key=value...`) so that each one's memory can be read on its own:
//!
//! * throughput: QoS 0 / QoS 1, 64 B and 1 KiB payloads, until the independent subscriber has everything
//!   (QoS 0) or the last PUBACK is in (QoS 1);
//! * memory: RSS added by the idle connection, by the connection under load, and the process's peak;
//! * CPU: user+system time per message (rusage), and instructions per message under callgrind
//!   (`perf stat -e instructions` is not supported on this machine), as the difference between two counts;
//! * latency: publish→receive p50/p99 at 10 000 msg/s, the send time stamped in the payload.
//!
//! MQTT 5 (issue 13): the `-v5` contenders (qmqtt with and without topic aliases, `qmqtt pub -V 5`, paho,
//! rumqttc and mosquitto_pub over MQTT 5) run the throughput tests and appear in a table of their own, as
//! ratios to paho-v5 and to the MQTT 3.1.1 form of the same client; `--quick` runs them for QoS 1 64 B only.
//!
//! Timings are reported, never asserted. Results go to `target/bench/results.{json,md}`.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tests' mosquitto fixture (certificates, free ports, start-up), with the broker's limits lifted.
#[path = "../../tests/common/mod.rs"]
mod common;
mod contenders;
mod sub;

use contenders::{Job, Outcome};

/// CLOCK_MONOTONIC in ns: one clock for every process on the machine.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct Rusage {
    pub maxrss_kb: u64,
    pub cpu_us: u64,
}

/// Wait for a child with `wait4`, returning its exit status (or 128+signal) and its resource usage; kill it
/// at `deadline`.
pub fn wait_rusage(pid: u32, deadline: Instant) -> Result<(i32, Rusage), String> {
    let pid = pid as libc::pid_t;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        if r < 0 {
            return Err(format!("wait4({pid}): {}", std::io::Error::last_os_error()));
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            return Err(format!("process {pid} did not finish in time: killed"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Ok((
        code,
        Rusage {
            maxrss_kb: ru.ru_maxrss as u64,
            cpu_us: us(ru.ru_utime) + us(ru.ru_stime),
        },
    ))
}

/// One measured run of one contender.
#[derive(Debug, Clone, Default)]
struct Sample {
    test: String,
    contender: String,
    qos: u8,
    size: usize,
    count: u64,
    rep: u32,
    received: u64,
    seconds: f64,
    msgs_per_s: f64,
    cpu_us: u64,
    maxrss_kb: u64,
    idle_added_kb: i64,
    load_added_kb: i64,
    lat_p50_us: f64,
    lat_p99_us: f64,
    lat_max_us: f64,
    instr_total: u64,
    /// qmqtt's own counters (0 for the others): socket writes, I/O-thread wake-ups, bytes written,
    /// PUBLISHes sent with a topic alias.
    writes: u64,
    wakeups: u64,
    bytes_out: u64,
    aliased: u64,
    /// The contender's own process did the work, so its idle/load RSS figures are meaningful.
    has_mem: bool,
    /// The contender ran but the subscriber did not get everything: a finding about the contender, not a
    /// failure of the bench (the run is left out of the throughput figures).
    lost: bool,
    error: Option<String>,
}

struct Ctx {
    exe: PathBuf,
    broker: common::Broker,
    qmqtt_bin: Option<PathBuf>,
    seq: u64,
    cg_dir: PathBuf,
    wrap: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Throughput,
    Latency(u64),
    Callgrind,
}

// One call site per kind of run; a parameter struct would only rename these.
#[allow(clippy::too_many_arguments)]
fn run_one(
    ctx: &mut Ctx,
    test: &str,
    contender: &str,
    qos: u8,
    size: usize,
    count: u64,
    mode: Mode,
    rep: u32,
) -> Sample {
    let mut s = Sample {
        test: test.into(),
        contender: contender.into(),
        qos,
        size,
        count,
        rep,
        ..Sample::default()
    };
    if let Err(e) = run_one_inner(ctx, &mut s, mode) {
        eprintln!("  {test} {contender} rep {rep}: FAILED: {e}");
        s.error = Some(e);
    }
    s
}

fn run_one_inner(ctx: &mut Ctx, s: &mut Sample, mode: Mode) -> Result<(), String> {
    ctx.seq += 1;
    // An MQTT 5 contender publishes to a topic as long as its MQTT 3.1.1 form's (the same name in it), so that
    // the two send the same bytes but for the protocol's own.
    let name = contenders::v311_form(&s.contender).unwrap_or(&s.contender);
    let topic = format!("bench/{}/{name}/{}", std::process::id(), ctx.seq);
    let latency = matches!(mode, Mode::Latency(_));
    let job = Job {
        contender: s.contender.clone(),
        port: ctx.broker.tls_port,
        ca: ctx.broker.certs.ca.clone(),
        topic: topic.clone(),
        qos: s.qos,
        size: s.size,
        count: s.count,
        rate: if let Mode::Latency(r) = mode { r } else { 0 },
        id: format!("bench-{}-{}", s.contender, ctx.seq),
        idle_ms: 200,
        stamp: latency,
        qmqtt_bin: ctx.qmqtt_bin.clone(),
    };
    let sub = sub::Subscriber::start(ctx.broker.tcp_port, &topic, s.count, latency)?;
    let cg_out = ctx.cg_dir.join(format!("cg.{}", ctx.seq));
    let mut cmd = if mode == Mode::Callgrind {
        let mut c = Command::new("valgrind");
        c.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", cg_out.display()))
            .arg("-q")
            .arg(&ctx.exe);
        c
    } else if let Some((prog, args)) = ctx.wrap.split_first() {
        // Profiling: run the contender under a wrapper (strace, perf record, ...).
        let mut c = Command::new(prog);
        c.args(args).arg(&ctx.exe);
        c
    } else {
        Command::new(&ctx.exe)
    };
    cmd.args(job.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let limit =
        Duration::from_secs(60 + s.count / if mode == Mode::Callgrind { 200 } else { 2000 });
    let waited = wait_rusage(child.id(), Instant::now() + limit);
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    let (status, ru) = waited?;
    let last_err = || {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("note:"))
            .collect();
        lines[lines.len().saturating_sub(2)..].join(" / ")
    };
    if status != 0 {
        return Err(format!("exit status {status}: {}", last_err()));
    }
    let o: Outcome =
        Outcome::parse(&stdout).ok_or_else(|| format!("no RESULT line: {}", last_err()))?;
    let r = sub.finish(Duration::from_secs(3))?;
    s.received = r.count;
    (s.writes, s.wakeups, s.bytes_out, s.aliased) = (o.writes, o.wakeups, o.bytes_out, o.aliased);
    s.cpu_us = if o.ext_cpu_us > 0 {
        o.ext_cpu_us
    } else {
        ru.cpu_us
    };
    s.maxrss_kb = if o.ext_maxrss_kb > 0 {
        o.ext_maxrss_kb
    } else {
        ru.maxrss_kb
    };
    if o.ext_maxrss_kb == 0 {
        s.has_mem = true;
        s.idle_added_kb = o.idle_kb as i64 - o.base_kb as i64;
        s.load_added_kb = o.hwm_kb as i64 - o.base_kb as i64;
    }
    // QoS 0: until the subscriber has everything; QoS 1: until the last acknowledgement.
    let end = if s.qos == 0 { r.t_last } else { o.t_done };
    s.seconds = end.saturating_sub(o.t_start) as f64 / 1e9;
    if s.seconds > 0.0 {
        s.msgs_per_s = s.count as f64 / s.seconds;
    }
    if latency && !r.latencies.is_empty() {
        let mut l = r.latencies;
        l.sort_unstable();
        let pct = |p: f64| l[((l.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
        s.lat_p50_us = pct(0.50);
        s.lat_p99_us = pct(0.99);
        s.lat_max_us = pct(1.0);
    }
    if mode == Mode::Callgrind {
        s.instr_total = callgrind_total(&cg_out)?;
        let _ = std::fs::remove_file(&cg_out);
    }
    if s.received < s.count {
        let msg = format!("subscriber got {} of {}", s.received, s.count);
        if mode == Mode::Throughput {
            // Throughput counts complete deliveries only: a run that lost messages is not a result.
            s.lost = true;
            return Err(msg);
        }
        eprintln!("  {} {}: {msg}", s.test, s.contender);
    }
    Ok(())
}

/// One case of the q layer's caller-thread cost (tests/qhost/qbench_cost.py): ns per message (`pub`,
/// `pubbatch[B]`) or per call (the frozen-broker cases).
#[derive(Debug, Clone, Default)]
struct CostRow {
    case: String,
    calls: u64,
    per: u64,
    median_ns: f64,
    p999_ns: f64,
    max_ns: f64,
    mean_ns: f64,
    refused: u64,
    /// Involuntary / voluntary context switches of the calling thread during the timed calls, CPU time the
    /// hypervisor stole (ms, all CPUs), wake-ups of the connection's I/O thread.
    preempted: u64,
    blocked: u64,
    steal_ms: u64,
    io_wakeups: u64,
    /// What the times are per: "msg" or "call".
    unit: String,
    /// The longest call and the involuntary context switches of each round.
    round_max_ns: Vec<f64>,
    round_preempted: Vec<u64>,
}

/// Run the command in QMQTT_Q_COST (split at white space; `--quick` appended for --quick) and parse its
/// `COST case=... k=v ...` lines.
fn q_cost(quick: bool) -> Result<Vec<CostRow>, String> {
    let spec = std::env::var("QMQTT_Q_COST").map_err(|_| "QMQTT_Q_COST is not set")?;
    let mut words = spec.split_whitespace();
    let prog = words.next().ok_or("QMQTT_Q_COST is empty")?;
    let mut cmd = Command::new(prog);
    cmd.args(words);
    if quick {
        cmd.arg("--quick");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run QMQTT_Q_COST ({prog}): {e}"))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let waited = wait_rusage(child.id(), Instant::now() + Duration::from_secs(300));
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    let (status, _) = waited?;
    if status != 0 {
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(format!(
            "QMQTT_Q_COST exited with status {status}: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    let mut rows = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with("COST ")) {
        let mut r = CostRow::default();
        for kv in line.split_whitespace().skip(1) {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let f = || v.parse::<f64>().unwrap_or(f64::NAN);
            let u = || v.parse::<u64>().unwrap_or(0);
            match k {
                "case" => r.case = v.to_string(),
                "calls" => r.calls = u(),
                "per" => r.per = u(),
                "median_ns" => r.median_ns = f(),
                "p999_ns" => r.p999_ns = f(),
                "max_ns" => r.max_ns = f(),
                "mean_ns" => r.mean_ns = f(),
                "refused" => r.refused = u(),
                "preempted" => r.preempted = u(),
                "blocked" => r.blocked = u(),
                "steal_ms" => r.steal_ms = u(),
                "io_wakeups" => r.io_wakeups = u(),
                "unit" => r.unit = v.to_string(),
                "round_max_ns" => {
                    r.round_max_ns = v.split(',').filter_map(|x| x.parse().ok()).collect()
                }
                "round_preempted" => {
                    r.round_preempted = v.split(',').filter_map(|x| x.parse().ok()).collect()
                }
                _ => {}
            }
        }
        rows.push(r);
    }
    if rows.is_empty() {
        return Err("QMQTT_Q_COST printed no COST lines".into());
    }
    Ok(rows)
}

fn callgrind_total(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("callgrind output {}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no summary line in {}", path.display()))
}

struct Opts {
    quick: bool,
    json: PathBuf,
    md: PathBuf,
    only: Option<Vec<String>>,
    reps: u32,
    callgrind: bool,
    tests: Option<Vec<String>>,
    wrap: Vec<String>,
    /// Override the message count of the throughput tests (profiling).
    count: Option<u64>,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut o = Opts {
        quick: false,
        json: target.join("bench/results.json"),
        md: target.join("bench/results.md"),
        only: None,
        reps: 0,
        callgrind: true,
        tests: None,
        wrap: Vec::new(),
        count: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--quick" => o.quick = true,
            "--json" => o.json = val()?.into(),
            "--md" => o.md = val()?.into(),
            "--only" => o.only = Some(val()?.split(',').map(String::from).collect()),
            "--reps" => o.reps = val()?.parse().map_err(|_| "--reps needs a number")?,
            "--no-callgrind" => o.callgrind = false,
            "--count" => o.count = Some(val()?.parse().map_err(|_| "--count needs a number")?),
            "--tests" => o.tests = Some(val()?.split(',').map(String::from).collect()),
            "--wrap" => o.wrap = val()?.split_whitespace().map(String::from).collect(),
            _ => {
                return Err(format!(
                "unknown option '{a}' (use --quick, --json FILE, --md FILE, --only a,b, --reps N, --no-callgrind, --count N, \
                 --tests qos0-64B,latency-qos1,instr-qos0,..., --wrap 'strace -f -c -o F')"
            ))
            }
        }
    }
    if o.reps == 0 {
        o.reps = if o.quick { 1 } else { 3 };
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--contender") {
        let code = match Job::from_args(&args[i + 1..]).and_then(|j| contenders::run(&j)) {
            Ok(o) => {
                println!("{}", o.line());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
        std::process::exit(code);
    }
    let opts = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = orchestrate(&opts) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

fn qmqtt_cli() -> Option<PathBuf> {
    let p = std::env::var_os("QMQTT_BIN").map(PathBuf::from)?;
    // Only a `qmqtt` that knows `pub --repeat` takes part.
    let out = Command::new(&p).args(["pub", "--help"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    text.contains("--repeat").then_some(p)
}

fn orchestrate(opts: &Opts) -> Result<(), String> {
    let t0 = Instant::now();
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    // Limits lifted, so that the broker never drops: unlimited queues (0) and in-flight towards the
    // subscriber; no Nagle delay on the broker's sends, so that latency measures the publishers, not the
    // broker's socket.
    let broker = common::Broker::start_with(common::BrokerOptions {
        extra: "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_bytes 0\nmemory_limit 0\n\
                set_tcp_nodelay true\n"
            .into(),
        ..common::BrokerOptions::default()
    });
    let cg_dir = broker.dir.path().join("callgrind");
    std::fs::create_dir_all(&cg_dir).map_err(|e| e.to_string())?;
    let qmqtt_bin = qmqtt_cli();
    let mut ctx = Ctx {
        exe,
        broker,
        qmqtt_bin,
        seq: 0,
        cg_dir,
        wrap: opts.wrap.clone(),
    };
    let test_on = |t: &str| opts.tests.as_ref().is_none_or(|o| o.iter().any(|x| x == t));
    let wanted = |c: &str| opts.only.as_ref().is_none_or(|o| o.iter().any(|x| x == c));
    let mut contenders: Vec<&str> = contenders::ALL
        .iter()
        .copied()
        .filter(|c| wanted(c))
        .collect();
    if ctx.qmqtt_bin.is_none() {
        eprintln!("bench: qmqtt-cli skipped (set QMQTT_BIN to a qmqtt that has `pub --repeat`)");
        contenders.retain(|c| *c != "qmqtt-cli" && *c != "qmqtt-cli-v5");
    }
    // The q layer's contenders take part when their command is given (benches/run sets them).
    contenders.retain(|c| {
        contenders::q_bench_var(c)
            .is_none_or(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
    });
    let q = opts.quick;
    // (name, qos, size, count)
    let tests: [(&str, u8, usize, u64); 4] = [
        ("qos0-64B", 0, 64, if q { 5_000 } else { 200_000 }),
        ("qos1-64B", 1, 64, if q { 3_000 } else { 100_000 }),
        ("qos0-1KiB", 0, 1024, if q { 2_000 } else { 100_000 }),
        ("qos1-1KiB", 1, 1024, if q { 2_000 } else { 50_000 }),
    ];
    let mut samples = Vec::new();
    for rep in 1..=opts.reps {
        for (test, qos, size, count) in tests {
            if !test_on(test) {
                continue;
            }
            let count = opts.count.unwrap_or(count);
            for c in &contenders {
                // --quick keeps the MQTT 5 contenders to one test (each connects, publishes and acknowledges).
                if q && test != "qos1-64B" && contenders::v311_form(c).is_some() {
                    continue;
                }
                let s = run_one(&mut ctx, test, c, qos, size, count, Mode::Throughput, rep);
                eprintln!(
                    "  rep {rep} {test:<10} {c:<16} {:>10.0} msg/s  cpu {:>6.2} us/msg  peak {:>6} KiB  recv {}/{}",
                    s.msgs_per_s,
                    s.cpu_us as f64 / count as f64,
                    s.maxrss_kb,
                    s.received,
                    count
                );
                samples.push(s);
            }
        }
    }
    let lat: Vec<&str> = contenders
        .iter()
        .copied()
        .filter(|c| contenders::LATENCY.contains(c))
        .collect();
    // 10k msg/s at QoS 0 and 1 (3 s a run), 1k msg/s at QoS 1 (5 s): a gateway's real rates.
    let lat_runs: [(&str, u8, u64, u64); 3] = [
        ("latency-qos0", 0, 10_000, if q { 2_000 } else { 30_000 }),
        ("latency-qos1", 1, 10_000, if q { 2_000 } else { 30_000 }),
        ("latency1k-qos1", 1, 1_000, if q { 500 } else { 5_000 }),
    ];
    for rep in 1..=opts.reps {
        for (test, qos, rate, lat_count) in lat_runs {
            for c in &lat {
                if !test_on(test) {
                    continue;
                }
                let s = run_one(
                    &mut ctx,
                    test,
                    c,
                    qos,
                    64,
                    lat_count,
                    Mode::Latency(rate),
                    rep,
                );
                eprintln!(
                    "  rep {rep} {test:<10} {c:<14} p50 {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us",
                    s.lat_p50_us, s.lat_p99_us, s.lat_max_us
                );
                samples.push(s);
            }
        }
    }
    let mut cg_note = "callgrind (valgrind): instructions of the whole process, all threads; per message = difference between two runs / difference in count".to_string();
    if opts.callgrind && Command::new("valgrind").arg("--version").output().is_ok() {
        let (n1, n2) = if q {
            (200u64, 1_200u64)
        } else {
            (1_000, 21_000)
        };
        // QoS 2 (qmqtt only, the others' harnesses stop at QoS 1): only when asked for (--tests instr-qos2).
        let qoss: &[u8] = if q { &[1] } else { &[0, 1, 2] };
        for &qos in qoss {
            for c in &lat {
                let test = format!("instr-qos{qos}");
                if !test_on(&test) || (qos == 2 && (*c != "qmqtt" || opts.tests.is_none())) {
                    continue;
                }
                let a = run_one(&mut ctx, &test, c, qos, 64, n1, Mode::Callgrind, 1);
                let b = run_one(&mut ctx, &test, c, qos, 64, n2, Mode::Callgrind, 2);
                if a.error.is_none() && b.error.is_none() {
                    let per = (b.instr_total as f64 - a.instr_total as f64) / (n2 - n1) as f64;
                    eprintln!("  {test} {c:<14} {per:>10.0} instructions/msg");
                }
                samples.push(a);
                samples.push(b);
            }
        }
    } else {
        cg_note = "callgrind not run".into();
    }
    // The q layer's caller-thread cost, in the host harness with its own broker (it freezes it).
    let cost = if std::env::var_os("QMQTT_Q_COST").is_some_and(|v| !v.is_empty())
        && test_on("q-cost")
        && wanted("q")
    {
        eprintln!("  q caller-thread cost (tests/qhost/qbench_cost.py)...");
        let c = q_cost(q);
        match &c {
            Ok(rows) => {
                for r in rows {
                    eprintln!(
                        "  q-cost {:<22} median {:>8.1} ns  p99.9 {:>9.1} ns  max {:>10.1} ns  refused {}",
                        r.case, r.median_ns, r.p999_ns, r.max_ns, r.refused
                    );
                }
            }
            Err(e) => eprintln!("  q-cost: FAILED: {e}"),
        }
        Some(c)
    } else {
        None
    };
    let drops = ctx
        .broker
        .log()
        .lines()
        .filter(|l| l.contains("dropped") || l.contains("Outgoing messages"))
        .count();
    let env = environment(&ctx);
    let (json, md) = report(&samples, &env, opts, &cg_note, drops, &cost, t0.elapsed());
    for (path, text) in [(&opts.json, json), (&opts.md, md.clone())] {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("{md}");
    eprintln!(
        "bench: wrote {} and {} in {:.0} s",
        opts.json.display(),
        opts.md.display(),
        t0.elapsed().as_secs_f64()
    );
    let failed = samples
        .iter()
        .filter(|s| s.error.is_some() && !s.lost)
        .count();
    let failed = failed + matches!(cost, Some(Err(_))) as usize;
    if failed > 0 {
        return Err(format!("{failed} runs failed (see above and the results)"));
    }
    Ok(())
}

/// Versions and machine, as (key, value) in a stable order.
fn environment(ctx: &Ctx) -> Vec<(String, String)> {
    let first_line = |cmd: &str, args: &[&str], pat: &str| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| {
                let t = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
                t.lines()
                    .find(|l| l.contains(pat))
                    .map(|l| l.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into())
    };
    let mut env = vec![
        ("rustc".into(), first_line("rustc", &["--version"], "rustc")),
        (
            "mosquitto".into(),
            first_line("mosquitto", &["-h"], "version"),
        ),
        (
            "mosquitto_pub".into(),
            first_line("mosquitto_pub", &["--help"], "version"),
        ),
        (
            "valgrind".into(),
            first_line("valgrind", &["--version"], "valgrind"),
        ),
    ];
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .unwrap_or_default();
    for name in [
        "qmqtt",
        "paho-mqtt",
        "paho-mqtt-sys",
        "rumqttc",
        "tokio",
        "rustls",
        "ring",
        "mio",
    ] {
        let mut versions = Vec::new();
        let mut lines = lock.lines();
        while let Some(l) = lines.next() {
            if l == format!("name = \"{name}\"") {
                if let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = ")) {
                    versions.push(v.trim_matches('"').to_string());
                }
            }
        }
        env.push((
            format!("crate {name}"),
            if versions.is_empty() {
                "?".into()
            } else {
                versions.join(", ")
            },
        ));
    }
    env.push(("paho C".into(), "bundled by paho-mqtt-sys (OpenSSL)".into()));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    env.push((
        "nproc".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    ));
    env.push(("cpu".into(), model));
    // The machine may be shared: the load average says how much the numbers can be trusted.
    env.push((
        "loadavg at the end (1, 5, 15 min)".into(),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    ));
    env.push(("kernel".into(), first_line("uname", &["-sr"], "")));
    env.push((
        "qmqtt-cli".into(),
        ctx.qmqtt_bin
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "not run".into()),
    ));
    env
}

fn stats(v: &mut [f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[0], v[v.len() / 2], v[v.len() - 1]))
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

/// Per (test, contender): the metric over the successful repetitions.
type Table = BTreeMap<(String, String), Vec<f64>>;

fn collect(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Table {
    let mut t: Table = BTreeMap::new();
    for s in samples.iter().filter(|s| s.error.is_none()) {
        if let Some(v) = f(s) {
            t.entry((s.test.clone(), s.contender.clone()))
                .or_default()
                .push(v);
        }
    }
    t
}

fn fmt_val(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1_000.0 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Min / median / max of each throughput test, one column per contender.
fn range_table(md: &mut String, tput: &Table, contenders: &[&str]) {
    let _ = write!(md, "| test |");
    for c in contenders {
        let _ = write!(md, " {c} |");
    }
    let _ = write!(md, "\n|---|");
    for _ in contenders {
        let _ = write!(md, "---|");
    }
    let _ = writeln!(md);
    for test in ["qos0-64B", "qos1-64B", "qos0-1KiB", "qos1-1KiB"] {
        if !contenders
            .iter()
            .any(|c| tput.contains_key(&(test.into(), c.to_string())))
        {
            continue;
        }
        let _ = write!(md, "| {test} |");
        for c in contenders {
            match tput
                .get(&(test.to_string(), c.to_string()))
                .and_then(|v| stats(&mut v.clone()))
            {
                Some((a, b, m)) => {
                    let _ = write!(md, " {} / {} / {} |", fmt_val(a), fmt_val(b), fmt_val(m));
                }
                None => {
                    let _ = write!(md, " – |");
                }
            }
        }
        let _ = writeln!(md);
    }
}

fn report(
    samples: &[Sample],
    env: &[(String, String)],
    opts: &Opts,
    cg_note: &str,
    broker_drops: usize,
    cost: &Option<Result<Vec<CostRow>, String>>,
    elapsed: Duration,
) -> (String, String) {
    // The q layer's column is always shown: "–" when QMQTT_Q_BENCH is not set (no host harness). The MQTT 5
    // contenders have a table of their own.
    let ran = |c: &&str| samples.iter().any(|s| s.contender == *c);
    let contenders: Vec<&str> = contenders::ALL
        .iter()
        .copied()
        .filter(|c| contenders::v311_form(c).is_none() && (*c == "q" || ran(c)))
        .collect();
    let v5: Vec<&str> = contenders::V5.iter().map(|(c, _)| *c).filter(ran).collect();
    // Instructions per message from the callgrind pairs.
    let mut instr: Table = BTreeMap::new();
    for qos in [0u8, 1] {
        let test = format!("instr-qos{qos}");
        for c in &contenders {
            let runs: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.test == test && s.contender == *c && s.error.is_none())
                .collect();
            if let [a, b] = runs.as_slice() {
                let per = (b.instr_total as f64 - a.instr_total as f64)
                    / (b.count as f64 - a.count as f64);
                instr.insert((test.clone(), c.to_string()), vec![per]);
            }
        }
    }
    let tput = collect(samples, |s| {
        (s.test.starts_with("qos")).then_some(s.msgs_per_s)
    });
    let cpu = collect(samples, |s| {
        (s.test.starts_with("qos")).then_some(s.cpu_us as f64 / s.count as f64)
    });
    let peak = collect(samples, |s| {
        (s.test.starts_with("qos")).then_some(s.maxrss_kb as f64)
    });
    // Memory from the throughput tests (full speed) and the paced latency tests (a gateway's rates).
    let idle = collect(samples, |s| s.has_mem.then_some(s.idle_added_kb as f64));
    let load = collect(samples, |s| s.has_mem.then_some(s.load_added_kb as f64));
    let p50 = collect(samples, |s| {
        (s.test.starts_with("latency")).then_some(s.lat_p50_us)
    });
    let p99 = collect(samples, |s| {
        (s.test.starts_with("latency")).then_some(s.lat_p99_us)
    });
    let loss = collect(samples, |s| {
        (s.test.starts_with("qos") || s.test.starts_with("latency"))
            .then_some(s.count as f64 - s.received as f64)
    });

    let med = |t: &Table, test: &str, c: &str| -> Option<f64> {
        t.get(&(test.to_string(), c.to_string()))
            .and_then(|v| stats(&mut v.clone()))
            .map(|x| x.1)
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# qmqtt benchmark{}\n",
        if opts.quick {
            " (--quick: smoke test, numbers not meaningful)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "One mosquitto on 127.0.0.1, publishers over TLS, one independent QoS 0 subscriber over TCP; each \
         contender a separate process; {} repetition(s), median shown. Cells: value (× paho-mqtt, × raw \
         blast). Throughput: higher is better; CPU, memory and latency: lower is better.\n",
        opts.reps
    );
    let _ = write!(md, "| metric |");
    for c in &contenders {
        let _ = write!(md, " {c} |");
    }
    let _ = write!(md, "\n|---|");
    for _ in &contenders {
        let _ = write!(md, "---|");
    }
    let _ = writeln!(md);
    let row = |md: &mut String, label: &str, t: &Table, test: &str| {
        if !contenders.iter().any(|c| med(t, test, c).is_some()) {
            return;
        }
        let _ = write!(md, "| {label} |");
        let paho = med(t, test, "paho");
        let raw = med(t, test, "raw");
        for c in &contenders {
            match med(t, test, c) {
                Some(v) => {
                    let r = |base: Option<f64>| {
                        base.filter(|b| *b != 0.0)
                            .map(|b| format!("{:.2}×", v / b))
                            .unwrap_or_else(|| "–".into())
                    };
                    let _ = write!(md, " {} ({}, {}) |", fmt_val(v), r(paho), r(raw));
                }
                None => {
                    let _ = write!(md, " – |");
                }
            }
        }
        let _ = writeln!(md);
    };
    for (test, label) in [
        ("qos0-64B", "QoS 0, 64 B: msg/s"),
        ("qos1-64B", "QoS 1, 64 B: msg/s"),
        ("qos0-1KiB", "QoS 0, 1 KiB: msg/s"),
        ("qos1-1KiB", "QoS 1, 1 KiB: msg/s"),
    ] {
        row(&mut md, label, &tput, test);
    }
    for (test, label) in [
        ("qos0-64B", "CPU µs/msg, QoS 0 64 B (rusage)"),
        ("qos1-64B", "CPU µs/msg, QoS 1 64 B (rusage)"),
    ] {
        row(&mut md, label, &cpu, test);
    }
    row(
        &mut md,
        "instructions/msg, QoS 0 64 B",
        &instr,
        "instr-qos0",
    );
    row(
        &mut md,
        "instructions/msg, QoS 1 64 B",
        &instr,
        "instr-qos1",
    );
    row(
        &mut md,
        "RSS added by idle connection, KiB",
        &idle,
        "qos1-64B",
    );
    row(
        &mut md,
        "RSS added at 1k msg/s (QoS 1 64 B), KiB",
        &load,
        "latency1k-qos1",
    );
    row(
        &mut md,
        "RSS added at full speed (QoS 1 64 B), KiB",
        &load,
        "qos1-64B",
    );
    row(
        &mut md,
        "RSS added at full speed (QoS 0 64 B), KiB",
        &load,
        "qos0-64B",
    );
    row(
        &mut md,
        "peak RSS of process (QoS 0 64 B), KiB",
        &peak,
        "qos0-64B",
    );
    row(
        &mut md,
        "peak RSS of process (QoS 1 1 KiB), KiB",
        &peak,
        "qos1-1KiB",
    );
    row(
        &mut md,
        "latency p50 µs, QoS 0 @10k/s",
        &p50,
        "latency-qos0",
    );
    row(
        &mut md,
        "latency p99 µs, QoS 0 @10k/s",
        &p99,
        "latency-qos0",
    );
    row(
        &mut md,
        "latency p50 µs, QoS 1 @10k/s",
        &p50,
        "latency-qos1",
    );
    row(
        &mut md,
        "latency p99 µs, QoS 1 @10k/s",
        &p99,
        "latency-qos1",
    );
    row(
        &mut md,
        "latency p50 µs, QoS 1 @1k/s",
        &p50,
        "latency1k-qos1",
    );
    row(
        &mut md,
        "latency p99 µs, QoS 1 @1k/s",
        &p99,
        "latency1k-qos1",
    );

    let _ = writeln!(md, "\n## Throughput, min / median / max msg/s\n");
    range_table(&mut md, &tput, &contenders);
    if !v5.is_empty() {
        let _ = writeln!(
            md,
            "\n## MQTT 5\n\nThe same tests over MQTT 5 on the same broker. Cells: value (× paho-v5, × the MQTT \
             3.1.1 form of the same client in this run). qmqtt-v5 uses topic aliases (its default: the alias \
             replaces the topic after the first message); the others send the topic every time.\n"
        );
        let _ = write!(md, "| metric |");
        for c in &v5 {
            let _ = write!(md, " {c} |");
        }
        let _ = write!(md, "\n|---|");
        for _ in &v5 {
            let _ = write!(md, "---|");
        }
        let _ = writeln!(md);
        for (t, test, label) in [
            (&tput, "qos0-64B", "QoS 0, 64 B: msg/s"),
            (&tput, "qos1-64B", "QoS 1, 64 B: msg/s"),
            (&tput, "qos0-1KiB", "QoS 0, 1 KiB: msg/s"),
            (&tput, "qos1-1KiB", "QoS 1, 1 KiB: msg/s"),
            (&cpu, "qos0-64B", "CPU µs/msg, QoS 0 64 B (rusage)"),
            (&cpu, "qos1-64B", "CPU µs/msg, QoS 1 64 B (rusage)"),
            (&peak, "qos1-1KiB", "peak RSS of process (QoS 1 1 KiB), KiB"),
        ] {
            if !v5.iter().any(|c| med(t, test, c).is_some()) {
                continue;
            }
            let _ = write!(md, "| {label} |");
            for c in &v5 {
                let Some(v) = med(t, test, c) else {
                    let _ = write!(md, " – |");
                    continue;
                };
                let r = |base: Option<&str>| {
                    base.and_then(|b| med(t, test, b))
                        .filter(|b| *b != 0.0)
                        .map(|b| format!("{:.2}×", v / b))
                        .unwrap_or_else(|| "–".into())
                };
                let _ = write!(
                    md,
                    " {} ({}, {}) |",
                    fmt_val(v),
                    r(Some("paho-v5")),
                    r(contenders::v311_form(c))
                );
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md, "\nMQTT 5 throughput, min / median / max msg/s:\n");
        range_table(&mut md, &tput, &v5);
    }
    let _ = writeln!(
        md,
        "\n## qmqtt's I/O, from `Client::stats` (median over repetitions)\n\n\
         | test | contender | socket writes / 1000 msg | I/O-thread wake-ups / 1000 msg | bytes per socket write \
         | bytes written / msg | topic aliased / msg |\n\
         |---|---|---|---|---|---|---|"
    );
    for test in ["qos0-64B", "qos1-64B", "qos0-1KiB", "qos1-1KiB"] {
        for c in ["qmqtt", "qmqtt-lean", "qmqtt-v5", "qmqtt-v5-noalias"] {
            let per = |f: &dyn Fn(&Sample) -> f64| {
                let mut v: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.test == test && s.contender == c && s.error.is_none())
                    .filter(|s| s.writes > 0)
                    .map(f)
                    .collect();
                stats(&mut v).map(|x| x.1)
            };
            let w = per(&|s| s.writes as f64 * 1000.0 / s.count as f64);
            let k = per(&|s| s.wakeups as f64 * 1000.0 / s.count as f64);
            let b = per(&|s| s.bytes_out as f64 / s.writes as f64);
            let m = per(&|s| s.bytes_out as f64 / s.count as f64);
            let a = per(&|s| s.aliased as f64 / s.count as f64);
            if let (Some(w), Some(k), Some(b), Some(m), Some(a)) = (w, k, b, m, a) {
                let _ = writeln!(
                    md,
                    "| {test} | {c} | {w:.1} | {k:.1} | {b:.0} | {m:.1} | {a:.3} |"
                );
            }
        }
    }
    let lost: Vec<String> = loss
        .iter()
        .filter(|(_, v)| v.iter().any(|x| *x > 0.0))
        .map(|((t, c), v)| format!("{t} {c}: {v:?}"))
        .collect();
    let _ = writeln!(
        md,
        "\nMessages not received by the subscriber: {}. Broker log lines about dropping: {broker_drops}.",
        if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join("; ")
        }
    );
    match cost {
        Some(Ok(rows)) => {
            let _ = writeln!(
                md,
                "\n## q layer: caller-thread cost (host harness, QoS 1, 64 B payload, TLS, default queue)\n\n\
                 What q's main thread pays, timed in C around each call to the exported function \
                 (tests/qhost/qbench_cost.py). `pub`/`pubbatch`: ns per message; broker frozen (SIGSTOP, the \
                 queue not full): ns per call.\n\n\
                 | call | calls | median ns | p99.9 ns | max ns | mean ns | refused | preempted / blocked / steal ms |\n\
                 |---|---|---|---|---|---|---|---|"
            );
            for r in rows {
                let label = format!(
                    "{}{}, per {}",
                    if r.per > 1 {
                        format!("`.mqtt.pubbatch` ({} messages per call)", r.per)
                    } else {
                        "`.mqtt.pubx`".to_string()
                    },
                    if r.case.starts_with("frozen") {
                        ", broker frozen"
                    } else {
                        ""
                    },
                    if r.unit == "call" { "call" } else { "message" }
                );
                let _ = writeln!(
                    md,
                    "| {label} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} / {} / {} |",
                    r.calls,
                    r.median_ns,
                    r.p999_ns,
                    r.max_ns,
                    r.mean_ns,
                    r.refused,
                    r.preempted,
                    r.blocked,
                    r.steal_ms
                );
            }
            let _ = writeln!(
                md,
                "\npreempted / blocked: involuntary / voluntary context switches of the calling thread during \
                 the timed calls (another process took the CPU / the call waited, e.g. on a lock); steal: CPU \
                 time the hypervisor took from this VM. On a shared machine a preemption is what a \
                 millisecond outlier is."
            );
            for f in rows.iter().filter(|r| r.case.starts_with("frozen")) {
                let rounds: Vec<String> = f
                    .round_max_ns
                    .iter()
                    .zip(f.round_preempted.iter().chain(std::iter::repeat(&0)))
                    .map(|(m, p)| format!("{:.1} µs ({p} preempted)", m / 1e3))
                    .collect();
                let clean = f
                    .round_max_ns
                    .iter()
                    .zip(&f.round_preempted)
                    .filter(|(_, p)| **p == 0)
                    .map(|(m, _)| *m)
                    .fold(None, |a: Option<f64>, m| Some(a.map_or(m, |a| a.max(m))));
                let _ = writeln!(
                    md,
                    "\nLongest single call, {}, broker frozen, per round: {}; longest in rounds without a \
                     preemption: {}.",
                    if f.per > 1 {
                        format!("`.mqtt.pubbatch` of {}", f.per)
                    } else {
                        "`.mqtt.pubx`".to_string()
                    },
                    rounds.join(", "),
                    clean
                        .map(|m| format!("{:.1} µs", m / 1e3))
                        .unwrap_or_else(|| "– (every round was preempted)".into())
                );
            }
        }
        Some(Err(e)) => {
            let _ = writeln!(md, "\n## q layer: caller-thread cost\n\nFAILED: {e}");
        }
        None => {}
    }
    let failed: Vec<String> = samples
        .iter()
        .filter_map(|s| {
            s.error
                .as_ref()
                .map(|e| format!("{} {} rep {}: {e}", s.test, s.contender, s.rep))
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\nFailed runs (or runs that lost messages):\n");
        for f in &failed {
            let _ = writeln!(md, "- {f}");
        }
    }
    let _ = writeln!(
        md,
        "\nNotes: qmqtt = `qmqtt::Client`, one `publish` call per message, default config (4 MiB publish \
         queue); qmqtt-lean = the same with a 256 KiB publish queue and a 64 KiB event queue; qmqtt-cli = `qmqtt pub --repeat N \
         --size S` (time includes process start and TLS handshake); paho = paho-mqtt async client, max \
         in-flight 100, tokens awaited with at most 10 000 outstanding; rumqttc = AsyncClient + EventLoop on \
         a current-thread tokio runtime, in-flight 100; mosquitto_pub = `-l -M 100` fed by a pipe; raw = \
         pre-encoded PUBLISH packets written over one rustls (ring) connection, up to 64 KiB per write (16 KiB records), QoS 1 with \
         a window of 100. Instructions: {cg_note}. q = the q layer (cdylib, feature q) in the libe host harness \
         (tests/qhost/qbench: `.mqtt.conn` with trustStore, one `.mqtt.pubx` per message from a C loop, q's event loop \
         running the msgsent callbacks, 'queue full' answered by a return to the event loop; time from the first \
         publish, CPU and peak RSS of the whole process); q-batch = the same with `.mqtt.pubbatch` of 100 \
         messages, at most half the publish queue outstanding; the commands come from QMQTT_Q_BENCH / \
         QMQTT_Q_BATCH_BENCH (set by benches/run; \"–\" when the harness could not be built). \
         MQTT 5: qmqtt-v5 = qmqtt over MQTT 5 (topic aliases on, as by default), qmqtt-v5-noalias = the same \
         with `topic_aliases` 0; qmqtt-cli-v5 = `qmqtt pub -V mqttv5`; paho-v5 = paho created and connected \
         with MQTT_VERSION_5; rumqttc-v5 = `rumqttc::v5`, in-flight at most 100; mosquitto_pub-v5 = \
         `-V mqttv5`; each otherwise as its MQTT 3.1.1 form. Total bench time {:.0} s.\n",
        elapsed.as_secs_f64()
    );
    let _ = writeln!(md, "## Environment\n");
    for (k, v) in env {
        let _ = writeln!(md, "- {k}: {v}");
    }

    // JSON: every sample with absolute numbers, the environment, the derived instructions/msg.
    let mut j = String::from("{\n  \"environment\": {");
    for (i, (k, v)) in env.iter().enumerate() {
        let _ = write!(
            j,
            "{}\n    {}: {}",
            if i > 0 { "," } else { "" },
            json_str(k),
            json_str(v)
        );
    }
    let _ = write!(
        j,
        "\n  }},\n  \"quick\": {},\n  \"repetitions\": {},\n  \"broker_drop_log_lines\": {broker_drops},\n  \"instructions_per_msg\": {{",
        opts.quick, opts.reps
    );
    for (i, ((t, c), v)) in instr.iter().enumerate() {
        let _ = write!(
            j,
            "{}\n    {}: {}",
            if i > 0 { "," } else { "" },
            json_str(&format!("{t}/{c}")),
            num(v[0])
        );
    }
    let _ = write!(j, "\n  }},\n  \"q_caller_cost\": ");
    match cost {
        Some(Ok(rows)) => {
            j.push('[');
            for (i, r) in rows.iter().enumerate() {
                let _ = write!(
                    j,
                    "{}\n    {{\"case\": {}, \"calls\": {}, \"msgs_per_call\": {}, \"median_ns\": {}, \
                     \"p999_ns\": {}, \"max_ns\": {}, \"mean_ns\": {}, \"unit\": {}, \"refused\": {}, \"preempted\": {}, \"blocked\": {}, \
                     \"steal_ms\": {}, \"io_wakeups\": {}, \"round_max_ns\": [{}], \"round_preempted\": {:?}}}",
                    if i > 0 { "," } else { "" },
                    json_str(&r.case),
                    r.calls,
                    r.per,
                    num(r.median_ns),
                    num(r.p999_ns),
                    num(r.max_ns),
                    num(r.mean_ns),
                    json_str(&r.unit),
                    r.refused,
                    r.preempted,
                    r.blocked,
                    r.steal_ms,
                    r.io_wakeups,
                    r.round_max_ns
                        .iter()
                        .map(|x| num(*x))
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.round_preempted
                );
            }
            j.push_str("\n  ]");
        }
        Some(Err(e)) => {
            let _ = write!(j, "{{\"error\": {}}}", json_str(e));
        }
        None => j.push_str("null"),
    }
    let _ = write!(j, ",\n  \"samples\": [");
    for (i, s) in samples.iter().enumerate() {
        let _ = write!(
            j,
            "{}\n    {{\"test\": {}, \"contender\": {}, \"qos\": {}, \"size\": {}, \"count\": {}, \"rep\": {}, \
             \"received\": {}, \"seconds\": {}, \"msgs_per_s\": {}, \"cpu_us\": {}, \"maxrss_kb\": {}, \
             \"idle_added_kb\": {}, \"load_added_kb\": {}, \"lat_p50_us\": {}, \"lat_p99_us\": {}, \
             \"lat_max_us\": {}, \"instr_total\": {}, \"socket_writes\": {}, \"wakeups\": {}, \
             \"bytes_out\": {}, \"topic_aliased\": {}, \"lost\": {}, \"error\": {}}}",
            if i > 0 { "," } else { "" },
            json_str(&s.test),
            json_str(&s.contender),
            s.qos,
            s.size,
            s.count,
            s.rep,
            s.received,
            num(s.seconds),
            num(s.msgs_per_s),
            s.cpu_us,
            s.maxrss_kb,
            s.idle_added_kb,
            s.load_added_kb,
            num(s.lat_p50_us),
            num(s.lat_p99_us),
            num(s.lat_max_us),
            s.instr_total,
            s.writes,
            s.wakeups,
            s.bytes_out,
            s.aliased,
            s.lost,
            s.error
                .as_deref()
                .map(json_str)
                .unwrap_or_else(|| "null".into())
        );
    }
    j.push_str("\n  ]\n}\n");
    (j, md)
}
