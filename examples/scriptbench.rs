//! Script cost: what the shipped plugins cost per event, and how long a reload of 100 plugin
//! files takes. Runs the real engine and bindings in-process (the same `PluginSet::run` the
//! script workers call), over an in-memory state, on one thread.
//!
//! ```text
//! cargo run --release --example scriptbench -- [--events 100000] [--config config/notirouter.toml]
//! ```
//!
//! Per event: one `PluginSet::run` over every shipped plugin, with the body converted from JSON
//! to a rhai map as the worker does (`EventInput::from_parts`); 10 % of events are FAILs with
//! distinct devices, so the storm guard and the alert plugins do their real work. The store's
//! commit is not included: it is shared by a whole batch and shows in the pipeline benchmark.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use notirouter::config::Config;
use notirouter::model::Millis;
use notirouter::model::state::StateChanges;
use notirouter::script::dry_run::{MemoryCampaigns, MemoryState};
use notirouter::script::{Committed, EventInput, EventParts, Limits, PluginSet, Settings};

#[derive(Parser)]
struct Args {
    /// Events to run.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// The configuration whose scripts and vars are measured.
    #[arg(long, default_value = "config/notirouter.toml")]
    config: PathBuf,
    /// Plugin files in the reload measurement.
    #[arg(long, default_value_t = 100)]
    reload_files: usize,
}

fn body(index: usize) -> Vec<u8> {
    let failed = index.is_multiple_of(10);
    serde_json::json!({
        "notifyType": "swUpgradeResultNotify",
        "deviceId": format!("dev-{index:08}"),
        "appId": "O8syWKWBEMGUO7j0mqOskvH6x2Ea",
        "operationId": "5c9b1f2e0a1b2c3d4e5f6a7b",
        "subOperationId": format!("sub-{index}"),
        "curVersion": "1.3",
        "targetVersion": format!("1.{}", 5 + index % 7),
        "sourceVersion": "1.3",
        "swUpgradeResult": if failed { "FAIL" } else { "SUCCESS" },
        "upgradeTime": "120",
        "resultDesc": if failed { "upgrade failed" } else { "ok" },
        "errorCode": if failed { "7" } else { "0" },
        "description": if failed { "package verification failed" } else { "" },
    })
    .to_string()
    .into_bytes()
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

fn measure_runs(set: &PluginSet, events: usize) -> Vec<Duration> {
    let committed = Committed {
        state: Arc::new(MemoryState::default()),
        campaigns: Arc::new(MemoryCampaigns::default()),
    };
    let mut changes = StateChanges::default();
    let mut costs = Vec::with_capacity(events);
    let no_problems = serde_json::Value::Array(Vec::new());
    for index in 0..events {
        let body = body(index);
        let started = Instant::now();
        let input = EventInput::from_parts(EventParts {
            id: format!("bench-{index}"),
            received_at: Millis::now(),
            path: "/v1.0.0/messageReceiver",
            remote_addr: Some("127.0.0.1"),
            body: &body,
            problems: no_problems.clone(),
            source: "http",
        })
        .expect("benchmark bodies are JSON objects");
        let run = set
            .run(&input, &committed, &mut changes, Millis::now())
            .expect("memory state reads");
        costs.push(started.elapsed());
        assert!(!run.failed(), "a shipped plugin failed: {:?}", run.plugins);
        changes.settle();
        // The worker commits each batch; keep the overlay the size of one batch.
        if index % 256 == 255 {
            changes = StateChanges::default();
        }
    }
    costs.sort();
    costs
}

fn measure_reload(args: &Args, config: &Config) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let shipped = std::fs::read_to_string(config.scripts.dir.join("20-chat-on-fail.rhai"))
        .unwrap_or_default();
    let lib = config.scripts.dir.join("lib");
    copy_folder(&lib, &dir.path().join("lib"));
    for index in 0..args.reload_files {
        std::fs::write(dir.path().join(format!("{index:03}-plugin.rhai")), &shipped)
            .expect("writable");
    }
    let settings = Arc::new(Settings::from_config(config));
    let limits = Limits::from_config(config);
    let started = Instant::now();
    let (set, errors) = PluginSet::load(dir.path(), &limits, settings, None);
    let took = started.elapsed();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(set.len(), args.reload_files);
    took
}

fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("writable");
    for entry in std::fs::read_dir(from).into_iter().flatten().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copyable");
    }
}

fn main() {
    let args = Args::parse();
    let config = Config::load(&args.config, std::env::vars()).expect("a valid config");
    let settings = Arc::new(Settings::from_config(&config));
    let (set, errors) = PluginSet::load(
        &config.scripts.dir,
        &Limits::from_config(&config),
        settings,
        None,
    );
    assert!(errors.is_empty(), "{errors:?}");
    println!("plugins: {}", set.names().collect::<Vec<_>>().join(", "));
    // Warm up allocator and caches before measuring.
    measure_runs(&set, args.events.min(10_000));
    let costs = measure_runs(&set, args.events);
    let total: Duration = costs.iter().sum();
    println!(
        "script cost per event over {} events (10 % FAIL): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, mean {:.1} µs",
        costs.len(),
        percentile(&costs, 0.50).as_secs_f64() * 1e6,
        percentile(&costs, 0.99).as_secs_f64() * 1e6,
        percentile(&costs, 0.999).as_secs_f64() * 1e6,
        total.as_secs_f64() * 1e6 / costs.len() as f64,
    );
    println!(
        "single-thread ceiling: {:.0} events/s",
        costs.len() as f64 / total.as_secs_f64()
    );
    let reload = measure_reload(&args, &config);
    println!(
        "reload of {} plugin files: {:.1} ms",
        args.reload_files,
        reload.as_secs_f64() * 1e3
    );
    println!("bar: p50 < 20 µs per event; reload of 100 files < 1 s");
}
