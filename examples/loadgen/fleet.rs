//! `--target`: load on running instances (e.g. several notirouters on one PostgreSQL) instead
//! of a server this program starts. Each connection slot holds one kept-alive connection per
//! target and sends its requests to the targets in turn, so the load splits evenly whatever
//! each target's speed. CPU is read from `/proc/PID/stat` (utime + stime) before and after the
//! window: of the `--pid` processes, and of every process of this machine named `postgres`
//! (the server and its backends; a backend that ends inside the window takes its time along,
//! one that starts in it counts from zero).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::time::{Instant, sleep, sleep_until};

use super::{Args, NEXT_NOTIFICATION, Stats, Window, bench, notification_body};
use bench::{ERROR_PAUSE, optional, post_request};

/// The process name of PostgreSQL's server and backends.
const POSTGRES: &str = "postgres";
/// Notifications numbered per run from the start time in ms times this, so that a run
/// against instances that kept an earlier run's store sends no duplicates of it.
const PER_MS: u64 = 1_000_000;

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let targets = Arc::new(resolve(&args.targets)?);
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    NEXT_NOTIFICATION.store(started * PER_MS, Ordering::Relaxed);
    println!(
        "loadgen: {} target(s) {}, notirouter pids {:?}, load generator on CPUs {}; \
         warm-up {:?}, measured {:?} per phase",
        targets.len(),
        args.targets.join(", "),
        args.pids,
        bench::status_field(std::process::id(), "Cpus_allowed_list").unwrap_or_default(),
        args.phases.warmup,
        args.phases.duration
    );
    for &connections in &args.phases.connections {
        let report = run_phase(&targets, connections, args).await?;
        report.print(&args.targets);
    }
    Ok(())
}

/// Each URL's host and port (`http` only: the receiver under load speaks plain HTTP here).
fn resolve(urls: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    urls.iter()
        .map(|url| {
            let rest = url.strip_prefix("http://").with_context(|| {
                format!("--target {url:?}: give an http:// base URL such as http://127.0.0.1:8080")
            })?;
            let authority = rest.split('/').next().unwrap_or_default();
            let mut addresses = authority
                .to_socket_addrs()
                .with_context(|| format!("--target {url:?}: cannot resolve {authority:?}"))?;
            match addresses.next() {
                Some(address) => Ok(address),
                None => bail!("--target {url:?}: {authority:?} resolves to no address"),
            }
        })
        .collect()
}

async fn run_phase(
    targets: &Arc<Vec<SocketAddr>>,
    connections: usize,
    args: &Args,
) -> anyhow::Result<FleetReport> {
    let start = Instant::now() + args.phases.warmup;
    let window = Window {
        start,
        end: start + args.phases.duration,
    };
    let drivers: Vec<_> = (0..connections)
        .map(|slot| tokio::spawn(drive(Arc::clone(targets), slot, window, args.repush)))
        .collect();
    let pids = args.pids.clone();
    let cpu = tokio::spawn(async move {
        sleep_until(window.start).await;
        let before = CpuTimes::take(&pids);
        sleep_until(window.end).await;
        (before, CpuTimes::take(&pids))
    });
    let mut per_target: Vec<Stats> = targets.iter().map(|_| Stats::default()).collect();
    for driver in drivers {
        for (total, stats) in per_target.iter_mut().zip(driver.await?) {
            total.merge(stats);
        }
    }
    let (before, after) = cpu.await?;
    Ok(FleetReport {
        connections,
        window: args.phases.duration,
        per_target,
        cpu: CpuUse::between(&before, &after),
    })
}

/// One connection slot's closed loop over all targets in turn; what each target answered.
async fn drive(
    targets: Arc<Vec<SocketAddr>>,
    slot: usize,
    window: Window,
    repush: bool,
) -> Vec<Stats> {
    let mut stats: Vec<Stats> = targets.iter().map(|_| Stats::default()).collect();
    let mut connections: Vec<Option<bench::Connection>> = targets.iter().map(|_| None).collect();
    // Slots start at different targets, so that the first requests spread too.
    let mut turn = slot;
    while Instant::now() < window.end {
        let index = turn % targets.len();
        turn += 1;
        let (address, connection) = (targets[index], &mut connections[index]);
        let open = match bench::take_or_open(connection, address).await {
            Ok(open) => open,
            Err(kind) => {
                stats[index].error(window, Instant::now(), kind);
                sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let request = post_request(address, &notification_body(repush));
        let started = Instant::now();
        let result = bench::exchange_in(connection, open, &request).await;
        let finished = Instant::now();
        match result {
            Ok(response) => stats[index].answered(window, finished, finished - started, &response),
            Err(kind) => stats[index].error(window, finished, kind),
        }
    }
    stats
}

/// CPU seconds of the watched processes at one instant.
struct CpuTimes {
    notirouter: BTreeMap<u32, f64>,
    postgres: BTreeMap<u32, f64>,
    load: Option<f64>,
    /// The given pids that could not be read.
    missing: Vec<u32>,
}

impl CpuTimes {
    fn take(pids: &[u32]) -> CpuTimes {
        let notirouter: BTreeMap<u32, f64> = pids
            .iter()
            .filter_map(|&pid| Some((pid, bench::cpu_seconds(pid)?)))
            .collect();
        let postgres = processes_named(POSTGRES)
            .into_iter()
            .filter_map(|pid| Some((pid, bench::cpu_seconds(pid)?)))
            .collect();
        let missing = pids
            .iter()
            .filter(|pid| !notirouter.contains_key(pid))
            .copied()
            .collect();
        CpuTimes {
            notirouter,
            missing,
            postgres,
            load: bench::cpu_seconds(std::process::id()),
        }
    }
}

/// The processes of this machine whose name (`/proc/PID/comm`) is `name`.
fn processes_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// CPU seconds used across the window.
struct CpuUse {
    notirouter: f64,
    /// The pids given that could not be read at both ends (gone, or never there).
    unreadable: Vec<u32>,
    postgres: f64,
    postgres_processes: usize,
    load: Option<f64>,
}

impl CpuUse {
    fn between(before: &CpuTimes, after: &CpuTimes) -> CpuUse {
        let mut unreadable: Vec<u32> = before
            .missing
            .iter()
            .chain(&after.missing)
            .copied()
            .collect();
        unreadable.sort_unstable();
        unreadable.dedup();
        CpuUse {
            notirouter: used(&before.notirouter, &after.notirouter),
            unreadable,
            postgres: used(&before.postgres, &after.postgres),
            postgres_processes: after.postgres.len(),
            load: after.load.zip(before.load).map(|(a, b)| a - b),
        }
    }
}

/// Seconds used between two readings: a process seen only after counts from zero.
fn used(before: &BTreeMap<u32, f64>, after: &BTreeMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, seconds)| seconds - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

struct FleetReport {
    connections: usize,
    window: std::time::Duration,
    per_target: Vec<Stats>,
    cpu: CpuUse,
}

impl FleetReport {
    fn print(self, urls: &[String]) {
        let seconds = self.window.as_secs_f64();
        println!(
            "\n{} target(s) c={}: measured {:?}",
            urls.len(),
            self.connections,
            self.window
        );
        for (url, stats) in urls.iter().zip(&self.per_target) {
            println!(
                "  {url:<30} accepted {} ({:.1}/s), duplicates {}, other 200 {}, non-200 {:?}, errors {:?}",
                stats.accepted,
                stats.accepted as f64 / seconds,
                stats.duplicates,
                stats.other_200,
                stats.non_200,
                stats.errors
            );
        }
        let mut all = Stats::default();
        for stats in self.per_target {
            all.merge(stats);
        }
        println!(
            "  accepted        {} ({:.1}/s) in all",
            all.accepted,
            all.accepted as f64 / seconds
        );
        all.print_latency();
        self.cpu.print(all.accepted + all.duplicates, seconds);
    }
}

impl CpuUse {
    fn print(&self, answers: u64, seconds: f64) {
        let per_answer = |busy: f64| (answers > 0).then(|| busy / answers as f64 * 1e6);
        let cores = |busy: f64| busy / seconds * 100.0;
        println!(
            "  CPU per answer  notirouter {} µs, postgres {} µs ({} processes), both {} µs",
            optional(per_answer(self.notirouter), 1),
            optional(per_answer(self.postgres), 1),
            self.postgres_processes,
            optional(per_answer(self.notirouter + self.postgres), 1)
        );
        println!(
            "  CPU busy        notirouter {:.0} % of a core, postgres {:.0} %, load generator {} %",
            cores(self.notirouter),
            cores(self.postgres),
            optional(self.load.map(cores), 0)
        );
        if !self.unreadable.is_empty() {
            println!(
                "  note            pids {:?} could not be read at one end or both of the window: \
                 their CPU is missing",
                self.unreadable
            );
        }
    }
}
