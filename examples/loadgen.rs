//! Load benchmark: how many notifications per second notirouter accepts on one core, at what
//! latency, memory and fsync rate, next to a bare actix-web handler that stores nothing.
//!
//! Run it (Linux only; it needs `taskset` from util-linux and at least two cores):
//!
//! ```text
//! cargo build --release
//! cargo run --release --example loadgen -- --duration 10s
//! ```
//!
//! What is measured, per target and per connection count C (`--connections 32,128`):
//!
//! - The server (`target/release/notirouter serve` on a fresh store in a temp dir, or this
//!   program's hidden `--serve-bare` mode) runs pinned to `--server-cpu` (core 0); the load
//!   generator re-executes itself pinned to `--load-cpu` (core 1), so neither steals the other's
//!   core. Both servers get one actix worker: notirouter because actix sizes its pool from the
//!   cores it may use, the bare one by `.workers(1)`.
//! - C keep-alive HTTP/1.1 connections in a closed loop, each POSTing distinct
//!   `swUpgradeResultNotify` bodies (10 % FAIL) to `/v1.0.0/messageReceiver`. Nothing repeats,
//!   so no request is a duplicate. After `--warmup`, a window of `--duration` is measured.
//! - accepted/s: responses completed inside the window that are `200` with
//!   `"status":"accepted"`; every other outcome is counted and printed apart.
//! - Latency: from just before the request is written until its whole response is read, for
//!   every request answered inside the window, whatever the answer (a slow 503 counts too).
//! - Peak RSS: `VmHWM` of the server, reset (via `/proc/PID/clear_refs`) before each phase.
//! - Group commits: the delta of `notirouter_store_commit_duration_seconds_count` from
//!   `/metrics` across the window; with `synchronous = FULL` each commit fsyncs the WAL once.
//!   The mean batch is the delta of `notirouter_store_commit_batch_events_sum / _count`; the
//!   writer's busy share is the delta of `..._commit_duration_seconds_sum` over the window.
//! - CPU: user + system time of the server and of the load generator across the window, to
//!   show which side saturates its core, and each core's total busy time from `/proc/stat`, to
//!   flag phases where other processes competed for the benchmark cores.
//!
//! The client is a minimal HTTP/1.1 client on a current-thread tokio runtime so that one core
//! of load generation can outrun one core of server.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};

/// Set in the re-executed, pinned load generator so that it does not re-execute again.
const PINNED_ENV: &str = "LOADGEN_PINNED";
const RECEIVER_PATH: &str = "/v1.0.0/messageReceiver";
/// The line both servers print on stderr once bound; the address follows it.
const LISTENING: &str = "listening addr=";
/// Longest wait for a server to print its address and then answer `/readyz` with 200.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The platform's own limit for an answer; it also bounds how long a phase can overrun.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause after a failed connect or exchange, so a dead server does not turn a phase into a spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Kernel clock ticks per second in `/proc/PID/stat`; USER_HZ is 100 on every Linux ABI in use.
const USER_HZ: f64 = 100.0;
/// A load generator busier than this (share of its core) may be what limits the rate.
const CLIENT_BOUND: f64 = 0.9;
/// Share of a benchmark core that other processes may use before the figures are suspect.
const CONTENDED: f64 = 0.1;
/// Thread name (truncated to 15 bytes by the kernel) of each actix worker.
const ACTIX_WORKER_COMM: &str = "actix-rt|system";
/// Connection count that the issue's bar applies to, and the bar itself.
const BAR_CONNECTIONS: usize = 128;
const BAR_ACCEPTS: f64 = 15_000.0;
const BAR_P99_MS: f64 = 20.0;
const BAR_RSS_MB: f64 = 50.0;
const BAR_RATIO: f64 = 0.5;

/// Distinguishes every body sent in a run, so that none is a duplicate of another.
static NEXT_NOTIFICATION: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Parser)]
#[command(about = "Load benchmark of notirouter against a bare actix-web handler")]
struct Args {
    /// The notirouter release binary.
    #[arg(long, default_value = "target/release/notirouter")]
    bin: PathBuf,
    /// The core both servers are pinned to.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// The core the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// Concurrent keep-alive connections, one phase each.
    #[arg(long, value_delimiter = ',', default_value = "32,128")]
    connections: Vec<usize>,
    /// Load before the measured window of each phase.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The measured window of each phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Internal: run the bare baseline server on this address.
    #[arg(long, hide = true)]
    serve_bare: Option<SocketAddr>,
}

fn main() -> ExitCode {
    match run_mode(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_mode(args: Args) -> anyhow::Result<()> {
    if let Some(address) = args.serve_bare {
        return serve_bare(address);
    }
    if std::env::var_os(PINNED_ENV).is_none() {
        return Err(reexec_pinned(args.load_cpu));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// Replaces this process with itself under `taskset`; returns only on failure.
fn reexec_pinned(cpu: usize) -> anyhow::Error {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => return anyhow::Error::new(error).context("cannot find this executable"),
    };
    let error = Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(PINNED_ENV, "1")
        .exec();
    taskset_error(error)
}

fn taskset_error(error: std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("taskset not found on PATH; install util-linux")
    } else {
        anyhow::Error::new(error).context("cannot run taskset")
    }
}

// ---------------------------------------------------------------------------------------------
// The bare baseline server.

fn serve_bare(address: SocketAddr) -> anyhow::Result<()> {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let listener = std::net::TcpListener::bind(address)?;
    // The same line notirouter logs, so that one startup routine serves both targets.
    eprintln!("INFO loadgen: {LISTENING}{}", listener.local_addr()?);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            App::new()
                .route(RECEIVER_PATH, web::post().to(bare_accept))
                .route(
                    "/readyz",
                    web::get().to(|| async { HttpResponse::Ok().finish() }),
                )
        })
        // notirouter gets one worker from actix's default on one core; say it outright here.
        .workers(1)
        .listen(listener)?
        .run()
        .await
    })?;
    Ok(())
}

/// Reads the whole body (the extractor does) and accepts it without looking at it.
async fn bare_accept(_body: actix_web::web::Bytes) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(serde_json::json!({"status": "accepted", "id": "x"}))
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.bin.is_file() {
        bail!(
            "notirouter binary not found at {}; run cargo build --release first",
            args.bin.display()
        );
    }
    print_preamble(&args);
    let notirouter = {
        let store = tempfile::tempdir().context("cannot create a temp dir")?;
        let mut server = start_notirouter(&args, store.path()).await?;
        let reports = run_phases(&mut server, &args).await?;
        drop(server);
        store.close().context("cannot remove the temp dir")?;
        reports
    };
    let bare = {
        let mut server = start_bare(&args).await?;
        run_phases(&mut server, &args).await?
    };
    print_summary(&notirouter, &bare);
    Ok(())
}

fn print_preamble(args: &Args) {
    println!(
        "loadgen: servers on core {}, load generator on CPUs {} (pid {}); warm-up {:?}, measured {:?} per phase",
        args.server_cpu,
        status_field(std::process::id(), "Cpus_allowed_list").unwrap_or_default(),
        std::process::id(),
        args.warmup,
        args.duration
    );
    if cfg!(debug_assertions) {
        println!(
            "warning: loadgen is a debug build; the client may be the bottleneck (use --release)"
        );
    }
}

async fn start_notirouter(args: &Args, dir: &Path) -> anyhow::Result<Server> {
    let config_path = dir.join("config.toml");
    let config = serde_json::json!({
        "server": { "listen": "127.0.0.1:0" },
        "store": { "path": dir.join("bench.db") },
    });
    std::fs::write(&config_path, toml::to_string(&config)?)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let mut command = pinned(args.server_cpu, &args.bin);
    command
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        // The listening line is logged at INFO.
        .env("RUST_LOG", "info");
    // An override in the caller's environment would change the config under test.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NOTIROUTER") {
            command.env_remove(name);
        }
    }
    Server::start("notirouter", command, true).await
}

async fn start_bare(args: &Args) -> anyhow::Result<Server> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut command = pinned(args.server_cpu, &exe);
    command.arg("--serve-bare").arg("127.0.0.1:0");
    Server::start("bare", command, false).await
}

fn pinned(cpu: usize, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpu.to_string()).arg(program);
    command
}

async fn run_phases(server: &mut Server, args: &Args) -> anyhow::Result<Vec<PhaseReport>> {
    let mut reports = Vec::new();
    for &connections in &args.connections {
        let report = run_phase(server, connections, args).await?;
        report.print(server);
        reports.push(report);
    }
    Ok(reports)
}

// ---------------------------------------------------------------------------------------------
// A server child process.

struct Server {
    /// First, so that the server stops before its stderr reader does.
    _child: ChildGuard,
    name: &'static str,
    address: SocketAddr,
    pid: u32,
    has_metrics: bool,
    /// Every stderr line of the server; drained after each phase for warnings.
    logs: mpsc::UnboundedReceiver<String>,
}

impl Server {
    /// Spawns `command`, waits for its listening line and for `/readyz` to answer 200.
    async fn start(
        name: &'static str,
        mut command: Command,
        has_metrics: bool,
    ) -> anyhow::Result<Server> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(taskset_error)?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let guard = ChildGuard(child);
        let mut logs = forward_lines(stderr);
        let address = wait_listening(name, &mut logs).await?;
        wait_ready(name, address).await?;
        let pid = guard.0.id();
        println!(
            "\n{name}: pid {pid}, listening on {address}, CPUs {}, actix worker threads {}",
            status_field(pid, "Cpus_allowed_list").unwrap_or_default(),
            actix_workers(pid)
        );
        Ok(Server {
            _child: guard,
            name,
            address,
            pid,
            has_metrics,
            logs,
        })
    }

    /// The WARN and ERROR lines logged since the last call.
    fn problems_logged(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.logs.try_recv().ok())
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .collect()
    }
}

/// Stops the child when dropped, on success and error paths alike.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("loadgen: pid {pid} ignored SIGTERM for {STOP_GRACE:?}; sending SIGKILL");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stderr on a thread, so that the pipe never fills and blocks the server.
fn forward_lines(stderr: std::process::ChildStderr) -> mpsc::UnboundedReceiver<String> {
    let (lines, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

async fn wait_listening(
    name: &str,
    logs: &mut mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        match timeout_at(deadline, logs.recv()).await {
            Ok(Some(line)) => {
                if let Some(address) = listening_address(&line) {
                    return Ok(address);
                }
                seen.push(line);
            }
            Ok(None) => bail!("{name} exited before listening:\n{}", seen.join("\n")),
            Err(_) => bail!(
                "{name} did not log `{LISTENING}` within {STARTUP_TIMEOUT:?}:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(LISTENING)?;
    rest.split_whitespace().next()?.parse().ok()
}

async fn wait_ready(name: &str, address: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(response) = get(address, "/readyz").await
            && response.status == 200
        {
            return Ok(());
        }
        sleep(Duration::from_millis(100)).await;
    }
    bail!("{name} did not answer GET /readyz with 200 within {STARTUP_TIMEOUT:?}")
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// A field of `/proc/PID/status`, e.g. `VmHWM` or `Cpus_allowed_list`.
fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_owned())
    })
}

/// A `/proc/PID/status` memory field (in KiB there) in MB of 10^6 bytes, the bar's unit.
fn memory_mb(pid: u32, field: &str) -> Option<f64> {
    let value = status_field(pid, field)?;
    let kib: f64 = value.strip_suffix(" kB")?.trim().parse().ok()?;
    Some(kib * 1024.0 / 1e6)
}

/// Resets `VmHWM` to the current RSS, so that each phase reports its own peak.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User + system CPU seconds of the whole process (all threads).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3; utime and stime are 14, 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

/// Seconds core `cpu` was busy (any process, interrupts, or another VM), from `/proc/stat`.
fn core_busy_seconds(cpu: usize) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let prefix = format!("cpu{cpu} ");
    let line = stat.lines().find(|line| line.starts_with(&prefix))?;
    let ticks: Vec<u64> = line[prefix.len()..]
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // Fields: user nice system idle iowait irq softirq steal (guest time is within user).
    // Interrupt time counts as busy: with tick accounting (no IRQ_TIME_ACCOUNTING, the usual
    // build) the kernel also charges it to the interrupted task, so process times include it.
    let busy = ticks.get(..8)?.iter().sum::<u64>() - ticks[3] - ticks[4];
    Some(busy as f64 / USER_HZ)
}

fn actix_workers(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == ACTIX_WORKER_COMM)
        .count()
}

// ---------------------------------------------------------------------------------------------
// One phase: C connections, warm-up, measured window.

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        self.start <= at && at <= self.end
    }
}

async fn run_phase(
    server: &mut Server,
    connections: usize,
    args: &Args,
) -> anyhow::Result<PhaseReport> {
    let peak_reset = reset_peak_rss(server.pid);
    server.problems_logged();
    let start = Instant::now() + args.warmup;
    let window = Window {
        start,
        end: start + args.duration,
    };
    let watch = Watch {
        address: server.address,
        pid: server.pid,
        has_metrics: server.has_metrics,
        server_cpu: args.server_cpu,
        load_cpu: args.load_cpu,
    };
    let drivers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(drive(server.address, window)))
        .collect();
    let samples = tokio::spawn(sample_window(watch, window));
    let mut stats = Stats::default();
    for driver in drivers {
        stats.merge(driver.await?);
    }
    let (before, after) = samples.await?;
    Ok(PhaseReport {
        connections,
        window: args.duration,
        stats,
        peak_rss_mb: memory_mb(server.pid, "VmHWM"),
        peak_reset,
        rss_mb: memory_mb(server.pid, "VmRSS"),
        usage: Usage::between(&before, &after),
        problems: server.problems_logged(),
    })
}

/// One connection's closed loop: send, wait for the answer, send the next, until the window ends.
async fn drive(address: SocketAddr, window: Window) -> Stats {
    let mut stats = Stats::default();
    let mut connection = None;
    while Instant::now() < window.end {
        let mut open = match connection.take() {
            Some(open) => open,
            None => match Connection::open(address).await {
                Ok(open) => open,
                Err(error) => {
                    stats.error(window, Instant::now(), format!("connect: {}", error.kind()));
                    sleep(ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let request = post_request(address, &notification_body());
        let started = Instant::now();
        let result = timeout(REQUEST_TIMEOUT, open.exchange(&request)).await;
        let finished = Instant::now();
        match result {
            Ok(Ok(response)) => {
                stats.answered(window, finished, finished - started, &response);
                if !response.close {
                    connection = Some(open);
                }
            }
            Ok(Err(error)) => stats.error(window, finished, format!("i/o: {}", error.kind())),
            Err(_) => stats.error(
                window,
                finished,
                format!("no answer in {REQUEST_TIMEOUT:?}"),
            ),
        }
    }
    stats
}

/// A realistic `swUpgradeResultNotify` with every mandatory field; one in ten is a FAIL.
fn notification_body() -> String {
    let n = NEXT_NOTIFICATION.fetch_add(1, Ordering::Relaxed);
    let (result, error_code, description) = if n.is_multiple_of(10) {
        ("FAIL", "7", "package verification failed")
    } else {
        ("SUCCESS", "0", "")
    };
    serde_json::json!({
        "notifyType": "swUpgradeResultNotify",
        "deviceId": format!("9e620731-9a8b-42b7-{:04x}-{:012x}", n >> 48, n & 0xffff_ffff_ffff),
        "appId": "O8syWKWBEMGUO7j0mqOskvH6x2Ea",
        "operationId": "5c9b1f2e0a1b2c3d4e5f6a7b",
        "subOperationId": format!("5c9b1f2e{n:016x}"),
        "curVersion": if result == "FAIL" { "1.3" } else { "1.5" },
        "targetVersion": "1.5",
        "sourceVersion": "1.3",
        "swUpgradeResult": result,
        "upgradeTime": "120",
        "resultDesc": if result == "FAIL" { "upgrade failed" } else { "upgrade succeeded" },
        "errorCode": error_code,
        "description": description,
    })
    .to_string()
}

fn post_request(address: SocketAddr, body: &str) -> Vec<u8> {
    format!(
        "POST {RECEIVER_PATH} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What to sample: the server's counters and both sides' CPU.
#[derive(Clone, Copy)]
struct Watch {
    address: SocketAddr,
    pid: u32,
    has_metrics: bool,
    server_cpu: usize,
    load_cpu: usize,
}

/// What each side had used at one instant, for rates across the window.
struct Sample {
    at: Instant,
    commits: Option<Commits>,
    server_cpu: Option<f64>,
    load_cpu: Option<f64>,
    /// Busy seconds of the two cores, whoever used them.
    server_core: Option<f64>,
    load_core: Option<f64>,
}

struct Commits {
    count: f64,
    /// Seconds spent in commits, by the one writer thread.
    seconds: f64,
    batch_sum: f64,
    batch_count: f64,
}

async fn sample_window(watch: Watch, window: Window) -> (Sample, Sample) {
    sleep_until(window.start).await;
    let before = sample(watch).await;
    sleep_until(window.end).await;
    let after = sample(watch).await;
    (before, after)
}

async fn sample(watch: Watch) -> Sample {
    let asked = Instant::now();
    let commits = if watch.has_metrics {
        scrape_commits(watch.address).await
    } else {
        None
    };
    // The scrape takes a moment under load; its midpoint is when the counters were read.
    let at = asked + (Instant::now() - asked) / 2;
    Sample {
        at,
        commits,
        server_cpu: cpu_seconds(watch.pid),
        load_cpu: cpu_seconds(std::process::id()),
        server_core: core_busy_seconds(watch.server_cpu),
        load_core: core_busy_seconds(watch.load_cpu),
    }
}

async fn scrape_commits(address: SocketAddr) -> Option<Commits> {
    let response = match get(address, "/metrics").await {
        Ok(response) if response.status == 200 => response,
        Ok(response) => {
            eprintln!("loadgen: GET /metrics answered {}", response.status);
            return None;
        }
        Err(error) => {
            eprintln!("loadgen: GET /metrics failed: {error}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&response.body);
    Some(Commits {
        count: metric(&text, "notirouter_store_commit_duration_seconds_count")?,
        seconds: metric(&text, "notirouter_store_commit_duration_seconds_sum")?,
        batch_sum: metric(&text, "notirouter_store_commit_batch_events_sum")?,
        batch_count: metric(&text, "notirouter_store_commit_batch_events_count")?,
    })
}

/// The value of an unlabelled sample in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------
// The minimal HTTP/1.1 client.

struct Response {
    status: u16,
    body: Vec<u8>,
    /// The server will close the connection after this response.
    close: bool,
}

struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buffer: Vec<u8>,
}

/// A response head larger than this is not one of our servers'.
const MAX_HEAD: usize = 16 * 1024;

impl Connection {
    async fn open(address: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(address).await?;
        // Each request is one small write; do not let Nagle hold it back.
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.stream.write_all(request).await?;
        let head_len = self.read_head().await?;
        let (status, body_len, close) = parse_head(&self.buffer[..head_len])?;
        while self.buffer.len() < head_len + body_len {
            self.fill().await?;
        }
        let body = self.buffer[head_len..head_len + body_len].to_vec();
        self.buffer.drain(..head_len + body_len);
        Ok(Response {
            status,
            body,
            close,
        })
    }

    /// Reads until the buffer holds a whole head; returns its length with the blank line.
    async fn read_head(&mut self) -> std::io::Result<usize> {
        loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(at + 4);
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        self.buffer.reserve(4096);
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// Status, Content-Length and whether the server closes. Both servers always send a
/// Content-Length; a chunked answer is refused as malformed rather than misread.
fn parse_head(head: &[u8]) -> std::io::Result<(u16, usize, bool)> {
    let head = std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("malformed status line"))?;
    let mut body_len = None;
    let mut close = false;
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body_len = body_len.ok_or_else(|| invalid("no Content-Length"))?;
    Ok((status, body_len, close))
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned())
}

/// One GET on a fresh connection, for probes and metrics.
async fn get(address: SocketAddr, path: &str) -> std::io::Result<Response> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let exchange = async {
        let mut connection = Connection::open(address).await?;
        connection.exchange(request.as_bytes()).await
    };
    timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

// ---------------------------------------------------------------------------------------------
// Counting and reporting.

#[derive(Default)]
struct Stats {
    accepted: u64,
    duplicates: u64,
    /// 200 whose body is not `"status":"accepted"` or `"duplicate"`.
    other_200: u64,
    non_200: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    /// Of every answered request, whatever the answer.
    latencies: Vec<Duration>,
}

#[derive(serde::Deserialize)]
struct Answer {
    status: String,
}

impl Stats {
    fn answered(&mut self, window: Window, at: Instant, latency: Duration, response: &Response) {
        if !window.contains(at) {
            return;
        }
        self.latencies.push(latency);
        if response.status != 200 {
            *self.non_200.entry(response.status).or_default() += 1;
            return;
        }
        match serde_json::from_slice::<Answer>(&response.body) {
            Ok(answer) if answer.status == "accepted" => self.accepted += 1,
            Ok(answer) if answer.status == "duplicate" => self.duplicates += 1,
            _ => self.other_200 += 1,
        }
    }

    fn error(&mut self, window: Window, at: Instant, kind: String) {
        if window.contains(at) {
            *self.errors.entry(kind).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Stats) {
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.other_200 += other.other_200;
        for (status, count) in other.non_200 {
            *self.non_200.entry(status).or_default() += count;
        }
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.latencies.extend(other.latencies);
    }
}

/// Rates across the measured window, from two samples.
struct Usage {
    commits: Option<CommitRates>,
    server_cpu: Option<f64>,
    load_cpu: Option<f64>,
    server_core: Option<f64>,
    load_core: Option<f64>,
}

impl Usage {
    fn between(before: &Sample, after: &Sample) -> Usage {
        let seconds = (after.at - before.at).as_secs_f64();
        let share = |b: Option<f64>, a: Option<f64>| Some((a? - b?) / seconds);
        Usage {
            commits: CommitRates::between(before.commits.as_ref(), after.commits.as_ref(), seconds),
            server_cpu: share(before.server_cpu, after.server_cpu),
            load_cpu: share(before.load_cpu, after.load_cpu),
            server_core: share(before.server_core, after.server_core),
            load_core: share(before.load_core, after.load_core),
        }
    }

    /// The largest share of either benchmark core used by other processes.
    fn others(&self) -> Option<f64> {
        let server = self.server_core? - self.server_cpu?;
        let load = self.load_core? - self.load_cpu?;
        Some(server.max(load).max(0.0))
    }
}

struct CommitRates {
    per_second: f64,
    mean_batch: Option<f64>,
    /// Share of the window the writer thread spent committing: near 1, it is the limit.
    writer_busy: f64,
}

impl CommitRates {
    fn between(before: Option<&Commits>, after: Option<&Commits>, seconds: f64) -> Option<Self> {
        let (b, a) = (before?, after?);
        let batched = a.batch_count - b.batch_count;
        Some(CommitRates {
            per_second: (a.count - b.count) / seconds,
            mean_batch: (batched > 0.0).then(|| (a.batch_sum - b.batch_sum) / batched),
            writer_busy: (a.seconds - b.seconds) / seconds,
        })
    }
}

struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

struct PhaseReport {
    connections: usize,
    window: Duration,
    stats: Stats,
    peak_rss_mb: Option<f64>,
    peak_reset: bool,
    rss_mb: Option<f64>,
    usage: Usage,
    problems: Vec<String>,
}

impl PhaseReport {
    fn accepted_per_second(&self) -> f64 {
        self.stats.accepted as f64 / self.window.as_secs_f64()
    }

    /// Nearest-rank percentiles in milliseconds; `None` when nothing was answered.
    fn latency(&self) -> Option<Latency> {
        let mut sorted = self.stats.latencies.clone();
        sorted.sort_unstable();
        let rank = |p: f64| {
            let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index].as_secs_f64() * 1e3
        };
        Some(Latency {
            max: sorted.last()?.as_secs_f64() * 1e3,
            p50: rank(0.50),
            p99: rank(0.99),
            p999: rank(0.999),
        })
    }

    fn print(&self, server: &Server) {
        let stats = &self.stats;
        println!(
            "\n{} c={}: measured {:?}",
            server.name, self.connections, self.window
        );
        println!(
            "  accepted        {} ({:.1}/s)",
            stats.accepted,
            self.accepted_per_second()
        );
        println!(
            "  not accepted    duplicates {}, other 200 {}, non-200 {:?}, errors {:?}",
            stats.duplicates, stats.other_200, stats.non_200, stats.errors
        );
        self.print_latency();
        self.print_memory();
        self.print_usage(server);
        for line in &self.problems {
            println!("  server log      {line}");
        }
    }

    fn print_latency(&self) {
        match self.latency() {
            Some(l) => println!(
                "  latency ms      p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} answered requests)",
                l.p50,
                l.p99,
                l.p999,
                l.max,
                self.stats.latencies.len()
            ),
            None => println!("  latency ms      n/a (nothing answered)"),
        }
    }

    fn print_memory(&self) {
        let since = if self.peak_reset {
            "this phase"
        } else {
            "server start (reset failed)"
        };
        println!(
            "  server memory   peak RSS (VmHWM, since {since}) {} MB, RSS at end {} MB",
            optional(self.peak_rss_mb, 1),
            optional(self.rss_mb, 1)
        );
    }

    fn print_usage(&self, server: &Server) {
        let usage = &self.usage;
        match &usage.commits {
            Some(commits) => println!(
                "  group commits   {:.1} commits/s (one WAL fsync each), mean batch {} events, \
                 writer committing {:.0} % of the window",
                commits.per_second,
                optional(commits.mean_batch, 1),
                commits.writer_busy * 100.0
            ),
            None if server.has_metrics => println!("  group commits   n/a (see /metrics errors)"),
            None => {}
        }
        let percent = |share: Option<f64>| optional(share.map(|s| s * 100.0), 0);
        println!(
            "  CPU busy        server {} % of its core ({} % with other processes), \
             load generator {} % of its core ({} %)",
            percent(usage.server_cpu),
            percent(usage.server_core),
            percent(usage.load_cpu),
            percent(usage.load_core)
        );
        if self.contended() {
            println!(
                "  note            other processes used up to {} % of a benchmark core: \
                 these figures are depressed; rerun on a quiet machine",
                percent(usage.others())
            );
        }
        if self.client_bound() {
            println!(
                "  note            the load generator saturated its core: this rate is a floor \
                 of the server's capacity, not the capacity itself"
            );
        }
    }

    fn contended(&self) -> bool {
        self.usage.others().is_some_and(|share| share > CONTENDED)
    }

    fn client_bound(&self) -> bool {
        self.usage
            .load_cpu
            .is_some_and(|share| share >= CLIENT_BOUND)
    }
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

fn print_summary(notirouter: &[PhaseReport], bare: &[PhaseReport]) {
    println!("\nsummary (latencies in ms; RSS = peak in MB; ratio = notirouter / bare accepted/s)");
    println!(
        "{:>5} | {:>10} {:>7} {:>7} {:>7} {:>6} {:>9} {:>6} | {:>10} {:>7} {:>7} {:>7} | {:>5}",
        "c",
        "notirouter",
        "p50",
        "p99",
        "p99.9",
        "RSS",
        "commits/s",
        "batch",
        "bare",
        "p50",
        "p99",
        "p99.9",
        "ratio"
    );
    for (n, b) in notirouter.iter().zip(bare) {
        println!(
            "{:>5} | {} {} {:>6} {:>9} {:>6} | {} {} | {:>5}",
            n.connections,
            rate_column(n),
            latency_columns(n),
            optional(n.peak_rss_mb, 1),
            optional(n.usage.commits.as_ref().map(|c| c.per_second), 1),
            optional(n.usage.commits.as_ref().and_then(|c| c.mean_batch), 1),
            rate_column(b),
            latency_columns(b),
            optional(ratio(n, b), 2)
        );
    }
    if notirouter.iter().chain(bare).any(PhaseReport::client_bound) {
        println!("* the load generator saturated its core: a floor, not the server's capacity");
    }
    if notirouter.iter().chain(bare).any(PhaseReport::contended) {
        println!("other processes competed for the benchmark cores in some phase (see above)");
    }
    print_bar(notirouter, bare);
}

/// Accepted/s, marked `*` when the load generator may have been the limit.
fn rate_column(report: &PhaseReport) -> String {
    let mark = if report.client_bound() { "*" } else { " " };
    format!("{:>9.1}{mark}", report.accepted_per_second())
}

fn latency_columns(report: &PhaseReport) -> String {
    let column = |v: Option<f64>| format!("{:>7}", optional(v, 2));
    let latency = report.latency();
    [
        column(latency.as_ref().map(|l| l.p50)),
        column(latency.as_ref().map(|l| l.p99)),
        column(latency.as_ref().map(|l| l.p999)),
    ]
    .join(" ")
}

fn ratio(notirouter: &PhaseReport, bare: &PhaseReport) -> Option<f64> {
    let bare = bare.accepted_per_second();
    (bare > 0.0).then(|| notirouter.accepted_per_second() / bare)
}

fn print_bar(notirouter: &[PhaseReport], bare: &[PhaseReport]) {
    println!(
        "\nbar: >= {BAR_ACCEPTS} accepts/s at c={BAR_CONNECTIONS} with p99 < {BAR_P99_MS} ms, \
         RSS < {BAR_RSS_MB} MB; ratio goal >= {BAR_RATIO}"
    );
    let Some(index) = notirouter
        .iter()
        .position(|r| r.connections == BAR_CONNECTIONS)
    else {
        println!("  not measured: c={BAR_CONNECTIONS} was not among --connections");
        return;
    };
    let n = &notirouter[index];
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "meets",
        Some(false) => "MISSES",
        None => "n/a",
    };
    let accepts = n.accepted_per_second();
    let p99 = n.latency().map(|l| l.p99);
    let ratio = ratio(n, &bare[index]);
    println!(
        "  accepts/s  {accepts:>9.1}     {}",
        verdict(Some(accepts >= BAR_ACCEPTS))
    );
    println!(
        "  p99        {:>9} ms  {}",
        optional(p99, 2),
        verdict(p99.map(|v| v < BAR_P99_MS))
    );
    println!(
        "  peak RSS   {:>9} MB  {}",
        optional(n.peak_rss_mb, 1),
        verdict(n.peak_rss_mb.map(|v| v < BAR_RSS_MB))
    );
    println!(
        "  ratio      {:>9}     {}",
        optional(ratio, 2),
        verdict(ratio.map(|v| v >= BAR_RATIO))
    );
}
