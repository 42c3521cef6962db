//! End-to-end benchmark: HTTP intake → store → script workers → delivery, on loopback, with
//! the server pinned to one core and the load generator plus a chat sink on another.
//!
//! Run it (Linux only; it needs `taskset` from util-linux and at least two cores):
//!
//! ```text
//! cargo build --release
//! cargo run --release --example pipeline               # the full run, about 7 minutes
//! cargo run --release --example pipeline -- --quick    # a smoke run, about a minute
//! ```
//!
//! Every server is `target/release/notirouter serve` on a fresh store in its own temp dir (its
//! working directory; nothing is written outside it), pinned to `--server-cpu` (core 0), with
//! `RUST_LOG=warn,notirouter=info`. This program re-executes itself pinned to `--load-cpu`
//! (core 1), where it runs the load generator and the chat sink on one current-thread runtime.
//!
//! - Load: an open loop. Request `i` is due at `start + i / rate`; up to `--in-flight`
//!   keep-alive connections (default 256) take the due requests in order, so no more than that
//!   many are in flight and a slow server delays later requests rather than lowering the offered
//!   rate silently. Latency runs from the request's due time to the end of its answer (so time
//!   spent waiting for a free connection counts). Bodies are distinct `swUpgradeResultNotify`
//!   (device ids encode the request number); one in ten is a FAIL (error code 7, which the
//!   shipped retry plugin does not retry).
//! - "With plugins": `[scripts] dir` is a copy of the repo's `scripts/` (the shipped plugins),
//!   channel `ops` is `kind = "slack"` posting to the sink, email is `transport = "log"` (an
//!   INFO line per message; `--email file` writes `.eml` files into the temp dir instead, whose
//!   file system work costs the server's core far more than the scripts do, so it is not the
//!   default: production email goes over SMTP, off this core). Every FAIL here targets version
//!   1.5, so two shipped guards would trip: the storm guard would fold the failures of one target
//!   version beyond 5 per 10 minutes into one storm message, and the campaign guard would send
//!   one alert of its own when a campaign fails everywhere (the drain phase's FAILs do).
//!   `[vars] storm_threshold` and `guard_min_devices` are set to 1,000,000,000, so that neither
//!   trips, every FAIL gets its own chat message and email, and every message at the sink is a
//!   FAIL's. "No plugins": the same config with an empty scripts dir (the script worker still
//!   commits an outcome per event). `hot_reload = false` in both.
//! - The sink is an HTTP/1.1 server in this process that answers 200 (or 503 while "down") and
//!   records each request's arrival time and the device id in its text, so that each chat
//!   message is matched to the FAIL the load generator saw accepted, and when.
//!
//! Phases (`--phases`):
//!
//! 1. `scripts`: with and without plugins, `--rate` (default 3,000/s) for `--duration` (60 s).
//!    Every second the script backlog is sampled from `/metrics`:
//!    `notirouter_notifications_received_total{outcome="accepted"}` (all types) minus
//!    `notirouter_events_processed_total` (it can dip below 0 on a saturated core: the
//!    receiver counts a notification after its answer is written, which may come after the
//!    script worker has processed it). It is bounded when the last third's maximum is at most
//!    the first third's maximum plus a margin (the larger of one script batch, 256 events, and
//!    0.05 s of load). The script cost comes from `notirouter_script_run_duration_seconds`
//!    (one observation per plugin run): mean per run (sum/count) and p50/p99 from its buckets;
//!    per event ≈ per run × runs per event, an approximation (the histogram is not per event).
//!    The server's CPU is also split by thread (HTTP, store writer, scripts, delivery) from
//!    `/proc`, per accepted notification and per action sent.
//! 2. `search`: the highest offered rate at which a 10 s run stays bounded, with and without
//!    plugins: rates 2,000, 4,000, … until a step fails (backlog not bounded, any non-200 or
//!    error, or receiver p99 over `--slow-p99`), then one step halfway between the last good
//!    and the first bad rate. Each step runs on a fresh server. "Without" starts at the rate
//!    "with" reached (stepping down if that fails), to save the steps below it. Each step also
//!    tells whether delivery kept up (actions backlog at its end ≤ 1 s of actions), reported
//!    apart: the bar is about the script backlog.
//! 3. `delivery`: with plugins at 1,000/s for 30 s; accept-to-delivery latency of every FAIL's
//!    chat message, and every FAIL delivered exactly once.
//! 4. `outage`: at 1,000/s, the sink answers 503 for 60 s, then 200 again; the undelivered chat
//!    backlog at the end of the outage (`notirouter_actions_total` queued − sent − dead, and
//!    `notirouter_oldest_pending_action_seconds`), when the breaker's probe got its 200, and how
//!    long after it the backlog took to drain. `[delivery] breaker_cooldown` is the default
//!    30 s (`--breaker-cooldown`).
//! 5. `drain`: with the sink down, 100,000 notifications at 10 % FAIL (10,000 chat actions);
//!    once `/metrics` counts 10,000 chat actions queued the sink comes back, and the time from
//!    the breaker's successful probe to the last of the 10,000 delivered is measured.
//!
//! It ends with a summary of the figures against the bars. `--quick` shortens every phase
//! (and sets breaker_cooldown to 3 s and fills the drain phase with FAILs only); its figures
//! are a smoke test, not the bars' measurement.

#[path = "bench/mod.rs"]
mod bench;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use bench::{
    Connection, CpuSample, CpuShares, ERROR_PAUSE, Reply, Server, metric, metric_sum, nearest_rank,
    optional, post_request, reexec_pinned, status_field,
};

/// Set in the re-executed, pinned load generator so that it does not re-execute again.
const PINNED_ENV: &str = "PIPELINE_PINNED";
/// Keeps the listening line (INFO) and notirouter's own INFO lines; everything else at WARN.
const RUST_LOG: &str = "warn,notirouter=info";
/// One notification in this many is a FAIL.
const FAIL_EVERY: u64 = 10;
/// A threshold no run reaches: the storm guard never folds a FAIL into a storm message and the
/// campaign guard never trips.
const NEVER_REACHED: i64 = 1_000_000_000;
/// The server's own default cooldown.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// How often the backlog is sampled during a run (more often in runs under 10 s).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A server that takes longer than this to exit after SIGTERM is noted.
const SLOW_STOP: Duration = Duration::from_secs(5);
/// How often a wait (for a drain, a probe, deliveries) looks again.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// A bounded backlog may grow by this much (one script batch; or 0.05 s of load, if more)
/// between thirds.
const MIN_MARGIN: f64 = 256.0;
/// Longest wait for the script backlog to empty after a run.
const SCRIPT_DRAIN_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for the last deliveries once the load has stopped.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);
/// Longest wait, in the drain phase, for the scripts to queue every action.
const QUEUE_WAIT: Duration = Duration::from_secs(180);
/// A chat backlog at most this large counts as drained while load goes on (about 0.1 s of FAILs
/// at 1,000/s plus the destination's 8 slots).
const DRAINED_BACKLOG: f64 = 20.0;
/// Delivery keeps up when the actions backlog at the end of a run is at most this many seconds
/// of actions.
const DELIVERY_SLACK_S: f64 = 1.0;
/// Connections filling the store in the drain phase (a closed loop: as fast as it accepts).
const FILL_CONNECTIONS: usize = 32;
/// A request that starts this late (no free connection) counts as late.
const LATE: Duration = Duration::from_millis(5);
/// The bars.
const BAR_SCRIPT_P50_US: f64 = 20.0;
const BAR_RATE_RATIO: f64 = 0.9;
const BAR_DELIVERY_P99_MS: f64 = 100.0;
const BAR_DRAIN_S: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Scripts,
    Search,
    Delivery,
    Outage,
    Drain,
}

/// How the "with plugins" server sends email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EmailTransport {
    /// One `.eml` file per message in the temp dir (the shipped default transport).
    File,
    /// A log line per message (notirouter logs at INFO here).
    Log,
}

impl EmailTransport {
    fn name(self) -> &'static str {
        match self {
            EmailTransport::File => "file",
            EmailTransport::Log => "log",
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "End-to-end benchmark of notirouter: scripts, delivery, an outage, a drain")]
struct Args {
    #[command(flatten)]
    common: bench::Common,
    /// A smoke run of about a minute: every phase shortened (the bars are for the full run).
    #[arg(long)]
    quick: bool,
    /// The phases to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "scripts,search,delivery,outage,drain"
    )]
    phases: Vec<Phase>,
    /// `[email] transport` of the servers (file: `.eml` files in their temp dirs).
    #[arg(long, value_enum, default_value = "log")]
    email: EmailTransport,
    /// The shipped plugins, copied into the "with plugins" servers' temp dirs.
    #[arg(long, default_value = "scripts")]
    scripts: PathBuf,
    /// Most requests in flight at once (connections of the open loop).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Offered rate (notifications/s) of the script stage's main runs [default 3000].
    #[arg(long)]
    rate: Option<f64>,
    /// Length of each main run of the script stage [default 60s; quick 5s].
    #[arg(long, value_parser = bench::parse_duration)]
    duration: Option<Duration>,
    /// Rates of the bounded-rate search, tried in order until one fails [default 2000, 4000, …
    /// 40000; quick 4000, 8000, 12000, 16000, 20000].
    #[arg(long, value_delimiter = ',')]
    search_rates: Option<Vec<f64>>,
    /// Length of each search step [default 10s; quick 2s].
    #[arg(long, value_parser = bench::parse_duration)]
    step_duration: Option<Duration>,
    /// A search step whose receiver p99 (from each request's due time) exceeds this fails.
    #[arg(long, default_value = "100ms", value_parser = bench::parse_duration)]
    slow_p99: Duration,
    /// Offered rate of the delivery and outage phases.
    #[arg(long, default_value_t = 1000.0)]
    delivery_rate: f64,
    /// Length of the delivery phase [default 30s; quick 5s].
    #[arg(long, value_parser = bench::parse_duration)]
    delivery_duration: Option<Duration>,
    /// How long the sink answers 503 in the outage phase [default 60s; quick 6s].
    #[arg(long, value_parser = bench::parse_duration)]
    outage: Option<Duration>,
    /// `[delivery] breaker_cooldown` of the outage and drain phases [default 30s, the server's
    /// default; quick 3s].
    #[arg(long, value_parser = bench::parse_duration)]
    breaker_cooldown: Option<Duration>,
    /// FAILs (so chat actions) queued while the sink is down, in the drain phase.
    #[arg(long, default_value_t = 10_000)]
    queued: u64,
    /// One in this many of the drain phase's notifications is a FAIL [default 10: 100,000
    /// notifications for 10,000 FAILs; quick 1: FAILs only].
    #[arg(long)]
    fill_fail_every: Option<u64>,
    /// Keep each server's temp dir (store, config, scripts, .eml files) and print its path.
    #[arg(long)]
    keep_temp: bool,
}

/// The arguments with the defaults of a full or a quick run filled in.
struct Plan {
    quick: bool,
    phases: Vec<Phase>,
    in_flight: usize,
    rate: f64,
    duration: Duration,
    search_rates: Vec<f64>,
    step_duration: Duration,
    slow_p99: Duration,
    delivery_rate: f64,
    delivery_duration: Duration,
    outage: Duration,
    outage_warmup: Duration,
    cooldown: Duration,
    queued: u64,
    fill_fail_every: u64,
    keep_temp: bool,
    email: EmailTransport,
}

impl Plan {
    fn new(args: &Args) -> anyhow::Result<Plan> {
        let quick = args.quick;
        let pick = |full: Duration, short: Duration| if quick { short } else { full };
        let search_rates = match &args.search_rates {
            Some(rates) => rates.clone(),
            None if quick => vec![4000.0, 8000.0, 12000.0, 16000.0, 20000.0],
            None => (1..=20).map(|k| 2000.0 * f64::from(k)).collect(),
        };
        let plan = Plan {
            quick,
            phases: args.phases.clone(),
            in_flight: args.in_flight,
            rate: args.rate.unwrap_or(3000.0),
            duration: args
                .duration
                .unwrap_or(pick(Duration::from_secs(60), Duration::from_secs(5))),
            search_rates,
            step_duration: args
                .step_duration
                .unwrap_or(pick(Duration::from_secs(10), Duration::from_secs(2))),
            slow_p99: args.slow_p99,
            delivery_rate: args.delivery_rate,
            delivery_duration: args
                .delivery_duration
                .unwrap_or(pick(Duration::from_secs(30), Duration::from_secs(5))),
            outage: args
                .outage
                .unwrap_or(pick(Duration::from_secs(60), Duration::from_secs(6))),
            outage_warmup: pick(Duration::from_secs(5), Duration::from_secs(2)),
            cooldown: args
                .breaker_cooldown
                .unwrap_or(pick(DEFAULT_COOLDOWN, Duration::from_secs(3))),
            queued: args.queued,
            fill_fail_every: args.fill_fail_every.unwrap_or(if quick { 1 } else { 10 }),
            keep_temp: args.keep_temp,
            email: args.email,
        };
        let rates = [plan.rate, plan.delivery_rate];
        if rates
            .iter()
            .chain(&plan.search_rates)
            .any(|r| r.is_nan() || *r <= 0.0)
        {
            bail!("every rate must be above 0");
        }
        if plan.in_flight == 0 || plan.fill_fail_every == 0 || plan.queued == 0 {
            bail!("--in-flight, --queued and --fill-fail-every must be at least 1");
        }
        Ok(plan)
    }

    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

fn main() -> ExitCode {
    match run_mode(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pipeline: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_mode(args: Args) -> anyhow::Result<()> {
    if std::env::var_os(PINNED_ENV).is_none() {
        return Err(reexec_pinned(args.common.load_cpu, PINNED_ENV));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

/// What every phase needs.
struct Bench {
    plan: Plan,
    bin: PathBuf,
    /// The repo's scripts folder (the shipped plugins).
    scripts: PathBuf,
    cores: Cores,
    sink: Sink,
    /// The next notification number: distinct bodies across the whole run.
    next: u64,
    /// Things worth a look, collected for the end.
    problems: Vec<String>,
}

#[derive(Clone, Copy)]
struct Cores {
    server: usize,
    load: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plugins {
    Shipped,
    None,
}

impl Plugins {
    fn label(self) -> &'static str {
        match self {
            Plugins::Shipped => "with plugins",
            Plugins::None => "no plugins",
        }
    }
}

/// A server and its temp dir; the server stops first (fields drop in order).
struct Running {
    server: Server,
    dir: tempfile::TempDir,
}

impl Running {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server (keeping the sink served meanwhile), then removes the temp dir. A
    /// server slow to stop is noted.
    async fn stop(self, phase: &str, problems: &mut Vec<String>) {
        match self.server.stop().await {
            Some(took) if took > SLOW_STOP => problems.push(format!(
                "{phase}: the server took {:.1} s to exit after SIGTERM",
                took.as_secs_f64()
            )),
            Some(_) => {}
            None => problems.push(format!(
                "{phase}: the server did not exit within 10 s of SIGTERM (killed)"
            )),
        }
        drop(self.dir);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    let bin = args.common.binary()?;
    let scripts = std::fs::canonicalize(&args.scripts).with_context(|| {
        format!(
            "the shipped plugins are not at {}; run from the repo or pass --scripts",
            args.scripts.display()
        )
    })?;
    let sink = Sink::start().await?;
    let mut bench = Bench {
        plan,
        bin,
        scripts,
        cores: Cores {
            server: args.common.server_cpu,
            load: args.common.load_cpu,
        },
        sink,
        next: 0,
        problems: Vec::new(),
    };
    bench.print_preamble();
    let started = Instant::now();
    let mut summary = Summary::default();
    if bench.plan.runs(Phase::Scripts) {
        summary.scripts = Some(bench.script_stage().await?);
    }
    if bench.plan.runs(Phase::Search) {
        summary.search = Some(bench.search().await?);
    }
    if bench.plan.runs(Phase::Delivery) {
        summary.delivery = Some(bench.delivery().await?);
    }
    if bench.plan.runs(Phase::Outage) {
        summary.outage = Some(bench.outage().await?);
    }
    if bench.plan.runs(Phase::Drain) {
        summary.drain = Some(bench.drain().await?);
    }
    summary.print(&bench.plan, &bench.problems, started.elapsed());
    Ok(())
}

impl Bench {
    fn print_preamble(&self) {
        let pid = std::process::id();
        println!(
            "pipeline: server on core {}, load generator and chat sink (http://{}) on CPUs {} \
             (pid {pid}); {} run",
            self.cores.server,
            self.sink.address,
            status_field(pid, "Cpus_allowed_list").unwrap_or_default(),
            if self.plan.quick {
                "QUICK (smoke)"
            } else {
                "full"
            }
        );
        println!(
            "  open loop: requests paced at the offered rate, at most {} in flight; latency from \
             each request's due time; 1 in {FAIL_EVERY} is a FAIL with its own device id",
            self.plan.in_flight
        );
        println!(
            "  with plugins: a copy of {} as [scripts] dir, channel ops = slack → the sink, \
             email = {}, vars.storm_threshold = vars.guard_min_devices = {NEVER_REACHED} \
             (every FAIL alerts on its own, the campaign guard never trips); RUST_LOG={RUST_LOG}",
            self.scripts.display(),
            self.plan.email.name()
        );
        if cfg!(debug_assertions) {
            println!(
                "warning: pipeline is a debug build; the client may be the bottleneck (use --release)"
            );
        }
    }

    /// The next `count` notification numbers, starting at a multiple of `align`.
    fn numbers(&mut self, count: u64, align: u64) -> u64 {
        let first = self.next.div_ceil(align) * align;
        self.next = first + count;
        first
    }

    async fn start_server(&self, plugins: Plugins, cooldown: Duration) -> anyhow::Result<Running> {
        let mut dir = tempfile::tempdir().context("cannot create a temp dir")?;
        if self.plan.keep_temp {
            dir.disable_cleanup(true);
            println!("  (temp dir {} is kept)", dir.path().display());
        }
        let mut config = bench::base_config(dir.path())?;
        if plugins == Plugins::Shipped {
            copy_dir(&self.scripts, &dir.path().join("scripts"))?;
        }
        config["vars"] = serde_json::json!({
            "ops_email": "ops@example.com",
            "chat_channel": "ops",
            "storm_threshold": NEVER_REACHED,
            "guard_min_devices": NEVER_REACHED,
            "storm_window": "10m",
            "transient_error_codes": ["1", "2", "4", "6", "9"],
        });
        config["channels"] = serde_json::json!({
            "ops": { "kind": "slack", "url": format!("http://{}/slack/ops", self.sink.address) },
        });
        config["email"]["transport"] = self.plan.email.name().into();
        config["delivery"] = serde_json::json!({
            "breaker_cooldown": format!("{}ms", cooldown.as_millis()),
        });
        let server =
            bench::start_notirouter(&self.bin, self.cores.server, dir.path(), &config, RUST_LOG)
                .await?;
        Ok(Running { server, dir })
    }

    async fn snapshot(&self, server: &Server) -> Option<Snapshot> {
        let asked = Instant::now();
        let text = bench::scrape(server.address).await?;
        // The scrape takes a moment under load; its midpoint is when the counters were read.
        let at = asked + (Instant::now() - asked) / 2;
        Some(Snapshot::parse(&text, at, server.pid, self.cores))
    }

    /// Snapshots until one succeeds (bounded: a few tries).
    async fn snapshot_retrying(&self, server: &Server) -> anyhow::Result<Snapshot> {
        for _ in 0..5 {
            if let Some(snapshot) = self.snapshot(server).await {
                return Ok(snapshot);
            }
            sleep(Duration::from_millis(200)).await;
        }
        bail!("GET /metrics failed five times in a row")
    }

    fn note_logs(&mut self, phase: &str, running: &mut Running) -> Vec<String> {
        let problems = running.server.problems_logged();
        if !problems.is_empty() {
            println!(
                "  server log      {} WARN/ERROR lines, e.g.:",
                problems.len()
            );
            for line in distinct_messages(&problems, 3) {
                println!("                  {line}");
            }
        }
        if problems.iter().any(|line| line.contains(" ERROR ")) {
            self.problems.push(format!(
                "{phase}: the server logged ERROR lines (see above)"
            ));
        }
        problems
    }
}

/// Copies a folder tree (the shipped plugins, their modules and cases).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Up to `limit` log lines whose messages differ (fields after the message are ignored).
fn distinct_messages(lines: &[String], limit: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut picked = Vec::new();
    for line in lines {
        let key: String = line
            .split_once(": ")
            .map_or(line.as_str(), |(_, rest)| rest)
            .chars()
            .take(40)
            .collect();
        if seen.insert(key) {
            picked.push(line.chars().take(220).collect());
            if picked.len() == limit {
                break;
            }
        }
    }
    picked
}

// ---------------------------------------------------------------------------------------------
// The open-loop load.

/// What the connections of one load share.
struct LoadShared {
    address: SocketAddr,
    rate: f64,
    first: u64,
    count: u64,
    fail_every: u64,
    start: Instant,
    /// The next request index to take.
    next: AtomicU64,
    stop: AtomicBool,
}

impl LoadShared {
    fn due(&self, index: u64) -> Instant {
        if self.rate.is_infinite() {
            return self.start;
        }
        self.start + Duration::from_secs_f64(index as f64 / self.rate)
    }
}

struct Load {
    shared: Arc<LoadShared>,
    tasks: Vec<JoinHandle<LoadStats>>,
}

impl Load {
    /// `count` requests numbered from `first`, paced at `rate` (infinite: all due at once, so
    /// a closed loop of `connections`).
    fn start(
        address: SocketAddr,
        rate: f64,
        first: u64,
        count: u64,
        fail_every: u64,
        connections: usize,
    ) -> Load {
        let shared = Arc::new(LoadShared {
            address,
            rate,
            first,
            count,
            fail_every,
            start: Instant::now() + Duration::from_millis(20),
            next: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let tasks = (0..connections)
            .map(|_| tokio::spawn(drive(Arc::clone(&shared))))
            .collect();
        Load { shared, tasks }
    }

    fn start_at(&self) -> Instant {
        self.shared.start
    }

    /// No request starts after this (those in flight finish).
    fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for every connection: bounded by the schedule's end plus one request timeout.
    async fn finish(self) -> anyhow::Result<LoadStats> {
        let mut stats = LoadStats::default();
        for task in self.tasks {
            stats.merge(task.await?);
        }
        Ok(stats)
    }
}

#[derive(Default)]
struct LoadStats {
    sent: u64,
    accepted: u64,
    duplicates: u64,
    /// 200 whose body is not `"status":"accepted"` or `"duplicate"`.
    other_200: u64,
    non_200: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    /// Requests that started more than [`LATE`] after they were due: no connection was free.
    late: u64,
    /// Of every answered request, from its due time.
    latencies: Vec<Duration>,
    /// Accepted FAILs: notification number and when the answer was read.
    fail_accepts: Vec<(u64, Instant)>,
    /// FAILs sent and not answered "accepted" (they may be stored all the same).
    fails_not_accepted: u64,
    last_answer: Option<Instant>,
}

impl LoadStats {
    fn merge(&mut self, other: LoadStats) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.other_200 += other.other_200;
        for (status, count) in other.non_200 {
            *self.non_200.entry(status).or_default() += count;
        }
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.late += other.late;
        self.latencies.extend(other.latencies);
        self.fail_accepts.extend(other.fail_accepts);
        self.fails_not_accepted += other.fails_not_accepted;
        self.last_answer = self.last_answer.max(other.last_answer);
    }

    fn refused(&self) -> u64 {
        self.non_200.values().sum::<u64>() + self.errors.values().sum::<u64>() + self.other_200
    }

    fn latency_ms(&self, p: f64) -> Option<f64> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        nearest_rank(&sorted, p).map(|d| d.as_secs_f64() * 1e3)
    }

    fn max_latency_ms(&self) -> Option<f64> {
        self.latencies.iter().max().map(|d| d.as_secs_f64() * 1e3)
    }

    fn print(&self, seconds: f64) {
        println!(
            "  receiver        sent {}, accepted {} ({:.1}/s); duplicates {}, other 200 {}, \
             non-200 {:?}, errors {:?}",
            self.sent,
            self.accepted,
            self.accepted as f64 / seconds,
            self.duplicates,
            self.other_200,
            self.non_200,
            self.errors
        );
        println!(
            "  latency ms      p50 {}  p99 {}  p99.9 {}  max {}  (from due time; {} requests \
             started > {LATE:?} late for want of a free connection)",
            optional(self.latency_ms(0.50), 2),
            optional(self.latency_ms(0.99), 2),
            optional(self.latency_ms(0.999), 2),
            optional(self.max_latency_ms(), 2),
            self.late
        );
    }
}

/// One connection: takes the next due request, sends it when due, reads the answer; until the
/// schedule is used up or the load is stopped.
async fn drive(load: Arc<LoadShared>) -> LoadStats {
    let mut stats = LoadStats::default();
    let mut connection: Option<Connection> = None;
    while !load.stop.load(Ordering::Relaxed) {
        let index = load.next.fetch_add(1, Ordering::Relaxed);
        if index >= load.count {
            break;
        }
        let due = load.due(index);
        sleep_until(due).await;
        if load.stop.load(Ordering::Relaxed) {
            break;
        }
        let n = load.first + index;
        let fail = n.is_multiple_of(load.fail_every);
        let request = post_request(load.address, &bench::upgrade_result(n, fail));
        if Instant::now() > due + LATE {
            stats.late += 1;
        }
        stats.sent += 1;
        let result = match bench::take_or_open(&mut connection, load.address).await {
            Ok(open) => bench::exchange_in(&mut connection, open, &request).await,
            Err(kind) => {
                sleep(ERROR_PAUSE).await;
                Err(kind)
            }
        };
        let finished = Instant::now();
        let mut accepted = false;
        match result {
            Ok(response) => {
                stats.latencies.push(finished - due);
                stats.last_answer = Some(finished);
                match bench::reply(&response) {
                    Reply::Accepted => accepted = true,
                    Reply::Duplicate => stats.duplicates += 1,
                    Reply::Other200 => stats.other_200 += 1,
                    Reply::Status(status) => *stats.non_200.entry(status).or_default() += 1,
                }
            }
            Err(kind) => *stats.errors.entry(kind).or_default() += 1,
        }
        if accepted {
            stats.accepted += 1;
            if fail {
                stats.fail_accepts.push((n, finished));
            }
        } else if fail {
            stats.fails_not_accepted += 1;
        }
    }
    stats
}

// ---------------------------------------------------------------------------------------------
// The chat sink.

/// An HTTP/1.1 server on this process's runtime that stands in for Slack.
struct Sink {
    address: SocketAddr,
    state: Arc<SinkState>,
}

struct SinkState {
    up: AtomicBool,
    arrivals: Mutex<Vec<Arrival>>,
}

#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// When the whole request had been read.
    at: Instant,
    /// The device number in the message, if any.
    device: Option<u64>,
    /// Answered 200 (else 503).
    ok: bool,
}

const SINK_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
const SINK_DOWN: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";

impl Sink {
    async fn start() -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the sink")?;
        let address = listener.local_addr()?;
        let state = Arc::new(SinkState {
            up: AtomicBool::new(true),
            arrivals: Mutex::new(Vec::new()),
        });
        // Runs until the runtime ends with the program.
        tokio::spawn(accept(listener, Arc::clone(&state)));
        Ok(Sink { address, state })
    }

    fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// Forgets every arrival and answers as `up` says.
    fn reset(&self, up: bool) {
        let mut arrivals = self.arrivals();
        self.set_up(up);
        arrivals.clear();
    }

    fn arrivals(&self) -> MutexGuard<'_, Vec<Arrival>> {
        lock(&self.state.arrivals)
    }

    /// The first request answered 200 at or after `since`.
    fn first_ok_since(&self, since: Instant) -> Option<Instant> {
        self.arrivals()
            .iter()
            .find(|a| a.ok && a.at >= since)
            .map(|a| a.at)
    }

    /// How many of `devices` have had a message answered 200.
    fn delivered_of(&self, devices: &HashSet<u64>) -> usize {
        let arrivals = self.arrivals();
        let delivered: HashSet<u64> = arrivals
            .iter()
            .filter(|a| a.ok)
            .filter_map(|a| a.device)
            .filter(|d| devices.contains(d))
            .collect();
        delivered.len()
    }

    /// Waits until every one of `devices` has had a message answered 200, or `deadline`.
    async fn wait_delivered(&self, devices: &HashSet<u64>, deadline: Instant) -> bool {
        loop {
            if self.delivered_of(devices) == devices.len() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(POLL_EVERY).await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept(listener: TcpListener, state: Arc<SinkState>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_sink(stream, Arc::clone(&state)));
            }
            Err(_) => sleep(ERROR_PAUSE).await,
        }
    }
}

/// Answers the requests of one connection until the client closes it.
async fn serve_sink(stream: TcpStream, state: Arc<SinkState>) {
    let Ok(mut connection) = Connection::from_stream(stream) else {
        return;
    };
    while let Ok(Some(request)) = connection.read_request().await {
        let at = Instant::now();
        let ok = state.up.load(Ordering::SeqCst);
        let device = bench::device_number(&String::from_utf8_lossy(&request.body));
        lock(&state.arrivals).push(Arrival { at, device, ok });
        let answer = if ok { SINK_OK } else { SINK_DOWN };
        if connection.write(answer).await.is_err() {
            return;
        }
    }
}

/// Every accepted FAIL against the messages the sink answered 200.
struct DeliveryCheck {
    accepted_fails: usize,
    /// Accepted FAILs with at least one message answered 200.
    delivered: usize,
    missing: usize,
    /// FAILs with more than one message answered 200, and the extra messages.
    duplicated: usize,
    extra: usize,
    /// Messages answered 200 for no accepted FAIL (e.g. one whose answer the client lost).
    unexpected: usize,
    /// Accept (answer read) to first 200, per delivered FAIL.
    latencies: Vec<Duration>,
    /// First 200 of each delivered FAIL, by device number.
    first_ok: HashMap<u64, Instant>,
}

impl DeliveryCheck {
    fn new(fail_accepts: &[(u64, Instant)], arrivals: &[Arrival]) -> DeliveryCheck {
        let accepted: HashMap<u64, Instant> = fail_accepts.iter().copied().collect();
        let mut oks: HashMap<u64, (Instant, usize)> = HashMap::new();
        let mut unexpected = 0;
        for arrival in arrivals.iter().filter(|a| a.ok) {
            match arrival.device {
                Some(device) if accepted.contains_key(&device) => {
                    let entry = oks.entry(device).or_insert((arrival.at, 0));
                    entry.0 = entry.0.min(arrival.at);
                    entry.1 += 1;
                }
                _ => unexpected += 1,
            }
        }
        let mut latencies: Vec<Duration> = oks
            .iter()
            .map(|(device, (at, _))| at.saturating_duration_since(accepted[device]))
            .collect();
        latencies.sort_unstable();
        DeliveryCheck {
            accepted_fails: accepted.len(),
            delivered: oks.len(),
            missing: accepted.len() - oks.len(),
            duplicated: oks.values().filter(|(_, n)| *n > 1).count(),
            extra: oks.values().map(|(_, n)| n - 1).sum(),
            unexpected,
            latencies,
            first_ok: oks.into_iter().map(|(d, (at, _))| (d, at)).collect(),
        }
    }

    fn exactly_once(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unexpected == 0
    }

    fn latency_ms(&self, p: f64) -> Option<f64> {
        nearest_rank(&self.latencies, p).map(|d| d.as_secs_f64() * 1e3)
    }

    fn print(&self) {
        println!(
            "  every FAIL      accepted {}, delivered {}, missing {}, duplicated {} ({} extra \
             messages), unexpected {}  → {}",
            self.accepted_fails,
            self.delivered,
            self.missing,
            self.duplicated,
            self.extra,
            self.unexpected,
            if self.exactly_once() {
                "exactly once"
            } else {
                "NOT exactly once"
            }
        );
    }

    fn verdict(&self) -> String {
        format!(
            "{}/{} delivered, {} missing, {} duplicated, {} unexpected",
            self.delivered, self.accepted_fails, self.missing, self.duplicated, self.unexpected
        )
    }
}

// ---------------------------------------------------------------------------------------------
// /metrics snapshots.

#[derive(Clone, Copy, Default)]
struct ActionCounts {
    queued: f64,
    sent: f64,
    retried: f64,
    dead: f64,
}

impl ActionCounts {
    fn parse(text: &str, kind: &str) -> ActionCounts {
        let count = |outcome| {
            metric_sum(
                text,
                "notirouter_actions_total",
                &[("kind", kind), ("outcome", outcome)],
            )
        };
        ActionCounts {
            queued: count("queued"),
            sent: count("sent"),
            retried: count("retried"),
            dead: count("dead"),
        }
    }

    /// Queued and not yet sent or dead.
    fn backlog(&self) -> f64 {
        self.queued - self.sent - self.dead
    }
}

#[derive(Clone)]
struct Snapshot {
    at: Instant,
    accepted: f64,
    processed: f64,
    chat: ActionCounts,
    email: ActionCounts,
    oldest_pending: f64,
    script_sum: f64,
    script_count: f64,
    script_buckets: Vec<(f64, f64)>,
    /// `notirouter_receive_duration_seconds`: the server's own request latency.
    receive_buckets: Vec<(f64, f64)>,
    /// Plugin runs by plugin (ok and error).
    plugin_runs: BTreeMap<String, f64>,
    cpu: CpuSample,
    /// CPU seconds of the server's threads, by name.
    threads: BTreeMap<String, f64>,
}

const SCRIPT_HISTOGRAM: &str = "notirouter_script_run_duration_seconds";

impl Snapshot {
    fn parse(text: &str, at: Instant, pid: u32, cores: Cores) -> Snapshot {
        let mut plugin_runs = BTreeMap::new();
        for (labels, value) in bench::samples(text, "notirouter_script_runs_total") {
            if let Some((_, plugin)) = labels.iter().find(|(name, _)| name == "plugin") {
                *plugin_runs.entry(plugin.clone()).or_default() += value;
            }
        }
        Snapshot {
            at,
            accepted: metric_sum(
                text,
                "notirouter_notifications_received_total",
                &[("outcome", "accepted")],
            ),
            processed: metric(text, "notirouter_events_processed_total").unwrap_or(0.0),
            chat: ActionCounts::parse(text, "chat"),
            email: ActionCounts::parse(text, "email"),
            oldest_pending: metric(text, "notirouter_oldest_pending_action_seconds").unwrap_or(0.0),
            script_sum: metric(text, &format!("{SCRIPT_HISTOGRAM}_sum")).unwrap_or(0.0),
            script_count: metric(text, &format!("{SCRIPT_HISTOGRAM}_count")).unwrap_or(0.0),
            script_buckets: bench::histogram_buckets(text, SCRIPT_HISTOGRAM),
            receive_buckets: bench::histogram_buckets(text, "notirouter_receive_duration_seconds"),
            plugin_runs,
            cpu: CpuSample::take(pid, cores.server, cores.load),
            threads: bench::thread_cpu_seconds(pid),
        }
    }

    /// Notifications accepted and not yet run through the scripts.
    fn script_backlog(&self) -> f64 {
        self.accepted - self.processed
    }
}

/// The observations of a histogram between two snapshots of its cumulative buckets.
fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if before.len() != after.len() {
        return after.to_vec();
    }
    after
        .iter()
        .zip(before)
        .map(|(a, b)| (a.0, a.1 - b.1))
        .collect()
}

/// The server's own receive latency (arrival to answer) between two snapshots: p50 and p99 in
/// ms, interpolated inside `notirouter_receive_duration_seconds`' buckets.
fn server_latency_ms(before: &Snapshot, after: &Snapshot) -> (Option<f64>, Option<f64>) {
    let buckets = bucket_delta(&before.receive_buckets, &after.receive_buckets);
    let ms = |q| bench::bucket_quantile(&buckets, q).map(|s| s * 1e3);
    (ms(0.50), ms(0.99))
}

fn print_server_latency((p50, p99): (Option<f64>, Option<f64>)) {
    println!(
        "  server-side ms  p50 {}  p99 {}  (arrival to answer, from \
         notirouter_receive_duration_seconds' buckets)",
        optional(p50, 2),
        optional(p99, 2)
    );
}

/// CPU shares across two snapshots.
struct Usage {
    cpu: CpuShares,
    /// The server's threads (by name) and their share of a core, busiest first.
    threads: Vec<(String, f64)>,
    /// Seconds between the snapshots, notifications accepted and actions sent meanwhile.
    window: f64,
    accepted: f64,
    sent: f64,
}

impl Usage {
    fn between(before: &Snapshot, after: &Snapshot) -> Usage {
        let window = (after.at - before.at).as_secs_f64();
        let mut threads: Vec<(String, f64)> = after
            .threads
            .iter()
            .map(|(name, seconds)| {
                let earlier = before.threads.get(name).copied().unwrap_or(0.0);
                (name.clone(), (seconds - earlier) / window)
            })
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        Usage {
            cpu: CpuShares::between(&before.cpu, &after.cpu, window),
            threads,
            window,
            accepted: after.accepted - before.accepted,
            sent: after.chat.sent + after.email.sent - before.chat.sent - before.email.sent,
        }
    }

    /// Server CPU per accepted notification, by thread group, and the delivery threads' CPU
    /// per action sent.
    fn print_costs(&self) {
        let us = |share: f64, per: f64| share * self.window / per * 1e6;
        let group = |prefix: &str| -> f64 {
            self.threads
                .iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .map(|(_, share)| share)
                .sum()
        };
        if self.accepted > 0.0 {
            let parts: Vec<String> = [
                ("HTTP (actix)", group("actix")),
                ("store-writer", group("store-writer")),
                ("scripts", group("script-")),
                ("delivery", group("deliver")),
            ]
            .iter()
            .filter(|(_, share)| *share > 0.0)
            .map(|(name, share)| format!("{name} {:.0}", us(*share, self.accepted)))
            .collect();
            println!(
                "  CPU per event   server {} µs per accepted notification: {} µs",
                optional(self.cpu.server.map(|s| us(s, self.accepted)), 0),
                parts.join(", ")
            );
        }
        if self.sent > 0.0 {
            println!(
                "  CPU per action  delivery threads {:.0} µs per action sent ({:.0} sent)",
                us(group("deliver"), self.sent),
                self.sent
            );
        }
    }

    fn print(&self) {
        let percent = |share: Option<f64>| optional(share.map(|s| s * 100.0), 0);
        println!(
            "  CPU busy        server {} % of its core ({} % with other processes), load \
             generator + sink {} % of its core ({} %)",
            percent(self.cpu.server),
            percent(self.cpu.server_core),
            percent(self.cpu.load),
            percent(self.cpu.load_core)
        );
        let threads: Vec<String> = self
            .threads
            .iter()
            .filter(|(_, share)| *share >= 0.005)
            .map(|(name, share)| format!("{name} {:.0} %", share * 100.0))
            .collect();
        if !threads.is_empty() {
            println!("  server threads  {}", threads.join(", "));
        }
        self.print_costs();
        if self.cpu.contended() {
            println!(
                "  note            other processes used up to {} % of a benchmark core: these \
                 figures are depressed; rerun on a quiet machine",
                percent(self.cpu.others())
            );
        }
        if self.cpu.client_bound() {
            println!(
                "  note            the load generator saturated its core: the offered rate may \
                 not have been met"
            );
        }
    }

    fn flags(&self) -> String {
        let mut flags = String::new();
        if self.cpu.client_bound() {
            flags.push_str(" [client-bound]");
        }
        if self.cpu.contended() {
            flags.push_str(&format!(
                " [other processes {} %]",
                optional(self.cpu.others().map(|s| s * 100.0), 0)
            ));
        }
        flags
    }
}

/// The script cost across two snapshots.
struct ScriptCost {
    runs: f64,
    events: f64,
    seconds: f64,
    p50_run: Option<f64>,
    p99_run: Option<f64>,
    plugin_runs: BTreeMap<String, f64>,
}

impl ScriptCost {
    fn between(before: &Snapshot, after: &Snapshot) -> ScriptCost {
        let buckets = bucket_delta(&before.script_buckets, &after.script_buckets);
        let plugin_runs = after
            .plugin_runs
            .iter()
            .map(|(plugin, runs)| {
                let earlier = before.plugin_runs.get(plugin).copied().unwrap_or(0.0);
                (plugin.clone(), runs - earlier)
            })
            .collect();
        ScriptCost {
            runs: after.script_count - before.script_count,
            events: after.processed - before.processed,
            seconds: after.script_sum - before.script_sum,
            p50_run: bench::bucket_quantile(&buckets, 0.50),
            p99_run: bench::bucket_quantile(&buckets, 0.99),
            plugin_runs,
        }
    }

    fn runs_per_event(&self) -> Option<f64> {
        (self.events > 0.0).then(|| self.runs / self.events)
    }

    /// Per-event quantile ≈ per-run quantile × runs per event, in µs.
    fn per_event_us(&self, per_run: Option<f64>) -> Option<f64> {
        Some(per_run? * self.runs_per_event()? * 1e6)
    }

    fn p50_event_us(&self) -> Option<f64> {
        self.per_event_us(self.p50_run)
    }

    fn print(&self) {
        if self.runs == 0.0 {
            println!(
                "  script cost     no plugin runs ({} events processed)",
                self.events
            );
            return;
        }
        let us = |v: Option<f64>| optional(v.map(|s| s * 1e6), 1);
        println!(
            "  script cost     per plugin run: mean {} µs (sum/count), p50 {} µs, p99 {} µs \
             (from buckets); {} runs per event ({})",
            us((self.runs > 0.0).then(|| self.seconds / self.runs)),
            us(self.p50_run),
            us(self.p99_run),
            optional(self.runs_per_event(), 2),
            self.plugin_runs
                .iter()
                .map(|(plugin, runs)| format!("{plugin} {runs}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "                  per event: mean {} µs (sum / events); p50 ≈ {} µs, p99 ≈ {} µs \
             (per-run quantile × runs per event: an approximation, the histogram is per run)",
            us((self.events > 0.0).then(|| self.seconds / self.events)),
            optional(self.p50_event_us(), 1),
            optional(self.per_event_us(self.p99_run), 1)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 1 and 2: the script stage.

/// One run of the script stage at a fixed offered rate.
struct ScriptRun {
    plugins: Plugins,
    rate: f64,
    duration: Duration,
    /// How often the backlog was sampled.
    every: Duration,
    stats: LoadStats,
    /// Seconds since the load started, and the script backlog then.
    backlog: Vec<(f64, f64)>,
    backlog_at_end: Option<f64>,
    drained_after: Option<Duration>,
    cost: ScriptCost,
    chat_backlog_at_end: Option<f64>,
    email_backlog_at_end: Option<f64>,
    usage: Usage,
    /// p50 and p99 of the server's own receive latency, ms.
    server_latency: (Option<f64>, Option<f64>),
}

impl ScriptRun {
    fn margin(&self) -> f64 {
        MIN_MARGIN.max(0.05 * self.rate)
    }

    /// Maximum backlog in the first and the last third of the samples.
    fn thirds(&self) -> Option<(f64, f64)> {
        let values: Vec<f64> = self.backlog.iter().map(|(_, b)| *b).collect();
        if values.len() < 3 {
            return None;
        }
        let third = values.len() / 3;
        let max = |slice: &[f64]| slice.iter().copied().fold(f64::MIN, f64::max);
        Some((max(&values[..third]), max(&values[values.len() - third..])))
    }

    fn bounded(&self) -> bool {
        match self.thirds() {
            Some((first, last)) => last <= first + self.margin(),
            // Too few samples to judge a trend: bounded if it emptied quickly afterwards.
            None => self
                .drained_after
                .is_some_and(|d| d < Duration::from_secs(2)),
        }
    }

    /// Why this run does not count as sustained, if it does not.
    fn failure(&self, slow_p99: Duration) -> Option<String> {
        if !self.bounded() {
            let (first, last) = self.thirds().unwrap_or((f64::NAN, f64::NAN));
            return Some(format!(
                "script backlog grew (first third max {first:.0}, last third max {last:.0})"
            ));
        }
        if self.stats.refused() > 0 {
            return Some(format!(
                "receiver refused or failed {} requests (non-200 {:?}, errors {:?})",
                self.stats.refused(),
                self.stats.non_200,
                self.stats.errors
            ));
        }
        let p99 = self.stats.latency_ms(0.99).unwrap_or(f64::INFINITY);
        if p99 > slow_p99.as_secs_f64() * 1e3 {
            return Some(format!(
                "receiver slow (p99 {p99:.1} ms > {} ms)",
                slow_p99.as_millis()
            ));
        }
        None
    }

    fn accepted_per_second(&self) -> f64 {
        self.stats.accepted as f64 / self.duration.as_secs_f64()
    }

    /// Whether the actions backlog (chat + email) at the end of the load was at most
    /// [`DELIVERY_SLACK_S`] seconds' worth of actions (2 per FAIL).
    fn delivery_kept_up(&self) -> bool {
        let backlog =
            self.chat_backlog_at_end.unwrap_or(0.0) + self.email_backlog_at_end.unwrap_or(0.0);
        let per_second = 2.0 * self.rate / FAIL_EVERY as f64;
        backlog <= (per_second * DELIVERY_SLACK_S).max(50.0)
    }

    fn print_full(&self) {
        println!(
            "\nscript stage, {}: offered {:.0}/s for {:?}",
            self.plugins.label(),
            self.rate,
            self.duration
        );
        self.stats.print(self.duration.as_secs_f64());
        print_server_latency(self.server_latency);
        let values = || self.backlog.iter().map(|(_, b)| *b);
        println!(
            "  script backlog  (accepted − processed, every {:?}) min {} max {} at \
             the end of the load {}; emptied {} after the load stopped",
            self.every,
            optional(values().reduce(f64::min), 0),
            optional(values().reduce(f64::max), 0),
            optional(self.backlog_at_end, 0),
            self.drained_after.map_or_else(
                || format!("NOT within {SCRIPT_DRAIN_WAIT:?}"),
                |d| format!("{:.1} s", d.as_secs_f64())
            )
        );
        for chunk in self.backlog.chunks(15) {
            let row: Vec<String> = chunk.iter().map(|(_, b)| format!("{b:.0}")).collect();
            println!(
                "                  t={:>3.0}..{:<3.0}s  {}",
                chunk[0].0,
                chunk[chunk.len() - 1].0,
                row.join(" ")
            );
        }
        match self.thirds() {
            Some((first, last)) => println!(
                "  bounded?        first third max {first:.0}, last third max {last:.0}, margin \
                 {:.0} → {}",
                self.margin(),
                if self.bounded() {
                    "bounded"
                } else {
                    "NOT bounded"
                }
            ),
            None => println!("  bounded?        too few samples to tell"),
        }
        self.cost.print();
        println!(
            "  actions         backlog (queued − sent − dead) at the end of the load: chat {}, \
             email {}",
            optional(self.chat_backlog_at_end, 0),
            optional(self.email_backlog_at_end, 0)
        );
        self.usage.print();
    }

    fn print_step(&self, failure: &Option<String>) {
        let thirds = self.thirds();
        println!(
            "  {:<12} {:>6.0}/s: {:<5} accepted {:>6.0}/s, script backlog max first/last third \
             {}/{}, chat backlog at end {}, p99 {} ms (server-side {}), server CPU {} %{}{}",
            self.plugins.label(),
            self.rate,
            if failure.is_none() { "ok" } else { "FAILS" },
            self.accepted_per_second(),
            optional(thirds.map(|t| t.0), 0),
            optional(thirds.map(|t| t.1), 0),
            optional(self.chat_backlog_at_end, 0),
            optional(self.stats.latency_ms(0.99), 1),
            optional(self.server_latency.1, 1),
            optional(self.usage.cpu.server.map(|s| s * 100.0), 0),
            self.usage.flags(),
            failure
                .as_ref()
                .map(|reason| format!(" — {reason}"))
                .unwrap_or_default()
        );
    }
}

struct ScriptStage {
    with: ScriptRun,
    without: ScriptRun,
}

struct Search {
    with: SearchResult,
    without: SearchResult,
}

struct SearchResult {
    /// The highest rate that passed (0: not even the lowest tried).
    best: f64,
    /// No rate failed: the capacity is at least `best`.
    open: bool,
    /// The highest rate at which delivery also kept up, among the rates tried.
    delivery_best: f64,
    /// The first rate at which delivery fell behind, if any.
    delivery_behind: Option<f64>,
}

impl SearchResult {
    fn describe(&self) -> String {
        if self.open {
            format!("≥ {:.0}/s (every rate tried passed)", self.best)
        } else {
            format!("{:.0}/s", self.best)
        }
    }
}

impl Search {
    fn ratio(&self) -> Option<f64> {
        (self.without.best > 0.0).then(|| self.with.best / self.without.best)
    }
}

impl Bench {
    /// A run at `rate` for `duration` on a fresh server.
    async fn script_run(
        &mut self,
        plugins: Plugins,
        rate: f64,
        duration: Duration,
        full: bool,
    ) -> anyhow::Result<ScriptRun> {
        let mut running = self.start_server(plugins, DEFAULT_COOLDOWN).await?;
        self.sink.reset(true);
        let server = &running.server;
        let before = self.snapshot_retrying(server).await?;
        let count = (rate * duration.as_secs_f64()).round() as u64;
        let first = self.numbers(count, FAIL_EVERY);
        let load = Load::start(
            server.address,
            rate,
            first,
            count,
            FAIL_EVERY,
            self.plan.in_flight,
        );
        let start = load.start_at();
        let mut backlog = Vec::new();
        let mut at_start = None;
        let mut last = None;
        let every = SAMPLE_EVERY
            .min(duration / 10)
            .max(Duration::from_millis(200));
        let mut k = 1;
        while every * k <= duration {
            sleep_until(start + every * k).await;
            if let Some(snapshot) = self.snapshot(server).await {
                backlog.push((
                    (snapshot.at - start).as_secs_f64(),
                    snapshot.script_backlog(),
                ));
                at_start.get_or_insert_with(|| snapshot.clone());
                last = Some(snapshot);
            }
            k += 1;
        }
        let stats = load.finish().await?;
        let end = self.snapshot(server).await;
        let stopped = Instant::now();
        let mut drained_after = None;
        let mut after = end.clone();
        while Instant::now() < stopped + SCRIPT_DRAIN_WAIT {
            if let Some(snapshot) = self.snapshot(server).await {
                let empty = snapshot.script_backlog() <= 0.0;
                after = Some(snapshot);
                if empty {
                    drained_after = Some(stopped.elapsed());
                    break;
                }
            }
            sleep(POLL_EVERY).await;
        }
        let after = after.context("no /metrics after the run")?;
        let window_end = end.as_ref().or(last.as_ref()).unwrap_or(&after);
        let run = ScriptRun {
            plugins,
            rate,
            duration,
            every,
            backlog_at_end: end.as_ref().map(Snapshot::script_backlog),
            chat_backlog_at_end: end.as_ref().map(|s| s.chat.backlog()),
            email_backlog_at_end: end.as_ref().map(|s| s.email.backlog()),
            usage: Usage::between(at_start.as_ref().unwrap_or(&before), window_end),
            server_latency: server_latency_ms(&before, window_end),
            cost: ScriptCost::between(&before, &after),
            stats,
            backlog,
            drained_after,
        };
        let phase = format!("script stage {} at {rate:.0}/s", plugins.label());
        if full {
            run.print_full();
            self.note_logs(&phase, &mut running);
        } else {
            let problems = running.server.problems_logged();
            if problems.iter().any(|line| line.contains(" ERROR ")) {
                self.problems
                    .push(format!("{phase}: the server logged ERROR lines"));
            }
        }
        running.stop(&phase, &mut self.problems).await;
        Ok(run)
    }

    async fn script_stage(&mut self) -> anyhow::Result<ScriptStage> {
        println!(
            "\n=== 1. script stage: shipped plugins vs none, {:.0}/s for {:?} each ===",
            self.plan.rate, self.plan.duration
        );
        let with = self
            .script_run(Plugins::Shipped, self.plan.rate, self.plan.duration, true)
            .await?;
        let without = self
            .script_run(Plugins::None, self.plan.rate, self.plan.duration, true)
            .await?;
        if !with.delivery_kept_up() {
            self.problems.push(format!(
                "script stage with plugins at {:.0}/s: delivery fell behind (actions backlog at \
                 the end of the load: chat {}, email {})",
                with.rate,
                optional(with.chat_backlog_at_end, 0),
                optional(with.email_backlog_at_end, 0)
            ));
        }
        for run in [&with, &without] {
            if let Some(reason) = run.failure(self.plan.slow_p99) {
                self.problems.push(format!(
                    "script stage {} at {:.0}/s: {reason}",
                    run.plugins.label(),
                    run.rate
                ));
            }
        }
        Ok(ScriptStage { with, without })
    }

    async fn search(&mut self) -> anyhow::Result<Search> {
        println!(
            "\n=== 2. highest bounded rate: steps of {:?} on a fresh server each; a step fails \
             when the backlog is not bounded, on any non-200 or error, or when p99 > {:?} ===",
            self.plan.step_duration, self.plan.slow_p99
        );
        let with = self.search_one(Plugins::Shipped, 0.0).await?;
        // Without plugins the server does less per event: start where "with" got to (and step
        // down if that fails), to save the steps below it.
        let without = self.search_one(Plugins::None, with.best).await?;
        println!(
            "  highest bounded rate: with plugins {}, without {}; ratio {}",
            with.describe(),
            without.describe(),
            optional((without.best > 0.0).then(|| with.best / without.best), 2)
        );
        println!(
            "  delivery (actions backlog at the end of a step ≤ {DELIVERY_SLACK_S} s of actions) \
             kept up with plugins up to {:.0}/s{}",
            with.delivery_best,
            with.delivery_behind
                .map(|r| format!(", fell behind at {r:.0}/s"))
                .unwrap_or_default()
        );
        if let Some(rate) = with.delivery_behind
            && rate <= with.best
        {
            self.problems.push(format!(
                "search: with plugins, delivery fell behind at {rate:.0}/s while the script \
                 backlog stayed bounded (the action backlog grows: see the steps)"
            ));
        }
        Ok(Search { with, without })
    }

    /// Steps up the plan's rates from the first at or above `from` until one fails (stepping
    /// down instead if that first one fails), then tries once halfway between the highest that
    /// passed and the lowest that failed.
    async fn search_one(&mut self, plugins: Plugins, from: f64) -> anyhow::Result<SearchResult> {
        let rates = self.plan.search_rates.clone();
        let start = rates.iter().position(|&r| r >= from).unwrap_or(0);
        let mut tried: Vec<(f64, bool, bool)> = Vec::new();
        let mut index = start;
        while index < rates.len() {
            let (ok, _) = self.search_step(plugins, rates[index], &mut tried).await?;
            if !ok {
                break;
            }
            index += 1;
        }
        if index == start {
            // The first rate tried failed: step down until one passes.
            for &rate in rates[..start].iter().rev() {
                if self.search_step(plugins, rate, &mut tried).await?.0 {
                    break;
                }
            }
        }
        let best = best_passing(&tried, |&(_, ok, _)| ok);
        let first_bad = tried
            .iter()
            .filter(|(rate, ok, _)| !ok && *rate > best)
            .map(|(rate, _, _)| *rate)
            .reduce(f64::min);
        if let Some(bad) = first_bad {
            let middle = ((best + bad) / 2.0 / 100.0).round() * 100.0;
            if middle > best && middle < bad && !self.plan.quick {
                self.search_step(plugins, middle, &mut tried).await?;
            }
        }
        let delivery_behind = tried
            .iter()
            .filter(|(_, _, kept_up)| !kept_up)
            .map(|(rate, _, _)| *rate)
            .reduce(f64::min);
        Ok(SearchResult {
            best: best_passing(&tried, |&(_, ok, _)| ok),
            open: first_bad.is_none() && !tried.is_empty() && tried.iter().all(|t| t.1),
            delivery_best: best_passing(&tried, |&(rate, ok, kept_up)| {
                ok && kept_up && delivery_behind.is_none_or(|behind| rate < behind)
            }),
            delivery_behind,
        })
    }

    /// One step: whether it passed and whether delivery kept up, also pushed onto `tried`.
    async fn search_step(
        &mut self,
        plugins: Plugins,
        rate: f64,
        tried: &mut Vec<(f64, bool, bool)>,
    ) -> anyhow::Result<(bool, bool)> {
        let run = self
            .script_run(plugins, rate, self.plan.step_duration, false)
            .await?;
        let failure = run.failure(self.plan.slow_p99);
        run.print_step(&failure);
        let result = (failure.is_none(), run.delivery_kept_up());
        tried.push((rate, result.0, result.1));
        Ok(result)
    }
}

/// The highest rate among `tried` that `passes`, or 0.
fn best_passing(tried: &[(f64, bool, bool)], passes: impl Fn(&(f64, bool, bool)) -> bool) -> f64 {
    tried
        .iter()
        .filter(|t| passes(t))
        .map(|t| t.0)
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------------
// Phase 3: delivery at 1,000/s.

struct DeliveryReport {
    accepts_per_second: f64,
    deliveries_per_second: f64,
    check: DeliveryCheck,
}

impl Bench {
    async fn delivery(&mut self) -> anyhow::Result<DeliveryReport> {
        let rate = self.plan.delivery_rate;
        let duration = self.plan.delivery_duration;
        println!(
            "\n=== 3. delivery: with plugins, {rate:.0}/s for {duration:?}, one chat message per \
             FAIL to the sink ==="
        );
        let mut running = self
            .start_server(Plugins::Shipped, DEFAULT_COOLDOWN)
            .await?;
        self.sink.reset(true);
        let before = self.snapshot_retrying(&running.server).await?;
        let count = (rate * duration.as_secs_f64()).round() as u64;
        let first = self.numbers(count, FAIL_EVERY);
        let load = Load::start(
            running.server.address,
            rate,
            first,
            count,
            FAIL_EVERY,
            self.plan.in_flight,
        );
        let start = load.start_at();
        let stats = load.finish().await?;
        let load_end = self.snapshot_retrying(&running.server).await?;
        let devices: HashSet<u64> = stats.fail_accepts.iter().map(|(n, _)| *n).collect();
        let all = self
            .sink
            .wait_delivered(&devices, Instant::now() + DELIVERY_WAIT)
            .await;
        let check = DeliveryCheck::new(&stats.fail_accepts, &self.sink.arrivals());
        let seconds = duration.as_secs_f64();
        let delivered_in_window = self
            .sink
            .arrivals()
            .iter()
            .filter(|a| a.ok && a.at <= start + duration)
            .count();
        let report = DeliveryReport {
            accepts_per_second: stats.accepted as f64 / seconds,
            deliveries_per_second: delivered_in_window as f64 / seconds,
            check,
        };
        stats.print(seconds);
        print_server_latency(server_latency_ms(&before, &load_end));
        println!(
            "  delivered       {} chat messages answered 200 during the load ({:.1}/s), {} in \
             all{}",
            delivered_in_window,
            report.deliveries_per_second,
            report.check.delivered + report.check.extra + report.check.unexpected,
            if all {
                String::new()
            } else {
                format!(" (NOT all within {DELIVERY_WAIT:?} after the load)")
            }
        );
        println!(
            "  accept→delivery ms p50 {}  p99 {}  max {}  (from the 200 the load generator read \
             to the message's arrival at the sink)",
            optional(report.check.latency_ms(0.50), 1),
            optional(report.check.latency_ms(0.99), 1),
            optional(report.check.latency_ms(1.0), 1)
        );
        report.check.print();
        if self.plan.email == EmailTransport::File {
            let emails = count_files(&running.dir().join("mail"), "eml");
            println!(
                "  email           {} .eml files written (one per FAIL expected: {})",
                emails,
                stats.fail_accepts.len()
            );
        }
        Usage::between(&before, &load_end).print();
        self.note_logs("delivery", &mut running);
        running.stop("delivery", &mut self.problems).await;
        if !report.check.exactly_once() {
            self.problems.push(format!(
                "delivery at {rate:.0}/s: {}",
                report.check.verdict()
            ));
        }
        if stats.refused() > 0 {
            self.problems.push(format!(
                "delivery at {rate:.0}/s: the receiver refused or failed {} requests",
                stats.refused()
            ));
        }
        Ok(report)
    }
}

fn count_files(dir: &Path, extension: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == extension))
            .count()
    })
}

// ---------------------------------------------------------------------------------------------
// Phase 4: an outage of the chat destination.

struct OutageReport {
    backlog_at_end: Option<f64>,
    oldest_at_end: Option<f64>,
    /// From the sink coming back to the probe's 200.
    probe_after: Option<Duration>,
    /// From the probe's 200 to the last message of the backlog.
    drain: Option<Duration>,
    backlog_messages: usize,
    check: DeliveryCheck,
}

impl Bench {
    async fn outage(&mut self) -> anyhow::Result<OutageReport> {
        let rate = self.plan.delivery_rate;
        let outage = self.plan.outage;
        let cooldown = self.plan.cooldown;
        let warmup = self.plan.outage_warmup;
        println!(
            "\n=== 4. outage: {rate:.0}/s with plugins; the sink answers 503 for {outage:?}, \
             then 200; [delivery] breaker_cooldown = {cooldown:?}{}, breaker_failures = 5 \
             (default) ===",
            if cooldown == DEFAULT_COOLDOWN {
                " (the default)"
            } else {
                " (NOT the default 30s)"
            }
        );
        let mut running = self.start_server(Plugins::Shipped, cooldown).await?;
        self.sink.reset(true);
        // After the sink is back the load goes on until the backlog drains, at most this long.
        let recovery = cooldown + Duration::from_secs(60);
        let total = warmup + outage + recovery;
        let count = (rate * total.as_secs_f64()).round() as u64;
        let first = self.numbers(count, FAIL_EVERY);
        let server = &running.server;
        let load = Load::start(
            server.address,
            rate,
            first,
            count,
            FAIL_EVERY,
            self.plan.in_flight,
        );
        let load_start = load.start_at();
        let before = self.snapshot_retrying(server).await?;
        sleep_until(load_start + warmup).await;
        let down_at = Instant::now();
        self.sink.set_up(false);
        let mut series = Vec::new();
        let mut k = 1;
        while SAMPLE_EVERY * k < outage {
            sleep_until(down_at + SAMPLE_EVERY * k).await;
            if let Some(snapshot) = self.snapshot(server).await {
                series.push(snapshot);
            }
            k += 1;
        }
        sleep_until(down_at + outage).await;
        let at_end = self.snapshot(server).await;
        let back_at = Instant::now();
        self.sink.set_up(true);
        // Wait for the probe's 200, then for the chat backlog to drain (while load goes on).
        let deadline = back_at + recovery;
        let mut drained_metric = None;
        while Instant::now() < deadline {
            if self.sink.first_ok_since(back_at).is_some()
                && let Some(snapshot) = self.snapshot(server).await
                && snapshot.chat.backlog() <= DRAINED_BACKLOG
            {
                drained_metric = Some(snapshot.at);
                break;
            }
            sleep(POLL_EVERY).await;
        }
        // A little more steady load after the drain, then stop.
        sleep(Duration::from_secs(2).min(deadline.saturating_duration_since(Instant::now()))).await;
        load.stop();
        let stats = load.finish().await?;
        let after = self.snapshot(server).await;
        let devices: HashSet<u64> = stats.fail_accepts.iter().map(|(n, _)| *n).collect();
        let all = self
            .sink
            .wait_delivered(&devices, Instant::now() + DELIVERY_WAIT)
            .await;
        let arrivals = self.sink.arrivals().clone();
        let check = DeliveryCheck::new(&stats.fail_accepts, &arrivals);
        let probe = arrivals
            .iter()
            .find(|a| a.ok && a.at >= back_at)
            .map(|a| a.at);
        // The backlog: FAILs accepted before the probe whose message had not got through when
        // the outage began.
        let backlog: Vec<Instant> = stats
            .fail_accepts
            .iter()
            .filter(|(_, accepted)| probe.is_some_and(|p| *accepted < p))
            .filter_map(|(n, _)| check.first_ok.get(n).copied())
            .filter(|delivered| *delivered >= down_at)
            .collect();
        let drain_end = backlog.iter().max().copied();
        let report = OutageReport {
            backlog_at_end: at_end.as_ref().map(|s| s.chat.backlog()),
            oldest_at_end: at_end.as_ref().map(|s| s.oldest_pending),
            probe_after: probe.map(|p| p - back_at),
            drain: probe
                .zip(drain_end)
                .map(|(p, end)| end.saturating_duration_since(p)),
            backlog_messages: backlog.len(),
            check,
        };
        stats.print((stats.last_answer.unwrap_or(back_at) - load_start).as_secs_f64());
        if let Some(after) = &after {
            print_server_latency(server_latency_ms(&before, after));
            Usage::between(&before, after).print();
        }
        println!("  during the outage (every {SAMPLE_EVERY:?}: chat backlog / oldest pending s):");
        for chunk in series.chunks(10) {
            let row: Vec<String> = chunk
                .iter()
                .map(|s| format!("{:.0}/{:.0}", s.chat.backlog(), s.oldest_pending))
                .collect();
            println!(
                "                  t={:>3.0}s  {}",
                (chunk[0].at - down_at).as_secs_f64(),
                row.join(" ")
            );
        }
        println!(
            "  outage end      chat backlog (queued − sent − dead) {}, oldest pending action {} s",
            optional(report.backlog_at_end, 0),
            optional(report.oldest_at_end, 1)
        );
        let refusals: Vec<f64> = arrivals
            .iter()
            .filter(|a| !a.ok && a.at >= down_at)
            .map(|a| (a.at - down_at).as_secs_f64())
            .collect();
        println!(
            "  sink answered 503 {} times, at (s after the outage began) {}",
            refusals.len(),
            compact_times(&refusals)
        );
        match (report.probe_after, probe) {
            (Some(after), Some(_)) => println!(
                "  probe           the breaker's probe got its 200 {:.2} s after the sink came \
                 back",
                after.as_secs_f64()
            ),
            _ => println!("  probe           NO 200 after the sink came back"),
        }
        match report.drain {
            Some(drain) => println!(
                "  drain           the last of the {} backlog messages arrived {:.2} s after \
                 the probe ({:.0}/s); /metrics backlog ≤ {DRAINED_BACKLOG} {}",
                report.backlog_messages,
                drain.as_secs_f64(),
                report.backlog_messages as f64 / drain.as_secs_f64().max(1e-3),
                match (drained_metric, probe) {
                    (Some(at), Some(p)) =>
                        format!("{:.2} s after the probe", (at - p).as_secs_f64()),
                    _ => "not seen".to_owned(),
                }
            ),
            None => println!("  drain           n/a"),
        }
        if !all {
            println!("  note            not every FAIL was delivered within {DELIVERY_WAIT:?}");
        }
        report.check.print();
        self.note_logs("outage", &mut running);
        running.stop("outage", &mut self.problems).await;
        if !report.check.exactly_once() {
            self.problems
                .push(format!("outage: {}", report.check.verdict()));
        }
        if stats.refused() > 0 {
            self.problems.push(format!(
                "outage: the receiver refused or failed {} requests",
                stats.refused()
            ));
        }
        Ok(report)
    }
}

/// Times in seconds, consecutive near-equal ones folded: `0.0 ×6, 30.1, 60.2`.
fn compact_times(times: &[f64]) -> String {
    let mut groups: Vec<(f64, usize)> = Vec::new();
    for &t in times {
        match groups.last_mut() {
            Some((start, n)) if t - *start < 1.0 => *n += 1,
            _ => groups.push((t, 1)),
        }
    }
    let shown: Vec<String> = groups
        .iter()
        .take(20)
        .map(|(t, n)| {
            if *n > 1 {
                format!("{t:.1} ×{n}")
            } else {
                format!("{t:.1}")
            }
        })
        .collect();
    let more = if groups.len() > 20 { ", …" } else { "" };
    format!("{}{more}", shown.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Phase 5: a backlog of queued actions drains.

struct DrainReport {
    queued: f64,
    probe_after: Option<Duration>,
    drain: Option<Duration>,
    check: DeliveryCheck,
}

impl Bench {
    async fn drain(&mut self) -> anyhow::Result<DrainReport> {
        let fails = self.plan.queued;
        let every = self.plan.fill_fail_every;
        let posts = fails * every;
        let cooldown = self.plan.cooldown;
        println!(
            "\n=== 5. drain: with the sink down, {posts} notifications ({}) → {fails} chat \
             actions; then the sink comes back (breaker_cooldown = {cooldown:?}) ===",
            if every == 1 {
                "FAILs only".to_owned()
            } else {
                format!("1 in {every} a FAIL")
            }
        );
        let mut running = self.start_server(Plugins::Shipped, cooldown).await?;
        self.sink.reset(false);
        let server = &running.server;
        let first = self.numbers(posts, every);
        let load = Load::start(
            server.address,
            f64::INFINITY,
            first,
            posts,
            every,
            FILL_CONNECTIONS,
        );
        let start = load.start_at();
        let stats = load.finish().await?;
        let posted = stats.last_answer.unwrap_or(start) - start;
        println!(
            "  fill            {} accepted in {:.1} s ({:.0}/s, {FILL_CONNECTIONS} connections \
             in a closed loop); {} FAILs accepted; non-200 {:?}, errors {:?}",
            stats.accepted,
            posted.as_secs_f64(),
            stats.accepted as f64 / posted.as_secs_f64().max(1e-3),
            stats.fail_accepts.len(),
            stats.non_200,
            stats.errors
        );
        let expected = stats.fail_accepts.len() as f64;
        let deadline = Instant::now() + QUEUE_WAIT;
        let mut queued = None;
        while Instant::now() < deadline {
            if let Some(snapshot) = self.snapshot(server).await
                && snapshot.chat.queued >= expected
            {
                queued = Some(snapshot);
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
        let queued = match queued {
            Some(queued) => queued,
            None => {
                self.problems.push(format!(
                    "drain: the scripts did not queue {expected} chat actions within {QUEUE_WAIT:?}"
                ));
                self.snapshot_retrying(server).await?
            }
        };
        let back_at = Instant::now();
        self.sink.set_up(true);
        println!(
            "  queued          {} chat actions queued {:.1} s after the fill began (sent {}, \
             retried {}, oldest pending {:.1} s); the sink is back",
            queued.chat.queued,
            (queued.at - start).as_secs_f64(),
            queued.chat.sent,
            queued.chat.retried,
            queued.oldest_pending
        );
        let devices: HashSet<u64> = stats.fail_accepts.iter().map(|(n, _)| *n).collect();
        let all = self
            .sink
            .wait_delivered(&devices, back_at + cooldown + Duration::from_secs(60))
            .await;
        let drained = self.snapshot(server).await;
        // Anything sent twice shows up within a moment of the rest.
        sleep(Duration::from_millis(500)).await;
        let arrivals = self.sink.arrivals().clone();
        let check = DeliveryCheck::new(&stats.fail_accepts, &arrivals);
        let probe = arrivals.iter().find(|a| a.ok).map(|a| a.at);
        let last = check.first_ok.values().max().copied();
        let report = DrainReport {
            queued: queued.chat.queued,
            probe_after: probe.map(|p| p.saturating_duration_since(back_at)),
            drain: probe
                .zip(last)
                .map(|(p, last)| last.saturating_duration_since(p)),
            check,
        };
        let refusals = arrivals.iter().filter(|a| !a.ok).count();
        println!(
            "  probe           {} (the sink had answered 503 {refusals} times)",
            report.probe_after.map_or_else(
                || "NO 200 after the sink came back".to_owned(),
                |d| format!(
                    "the breaker's probe got its 200 {:.2} s after the sink came back",
                    d.as_secs_f64()
                )
            )
        );
        match report.drain {
            Some(drain) => println!(
                "  drain           {} messages delivered {:.2} s after the probe ({:.0}/s){}",
                report.check.delivered,
                drain.as_secs_f64(),
                report.check.delivered as f64 / drain.as_secs_f64().max(1e-3),
                if all { "" } else { " — NOT all delivered" }
            ),
            None => println!("  drain           n/a"),
        }
        report.check.print();
        if let Some(drained) = &drained {
            println!("  from the sink's return to the last delivery:");
            let usage = Usage::between(&queued, drained);
            usage.print();
            let delivery: f64 = usage
                .threads
                .iter()
                .filter(|(name, _)| name.starts_with("deliver"))
                .map(|(_, share)| share)
                .sum();
            if let Some(drain) = report.drain
                && drain.as_secs_f64() >= BAR_DRAIN_S
            {
                self.problems.push(format!(
                    "drain: {} messages took {:.1} s after the probe ({:.0}/s) while the \
                     server's delivery threads used {:.0} % of its core and the sink answered \
                     at once: delivery's own work is the limit",
                    report.check.delivered,
                    drain.as_secs_f64(),
                    report.check.delivered as f64 / drain.as_secs_f64(),
                    delivery * 100.0
                ));
            }
        }
        self.note_logs("drain", &mut running);
        running.stop("drain", &mut self.problems).await;
        if report.queued != fails as f64 {
            self.problems.push(format!(
                "drain: {} chat actions queued, not {fails} ({} FAILs accepted)",
                report.queued, expected
            ));
        }
        if !report.check.exactly_once() {
            self.problems
                .push(format!("drain: {}", report.check.verdict()));
        }
        Ok(report)
    }
}

// ---------------------------------------------------------------------------------------------
// The summary.

#[derive(Default)]
struct Summary {
    scripts: Option<ScriptStage>,
    search: Option<Search>,
    delivery: Option<DeliveryReport>,
    outage: Option<OutageReport>,
    drain: Option<DrainReport>,
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "meets",
        Some(false) => "MISSES",
        None => "n/a",
    }
}

impl Summary {
    fn print(&self, plan: &Plan, problems: &[String], took: Duration) {
        println!(
            "\n=== summary ({} run, {:.0} s) ===",
            if plan.quick { "QUICK smoke" } else { "full" },
            took.as_secs_f64()
        );
        if let Some(scripts) = &self.scripts {
            for run in [&scripts.with, &scripts.without] {
                println!(
                    "  {:<13} {:.0}/s offered: accepted {:.0}/s, script backlog max {} end {} \
                     ({}), receiver p99 {} ms",
                    run.plugins.label(),
                    run.rate,
                    run.accepted_per_second(),
                    optional(run.backlog.iter().map(|(_, b)| *b).reduce(f64::max), 0),
                    optional(run.backlog_at_end, 0),
                    if run.bounded() {
                        "bounded"
                    } else {
                        "NOT bounded"
                    },
                    optional(run.stats.latency_ms(0.99), 1)
                );
            }
        }
        if let Some(drain) = &self.drain {
            println!(
                "  drain phase: {} chat actions queued while the sink was down",
                drain.queued
            );
        }
        println!(
            "\n  {:<44} {:>24}   {:<13} verdict",
            "figure", "value", "bar"
        );
        let row = |figure: &str, value: String, bar: &str, ok: Option<bool>| {
            let verdict = if bar.is_empty() { "" } else { verdict(ok) };
            println!("  {figure:<44} {value:>24}   {bar:<13} {verdict}");
        };
        if let Some(scripts) = &self.scripts {
            let p50 = scripts.with.cost.p50_event_us();
            row(
                "scripts p50 per event (≈, shipped plugins)",
                format!("{} µs", optional(p50, 1)),
                "< 20 µs",
                p50.map(|v| v < BAR_SCRIPT_P50_US),
            );
        }
        if let Some(search) = &self.search {
            let ratio = search.ratio();
            let plus = |r: &SearchResult| if r.open { "+" } else { "" };
            row(
                "bounded rate with / without plugins",
                format!(
                    "{:.0}{} / {:.0}{} = {}",
                    search.with.best,
                    plus(&search.with),
                    search.without.best,
                    plus(&search.without),
                    optional(ratio, 2)
                ),
                "≥ 0.9",
                ratio.map(|r| r >= BAR_RATE_RATIO),
            );
            row(
                "  delivery kept up, with plugins, up to",
                format!("{:.0}/s", search.with.delivery_best),
                "",
                None,
            );
        }
        if let Some(delivery) = &self.delivery {
            let p99 = delivery.check.latency_ms(0.99);
            row(
                &format!("accept→delivery p99 at {:.0}/s", plan.delivery_rate),
                format!("{} ms", optional(p99, 1)),
                "< 100 ms",
                p99.map(|v| v < BAR_DELIVERY_P99_MS),
            );
            row(
                "  accepts/s, deliveries/s",
                format!(
                    "{:.1}, {:.1}",
                    delivery.accepts_per_second, delivery.deliveries_per_second
                ),
                "",
                None,
            );
        }
        if let Some(outage) = &self.outage {
            row(
                &format!("outage {:?}: backlog at its end", plan.outage),
                format!(
                    "{} msgs, oldest {} s",
                    optional(outage.backlog_at_end, 0),
                    optional(outage.oldest_at_end, 0)
                ),
                "",
                None,
            );
            row(
                "  probe 200 after the sink came back",
                format!(
                    "{} s",
                    optional(outage.probe_after.map(|d| d.as_secs_f64()), 2)
                ),
                "",
                None,
            );
            row(
                "  backlog drained after the probe",
                format!(
                    "{} s ({} msgs)",
                    optional(outage.drain.map(|d| d.as_secs_f64()), 2),
                    outage.backlog_messages
                ),
                "",
                None,
            );
        }
        if let Some(drain) = &self.drain {
            let seconds = drain.drain.map(|d| d.as_secs_f64());
            row(
                &format!("{} queued drained after the probe", plan.queued),
                format!("{} s", optional(seconds, 2)),
                "< 5 s",
                seconds.map(|s| s < BAR_DRAIN_S && drain.check.missing == 0),
            );
        }
        let checks: Vec<(&str, &DeliveryCheck)> = [
            ("delivery", self.delivery.as_ref().map(|d| &d.check)),
            ("outage", self.outage.as_ref().map(|o| &o.check)),
            ("drain", self.drain.as_ref().map(|d| &d.check)),
        ]
        .into_iter()
        .filter_map(|(name, check)| Some((name, check?)))
        .collect();
        if !checks.is_empty() {
            let value = checks
                .iter()
                .map(|(_, check)| format!("{}/{}", check.delivered, check.accepted_fails))
                .collect::<Vec<_>>()
                .join(", ");
            let names: Vec<&str> = checks.iter().map(|(name, _)| *name).collect();
            let ok = checks.iter().all(|(_, check)| check.exactly_once());
            row(
                &format!("every FAIL delivered exactly once ({})", names.join(", ")),
                value,
                "0 missing/dup",
                Some(ok),
            );
        }
        if plan.quick {
            println!("\n  (a QUICK run: shortened phases, so the bars are indicative only)");
        }
        if problems.is_empty() {
            println!("\n  problems noticed: none");
        } else {
            println!("\n  problems noticed:");
            for problem in problems {
                println!("  - {problem}");
            }
        }
    }
}
