//! Platform client throughput and pacing, against the fake platform on loopback.
//!
//! ```text
//! cargo run --release --example platformbench -- [--seconds 5] [--concurrency 8] \
//!     [--rate 100] [--paced-seconds 70]
//! ```
//!
//! 1. Limiter off (`max_calls_per_minute = 0`): `--concurrency` callers create software
//!    upgrade tasks for `--seconds`; prints tasks created per second and the latency.
//! 2. Limiter on (`max_calls_per_minute = --rate`): the same callers for `--paced-seconds`;
//!    from the fake platform's own record of arrivals (login included), prints the most calls
//!    seen in any 60 s window, which must not exceed the rate. Run it longer than 60 s to see
//!    the second window open.

#[path = "../tests/common/fake_platform.rs"]
mod fake_platform;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use fake_platform::FakePlatform;
use notirouter::action::PlatformOp;
use notirouter::config::Config;
use notirouter::platform::{Platform, UpgradeKind};

/// The platform's counting window.
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Args {
    /// Length of the unlimited run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Callers creating tasks at once (the delivery default per destination is 8).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// `max_calls_per_minute` of the paced run.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Length of the paced run.
    #[arg(long, default_value_t = 70)]
    paced_seconds: u64,
}

fn platform(fake: &FakePlatform, rate: u32) -> anyhow::Result<Arc<Platform>> {
    let text = fake.config(&format!("max_calls_per_minute = {rate}\n"));
    let config = Config::parse(&text, Path::new("platformbench.toml"), Vec::new())?;
    Ok(Arc::new(Platform::new(
        &config.platform,
        Duration::from_secs(10),
    )?))
}

fn op(device: usize) -> PlatformOp {
    PlatformOp::retry_upgrade(&format!("dev-{device:08}"), "swUpgradeResultNotify", "1.5")
}

/// Creates tasks from `concurrency` callers until `length` has passed; returns each latency.
async fn create_for(
    platform: Arc<Platform>,
    concurrency: usize,
    length: Duration,
) -> Vec<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + length;
    let callers = (0..concurrency).map(|_| {
        let (platform, next) = (Arc::clone(&platform), Arc::clone(&next));
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let device = next.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let created = tokio::time::timeout_at(
                    deadline.into(),
                    platform.create_task(UpgradeKind::Software, "sw-1.5", &op(device)),
                )
                .await;
                match created {
                    Ok(Ok(_)) => latencies.push(started.elapsed()),
                    Ok(Err(error)) => eprintln!("create failed: {error}"),
                    Err(_) => break,
                }
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for caller in futures_util::future::join_all(callers).await {
        all.extend(caller.unwrap_or_default());
    }
    all.sort();
    all
}

/// The most of `arrivals` (sorted) within any `WINDOW`.
fn busiest_window(arrivals: &[Instant]) -> usize {
    let mut first = 0;
    let mut most = 0;
    for (last, at) in arrivals.iter().enumerate() {
        while *at - arrivals[first] >= WINDOW {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * fraction).round() as usize)
        .copied()
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    let fake = FakePlatform::start();
    let length = Duration::from_secs(args.seconds);
    let latencies = create_for(platform(&fake, 0)?, args.concurrency, length).await;
    println!(
        "limiter off: {} tasks in {:?} = {:.0} tasks/s ({} callers); latency p50 {:?}, p99 {:?}",
        latencies.len(),
        length,
        latencies.len() as f64 / length.as_secs_f64(),
        args.concurrency,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
    drop(fake);

    let fake = FakePlatform::start();
    let length = Duration::from_secs(args.paced_seconds);
    let created = create_for(platform(&fake, args.rate)?, args.concurrency, length).await;
    let mut arrivals: Vec<Instant> = fake.requests().iter().map(|r| r.at).collect();
    arrivals.sort();
    let most = busiest_window(&arrivals);
    println!(
        "limiter on ({} calls/min): {} calls ({} tasks) in {:?}; most calls in any 60 s window: {most} \
         (limit {}){}",
        args.rate,
        arrivals.len(),
        created.len(),
        length,
        args.rate,
        if most <= args.rate as usize {
            ""
        } else {
            "  EXCEEDED"
        },
    );
    Ok(())
}
