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
//! - notirouter runs in its temp dir (its working directory) with an empty `[scripts] dir`
//!   there and `hot_reload = false`: the receiver and the script worker's per-event bookkeeping
//!   are measured, not the shipped plugins (the `pipeline` example measures those). Its store
//!   and `[email] dir` are in the temp dir too, so nothing is written outside it.
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
//! With `--target URL` (repeated, or comma-separated) it starts no server: it drives running
//! instances, e.g. several notirouters on one PostgreSQL, sending each connection's requests
//! to the targets in turn (round robin), and reports accepted/s per target and in all, the
//! latency, and the CPU time per accepted notification of the processes given by `--pid` and
//! of every `postgres` process of this machine (utime + stime from `/proc/PID/stat`, before
//! and after the window). See `fleet.rs`.
//!
//! The client is a minimal HTTP/1.1 client on a current-thread tokio runtime so that one core
//! of load generation can outrun one core of server.

#[path = "../bench/mod.rs"]
mod bench;
mod fleet;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::time::{Instant, sleep, sleep_until};

use bench::{
    CpuSample, CpuShares, ERROR_PAUSE, LISTENING, RECEIVER_PATH, Reply, Response, Server,
    memory_mb, metric, optional, pinned, post_request, reexec_pinned, reset_peak_rss, status_field,
};

/// Set in the re-executed, pinned load generator so that it does not re-execute again.
const PINNED_ENV: &str = "LOADGEN_PINNED";
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
    #[command(flatten)]
    common: bench::Common,
    #[command(flatten)]
    phases: bench::ClosedLoop,
    /// A re-push storm: every body is sent twice (by whichever connections send next), so
    /// half the answers are duplicates of a notification stored moments before.
    #[arg(long)]
    repush: bool,
    /// Drive these running instances (base URLs such as `http://127.0.0.1:8080`, repeated or
    /// comma-separated) instead of starting notirouter and the bare baseline; each
    /// connection sends to them in turn.
    #[arg(long = "target", value_delimiter = ',')]
    targets: Vec<String>,
    /// With `--target`: the notirouter process ids whose CPU time per notification is
    /// reported (with every `postgres` process of this machine).
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
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
        return Err(reexec_pinned(args.common.load_cpu, PINNED_ENV));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
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
    if !args.targets.is_empty() {
        return fleet::run(&args).await;
    }
    let bin = args.common.binary()?;
    print_preamble(&args);
    let notirouter = {
        let store = tempfile::tempdir().context("cannot create a temp dir")?;
        let mut server = start_notirouter(&args, &bin, store.path()).await?;
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
        args.common.server_cpu,
        status_field(std::process::id(), "Cpus_allowed_list").unwrap_or_default(),
        std::process::id(),
        args.phases.warmup,
        args.phases.duration
    );
    if cfg!(debug_assertions) {
        println!(
            "warning: loadgen is a debug build; the client may be the bottleneck (use --release)"
        );
    }
}

/// notirouter on a fresh store in `dir`, with an empty scripts dir: the receiver and the
/// script worker's per-event bookkeeping are measured, not the shipped plugins (see the
/// `pipeline` example for those). Everything it writes stays in `dir`, its working directory.
async fn start_notirouter(args: &Args, bin: &Path, dir: &Path) -> anyhow::Result<Server> {
    let config = bench::base_config(dir)?;
    // The listening line is logged at INFO.
    bench::start_notirouter(bin, args.common.server_cpu, dir, &config, "info").await
}

async fn start_bare(args: &Args) -> anyhow::Result<Server> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut command = pinned(args.common.server_cpu, &exe);
    command.arg("--serve-bare").arg("127.0.0.1:0");
    Server::start("bare", command, false).await
}

async fn run_phases(server: &mut Server, args: &Args) -> anyhow::Result<Vec<PhaseReport>> {
    let mut reports = Vec::new();
    for &connections in &args.phases.connections {
        let report = run_phase(server, connections, args).await?;
        report.print(server);
        reports.push(report);
    }
    Ok(reports)
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
    let start = Instant::now() + args.phases.warmup;
    let window = Window {
        start,
        end: start + args.phases.duration,
    };
    let watch = Watch {
        address: server.address,
        pid: server.pid,
        has_metrics: server.has_metrics,
        server_cpu: args.common.server_cpu,
        load_cpu: args.common.load_cpu,
    };
    let drivers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(drive(server.address, window, args.repush)))
        .collect();
    let samples = tokio::spawn(sample_window(watch, window));
    let mut stats = Stats::default();
    for driver in drivers {
        stats.merge(driver.await?);
    }
    let (before, after) = samples.await?;
    Ok(PhaseReport {
        connections,
        window: args.phases.duration,
        stats,
        peak_rss_mb: memory_mb(server.pid, "VmHWM"),
        peak_reset,
        rss_mb: memory_mb(server.pid, "VmRSS"),
        usage: Usage::between(&before, &after),
        problems: server.problems_logged(),
    })
}

/// One connection's closed loop: send, wait for the answer, send the next, until the window ends.
async fn drive(address: SocketAddr, window: Window, repush: bool) -> Stats {
    let mut stats = Stats::default();
    let mut connection = None;
    while Instant::now() < window.end {
        let open = match bench::take_or_open(&mut connection, address).await {
            Ok(open) => open,
            Err(kind) => {
                stats.error(window, Instant::now(), kind);
                sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let request = post_request(address, &notification_body(repush));
        let started = Instant::now();
        let result = bench::exchange_in(&mut connection, open, &request).await;
        let finished = Instant::now();
        match result {
            Ok(response) => stats.answered(window, finished, finished - started, &response),
            Err(kind) => stats.error(window, finished, kind),
        }
    }
    stats
}

/// A realistic `swUpgradeResultNotify` with every mandatory field; one in ten is a FAIL. With
/// `repush`, each body twice in a row.
fn notification_body(repush: bool) -> String {
    let sent = NEXT_NOTIFICATION.fetch_add(1, Ordering::Relaxed);
    let n = if repush { sent / 2 } else { sent };
    bench::upgrade_result(n, n.is_multiple_of(10))
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
    cpu: CpuSample,
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
        cpu: CpuSample::take(watch.pid, watch.server_cpu, watch.load_cpu),
    }
}

async fn scrape_commits(address: SocketAddr) -> Option<Commits> {
    let text = bench::scrape(address).await?;
    Some(Commits {
        count: metric(&text, "notirouter_store_commit_duration_seconds_count")?,
        seconds: metric(&text, "notirouter_store_commit_duration_seconds_sum")?,
        batch_sum: metric(&text, "notirouter_store_commit_batch_events_sum")?,
        batch_count: metric(&text, "notirouter_store_commit_batch_events_count")?,
    })
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

impl Stats {
    fn answered(&mut self, window: Window, at: Instant, latency: Duration, response: &Response) {
        if !window.contains(at) {
            return;
        }
        self.latencies.push(latency);
        match bench::reply(response) {
            Reply::Accepted => self.accepted += 1,
            Reply::Duplicate => self.duplicates += 1,
            Reply::Other200 => self.other_200 += 1,
            Reply::Status(status) => *self.non_200.entry(status).or_default() += 1,
        }
    }

    fn error(&mut self, window: Window, at: Instant, kind: String) {
        if window.contains(at) {
            *self.errors.entry(kind).or_default() += 1;
        }
    }

    /// Nearest-rank percentiles in milliseconds; `None` when nothing was answered.
    fn latency(&self) -> Option<Latency> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = |p: f64| bench::nearest_rank(&sorted, p).map(|d| d.as_secs_f64() * 1e3);
        Some(Latency {
            max: sorted.last()?.as_secs_f64() * 1e3,
            p50: rank(0.50)?,
            p99: rank(0.99)?,
            p999: rank(0.999)?,
        })
    }

    fn print_latency(&self) {
        match self.latency() {
            Some(l) => println!(
                "  latency ms      p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} answered requests)",
                l.p50,
                l.p99,
                l.p999,
                l.max,
                self.latencies.len()
            ),
            None => println!("  latency ms      n/a (nothing answered)"),
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
    cpu: CpuShares,
}

impl Usage {
    fn between(before: &Sample, after: &Sample) -> Usage {
        let seconds = (after.at - before.at).as_secs_f64();
        Usage {
            commits: CommitRates::between(before.commits.as_ref(), after.commits.as_ref(), seconds),
            cpu: CpuShares::between(&before.cpu, &after.cpu, seconds),
        }
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

    fn duplicates_per_second(&self) -> f64 {
        self.stats.duplicates as f64 / self.window.as_secs_f64()
    }

    /// The server's CPU time per answered notification (accepted or duplicate), in µs.
    fn cpu_per_answer_us(&self) -> Option<f64> {
        let answers = self.stats.accepted + self.stats.duplicates;
        let busy = self.usage.cpu.server? * self.window.as_secs_f64();
        (answers > 0).then(|| busy / answers as f64 * 1e6)
    }

    fn latency(&self) -> Option<Latency> {
        self.stats.latency()
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
            "  duplicates      {} ({:.1}/s); server CPU per answer {} µs",
            stats.duplicates,
            self.duplicates_per_second(),
            optional(self.cpu_per_answer_us(), 1)
        );
        println!(
            "  not accepted    other 200 {}, non-200 {:?}, errors {:?}",
            stats.other_200, stats.non_200, stats.errors
        );
        stats.print_latency();
        self.print_memory();
        self.print_usage(server);
        for line in &self.problems {
            println!("  server log      {line}");
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
            percent(usage.cpu.server),
            percent(usage.cpu.server_core),
            percent(usage.cpu.load),
            percent(usage.cpu.load_core)
        );
        if self.contended() {
            println!(
                "  note            other processes used up to {} % of a benchmark core: \
                 these figures are depressed; rerun on a quiet machine",
                percent(usage.cpu.others())
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
        self.usage.cpu.contended()
    }

    fn client_bound(&self) -> bool {
        self.usage.cpu.client_bound()
    }
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
