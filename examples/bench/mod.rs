//! What the load benchmarks share (`loadgen`, `pipeline`, `exposure`): process pinning with
//! `taskset`, a notirouter child process on a temporary store (spawned, waited for, stopped on
//! drop), a minimal HTTP/1.1 client over any byte stream (plain TCP or TLS; and the request
//! reading a minimal server needs), `/metrics` scraping, `/proc` readings, percentiles and the
//! notification bodies.
//!
//! Included by each example with `#[path = "bench/mod.rs"] mod bench;`.

// Each example uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout, timeout_at};

pub const RECEIVER_PATH: &str = "/v1.0.0/messageReceiver";
/// The line the servers print on stderr once bound; the address follows it.
pub const LISTENING: &str = "listening addr=";
/// Longest wait for a server to print its address and then answer `/readyz` with 200.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The platform's own limit for an answer; it also bounds how long a phase can overrun.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause after a failed connect or exchange, so a dead server does not turn a phase into a spin.
pub const ERROR_PAUSE: Duration = Duration::from_millis(10);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Kernel clock ticks per second in `/proc/PID/stat`; USER_HZ is 100 on every Linux ABI in use.
const USER_HZ: f64 = 100.0;
/// Thread name (truncated to 15 bytes by the kernel) of each actix worker.
const ACTIX_WORKER_COMM: &str = "actix-rt|system";

/// The name of this example (`loadgen`, `pipeline`), for its messages on stderr.
pub fn program() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.file_stem()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "bench".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Arguments.

/// The arguments every benchmark takes: the binary under test and the two cores.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// The notirouter release binary.
    #[arg(long, default_value = "target/release/notirouter")]
    pub bin: PathBuf,
    /// The core the servers are pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// The core the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    pub load_cpu: usize,
}

impl Common {
    /// The binary as an absolute path (the server runs in its temp dir), or a hint to build it.
    pub fn binary(&self) -> anyhow::Result<PathBuf> {
        binary_at(&self.bin)
    }
}

/// The binary at `path` as an absolute path (a server runs in its temp dir), or a hint to build
/// it.
pub fn binary_at(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.is_file() {
        bail!(
            "notirouter binary not found at {}; run cargo build --release first",
            path.display()
        );
    }
    std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// The arguments of closed-loop load phases: how many connections, and for how long.
#[derive(Debug, clap::Args)]
pub struct ClosedLoop {
    /// Concurrent keep-alive connections, one phase each.
    #[arg(long, value_delimiter = ',', default_value = "32,128")]
    pub connections: Vec<usize>,
    /// Load before the measured window of each phase.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The measured window of each phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// A duration argument such as `10s`, `500ms` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

// ---------------------------------------------------------------------------------------------
// Pinning.

/// Replaces this process with itself under `taskset -c cpu`, with `env` set so that the pinned
/// copy does not re-execute again; returns only on failure.
pub fn reexec_pinned(cpu: usize, env: &str) -> anyhow::Error {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => return anyhow::Error::new(error).context("cannot find this executable"),
    };
    let error = Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(env, "1")
        .exec();
    taskset_error(error)
}

pub fn taskset_error(error: std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("taskset not found on PATH; install util-linux")
    } else {
        anyhow::Error::new(error).context("cannot run taskset")
    }
}

/// `program` under `taskset -c cpu`.
pub fn pinned(cpu: usize, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpu.to_string()).arg(program);
    command
}

// ---------------------------------------------------------------------------------------------
// notirouter on a temporary store.

/// The configuration every benchmark starts from: a free loopback port, and everything the
/// server writes (store, scripts dir, email) inside `dir`. The scripts dir `dir/scripts` is
/// created empty: no plugins run (the script worker still does its per-event bookkeeping).
pub fn base_config(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts)
        .with_context(|| format!("cannot create {}", scripts.display()))?;
    Ok(serde_json::json!({
        "server": { "listen": "127.0.0.1:0" },
        "store": { "path": dir.join("bench.db") },
        "scripts": { "dir": scripts, "hot_reload": false },
        "email": { "dir": dir.join("mail") },
    }))
}

/// Writes `config` to `dir/config.toml` and starts `bin serve` on it, pinned to `cpu`, in
/// `dir` as its working directory (so that relative paths, e.g. `data/chat`, land there), with
/// `RUST_LOG=rust_log` (the listening line is logged at INFO, so keep notirouter's INFO on).
pub async fn start_notirouter(
    bin: &Path,
    cpu: usize,
    dir: &Path,
    config: &serde_json::Value,
    rust_log: &str,
) -> anyhow::Result<Server> {
    let command = notirouter_command(bin, cpu, dir, config, rust_log)?;
    Server::start("notirouter", command, true).await
}

/// The command [`start_notirouter`] runs, for a caller that starts it its own way (e.g. a
/// server that answers only over TLS, see [`Server::start_probed`]).
pub fn notirouter_command(
    bin: &Path,
    cpu: usize,
    dir: &Path,
    config: &serde_json::Value,
    rust_log: &str,
) -> anyhow::Result<Command> {
    serve_command(pinned(cpu, bin), dir, config, rust_log)
}

/// `command` (the binary, pinned or not) made into [`notirouter_command`]'s `serve` on `config`.
pub fn serve_command(
    mut command: Command,
    dir: &Path,
    config: &serde_json::Value,
    rust_log: &str,
) -> anyhow::Result<Command> {
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, toml::to_string(config)?)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    command
        .current_dir(dir)
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .env("RUST_LOG", rust_log);
    // An override in the caller's environment would change the config under test.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NOTIROUTER") {
            command.env_remove(name);
        }
    }
    Ok(command)
}

// ---------------------------------------------------------------------------------------------
// A server child process.

pub struct Server {
    /// First, so that the server stops before its stderr reader does.
    child: ChildGuard,
    pub name: &'static str,
    pub address: SocketAddr,
    pub pid: u32,
    pub has_metrics: bool,
    /// Every stderr line of the server; drained by [`Server::problems_logged`].
    logs: mpsc::UnboundedReceiver<String>,
}

impl Server {
    /// Spawns `command`, waits for its listening line and for `/readyz` to answer 200.
    pub async fn start(
        name: &'static str,
        command: Command,
        has_metrics: bool,
    ) -> anyhow::Result<Server> {
        Server::start_probed(name, command, has_metrics, readyz).await
    }

    /// As [`Server::start`], with `ready(address)` saying whether the server is ready (true),
    /// for servers that a plain GET cannot reach (e.g. over TLS).
    pub async fn start_probed<F, R>(
        name: &'static str,
        mut command: Command,
        has_metrics: bool,
        ready: F,
    ) -> anyhow::Result<Server>
    where
        F: FnMut(SocketAddr) -> R,
        R: Future<Output = bool>,
    {
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
        wait_ready(name, address, ready).await?;
        let pid = guard.0.id();
        println!(
            "\n{name}: pid {pid}, listening on {address}, CPUs {}, actix worker threads {}",
            status_field(pid, "Cpus_allowed_list").unwrap_or_default(),
            actix_workers(pid)
        );
        Ok(Server {
            child: guard,
            name,
            address,
            pid,
            has_metrics,
            logs,
        })
    }

    /// The WARN and ERROR lines logged since the last call (the other lines are dropped).
    pub fn problems_logged(&mut self) -> Vec<String> {
        self.lines_logged()
            .into_iter()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .collect()
    }

    /// Kills the server with SIGKILL, as `kill -9` does (it finishes nothing), and reaps it.
    pub fn kill9(&mut self) -> std::io::Result<()> {
        self.child.0.kill()?;
        self.child.0.wait().map(drop)
    }

    /// Every line logged since the last call.
    pub fn lines_logged(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.logs.try_recv().ok()).collect()
    }

    /// Stops the server with SIGTERM (SIGKILL after a grace period) without blocking the
    /// runtime, so that whatever else runs on it (e.g. a sink the server is still sending to)
    /// keeps being served. Returns how long the server took to exit, `None` if it was killed.
    pub async fn stop(mut self) -> Option<Duration> {
        let asked = Instant::now();
        let pid = self.pid.to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        while asked.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.child.0.try_wait() {
                return Some(asked.elapsed());
            }
            sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "{}: pid {pid} ignored SIGTERM for {STOP_GRACE:?}; sending SIGKILL",
            program()
        );
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        None
    }
}

/// Stops the child when dropped, on success and error paths alike.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Already reaped (e.g. by `Server::stop`): nothing to stop, and its pid may be reused.
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{}: pid {pid} ignored SIGTERM for {STOP_GRACE:?}; sending SIGKILL",
            program()
        );
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a child's output on a thread, so that the pipe never fills and blocks the child.
pub fn forward_lines(
    output: impl std::io::Read + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (lines, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
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

/// Whether the server at `address` answers `GET /readyz` with 200.
pub async fn readyz(address: SocketAddr) -> bool {
    get(address, "/readyz")
        .await
        .is_ok_and(|response| response.status == 200)
}

/// Waits until `ready(address)` holds, at most [`STARTUP_TIMEOUT`].
pub async fn wait_ready<F, R>(name: &str, address: SocketAddr, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut(SocketAddr) -> R,
    R: Future<Output = bool>,
{
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if ready(address).await {
            return Ok(());
        }
        sleep(Duration::from_millis(100)).await;
    }
    bail!("{name} did not answer GET /readyz with 200 within {STARTUP_TIMEOUT:?}")
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// A field of `/proc/PID/status`, e.g. `VmHWM` or `Cpus_allowed_list`.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_owned())
    })
}

/// A `/proc/PID/status` memory field (in KiB there) in MB of 10^6 bytes.
pub fn memory_mb(pid: u32, field: &str) -> Option<f64> {
    let value = status_field(pid, field)?;
    let kib: f64 = value.strip_suffix(" kB")?.trim().parse().ok()?;
    Some(kib * 1024.0 / 1e6)
}

/// Resets `VmHWM` to the current RSS, so that each phase reports its own peak.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User + system CPU seconds of the whole process (all threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Seconds core `cpu` was busy (any process, interrupts, or another VM), from `/proc/stat`.
pub fn core_busy_seconds(cpu: usize) -> Option<f64> {
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

/// User + system CPU seconds of each thread group of `pid`, by thread name with a trailing
/// number folded (`script-0` → `script-N`).
pub fn thread_cpu_seconds(pid: u32) -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.filter_map(Result::ok) {
        let path = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        let Some(seconds) = stat_seconds(&stat) else {
            continue;
        };
        let comm = comm.trim_end();
        let name = match comm.trim_end_matches(|c: char| c.is_ascii_digit()) {
            stem if stem.len() < comm.len() && stem.ends_with('-') => format!("{stem}N"),
            _ => comm.to_owned(),
        };
        *by_name.entry(name).or_default() += seconds;
    }
    by_name
}

/// utime + stime of a `/proc/.../stat` line, in seconds.
fn stat_seconds(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name start at field 3; utime and stime are 14, 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

pub fn actix_workers(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == ACTIX_WORKER_COMM)
        .count()
}

// ---------------------------------------------------------------------------------------------
// CPU of both sides.

/// A load generator busier than this (share of its core) may be what limits the rate.
pub const CLIENT_BOUND: f64 = 0.9;
/// Share of a benchmark core that other processes may use before the figures are suspect.
pub const CONTENDED: f64 = 0.1;

/// CPU seconds used so far by the server and by this process (the load generator), and the busy
/// seconds of the two benchmark cores, whoever used them.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub server: Option<f64>,
    pub load: Option<f64>,
    pub server_core: Option<f64>,
    pub load_core: Option<f64>,
}

impl CpuSample {
    pub fn take(server_pid: u32, server_cpu: usize, load_cpu: usize) -> CpuSample {
        CpuSample {
            server: cpu_seconds(server_pid),
            load: cpu_seconds(std::process::id()),
            server_core: core_busy_seconds(server_cpu),
            load_core: core_busy_seconds(load_cpu),
        }
    }
}

/// Shares of a core across two [`CpuSample`]s.
#[derive(Debug, Clone, Copy)]
pub struct CpuShares {
    pub server: Option<f64>,
    pub load: Option<f64>,
    pub server_core: Option<f64>,
    pub load_core: Option<f64>,
}

impl CpuShares {
    pub fn between(before: &CpuSample, after: &CpuSample, seconds: f64) -> CpuShares {
        let share = |b: Option<f64>, a: Option<f64>| Some((a? - b?) / seconds);
        CpuShares {
            server: share(before.server, after.server),
            load: share(before.load, after.load),
            server_core: share(before.server_core, after.server_core),
            load_core: share(before.load_core, after.load_core),
        }
    }

    /// The largest share of either benchmark core used by other processes.
    pub fn others(&self) -> Option<f64> {
        let server = self.server_core? - self.server?;
        let load = self.load_core? - self.load?;
        Some(server.max(load).max(0.0))
    }

    /// Other processes used enough of a benchmark core to depress the figures.
    pub fn contended(&self) -> bool {
        self.others().is_some_and(|share| share > CONTENDED)
    }

    /// The load generator saturated its core: the rate it drove may be its own limit.
    pub fn client_bound(&self) -> bool {
        self.load.is_some_and(|share| share >= CLIENT_BOUND)
    }
}

// ---------------------------------------------------------------------------------------------
// /metrics.

/// The Prometheus text of `GET /metrics`; failures are reported on stderr.
pub async fn scrape(address: SocketAddr) -> Option<String> {
    match get(address, "/metrics").await {
        Ok(response) if response.status == 200 => {
            Some(String::from_utf8_lossy(&response.body).into_owned())
        }
        Ok(response) => {
            eprintln!("{}: GET /metrics answered {}", program(), response.status);
            None
        }
        Err(error) => {
            eprintln!("{}: GET /metrics failed: {error}", program());
            None
        }
    }
}

/// The value of an unlabelled sample in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The samples of `name` (labelled or not) with their labels, e.g.
/// `[([("kind","chat"),("outcome","sent")], 12.0)]`.
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.split_once("} ")?;
                (parse_labels(labels), value)
            } else {
                (Vec::new(), rest.strip_prefix(' ')?)
            };
            Some((labels, value.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// `a="x",b="y"` (label values here never hold quotes or commas).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.trim_matches('"').to_owned()))
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include every `(label, value)` of `filter`;
/// 0 when there is none (a labelled counter appears only once incremented).
pub fn metric_sum(text: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(labels, _)| {
            filter
                .iter()
                .all(|(name, value)| labels.iter().any(|(n, v)| n == name && v == value))
        })
        .map(|(_, value)| value)
        .sum::<f64>()
        // An empty sum is -0.0.
        + 0.0
}

/// The cumulative buckets of histogram `name` (`name_bucket{le=...}`), by upper bound.
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = samples(text, &format!("{name}_bucket"))
        .into_iter()
        .filter_map(|(labels, count)| {
            let le = labels.iter().find(|(n, _)| n == "le")?;
            let bound = if le.1 == "+Inf" {
                f64::INFINITY
            } else {
                le.1.parse().ok()?
            };
            Some((bound, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside its bucket as
/// Prometheus' `histogram_quantile` does; `None` when the histogram is empty. A quantile in the
/// `+Inf` bucket is reported as the largest finite bound.
pub fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let share = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Percentiles and printing.

/// The nearest-rank `p` percentile (0 < p ≤ 1) of sorted values; `None` when there are none.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

/// `value` with `decimals` decimals, or `n/a`.
pub fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

// ---------------------------------------------------------------------------------------------
// Notification bodies.

/// The device id of notification `n`: distinct for every `n`, and [`device_number`] reads `n`
/// back from any text that contains it.
pub fn device_id(n: u64) -> String {
    format!(
        "{DEVICE_PREFIX}{:04x}-{:012x}",
        n >> 48,
        n & 0xffff_ffff_ffff
    )
}

const DEVICE_PREFIX: &str = "9e620731-9a8b-42b7-";

/// The `n` of the first device id of [`device_id`]'s form in `text`.
pub fn device_number(text: &str) -> Option<u64> {
    let at = text.find(DEVICE_PREFIX)? + DEVICE_PREFIX.len();
    let id = text.get(at..at + 17)?;
    let (high, low) = id.split_once('-')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    Some(high << 48 | low)
}

/// A realistic `swUpgradeResultNotify` with every mandatory field for device [`device_id`]`(n)`;
/// a FAIL has error code 7 (not a transient code: the shipped retry plugin does not retry it).
pub fn upgrade_result(n: u64, fail: bool) -> String {
    let (result, error_code, description) = if fail {
        ("FAIL", "7", "package verification failed")
    } else {
        ("SUCCESS", "0", "")
    };
    serde_json::json!({
        "notifyType": "swUpgradeResultNotify",
        "deviceId": device_id(n),
        "appId": "O8syWKWBEMGUO7j0mqOskvH6x2Ea",
        "operationId": "5c9b1f2e0a1b2c3d4e5f6a7b",
        "subOperationId": format!("5c9b1f2e{n:016x}"),
        "curVersion": if fail { "1.3" } else { "1.5" },
        "targetVersion": "1.5",
        "sourceVersion": "1.3",
        "swUpgradeResult": result,
        "upgradeTime": "120",
        "resultDesc": if fail { "upgrade failed" } else { "upgrade succeeded" },
        "errorCode": error_code,
        "description": description,
    })
    .to_string()
}

pub fn post_request(address: SocketAddr, body: &str) -> Vec<u8> {
    format!(
        "POST {RECEIVER_PATH} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Sending notifications.

/// What notirouter's receiver answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 200 with `"status":"accepted"`.
    Accepted,
    /// 200 with `"status":"duplicate"`.
    Duplicate,
    /// 200 with any other body.
    Other200,
    /// Any other status.
    Status(u16),
}

#[derive(serde::Deserialize)]
struct Answer {
    status: String,
}

pub fn reply(response: &Response) -> Reply {
    if response.status != 200 {
        return Reply::Status(response.status);
    }
    match serde_json::from_slice::<Answer>(&response.body) {
        Ok(answer) if answer.status == "accepted" => Reply::Accepted,
        Ok(answer) if answer.status == "duplicate" => Reply::Duplicate,
        _ => Reply::Other200,
    }
}

/// The kept-alive connection in `slot`, or a new one; `Err` says what failed, e.g.
/// `connect: ConnectionRefused`.
pub async fn take_or_open(
    slot: &mut Option<Connection>,
    address: SocketAddr,
) -> Result<Connection, String> {
    take_or(slot, Connection::open(address)).await
}

/// The kept-alive connection in `slot`, or the one `open` makes (over any stream, e.g. TLS).
pub async fn take_or<S>(
    slot: &mut Option<Connection<S>>,
    open: impl Future<Output = std::io::Result<Connection<S>>>,
) -> Result<Connection<S>, String> {
    match slot.take() {
        Some(open) => Ok(open),
        None => open
            .await
            .map_err(|error| format!("connect: {}", error.kind())),
    }
}

/// Sends `request` on `connection` and reads the answer within [`REQUEST_TIMEOUT`]; the
/// connection goes back into `slot` when the server keeps it open. `Err` says what failed.
pub async fn exchange_in<S: AsyncRead + AsyncWrite + Unpin>(
    slot: &mut Option<Connection<S>>,
    mut connection: Connection<S>,
    request: &[u8],
) -> Result<Response, String> {
    match timeout(REQUEST_TIMEOUT, connection.exchange(request)).await {
        Ok(Ok(response)) => {
            if !response.close {
                *slot = Some(connection);
            }
            Ok(response)
        }
        Ok(Err(error)) => Err(format!("i/o: {}", error.kind())),
        Err(_) => Err(format!("no answer in {REQUEST_TIMEOUT:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The minimal HTTP/1.1 client (and the request reading of a minimal server).

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server will close the connection after this response.
    pub close: bool,
    /// The `Retry-After` header's value, if any.
    pub retry_after: Option<String>,
}

/// A request as a minimal server reads it.
pub struct Request {
    /// The request line, e.g. `POST /hook HTTP/1.1`.
    pub line: String,
    /// Names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }
}

/// An HTTP/1.1 connection over plain TCP (the default) or any other byte stream, e.g. TLS.
pub struct Connection<S = TcpStream> {
    stream: S,
    /// Bytes read and not yet consumed.
    buffer: Vec<u8>,
}

/// A message head larger than this is not one of our peers'.
const MAX_HEAD: usize = 16 * 1024;

impl Connection {
    pub async fn open(address: SocketAddr) -> std::io::Result<Connection> {
        Connection::from_stream(TcpStream::connect(address).await?)
    }

    /// A connection over an accepted or connected stream.
    pub fn from_stream(stream: TcpStream) -> std::io::Result<Connection> {
        // Each message is one small write; do not let Nagle hold it back.
        stream.set_nodelay(true)?;
        Ok(Connection::over(stream))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// A connection over `stream` as it is (set `TCP_NODELAY` on the TCP stream beneath).
    pub fn over(stream: S) -> Connection<S> {
        Connection {
            stream,
            buffer: Vec::with_capacity(4096),
        }
    }

    pub async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.stream.write_all(request).await?;
        // A TLS stream holds written records until flushed; on TCP this is a no-op.
        self.stream.flush().await?;
        let head_len = self.read_head().await?;
        let head = parse_head(&self.buffer[..head_len])?;
        let body = self.take_body(head_len, head.body_len).await?;
        Ok(Response {
            status: head.status,
            body,
            close: head.close,
            retry_after: head.retry_after,
        })
    }

    /// The next request on a server's connection; `None` when the client closed it cleanly.
    /// Only `Content-Length` bodies are understood (a chunked request is refused).
    pub async fn read_request(&mut self) -> std::io::Result<Option<Request>> {
        if self.buffer.is_empty() {
            self.buffer.reserve(4096);
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
        let head_len = self.read_head().await?;
        let head = std::str::from_utf8(&self.buffer[..head_len])
            .map_err(|_| invalid("request head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or_default().to_owned();
        let mut body_len = 0;
        let mut headers = Vec::new();
        for (name, value) in lines.filter_map(|line| line.split_once(':')) {
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                body_len = value.parse().map_err(|_| invalid("bad Content-Length"))?;
            } else if name == "transfer-encoding" {
                return Err(invalid("chunked requests are not understood"));
            }
            headers.push((name, value.to_owned()));
        }
        let body = self.take_body(head_len, body_len).await?;
        Ok(Some(Request {
            line,
            headers,
            body,
        }))
    }

    /// Writes raw bytes (a whole response).
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads until the buffer holds the body after a head of `head_len`, and consumes both.
    async fn take_body(&mut self, head_len: usize, body_len: usize) -> std::io::Result<Vec<u8>> {
        while self.buffer.len() < head_len + body_len {
            self.fill().await?;
        }
        let body = self.buffer[head_len..head_len + body_len].to_vec();
        self.buffer.drain(..head_len + body_len);
        Ok(body)
    }

    /// Reads until the buffer holds a whole head; returns its length with the blank line.
    async fn read_head(&mut self) -> std::io::Result<usize> {
        loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(at + 4);
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(invalid("message head too large"));
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

/// What a response head says about the message.
struct Head {
    status: u16,
    body_len: usize,
    close: bool,
    retry_after: Option<String>,
}

/// Our servers always send a Content-Length; a chunked answer is refused as malformed rather
/// than misread.
fn parse_head(head: &[u8]) -> std::io::Result<Head> {
    let head = std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("malformed status line"))?;
    let mut body_len = None;
    let mut close = false;
    let mut retry_after = None;
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value.to_owned());
        }
    }
    let body_len = body_len.ok_or_else(|| invalid("no Content-Length"))?;
    Ok(Head {
        status,
        body_len,
        close,
        retry_after,
    })
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned())
}

/// One GET on a fresh connection, for probes and metrics.
pub async fn get(address: SocketAddr, path: &str) -> std::io::Result<Response> {
    get_over(Connection::open(address), address, path).await
}

/// One GET on the connection `open` makes (over any stream, e.g. TLS).
pub async fn get_over<S: AsyncRead + AsyncWrite + Unpin>(
    open: impl Future<Output = std::io::Result<Connection<S>>>,
    address: SocketAddr,
    path: &str,
) -> std::io::Result<Response> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let exchange = async {
        let mut connection = open.await?;
        connection.exchange(request.as_bytes()).await
    };
    timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip() {
        for n in [0, 1, 0xffff_ffff_ffff, 1 << 48, u64::MAX >> 1] {
            let text = format!(":warning: Upgrade FAILED: {} to 1.5", device_id(n));
            assert_eq!(device_number(&text), Some(n));
        }
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let buckets = [
            (1.0, 0.0),
            (2.0, 50.0),
            (4.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(bucket_quantile(&buckets, 0.5), Some(2.0));
        assert_eq!(bucket_quantile(&buckets, 0.75), Some(3.0));
        assert_eq!(bucket_quantile(&[], 0.5), None);
    }
}
