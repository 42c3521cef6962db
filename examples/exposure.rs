//! Exposure benchmark: what an exposed receiver costs and withstands. Accepts/s over TLS next
//! to plain HTTP in the same run; memory and service under a slow-client flood of as many
//! connections as a file-descriptor limit allows; and overload by a store that stops writing.
//!
//! Run it (Linux only; it needs `taskset` from util-linux and at least two cores):
//!
//! ```text
//! cargo build --release
//! cargo run --release --example exposure -- --duration 10s
//! ```
//!
//! What is measured:
//!
//! 1. **TLS vs plain.** `target/release/notirouter serve` on a fresh store in a temp dir (empty
//!    scripts dir, `hot_reload = false`, as in `loadgen`), pinned to `--server-cpu` (core 0),
//!    once with plain HTTP and once with `[server.tls]` on a self-signed ECDSA P-256 certificate
//!    made here with rcgen (the client trusts exactly that certificate; rustls, TLS 1.3). This
//!    program re-executes itself pinned to `--load-cpu` (core 1) and drives C keep-alive
//!    connections (`--connections 32,128`) in a closed loop with distinct
//!    `swUpgradeResultNotify` bodies: after `--warmup`, a window of `--duration` counts the
//!    `200 "accepted"` answers and the latency of every answer (write to end of response).
//!    Connections are kept alive, so the TLS handshakes fall in the warm-up: this is the cost
//!    of encrypted traffic, not of handshakes.
//! 2. **Slow-client flood.** A fresh server with `header_timeout` raised to
//!    `--flood-header-timeout` (30 s; the default 5 s would cut the flood off before it is
//!    measured) and the default `max_connections` (1024). This program re-executes itself as a
//!    separate flood process (hidden `--flood`, pinned to the load core) that raises its soft
//!    `RLIMIT_NOFILE` to the hard limit and opens that many connections, less a margin (at most
//!    `--flood-max`), each sending a request head one byte a second that never ends. While it
//!    holds (`--flood-hold`), normal requests are sent on new connections and on one
//!    connection opened before the flood; the server's RSS (`VmRSS`, `VmHWM`) and its open
//!    sockets are read from `/proc`. Connections beyond the server's slots wait in the kernel:
//!    the flood counts what it established, the server's sockets say what it accepted.
//! 3. **Slow store.** The server binary cannot inject faults, so this phase runs notirouter in
//!    this process (`serve_with_store`, unpinned: server and load share both cores) on the
//!    SQLite store behind a switch that holds every `append` while set, with
//!    `accept_timeout = "1s"`. Normal load, then the store stalls for `--stall` under
//!    `--stall-connections` closed-loop connections, then it writes again. Measured: the 503s
//!    (count, latency, `Retry-After`), any request left unanswered, the intake queue depth and
//!    the process's peak RSS during the stall, how soon a 200 comes back, and that every
//!    notification answered 200 is in the store afterwards.
//!
//! Every loop ends by a deadline, every target is 127.0.0.1, every child process is stopped by
//! its pid, and everything written stays in temp dirs.

#[path = "bench/mod.rs"]
mod bench;
// Shared with the tests, which also fill the disk; only the stall is used here.
#[allow(dead_code)]
#[path = "../tests/common/faulty_store.rs"]
mod faulty_store;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use notirouter::config::Config;
use notirouter::store::{EventFilter, SqliteStore, Store};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use faulty_store::FaultyStore;

use bench::{
    ChildGuard, Connection, CpuSample, CpuShares, ERROR_PAUSE, REQUEST_TIMEOUT, Server, memory_mb,
    optional, pinned, post_request, reexec_pinned, reset_peak_rss, status_field,
};

/// Set in the re-executed, pinned load generator so that it does not re-execute again.
const PINNED_ENV: &str = "EXPOSURE_PINNED";

/// Normal requests around the flood: one on a new connection this often, whether or not the
/// previous ones were answered, and one on the kept connection after each answer.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Normal requests before the flood starts.
const BEFORE_FLOOD: Duration = Duration::from_secs(2);
/// Time the flood gets to open its connections before the hold is measured.
const FLOOD_RAMP: Duration = Duration::from_secs(5);
/// Time the server gets to close the flood's sockets once the flood process is gone.
const AFTER_FLOOD_SETTLE: Duration = Duration::from_secs(3);
/// Normal requests after the flood.
const AFTER_FLOOD: Duration = Duration::from_secs(3);
/// How often the server's sockets and RSS are read, and the flood reports its counts.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// File descriptors the flood leaves free (its runtime, stdio, the odd resolver file).
const FD_MARGIN: usize = 64;
/// A flood connect that takes longer waits on a full backlog: give up and try again.
const FLOOD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before a flood client tries again after a failed connect.
const FLOOD_RETRY: Duration = Duration::from_secs(1);
/// A slow client sends one byte of its head this often.
const BYTE_EVERY: Duration = Duration::from_secs(1);
/// The start of a request head that never ends: the last header's value grows forever.
const SLOW_HEAD: &[u8] = b"POST /v1.0.0/messageReceiver HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

/// The slow-store phase's `accept_timeout`.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Load before the store stalls, and after it writes again.
const BEFORE_STALL: Duration = Duration::from_secs(3);
const AFTER_STALL: Duration = Duration::from_secs(5);
/// The intake's bound (notifications waiting for the writer), for the report.
const INTAKE_CAPACITY: usize = 2048;

/// Distinguishes every body sent in a run, so that none is a duplicate of another.
static NEXT_NOTIFICATION: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Parser)]
#[command(about = "TLS cost, slow-client flood and slow-store overload of notirouter")]
struct Args {
    #[command(flatten)]
    common: bench::Common,
    /// The TLS vs plain phases.
    #[command(flatten)]
    phases: bench::ClosedLoop,
    /// `server.header_timeout` of each flood run: first longer than the hold, so that the
    /// flood holds every slot; then the default, to see what it leaves to normal clients.
    #[arg(long, value_delimiter = ',', default_value = "30s,5s", value_parser = bench::parse_duration)]
    flood_header_timeout: Vec<Duration>,
    /// How long normal requests are measured while the flood holds.
    #[arg(long, default_value = "10s", value_parser = bench::parse_duration)]
    flood_hold: Duration,
    /// The most connections the flood opens, whatever its limit (loopback has about 28,000
    /// ephemeral ports per destination).
    #[arg(long, default_value_t = 25_000)]
    flood_max: usize,
    /// How long the store stalls. At 128 connections and a 1 s accept_timeout, about 128
    /// notifications a second pile up in front of the writer: 20 s fills the 2048 bound.
    #[arg(long, default_value = "20s", value_parser = bench::parse_duration)]
    stall: Duration,
    /// Closed-loop connections of the slow-store phase.
    #[arg(long, default_value_t = 128)]
    stall_connections: usize,
    /// Internal: be the flood process against this address.
    #[arg(long, hide = true)]
    flood: Option<SocketAddr>,
    /// Internal: how long the flood process lasts at most.
    #[arg(long, hide = true, default_value = "60s", value_parser = bench::parse_duration)]
    flood_for: Duration,
}

fn main() -> ExitCode {
    match run_mode(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("exposure: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_mode(args: Args) -> anyhow::Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    if let Some(address) = args.flood {
        return runtime()?.block_on(flood(address, args.flood_for, args.flood_max));
    }
    if std::env::var_os(PINNED_ENV).is_none() {
        return Err(reexec_pinned(args.common.load_cpu, PINNED_ENV));
    }
    runtime()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bin = args.common.binary()?;
    println!(
        "exposure: servers on core {}, load generator on CPUs {} (pid {})",
        args.common.server_cpu,
        status_field(std::process::id(), "Cpus_allowed_list").unwrap_or_default(),
        std::process::id(),
    );
    if cfg!(debug_assertions) {
        println!("warning: a debug build; the client may be the bottleneck (use --release)");
    }
    let throughput = tls_vs_plain(&args, &bin).await?;
    let mut floods = Vec::new();
    for &header_timeout in &args.flood_header_timeout {
        floods.push(slow_client_flood(&args, &bin, header_timeout).await?);
    }
    let stall = slow_store(&args).await?;
    print_summary(&throughput, &floods, &stall);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Requests and what became of them.

/// What one request got.
enum Outcome {
    /// 200 with `"status":"accepted"`, and the event's id.
    Accepted(String),
    /// Any other answer, and whether it carried `Retry-After`.
    Other { status: u16, retry_after: bool },
    /// No answer: what failed.
    Failed(String),
}

struct Record {
    started: Instant,
    finished: Instant,
    outcome: Outcome,
}

impl Record {
    fn latency(&self) -> Duration {
        self.finished - self.started
    }

    fn started_in(&self, from: Instant, to: Instant) -> bool {
        from <= self.started && self.started < to
    }

    fn finished_in(&self, from: Instant, to: Instant) -> bool {
        from <= self.finished && self.finished < to
    }

    fn is_accepted(&self) -> bool {
        matches!(self.outcome, Outcome::Accepted(_))
    }

    fn is_503(&self) -> bool {
        matches!(self.outcome, Outcome::Other { status: 503, .. })
    }
}

#[derive(serde::Deserialize)]
struct Answer {
    status: String,
    id: Option<String>,
}

fn outcome(response: &bench::Response) -> Outcome {
    let answer = match response.status {
        200 => serde_json::from_slice::<Answer>(&response.body).ok(),
        _ => None,
    };
    match answer {
        Some(Answer {
            status,
            id: Some(id),
        }) if status == "accepted" => Outcome::Accepted(id),
        _ => Outcome::Other {
            status: response.status,
            retry_after: response.retry_after.is_some(),
        },
    }
}

/// How a client on a kept-alive connection sends: until when, and with what pause between an
/// answer and the next request (none: a closed loop).
#[derive(Clone, Copy)]
struct Pace {
    until: Instant,
    pause: Duration,
}

/// A server under test: where it listens, and the TLS it speaks if any.
#[derive(Clone)]
struct Target {
    address: SocketAddr,
    tls: Option<TlsConnector>,
}

impl Target {
    fn plain(address: SocketAddr) -> Target {
        Target { address, tls: None }
    }

    /// One client's requests, on a task of its own.
    fn spawn_client(&self, pace: Pace) -> tokio::task::JoinHandle<Vec<Record>> {
        let address = self.address;
        match self.tls.clone() {
            None => tokio::spawn(client(address, move || Connection::open(address), pace)),
            Some(tls) => tokio::spawn(client(
                address,
                move || open_tls(address, tls.clone()),
                pace,
            )),
        }
    }

    /// `clients` clients at once, and every record of theirs once they are done.
    async fn load(&self, clients: usize, pace: Pace) -> anyhow::Result<Vec<Record>> {
        let tasks: Vec<_> = (0..clients).map(|_| self.spawn_client(pace)).collect();
        let mut records = Vec::new();
        for task in tasks {
            records.extend(task.await?);
        }
        Ok(records)
    }
}

async fn open_tls(
    address: SocketAddr,
    tls: TlsConnector,
) -> std::io::Result<Connection<TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(address).await?;
    // Each request is one small write; do not let Nagle hold it back.
    tcp.set_nodelay(true)?;
    let stream = tls.connect(ServerName::from(address.ip()), tcp).await?;
    Ok(Connection::over(stream))
}

/// One client's loop: send a notification, wait for the answer (or [`REQUEST_TIMEOUT`], connect
/// included), pause, repeat, until `pace.until`.
async fn client<S, F, R>(address: SocketAddr, mut open: F, pace: Pace) -> Vec<Record>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut() -> R,
    R: Future<Output = std::io::Result<Connection<S>>>,
{
    let mut records = Vec::new();
    let mut slot = None;
    while Instant::now() < pace.until {
        let record = request(address, &mut slot, open()).await;
        let failed = matches!(record.outcome, Outcome::Failed(_));
        records.push(record);
        let pause = if failed { ERROR_PAUSE } else { pace.pause };
        // A closed loop does not pause at all: a zero sleep would still cost a timer.
        if !pause.is_zero() {
            sleep(pause.min(pace.until.saturating_duration_since(Instant::now()))).await;
        }
    }
    records
}

/// One notification on the connection in `slot`, else on the one `open` makes; the answer
/// within [`REQUEST_TIMEOUT`], connect included.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    address: SocketAddr,
    slot: &mut Option<Connection<S>>,
    open: impl Future<Output = std::io::Result<Connection<S>>>,
) -> Record {
    let request = post_request(address, &notification_body());
    let started = Instant::now();
    let exchanged = timeout(REQUEST_TIMEOUT, async {
        let connection = bench::take_or(slot, open).await?;
        bench::exchange_in(slot, connection, &request).await
    })
    .await;
    let outcome = match exchanged {
        Ok(Ok(response)) => outcome(&response),
        Ok(Err(kind)) => Outcome::Failed(kind),
        Err(_) => Outcome::Failed(format!("no answer in {REQUEST_TIMEOUT:?}")),
    };
    Record {
        started,
        finished: Instant::now(),
        outcome,
    }
}

/// Requests on new connections, one every [`PROBE_EVERY`] until `until`, each on a task of its
/// own so that one waiting for a slot does not hold back the next (the platform, too, opens
/// connections as it pushes).
async fn probe_new_connections(address: SocketAddr, until: Instant) -> anyhow::Result<Vec<Record>> {
    let mut tasks = Vec::new();
    while Instant::now() < until {
        tasks.push(tokio::spawn(async move {
            request(address, &mut None, Connection::open(address)).await
        }));
        sleep(PROBE_EVERY).await;
    }
    let mut records = Vec::new();
    for task in tasks {
        records.push(task.await?);
    }
    Ok(records)
}

/// A realistic `swUpgradeResultNotify` with every mandatory field; one in ten is a FAIL.
fn notification_body() -> String {
    let n = NEXT_NOTIFICATION.fetch_add(1, Ordering::Relaxed);
    bench::upgrade_result(n, n.is_multiple_of(10))
}

/// Counts and latencies of some records.
#[derive(Default)]
struct Tally {
    accepted: usize,
    /// Every outcome but "accepted", by label (`503`, `503 without Retry-After`, `i/o: ...`).
    others: BTreeMap<String, usize>,
    /// Of every answered request, sorted.
    latencies: Vec<Duration>,
}

impl Tally {
    fn of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Tally {
        let mut tally = Tally {
            accepted: 0,
            others: BTreeMap::new(),
            latencies: Vec::new(),
        };
        for record in records {
            let label = match &record.outcome {
                Outcome::Accepted(_) => None,
                Outcome::Other {
                    status,
                    retry_after,
                } => Some(match (status, retry_after) {
                    (503, false) => "503 without Retry-After".to_owned(),
                    (status, _) => status.to_string(),
                }),
                Outcome::Failed(kind) => Some(kind.clone()),
            };
            match label {
                None => tally.accepted += 1,
                Some(label) => *tally.others.entry(label).or_default() += 1,
            }
            if !matches!(record.outcome, Outcome::Failed(_)) {
                tally.latencies.push(record.latency());
            }
        }
        tally.latencies.sort_unstable();
        tally
    }

    fn total(&self) -> usize {
        self.accepted + self.others.values().sum::<usize>()
    }

    /// The nearest-rank `p` latency in milliseconds.
    fn ms(&self, p: f64) -> Option<f64> {
        bench::nearest_rank(&self.latencies, p).map(|d| d.as_secs_f64() * 1e3)
    }

    fn max_ms(&self) -> Option<f64> {
        self.latencies.last().map(|d| d.as_secs_f64() * 1e3)
    }

    /// `12 requests: 10 accepted, 503 ×2; answered in ms p50 1.20 p99 3.40 max 5.00`.
    fn describe(&self) -> String {
        let mut parts = vec![format!("{} accepted", self.accepted)];
        parts.extend(self.others.iter().map(|(label, n)| format!("{label} ×{n}")));
        format!(
            "{} requests: {}; answered in ms p50 {} p99 {} max {}",
            self.total(),
            parts.join(", "),
            optional(self.ms(0.50), 2),
            optional(self.ms(0.99), 2),
            optional(self.max_ms(), 2)
        )
    }
}

/// A count, or `n/a` when it is not known.
fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "n/a".to_owned(), |n| n.to_string())
}

// ---------------------------------------------------------------------------------------------
// 1. TLS vs plain.

struct Throughput {
    tls: bool,
    connections: usize,
    accepted_per_second: f64,
    tally: Tally,
    peak_rss_mb: Option<f64>,
    cpu: CpuShares,
}

impl Throughput {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    fn print(&self) {
        let percent = |share: Option<f64>| optional(share.map(|s| s * 100.0), 0);
        println!(
            "  {} c={}: {:.1} accepted/s; {}",
            self.scheme(),
            self.connections,
            self.accepted_per_second,
            self.tally.describe()
        );
        println!(
            "    server peak RSS {} MB; CPU server {} % of its core, load generator {} %{}",
            optional(self.peak_rss_mb, 1),
            percent(self.cpu.server),
            percent(self.cpu.load),
            if self.cpu.client_bound() {
                " (saturated: a floor of the server's rate)"
            } else {
                ""
            }
        );
        if self.cpu.contended() {
            println!("    note: other processes used the benchmark cores; figures depressed");
        }
    }
}

async fn tls_vs_plain(args: &Args, bin: &Path) -> anyhow::Result<Vec<Throughput>> {
    println!("\n1. TLS vs plain: keep-alive connections, closed loop");
    let mut results = Vec::new();
    for tls in [false, true] {
        let dir = tempfile::tempdir().context("cannot create a temp dir")?;
        let (server, target) = start_receiver(args, bin, dir.path(), tls).await?;
        for &connections in &args.phases.connections {
            let result = throughput(&server, &target, connections, args).await?;
            result.print();
            results.push(result);
        }
        drop(server);
        dir.close().context("cannot remove the temp dir")?;
    }
    Ok(results)
}

/// notirouter on a fresh store in `dir`, plain or with a self-signed certificate made there.
async fn start_receiver(
    args: &Args,
    bin: &Path,
    dir: &Path,
    tls: bool,
) -> anyhow::Result<(Server, Target)> {
    let mut config = bench::base_config(dir)?;
    let connector = if tls {
        let (files, connector) = self_signed(dir)?;
        config["server"]["tls"] = files;
        Some(connector)
    } else {
        None
    };
    let command = bench::notirouter_command(bin, args.common.server_cpu, dir, &config, "info")?;
    let Some(connector) = connector else {
        let server = Server::start("notirouter http", command, true).await?;
        let target = Target::plain(server.address);
        return Ok((server, target));
    };
    let probe = connector.clone();
    let server = Server::start_probed("notirouter https", command, false, move |address| {
        let ready = bench::get_over(open_tls(address, probe.clone()), address, "/readyz");
        async move { ready.await.is_ok_and(|response| response.status == 200) }
    })
    .await?;
    let target = Target {
        address: server.address,
        tls: Some(connector),
    };
    Ok((server, target))
}

/// A certificate for 127.0.0.1 and its key, written into `dir` (as `[server.tls]` wants them),
/// and a client that trusts that certificate alone.
fn self_signed(dir: &Path) -> anyhow::Result<(serde_json::Value, TlsConnector)> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let files = serde_json::json!({ "cert": cert, "key": key });
    Ok((files, TlsConnector::from(Arc::new(client))))
}

async fn throughput(
    server: &Server,
    target: &Target,
    connections: usize,
    args: &Args,
) -> anyhow::Result<Throughput> {
    let peak_reset = reset_peak_rss(server.pid);
    let start = Instant::now() + args.phases.warmup;
    let end = start + args.phases.duration;
    let pace = Pace {
        until: end,
        pause: Duration::ZERO,
    };
    let load = target.load(connections, pace);
    let cores = (server.pid, args.common.server_cpu, args.common.load_cpu);
    let cpu = async {
        sleep_until(start).await;
        let before = CpuSample::take(cores.0, cores.1, cores.2);
        sleep_until(end).await;
        let after = CpuSample::take(cores.0, cores.1, cores.2);
        CpuShares::between(&before, &after, args.phases.duration.as_secs_f64())
    };
    let (records, cpu) = tokio::join!(load, cpu);
    let tally = Tally::of(records?.iter().filter(|r| r.finished_in(start, end)));
    Ok(Throughput {
        tls: target.tls.is_some(),
        connections,
        accepted_per_second: tally.accepted as f64 / args.phases.duration.as_secs_f64(),
        tally,
        peak_rss_mb: peak_reset.then(|| memory_mb(server.pid, "VmHWM")).flatten(),
        cpu,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Slow-client flood: the flood process.

/// What the flood process counts, printed as `name value` pairs every [`SAMPLE_EVERY`].
#[derive(Default)]
struct FloodCounts {
    open: AtomicUsize,
    connects: AtomicUsize,
    failed: AtomicUsize,
    cut: AtomicUsize,
}

impl FloodCounts {
    fn line(&self) -> String {
        let get = |n: &AtomicUsize| n.load(Ordering::Relaxed);
        format!(
            "open {} connects {} failed {} cut {}",
            get(&self.open),
            get(&self.connects),
            get(&self.failed),
            get(&self.cut)
        )
    }
}

/// The flood process: as many slow clients as its file-descriptor limit allows, until `lasting`
/// has passed (the benchmark stops it sooner, by its pid).
async fn flood(address: SocketAddr, lasting: Duration, most: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        address.ip().is_loopback(),
        "the flood targets loopback only"
    );
    let limit = raise_fd_limit();
    let clients = limit.saturating_sub(FD_MARGIN).min(most);
    println!("limit {limit} clients {clients}");
    let until = Instant::now() + lasting;
    let counts = Arc::new(FloodCounts::default());
    for _ in 0..clients {
        tokio::spawn(slow_client(address, until, Arc::clone(&counts)));
    }
    while Instant::now() < until {
        sleep(SAMPLE_EVERY).await;
        println!("{}", counts.line());
    }
    Ok(())
}

/// One slow client: connects, dribbles its head until the server cuts it off, connects again.
async fn slow_client(address: SocketAddr, until: Instant, counts: Arc<FloodCounts>) {
    while Instant::now() < until {
        let Ok(Ok(mut stream)) = timeout(FLOOD_CONNECT_TIMEOUT, TcpStream::connect(address)).await
        else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            sleep(FLOOD_RETRY).await;
            continue;
        };
        counts.connects.fetch_add(1, Ordering::Relaxed);
        counts.open.fetch_add(1, Ordering::Relaxed);
        dribble(&mut stream, until).await;
        counts.open.fetch_sub(1, Ordering::Relaxed);
        if Instant::now() < until {
            counts.cut.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends a request head that never ends, a byte every [`BYTE_EVERY`], until the server answers
/// (a 408) or closes, or `until`.
async fn dribble(stream: &mut TcpStream, until: Instant) {
    let mut answer = [0u8; 512];
    let mut sent = 0;
    while Instant::now() < until {
        let byte = SLOW_HEAD.get(sent).copied().unwrap_or(b'a');
        if stream.write_all(&[byte]).await.is_err() {
            return;
        }
        sent += 1;
        if timeout(BYTE_EVERY, stream.read(&mut answer)).await.is_ok() {
            return;
        }
    }
}

/// Raises the soft limit on open files to the hard one; returns the soft limit in force.
#[cfg(target_os = "linux")]
fn raise_fd_limit() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let in_force = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => raised,
        Err(_) => limit,
    };
    in_force
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Elsewhere the benchmark does not run (it needs taskset and /proc); this keeps it compiling.
#[cfg(not(target_os = "linux"))]
fn raise_fd_limit() -> usize {
    1024
}

// ---------------------------------------------------------------------------------------------
// 2. Slow-client flood: the benchmark's side.

/// The flood process, stopped (by its pid) when dropped.
struct FloodProcess {
    guard: ChildGuard,
    pid: u32,
    lines: mpsc::UnboundedReceiver<String>,
    /// The latest value of every count the flood printed.
    counts: BTreeMap<String, u64>,
}

impl FloodProcess {
    fn start(args: &Args, target: SocketAddr, lasting: Duration) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut command = pinned(args.common.load_cpu, &exe);
        command
            .arg("--flood")
            .arg(target.to_string())
            .arg("--flood-for")
            .arg(humantime::format_duration(lasting).to_string())
            .arg("--flood-max")
            .arg(args.flood_max.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = command.spawn().map_err(bench::taskset_error)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let pid = child.id();
        Ok(FloodProcess {
            guard: ChildGuard(child),
            pid,
            lines: bench::forward_lines(stdout),
            counts: BTreeMap::new(),
        })
    }

    /// The counts as last printed.
    fn counts(&mut self) -> &BTreeMap<String, u64> {
        while let Ok(line) = self.lines.try_recv() {
            let words: Vec<&str> = line.split_whitespace().collect();
            for pair in words.chunks(2) {
                if let [name, value] = pair
                    && let Ok(value) = value.parse()
                {
                    self.counts.insert((*name).to_owned(), value);
                }
            }
        }
        &self.counts
    }

    fn count(&mut self, name: &str) -> Option<u64> {
        self.counts().get(name).copied()
    }
}

/// What the server held and used while the flood held, sampled every [`SAMPLE_EVERY`].
#[derive(Default)]
struct Held {
    sockets_max: usize,
    rss_max_mb: Option<f64>,
    flood_open_max: u64,
}

struct FloodReport {
    header_timeout: Duration,
    server_fd_limit: Option<String>,
    actix_workers: usize,
    flood_limit: Option<u64>,
    flood_clients: Option<u64>,
    flood_failed: Option<u64>,
    /// Open sockets of the server before the flood (listener, /metrics and probe connections).
    sockets_before: usize,
    held: Held,
    sockets_after: usize,
    rss_before_mb: Option<f64>,
    /// `VmHWM` since just before the flood: the peak during it.
    peak_mb: Option<f64>,
    rss_after_mb: Option<f64>,
    /// Normal requests on new connections, and on one kept-alive connection, by period.
    fresh: [Tally; 3],
    kept: [Tally; 3],
}

const PERIODS: [&str; 3] = ["before", "during", "after"];

async fn slow_client_flood(
    args: &Args,
    bin: &Path,
    header_timeout: Duration,
) -> anyhow::Result<FloodReport> {
    let header_timeout_text = humantime::format_duration(header_timeout).to_string();
    println!(
        "\n2. Slow-client flood: server header_timeout {header_timeout_text} (default 5s), \
         max_connections 1024"
    );
    let dir = tempfile::tempdir().context("cannot create a temp dir")?;
    let mut config = bench::base_config(dir.path())?;
    config["server"]["header_timeout"] = header_timeout_text.into();
    let command =
        bench::notirouter_command(bin, args.common.server_cpu, dir.path(), &config, "info")?;
    let server = Server::start("notirouter http", command, true).await?;
    let report = flood_phase(args, &server, header_timeout).await;
    drop(server);
    dir.close().context("cannot remove the temp dir")?;
    let report = report?;
    print_flood(&report);
    Ok(report)
}

/// Normal requests throughout: before the flood, while it holds, after it is gone. The
/// schedule is fixed, so that every request falls in a known period.
async fn flood_phase(
    args: &Args,
    server: &Server,
    header_timeout: Duration,
) -> anyhow::Result<FloodReport> {
    let t0 = Instant::now();
    let flood_at = t0 + BEFORE_FLOOD;
    let held_at = flood_at + FLOOD_RAMP;
    let hold_end = held_at + args.flood_hold;
    // Requests started in the hold may wait for a slot until REQUEST_TIMEOUT: the flood stays.
    let stop_at = hold_end + REQUEST_TIMEOUT;
    let after_at = stop_at + AFTER_FLOOD_SETTLE;
    let end = after_at + AFTER_FLOOD;
    let pace = Pace {
        until: end,
        pause: PROBE_EVERY,
    };
    let fresh = probe_new_connections(server.address, end);
    let target = Target::plain(server.address);
    let kept = target.load(1, pace);
    let times = [flood_at, held_at, hold_end, stop_at, end];
    let observed = observe_flood(args, server, header_timeout, times);
    let (fresh, kept, observed) = tokio::join!(fresh, kept, observed);
    let (fresh, kept, mut report) = (fresh?, kept?, observed?);
    let periods = [(t0, flood_at), (held_at, hold_end), (after_at, end)];
    report.fresh =
        periods.map(|(from, to)| Tally::of(fresh.iter().filter(|r| r.started_in(from, to))));
    report.kept =
        periods.map(|(from, to)| Tally::of(kept.iter().filter(|r| r.started_in(from, to))));
    Ok(report)
}

/// Starts the flood at `flood_at`, samples the server while it holds, stops it at `stop_at`
/// and reads the server again at `end`.
async fn observe_flood(
    args: &Args,
    server: &Server,
    header_timeout: Duration,
    [flood_at, held_at, hold_end, stop_at, end]: [Instant; 5],
) -> anyhow::Result<FloodReport> {
    let pid = server.pid;
    sleep_until(flood_at).await;
    let sockets_before = socket_count(pid);
    let rss_before_mb = memory_mb(pid, "VmRSS");
    let peak_reset = reset_peak_rss(pid);
    let lasting = (end - flood_at) + REQUEST_TIMEOUT;
    let mut flood = FloodProcess::start(args, server.address, lasting)?;
    println!(
        "  flood process pid {} on CPUs {}",
        flood.pid,
        status_field(flood.pid, "Cpus_allowed_list").unwrap_or_default()
    );
    sleep_until(held_at).await;
    let mut held = Held::default();
    while Instant::now() < hold_end {
        held.sockets_max = held.sockets_max.max(socket_count(pid));
        held.rss_max_mb = max_of(held.rss_max_mb, memory_mb(pid, "VmRSS"));
        held.flood_open_max = held.flood_open_max.max(flood.count("open").unwrap_or(0));
        sleep(SAMPLE_EVERY).await;
    }
    sleep_until(stop_at).await;
    let (flood_limit, flood_clients) = (flood.count("limit"), flood.count("clients"));
    let flood_failed = flood.count("failed");
    drop(flood.guard);
    sleep_until(end).await;
    Ok(FloodReport {
        header_timeout,
        server_fd_limit: open_files_limit(pid),
        actix_workers: bench::actix_workers(pid),
        flood_limit,
        flood_clients,
        flood_failed,
        sockets_before,
        held,
        sockets_after: socket_count(pid),
        rss_before_mb,
        peak_mb: peak_reset.then(|| memory_mb(pid, "VmHWM")).flatten(),
        rss_after_mb: memory_mb(pid, "VmRSS"),
        fresh: Default::default(),
        kept: Default::default(),
    })
}

fn max_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The process's open sockets (listeners and connections alike), from `/proc/PID/fd`.
fn socket_count(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// The soft and hard `Max open files` of a process, e.g. `20000/20000`.
fn open_files_limit(pid: u32) -> Option<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    Some(format!("{}/{}", fields.get(3)?, fields.get(4)?))
}

fn print_flood(report: &FloodReport) {
    println!(
        "  server: fd limit {} (soft/hard), actix workers {}",
        report.server_fd_limit.as_deref().unwrap_or("n/a"),
        report.actix_workers
    );
    println!(
        "  flood: fd limit {} (soft raised to hard), {} slow clients; at most {} connections \
         established at once while it held, {} connects failed or timed out",
        count(report.flood_limit),
        count(report.flood_clients),
        report.held.flood_open_max,
        count(report.flood_failed)
    );
    println!(
        "  server sockets: {} before, at most {} while the flood held (accepted by the server; \
         the rest wait in the kernel), {} after",
        report.sockets_before, report.held.sockets_max, report.sockets_after
    );
    println!(
        "  server RSS MB: {} before, at most {} while held, peak (VmHWM) {}, {} after",
        optional(report.rss_before_mb, 1),
        optional(report.held.rss_max_mb, 1),
        optional(report.peak_mb, 1),
        optional(report.rss_after_mb, 1)
    );
    for (period, tally) in PERIODS.iter().zip(&report.fresh) {
        println!("  new connections, {period:<6}  {}", tally.describe());
    }
    for (period, tally) in PERIODS.iter().zip(&report.kept) {
        println!("  kept connection, {period:<6}  {}", tally.describe());
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Slow store: notirouter in this process, on the tests' store double.

/// notirouter serving in this process on a [`FaultyStore`]; stopped when dropped.
struct InProcess {
    address: SocketAddr,
    store: Arc<FaultyStore>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// Last, so that the store's files go only once the server has stopped.
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> anyhow::Result<InProcess> {
        let dir = tempfile::tempdir().context("cannot create a temp dir")?;
        let mut config = bench::base_config(dir.path())?;
        config["server"]["accept_timeout"] = humantime::format_duration(ACCEPT_TIMEOUT)
            .to_string()
            .into();
        let text = toml::to_string(&config)?;
        let config = Config::parse(&text, &dir.path().join("config.toml"), Vec::new())?;
        let store = Arc::new(FaultyStore::new(SqliteStore::open(&config.store)?));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let served: Arc<dyn Store> = store.clone();
        let thread = std::thread::Builder::new()
            .name("in-process".to_owned())
            .spawn(move || {
                let shutdown = async move {
                    let _ = stopped.await;
                };
                actix_web::rt::System::new()
                    .block_on(notirouter::serve_with_store(
                        config, served, listener, shutdown,
                    ))
                    .map_err(|error| error.to_string())
            })?;
        let server = InProcess {
            address,
            store,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        };
        bench::wait_ready("in-process notirouter", address, bench::readyz).await?;
        Ok(server)
    }

    /// Every event in the store, by id.
    fn stored_ids(&self) -> anyhow::Result<HashSet<String>> {
        let filter = EventFilter {
            limit: u32::MAX,
            ..Default::default()
        };
        let events = self.store.list_events(&filter)?;
        Ok(events.into_iter().map(|event| event.id).collect())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.store.set_stalled(false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => eprintln!("exposure: the in-process server failed: {error}"),
                Err(_) => eprintln!("exposure: the in-process server panicked"),
            }
        }
    }
}

/// Lets the calling thread, and the threads it starts from now on, run on every core.
#[cfg(target_os = "linux")]
fn unpin_current_thread() -> bool {
    use rustix::thread::{CpuSet, sched_setaffinity};
    let mut every = CpuSet::new();
    for cpu in 0..CpuSet::MAX_CPU {
        every.set(cpu);
    }
    sched_setaffinity(None, &every).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn unpin_current_thread() -> bool {
    false
}

// ---------------------------------------------------------------------------------------------
// 3. Slow store: the phase.

/// The process's memory around the stall: server and load generator together.
struct Stalled {
    rss_before_mb: Option<f64>,
    /// `VmHWM` since the stall began.
    peak_mb: Option<f64>,
}

struct StallReport {
    connections: usize,
    stall: Duration,
    unpinned: bool,
    before: Tally,
    /// Answers finished while the store stalled, after its first accept_timeout.
    stalled_answers: Tally,
    /// Every 503 of the phase.
    unavailable: Tally,
    /// Requests started after the store wrote again.
    after: Tally,
    /// Requests of the whole phase that got no answer at all (a hang would show here).
    unanswered: usize,
    /// From the un-stall to the first 200 "accepted" that finished after it.
    recovered_ms: Option<f64>,
    seen: Stalled,
    accepted: usize,
    /// Accepted ids not found in the store afterwards: must be none.
    missing: usize,
    stored: usize,
}

impl StallReport {
    /// Notifications answered 503 yet stored once the store wrote again: they were queued for
    /// the writer (or in the write it was stuck in), so this is how full the queue got.
    fn queued(&self) -> usize {
        self.stored.saturating_sub(self.accepted)
    }

    /// 503s whose notification never reached the queue (it was full): the platform's re-push
    /// is what brings them.
    fn not_queued(&self) -> usize {
        self.unavailable.total().saturating_sub(self.queued())
    }
}

async fn slow_store(args: &Args) -> anyhow::Result<StallReport> {
    let unpinned = unpin_current_thread();
    println!(
        "\n3. Slow store: notirouter in this process ({}), accept_timeout {}, {} connections, \
         store stalled for {}",
        if unpinned {
            "unpinned: server and load share every core"
        } else {
            "could not unpin: server and load share the load core"
        },
        humantime::format_duration(ACCEPT_TIMEOUT),
        args.stall_connections,
        humantime::format_duration(args.stall)
    );
    let server = InProcess::start().await?;
    let t0 = Instant::now();
    let stall_at = t0 + BEFORE_STALL;
    let unstall_at = stall_at + args.stall;
    let end = unstall_at + AFTER_STALL;
    let pace = Pace {
        until: end,
        pause: Duration::ZERO,
    };
    let target = Target::plain(server.address);
    let load = target.load(args.stall_connections, pace);
    let (records, seen) = tokio::join!(load, stall(&server, stall_at, unstall_at));
    let records = records?;
    // The 503'd notifications the writer had already taken were stored when the store wrote
    // again, AFTER_STALL before the load ended; every 200 was stored before it was answered.
    let stored = server.stored_ids()?;
    let report = stall_report(
        args,
        unpinned,
        &records,
        seen,
        &stored,
        [t0, stall_at, unstall_at],
    );
    print_stall(&report);
    Ok(report)
}

/// Stalls the store from `stall_at` to `unstall_at`, and reads the process's memory. (The
/// queue depth gauge is set only when the writer takes a batch, so it cannot show a stall;
/// the notifications stored after it say how full the queue got.)
async fn stall(server: &InProcess, stall_at: Instant, unstall_at: Instant) -> Stalled {
    let pid = std::process::id();
    sleep_until(stall_at).await;
    let rss_before_mb = memory_mb(pid, "VmRSS");
    let peak_reset = reset_peak_rss(pid);
    server.store.set_stalled(true);
    sleep_until(unstall_at).await;
    let peak_mb = peak_reset.then(|| memory_mb(pid, "VmHWM")).flatten();
    server.store.set_stalled(false);
    Stalled {
        rss_before_mb,
        peak_mb,
    }
}

fn stall_report(
    args: &Args,
    unpinned: bool,
    records: &[Record],
    seen: Stalled,
    stored: &HashSet<String>,
    [t0, stall_at, unstall_at]: [Instant; 3],
) -> StallReport {
    let accepted: Vec<&str> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Accepted(id) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let recovered_ms = records
        .iter()
        .filter(|r| r.is_accepted() && r.finished >= unstall_at)
        .map(|r| r.finished - unstall_at)
        .min()
        .map(|d| d.as_secs_f64() * 1e3);
    let settled = stall_at + ACCEPT_TIMEOUT;
    StallReport {
        connections: args.stall_connections,
        stall: args.stall,
        unpinned,
        before: Tally::of(records.iter().filter(|r| r.started_in(t0, stall_at))),
        stalled_answers: Tally::of(
            records
                .iter()
                .filter(|r| r.finished_in(settled, unstall_at)),
        ),
        unavailable: Tally::of(records.iter().filter(|r| r.is_503())),
        after: Tally::of(records.iter().filter(|r| r.started >= unstall_at)),
        unanswered: records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .count(),
        recovered_ms,
        seen,
        accepted: accepted.len(),
        missing: accepted.iter().filter(|id| !stored.contains(**id)).count(),
        stored: stored.len(),
    }
}

fn print_stall(report: &StallReport) {
    println!(
        "  the store double writes each writer round in separate transactions (the trait's \
         default), so normal rates here are below loadgen's"
    );
    println!("  before the stall       {}", report.before.describe());
    println!(
        "  answers in the stall   {}",
        report.stalled_answers.describe()
    );
    println!("  every 503              {}", report.unavailable.describe());
    println!(
        "  queued in the stall    {} notifications answered 503 were stored once the store \
         wrote again (queue bound {INTAKE_CAPACITY}, plus the batch in the stuck write); {} \
         were never queued",
        report.queued(),
        report.not_queued()
    );
    println!(
        "  process RSS MB         {} before the stall, peak (VmHWM) {} during it (server and \
         load generator together)",
        optional(report.seen.rss_before_mb, 1),
        optional(report.seen.peak_mb, 1)
    );
    println!(
        "  after the stall        first 200 {} ms after the store wrote again; {}",
        optional(report.recovered_ms, 1),
        report.after.describe()
    );
    println!(
        "  store                  {} answered 200 accepted, {} of them missing from the store; \
         {} events stored",
        report.accepted, report.missing, report.stored
    );
}

// ---------------------------------------------------------------------------------------------
// The summary.

fn print_summary(throughput: &[Throughput], floods: &[FloodReport], stall: &StallReport) {
    println!("\nsummary");
    print_throughput_summary(throughput);
    for flood in floods {
        print_flood_summary(flood);
    }
    print_stall_summary(stall);
}

fn print_flood_summary(flood: &FloodReport) {
    let during = &flood.fresh[1];
    println!(
        "  flood ({} header_timeout): {} slow clients (fd limit {}), at most {} connected; \
         server sockets {} -> {}; server RSS {} -> peak {} -> {} MB",
        humantime::format_duration(flood.header_timeout),
        count(flood.flood_clients),
        count(flood.flood_limit),
        flood.held.flood_open_max,
        flood.sockets_before,
        flood.held.sockets_max,
        optional(flood.rss_before_mb, 1),
        optional(flood.peak_mb, 1),
        optional(flood.rss_after_mb, 1)
    );
    println!(
        "    normal requests during it: new connections {}/{} accepted (p50 {} ms); \
         kept connection {}/{} accepted (p99 {} ms); after it {}/{} accepted",
        during.accepted,
        during.total(),
        optional(during.ms(0.5), 1),
        flood.kept[1].accepted,
        flood.kept[1].total(),
        optional(flood.kept[1].ms(0.99), 1),
        flood.fresh[2].accepted,
        flood.fresh[2].total()
    );
}

fn print_throughput_summary(results: &[Throughput]) {
    println!(
        "  {:>5} | {:>10} {:>7} {:>7} | {:>10} {:>7} {:>7} | {:>9}",
        "c", "http/s", "p50 ms", "p99 ms", "https/s", "p50 ms", "p99 ms", "https/http"
    );
    let plain = results.iter().filter(|r| !r.tls);
    for p in plain {
        let Some(t) = results
            .iter()
            .find(|r| r.tls && r.connections == p.connections)
        else {
            continue;
        };
        let ratio =
            (p.accepted_per_second > 0.0).then(|| t.accepted_per_second / p.accepted_per_second);
        println!(
            "  {:>5} | {:>10.1} {:>7} {:>7} | {:>10.1} {:>7} {:>7} | {:>9}",
            p.connections,
            p.accepted_per_second,
            optional(p.tally.ms(0.5), 2),
            optional(p.tally.ms(0.99), 2),
            t.accepted_per_second,
            optional(t.tally.ms(0.5), 2),
            optional(t.tally.ms(0.99), 2),
            optional(ratio, 2)
        );
    }
}

fn print_stall_summary(stall: &StallReport) {
    let unavailable = &stall.unavailable;
    let with_retry_after = unavailable.others.get("503").copied().unwrap_or(0);
    println!(
        "  slow store (in-process, {}, {} connections, {} stall, accept_timeout {}):",
        if stall.unpinned { "unpinned" } else { "pinned" },
        stall.connections,
        humantime::format_duration(stall.stall),
        humantime::format_duration(ACCEPT_TIMEOUT)
    );
    println!(
        "    {} 503s in p50 {} / p99 {} / max {} ms, {} with Retry-After; 200s answered in the \
         stall {}; requests never answered {}",
        unavailable.total(),
        optional(unavailable.ms(0.5), 0),
        optional(unavailable.ms(0.99), 0),
        optional(unavailable.max_ms(), 0),
        with_retry_after,
        stall.stalled_answers.accepted,
        stall.unanswered
    );
    println!(
        "    queued {} (bound {INTAKE_CAPACITY}); process peak RSS {} MB (from {} MB); first 200 \
         {} ms after recovery; {} accepted, {} missing from the store",
        stall.queued(),
        optional(stall.seen.peak_mb, 1),
        optional(stall.seen.rss_before_mb, 1),
        optional(stall.recovered_ms, 1),
        stall.accepted,
        stall.missing
    );
}
