//! The dashboard's campaign reads on a store of 100,000 events: how long the first request
//! takes to count everything, how long `/api/v1/campaigns` and one campaign's detail take once
//! counted (each request first catches up with the store), the catch-up after 1,000 new
//! events, and one campaign's counts alone (what a script binding would read per
//! notification). Runs in-process on a temporary SQLite store, through the same
//! `Dashboard::campaigns` call the handlers make (HTTP and JSON encoding not included).
//!
//! Then the scripts' `campaign(n)`, through `PluginSet::run` as the script workers call it,
//! sharing the dashboard's counts as `serve` does: for events stored one at a time (each
//! run catches up with the store, which has just been written), and 256 at a time as a busy
//! worker takes them (the first run's catch-up counts the whole batch); next to a plugin that
//! does nothing, whose cost is the run's own.
//!
//! `cargo run --release --example dashboardbench [-- --events 100000]`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use notirouter::campaign::{CampaignKey, Counter, Kind};
use notirouter::config::Config;
use notirouter::model::state::StateChanges;
use notirouter::model::{EventId, Millis};
use notirouter::notification::canonical_hash;
use notirouter::script::{Committed, EventInput, Limits, PluginSet, Settings};
use notirouter::store::{Appended, NewEvent, SqliteStore, Store};
use notirouter::ui::Dashboard;

const BATCH: usize = 1_000;
const DEVICES: usize = 20_000;
const VERSIONS: [&str; 4] = ["1.2", "1.3", "1.4", "1.5"];

fn main() -> anyhow::Result<()> {
    let events: usize = std::env::args()
        .skip_while(|arg| arg != "--events")
        .nth(1)
        .map(|count| count.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let toml = format!("[store]\npath = {:?}\n", dir.path().join("store.db"));
    let config = Config::parse(&toml, Path::new("dashboardbench.toml"), [])?;
    let store = Arc::new(SqliteStore::open(&config.store)?);
    let started = Instant::now();
    fill(store.as_ref(), 0, events)?;
    println!("stored {events} events in {:.1?}", started.elapsed());

    let counter = Arc::new(Counter::default());
    let dashboard = Dashboard::new(store.clone(), Arc::clone(&counter), &config);
    let cold = time(|| dashboard.campaigns(|index| index.summaries().len()))?;
    println!(
        "first /api/v1/campaigns (counts everything): {:.1?}",
        cold.0
    );
    println!("campaigns: {}", cold.1);

    let list = repeat(200, || dashboard.campaigns(|index| index.summaries()))?;
    report("/api/v1/campaigns, caught up", &list);
    let key = CampaignKey {
        kind: Kind::Software,
        target_version: "1.5".to_owned(),
    };
    let detail = repeat(200, || dashboard.campaigns(|index| index.detail(&key)))?;
    report("/api/v1/campaigns/software/1.5", &detail);

    fill(store.as_ref(), events, 1_000)?;
    let catch_up = time(|| dashboard.campaigns(|index| index.summaries()))?;
    println!(
        "/api/v1/campaigns after 1,000 new events: {:.2?}",
        catch_up.0
    );

    let one = dashboard.campaigns(|index| repeat_pure(10_000, || index.summary(&key)))?;
    report("one campaign's counts, no catch-up", &one);

    let committed = Committed::of_store(store.clone(), counter);
    let first = events + 1_000;
    let reading = plugins(&config, "fn on_notification(n) { campaign(n); }")?;
    let idle = plugins(&config, "fn on_notification(n) { }")?;
    let runs = |set: &PluginSet, from: usize, batch: usize| {
        run_stored(store.as_ref(), set, &committed, from, 2_000, batch)
    };
    report(
        "campaign(n), events stored one at a time",
        &runs(&reading, first, 1)?,
    );
    report(
        "a plugin that does nothing, one at a time",
        &runs(&idle, first + 4_000, 1)?,
    );
    report(
        "campaign(n), events stored 256 at a time",
        &runs(&reading, first + 8_000, 256)?,
    );
    Ok(())
}

/// A plugin set of one plugin, `source`.
fn plugins(config: &Config, source: &str) -> anyhow::Result<PluginSet> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("p.rhai"), source)?;
    let settings = Arc::new(Settings::from_config(config));
    let (set, errors) = PluginSet::load(dir.path(), &Limits::from_config(config), settings, None);
    anyhow::ensure!(errors.is_empty(), "{errors:?}");
    Ok(set)
}

/// Stores `count` upgrade results from `first`, `batch` at a time, and times the run of
/// `set` on each result after its batch is stored.
fn run_stored(
    store: &SqliteStore,
    set: &PluginSet,
    committed: &Committed,
    first: usize,
    count: usize,
    batch: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(count);
    // Odd numbers are results, which campaign(n) takes.
    let results: Vec<usize> = (first..)
        .filter(|n| n % 2 == 1 && n % 10 != 9)
        .take(count)
        .collect();
    for chunk in results.chunks(batch) {
        let ids = append(store, chunk.iter().map(|n| body(*n)).collect())?;
        for id in ids {
            let stored = store.stored_event(id)?.expect("just stored");
            let input = EventInput::from_stored(&stored).map_err(anyhow::Error::msg)?;
            let mut changes = StateChanges::default();
            let started = Instant::now();
            let run = set.run(&input, committed, &mut changes, Millis::now())?;
            samples.push(started.elapsed());
            anyhow::ensure!(!run.failed(), "{:?}", run.plugins);
        }
    }
    Ok(samples)
}

/// Stores `count` upgrade notifications numbered from `first`: per device a state change,
/// then a result (one in five a failure), over four software versions and one firmware one.
fn fill(store: &SqliteStore, first: usize, count: usize) -> anyhow::Result<()> {
    let bodies: Vec<Value> = (first..first + count).map(body).collect();
    for chunk in bodies.chunks(BATCH) {
        append(store, chunk.to_vec())?;
    }
    Ok(())
}

/// Stores `bodies` in one transaction; returns their ids.
fn append(store: &SqliteStore, bodies: Vec<Value>) -> anyhow::Result<Vec<EventId>> {
    let events: Vec<NewEvent> = bodies
        .iter()
        .map(|body| NewEvent {
            received_at: Millis::now(),
            path: "/v1.0.0/messageReceiver".to_owned(),
            remote_addr: None,
            notify_type: body["notifyType"].as_str().map(str::to_owned),
            device_id: body["deviceId"].as_str().map(str::to_owned),
            body: body.to_string().into_bytes(),
            hash: canonical_hash(body),
            warnings: Vec::new(),
        })
        .collect();
    let appended = store.append(&events, &[])?;
    Ok(appended
        .into_iter()
        .map(|appended| match appended {
            Appended::Accepted(id) | Appended::Duplicate(id) => id,
        })
        .collect())
}

fn body(number: usize) -> Value {
    let device = format!("dev-{:05}", number / 2 % DEVICES);
    let round = number / (2 * DEVICES);
    let version = VERSIONS[(number / 2) % VERSIONS.len()];
    let firmware = number % 10 == 9;
    let operation = format!("op-{version}-{round}-{firmware}");
    let sub = format!("sub-{number}");
    match (number.is_multiple_of(2), firmware) {
        (true, false) => json!({"notifyType": "swUpgradeStateChangeNotify", "deviceId": device,
            "appId": "a", "operationId": operation, "subOperationId": sub,
            "swUpgradeState": "downloading"}),
        (true, true) => json!({"notifyType": "fwUpgradeStateChangeNotify", "deviceId": device,
            "appId": "a", "operationId": operation, "subOperationId": sub, "step": "1"}),
        (false, false) => {
            let failed = number % 5 == 1;
            json!({"notifyType": "swUpgradeResultNotify", "deviceId": device, "appId": "a",
                "operationId": operation, "subOperationId": sub, "curVersion": "1.1",
                "targetVersion": version, "sourceVersion": "1.1",
                "swUpgradeResult": if failed { "FAIL" } else { "SUCCESS" },
                "upgradeTime": "100", "errorCode": format!("{}", number % 7)})
        }
        (false, true) => json!({"notifyType": "fwUpgradeResultNotify", "deviceId": device,
            "appId": "a", "operationId": operation, "subOperationId": sub,
            "curVersion": "V1", "targetVersion": "V2", "sourceVersion": "V1",
            "status": if number.is_multiple_of(3) { "FAIL" } else { "SUCCESS" }, "upgradeTime": "300"}),
    }
}

fn time<T, E>(run: impl FnOnce() -> Result<T, E>) -> Result<(Duration, T), E> {
    let started = Instant::now();
    let value = run()?;
    Ok((started.elapsed(), value))
}

fn repeat<T, E>(runs: usize, mut run: impl FnMut() -> Result<T, E>) -> Result<Vec<Duration>, E> {
    (0..runs)
        .map(|_| {
            time(&mut run).map(|(elapsed, value)| {
                std::hint::black_box(value);
                elapsed
            })
        })
        .collect()
}

fn repeat_pure<T>(runs: usize, mut run: impl FnMut() -> T) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(run());
            started.elapsed()
        })
        .collect()
}

fn report(what: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |quantile: f64| sorted[((sorted.len() - 1) as f64 * quantile) as usize];
    println!(
        "{what}: median {:.1?}, p99 {:.1?}, max {:.1?} ({} runs)",
        at(0.5),
        at(0.99),
        sorted[sorted.len() - 1],
        sorted.len()
    );
}
