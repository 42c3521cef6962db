//! Takeover benchmark: two instances on one PostgreSQL database under an open-loop load; one is
//! killed with SIGKILL, and the other must lose nothing that was answered 200 and send the
//! actions the dead one had claimed within `store.lease` + 2 s of the kill.
//!
//! Run it (Linux; a PostgreSQL 13+ server whose user may create databases):
//!
//! ```text
//! cargo build --release
//! cargo run --release --example takeover                        # about 25 s
//! cargo run --release --example takeover -- --lease 10s --rate 500
//! ```
//!
//! - The database: a fresh one, `notirouter_takeover_<ulid>`, on the server that
//!   `NOTIROUTER_TEST_PG` names (default `postgres://postgres@127.0.0.1:5432/test`), dropped at
//!   the end, also after an error or Ctrl-C.
//! - The instances: `target/release/notirouter serve` twice, unpinned, each on a free loopback
//!   port in a temp dir of its own, both on that database with `store.lease = --lease`
//!   (default 6 s, the shortest the server allows with `delivery.timeout = 1s`). Their plugin
//!   dir holds one plugin that queues a webhook for every upgrade FAIL, to a channel pointing at
//!   a sink in this process. `delivery.concurrency_per_destination` is 32 so that both keep up
//!   with the FAILs while each webhook waits `--sink-delay` for its answer.
//! - The sink: an HTTP/1.1 server on loopback that records each request's `Idempotency-Key`,
//!   the device id in its body, and when it arrived, then answers 200 after `--sink-delay`
//!   (default 200 ms, a slow receiver): each instance then has sends in flight, so claims, at
//!   any instant, the kill's included.
//! - The load: an open loop at `--rate` (default 1,000/s). Request `i` is due at
//!   `start + i / rate`, and up to `--in-flight` keep-alive connections take the due requests in
//!   order. Bodies are distinct `swUpgradeResultNotify` (the device id encodes `i`), one in
//!   `--fail-every` (10) a FAIL. Until the kill, even requests go to A and odd ones to B; from
//!   the kill on, all go to B (a load balancer stops sending to a dead instance, and the requests
//!   to A that fail are counted as refused, not lost).
//! - The kill: after `--before-kill` (10 s) A gets SIGKILL and is reaped; the database then
//!   shows the claims A held at that instant: pending actions and events whose `claimed_by` is
//!   A's process and whose `lease_until` had not passed. A claim names its process by a ULID
//!   of the process (`<ulid>/deliver`); B's is the one whose claims end later than any claim
//!   made before the kill could (`lease_until` beyond the kill plus the lease). A second look
//!   once B is known picks up the claims of A's last commits, if the database applied them
//!   after the first look.
//! - Then: the load goes on to B alone for `--after-kill` (10 s), stops, and the run waits (at
//!   most `--drain-wait`) until no event or action is pending. It prints the offered and
//!   answered counts per instance; the notifications answered 200 whose event is not in the
//!   database with that device; the FAILs answered 200 whose webhook never arrived; the
//!   duplicates at the sink (one idempotency key twice: allowed, delivery is at least once);
//!   and for the actions A had claimed, how many, the time from the kill to their delivery by
//!   B (the first arrival of each key once A's lease on it had ended) next to `lease + 2 s`, and
//!   how long after each lease ended B sent it.
//!
//! Exit status: 0 when the bar is met, 1 when it is missed, 2 when the run failed.

#[path = "bench/mod.rs"]
mod bench;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_postgres::{Client, NoTls};

use bench::{Connection, ERROR_PAUSE, Server, nearest_rank, optional};

/// The PostgreSQL server when `NOTIROUTER_TEST_PG` is not set.
const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Keeps the listening line (INFO) and notirouter's own INFO lines; everything else at WARN.
const RUST_LOG: &str = "warn,notirouter=info";
/// `delivery.timeout` of both instances: the sink answers well within it.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(1);
/// What the server requires of `store.lease` beyond `delivery.timeout`.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// The bar: the survivor sends the dead instance's claimed actions within the lease plus this.
const BAR_SLACK: Duration = Duration::from_secs(2);
/// `delivery.concurrency_per_destination`: with 200 ms answers, 160 webhooks/s per instance.
const CONCURRENCY: usize = 32;
/// Queues one webhook per upgrade failure, naming the device.
const PLUGIN: &str = r#"
fn on_notification(n) {
    if upgrade_failed(n) {
        webhook("hook", #{ device: n.deviceId });
    }
}
"#;
/// How often the database is asked for the survivor's claims after the kill.
const CLAIM_POLL: Duration = Duration::from_millis(20);
/// How often the database is asked whether anything is still pending after the load.
const DONE_POLL: Duration = Duration::from_millis(100);
/// A request that starts this late (no free connection) counts as late.
const LATE: Duration = Duration::from_millis(5);
const INSTANCES: [&str; 2] = ["A", "B"];
const B: usize = 1;

#[derive(Debug, Parser)]
#[command(
    about = "Two instances on one PostgreSQL: kill -9 one under load; what is lost, and how soon \
             the other sends its claimed actions"
)]
struct Args {
    /// The notirouter release binary.
    #[arg(long, default_value = "target/release/notirouter")]
    bin: PathBuf,
    /// The PostgreSQL server to create the run's database on (its password is never shown).
    #[arg(long, env = "NOTIROUTER_TEST_PG", hide_env_values = true, default_value = DEFAULT_SERVER)]
    pg: String,
    /// Offered notifications per second: split across both instances, then all to the survivor.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// One notification in this many is a FAIL, which the plugin turns into a webhook.
    #[arg(long, default_value_t = 10)]
    fail_every: u64,
    /// Load on both instances before A is killed.
    #[arg(long, default_value = "10s", value_parser = bench::parse_duration)]
    before_kill: Duration,
    /// Load on B alone after the kill.
    #[arg(long, default_value = "10s", value_parser = bench::parse_duration)]
    after_kill: Duration,
    /// `store.lease` of both instances: at least 6 s (`delivery.timeout` 1 s + 5 s).
    #[arg(long, default_value = "6s", value_parser = bench::parse_duration)]
    lease: Duration,
    /// How long the sink waits before answering each webhook.
    #[arg(long, default_value = "200ms", value_parser = bench::parse_duration)]
    sink_delay: Duration,
    /// Longest wait, once the load stops, for every event and action to be done.
    #[arg(long, default_value = "60s", value_parser = bench::parse_duration)]
    drain_wait: Duration,
    /// Most requests in flight at once (connections of the open loop, per instance).
    #[arg(long, default_value_t = 128)]
    in_flight: usize,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        if !self.rate.is_finite() || self.rate <= 0.0 {
            bail!("--rate must be a number of notifications per second above 0");
        }
        if self.fail_every == 0 || self.in_flight == 0 {
            bail!("--fail-every and --in-flight must be at least 1");
        }
        if self.before_kill.is_zero() {
            bail!("--before-kill must be longer than zero: A must hold claims when it is killed");
        }
        let shortest = DELIVERY_TIMEOUT + LEASE_MARGIN;
        if self.lease < shortest {
            bail!(
                "--lease {:?} is too short: the server requires store.lease to be at least \
                 delivery.timeout ({DELIVERY_TIMEOUT:?} here) + {LEASE_MARGIN:?}, so {shortest:?}",
                self.lease
            );
        }
        if self.sink_delay >= DELIVERY_TIMEOUT {
            bail!(
                "--sink-delay {:?} must be shorter than delivery.timeout ({DELIVERY_TIMEOUT:?}), \
                 or every webhook times out",
                self.sink_delay
            );
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("{}: {error:#}", bench::program());
            ExitCode::from(2)
        }
    }
}

/// Runs the benchmark on a database of its own, dropped whatever happens; true if the bar is met.
fn run(mut args: Args) -> anyhow::Result<bool> {
    args.check()?;
    args.bin = bench::binary_at(&args.bin)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let database = Database::create(&args.pg).await?;
            let measured = tokio::select! {
                measured = measure(&args, &database) => measured,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            };
            let dropped = database.drop().await;
            match (measured, dropped) {
                (Ok(met), Ok(())) => Ok(met),
                (Ok(_), Err(error)) | (Err(error), Ok(())) => Err(error),
                (Err(error), Err(also)) => Err(error.context(format!("and then: {also:#}"))),
            }
        })
}

// ---------------------------------------------------------------------------------------------
// The run.

async fn measure(args: &Args, database: &Database) -> anyhow::Result<bool> {
    let sink = Sink::start(args.sink_delay).await?;
    let root = tempfile::tempdir().context("cannot create a temp dir")?;
    let scripts = root.path().join("scripts");
    std::fs::create_dir_all(&scripts)
        .with_context(|| format!("cannot create {}", scripts.display()))?;
    std::fs::write(scripts.join("alert.rhai"), PLUGIN).context("cannot write the plugin")?;
    let config = instance_config(args, &database.url, &scripts, sink.address);
    println!(
        "takeover: two instances on database {} (created for this run), store.lease {:?}, \
         webhook sink http://{} answering after {:?}; open loop at {}/s, 1 in {} a FAIL",
        database.name, args.lease, sink.address, args.sink_delay, args.rate, args.fail_every
    );
    let (mut a, mut b) = tokio::try_join!(
        start_instance(args, root.path(), "instance A", &config),
        start_instance(args, root.path(), "instance B", &config),
    )?;
    let client = database.connect().await?;

    let load = Load::start(args, [a.address, b.address]);
    sleep_until(load.start_at() + args.before_kill).await;
    let kill = Kill::of(&mut a, &load)?;
    println!(
        "\nkilled instance A (pid {}) with SIGKILL {:.2} s into the load; the load goes to B alone \
         for {:?}",
        kill.pid,
        (kill.at - load.start_at()).as_secs_f64(),
        args.after_kill
    );
    let (claims, ()) = tokio::join!(
        DeadClaims::read(&client, &kill, args.lease),
        sleep_until(kill.at + args.after_kill)
    );
    let claims = claims?;
    load.stop();
    let stopped = Instant::now();
    let loaded = stopped - load.start_at();
    let sent = load.finish().await?;
    let done = Done::wait(&client, stopped, args.drain_wait).await?;

    let arrivals = sink.arrivals();
    let report = Report::gather(&client, &kill, (&sent, loaded), &claims, &arrivals).await?;
    report.print(args, &claims, &done);
    note_logs(&mut [&mut a, &mut b]);
    if b.stop().await.is_none() {
        println!("  note: instance B did not exit within 10 s of SIGTERM and was killed");
    }
    Ok(report.met(args, &claims, &done))
}

fn instance_config(args: &Args, url: &str, scripts: &Path, sink: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "server": { "listen": "127.0.0.1:0" },
        "store": { "url": url, "lease": format!("{}ms", args.lease.as_millis()) },
        "scripts": { "dir": scripts, "hot_reload": false },
        "channels": { "hook": { "kind": "webhook", "url": format!("http://{sink}/hook") } },
        "delivery": {
            "timeout": format!("{}ms", DELIVERY_TIMEOUT.as_millis()),
            "concurrency_per_destination": CONCURRENCY,
        },
    })
}

/// An instance in a folder of its own under `root` (its config, its working directory).
async fn start_instance(
    args: &Args,
    root: &Path,
    name: &'static str,
    config: &serde_json::Value,
) -> anyhow::Result<Server> {
    let dir = root.join(name.replace(' ', "-"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let command = bench::serve_command(
        std::process::Command::new(&args.bin),
        &dir,
        config,
        RUST_LOG,
    )?;
    Server::start(name, command, true).await
}

/// Prints the WARN and ERROR lines each instance logged, a few distinct ones.
fn note_logs(servers: &mut [&mut Server]) {
    for server in servers {
        let problems = server.problems_logged();
        if problems.is_empty() {
            continue;
        }
        println!(
            "  {} logged {} WARN/ERROR lines, e.g.:",
            server.name,
            problems.len()
        );
        let mut seen = HashSet::new();
        for line in problems.iter() {
            let message: String = line.chars().take(200).collect();
            let key: String = message.chars().skip(30).take(50).collect();
            if seen.insert(key) {
                println!("    {message}");
            }
            if seen.len() == 3 {
                break;
            }
        }
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

fn millis(duration: Duration) -> i64 {
    duration.as_millis() as i64
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The database of the run.

struct Database {
    /// The server's URL, for the statements that create and drop the database.
    server: String,
    name: String,
    /// The URL of the run's database, for `store.url`.
    url: String,
}

impl Database {
    async fn create(server: &str) -> anyhow::Result<Database> {
        let name = format!(
            "notirouter_takeover_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        // Before the database exists: a server that is no URL must not leave one behind.
        let url = with_database(server, &name)?;
        admin(server, &format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| {
                format!(
                    "cannot create database {name} on the PostgreSQL server that \
                     NOTIROUTER_TEST_PG (or --pg) names (default {DEFAULT_SERVER}); is it \
                     running, and may its user create databases?"
                )
            })?;
        Ok(Database {
            url,
            server: server.to_owned(),
            name,
        })
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .with_context(|| format!("cannot connect to database {}", self.name))?;
        // Ends when the client is dropped.
        tokio::spawn(connection);
        Ok(client)
    }

    async fn drop(self) -> anyhow::Result<()> {
        admin(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await
        .with_context(|| {
            format!(
                "cannot drop database {}; drop it by hand: DROP DATABASE {} WITH (FORCE)",
                self.name, self.name
            )
        })
    }
}

/// Runs one statement on the server's own database.
async fn admin(server: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(server, NoTls).await?;
    let connection = tokio::spawn(connection);
    let done = client.batch_execute(sql).await;
    drop(client);
    let _ = connection.await;
    done
}

/// `server` with its database replaced by `name` (and its query string kept).
fn with_database(server: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(server).with_context(|| {
        format!(
            "the PostgreSQL server {server:?} is not a URL; set NOTIROUTER_TEST_PG (or --pg) \
                 to one such as {DEFAULT_SERVER}"
        )
    })?;
    url.set_path(name);
    Ok(url.into())
}

// ---------------------------------------------------------------------------------------------
// The kill, and the claims the dead instance held.

struct Kill {
    /// Just before the signal.
    at: Instant,
    /// Wall-clock ms once the process was reaped: it claimed nothing after.
    dead_ms: i64,
    pid: u32,
}

impl Kill {
    /// Kills `server` (a process this program started, by its pid) and turns the load to B.
    fn of(server: &mut Server, load: &Load) -> anyhow::Result<Kill> {
        let at = Instant::now();
        server
            .kill9()
            .with_context(|| format!("cannot kill {} (pid {})", server.name, server.pid))?;
        load.survivor_only();
        Ok(Kill {
            at,
            dead_ms: wall_ms(),
            pid: server.pid,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Events,
    Actions,
}

#[derive(Debug, Clone)]
struct Claim {
    table: Table,
    id: String,
    claimed_by: String,
    lease_until: i64,
}

impl Claim {
    /// The claimer's process: the ULID before `/deliver`, `/script-0`.
    fn process(&self) -> &str {
        self.claimed_by.split('/').next().unwrap_or_default()
    }
}

/// The claims held at the kill, by process.
struct DeadClaims {
    /// B's process, if B made a claim within the lease after the kill.
    survivor: Option<String>,
    /// The processes other than B's that held claims (A's, unless something else claims too).
    others: Vec<String>,
    /// A's claims on actions and on events (running scripts).
    actions: Vec<Claim>,
    events: Vec<Claim>,
    /// Claims B held at the kill: on actions, on events.
    survivor_held: (usize, usize),
}

/// The claims that were still valid at `$1` and taken before it (they end by `$2`).
const HELD_CLAIMS: &str = "
    SELECT 'actions', id, claimed_by, lease_until FROM actions
        WHERE status = 'pending' AND claimed_by IS NOT NULL AND lease_until > $1 AND lease_until <= $2
    UNION ALL
    SELECT 'events', id, claimed_by, lease_until FROM events
        WHERE status = 'pending' AND claimed_by IS NOT NULL AND lease_until > $1 AND lease_until <= $2";

/// A claimer whose claim ends after `$1`: one taken after the kill.
const LATER_CLAIMER: &str = "
    SELECT claimed_by FROM events WHERE lease_until > $1
    UNION ALL
    SELECT claimed_by FROM actions WHERE lease_until > $1
    LIMIT 1";

impl DeadClaims {
    /// Reads the claims held at the kill, then waits (at most the lease) for a claim that only
    /// B can have taken, and reads again: commits A sent just before dying may have become
    /// visible after the first read, and A's claims stay as they are until their lease ends.
    async fn read(client: &Client, kill: &Kill, lease: Duration) -> anyhow::Result<DeadClaims> {
        let window = (kill.dead_ms, kill.dead_ms + millis(lease));
        let mut held = held_claims(client, window).await?;
        let deadline = kill.at + lease;
        let survivor = loop {
            let row = client
                .query_opt(LATER_CLAIMER, &[&window.1])
                .await
                .context("cannot read the claims taken after the kill")?;
            if let Some(row) = row {
                let claimed_by: String = row.get(0);
                break claimed_by.split('/').next().map(str::to_owned);
            }
            if Instant::now() >= deadline {
                break None;
            }
            sleep(CLAIM_POLL).await;
        };
        if survivor.is_some() {
            for claim in held_claims(client, window).await? {
                if !held
                    .iter()
                    .any(|c| c.table == claim.table && c.id == claim.id)
                {
                    held.push(claim);
                }
            }
        }
        Ok(DeadClaims::split(held, survivor))
    }

    fn split(held: Vec<Claim>, survivor: Option<String>) -> DeadClaims {
        let is_survivor = |claim: &Claim| Some(claim.process()) == survivor.as_deref();
        let held_by_survivor = |table| {
            held.iter()
                .filter(|c| c.table == table && is_survivor(c))
                .count()
        };
        let survivor_held = (
            held_by_survivor(Table::Actions),
            held_by_survivor(Table::Events),
        );
        let mut others: Vec<String> = held
            .iter()
            .filter(|c| !is_survivor(c))
            .map(|c| c.process().to_owned())
            .collect();
        others.sort_unstable();
        others.dedup();
        // Without B's process the claims cannot be told apart: none is counted as A's.
        let dead: Vec<Claim> = match survivor {
            Some(_) => held.into_iter().filter(|c| !is_survivor(c)).collect(),
            None => Vec::new(),
        };
        let (actions, events): (Vec<Claim>, Vec<Claim>) =
            dead.into_iter().partition(|c| c.table == Table::Actions);
        DeadClaims {
            survivor,
            others,
            actions,
            events,
            survivor_held,
        }
    }
}

async fn held_claims(client: &Client, (from, to): (i64, i64)) -> anyhow::Result<Vec<Claim>> {
    let rows = client
        .query(HELD_CLAIMS, &[&from, &to])
        .await
        .context("cannot read the claims held at the kill")?;
    Ok(rows
        .iter()
        .map(|row| Claim {
            table: match row.get::<_, &str>(0) {
                "actions" => Table::Actions,
                _ => Table::Events,
            },
            id: row.get(1),
            claimed_by: row.get(2),
            lease_until: row.get(3),
        })
        .collect())
}

/// How the wait for the last events and actions ended.
struct Done {
    /// How long after the load stopped nothing was pending; `None` if the wait ran out.
    after: Option<Duration>,
    events_left: i64,
    actions_left: i64,
}

impl Done {
    async fn wait(client: &Client, stopped: Instant, longest: Duration) -> anyhow::Result<Done> {
        let deadline = stopped + longest;
        loop {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM events WHERE status = 'pending'),
                            (SELECT count(*) FROM actions WHERE status = 'pending')",
                    &[],
                )
                .await
                .context("cannot count the pending events and actions")?;
            let (events_left, actions_left): (i64, i64) = (row.get(0), row.get(1));
            let finished = events_left == 0 && actions_left == 0;
            if finished || Instant::now() >= deadline {
                return Ok(Done {
                    after: finished.then(|| stopped.elapsed()),
                    events_left,
                    actions_left,
                });
            }
            sleep(DONE_POLL).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The open-loop load.

struct LoadShared {
    targets: [SocketAddr; 2],
    rate: f64,
    fail_every: u64,
    start: Instant,
    /// The next notification number to take.
    next: AtomicU64,
    /// Set at the kill: every later request goes to B.
    survivor_only: AtomicBool,
    stop: AtomicBool,
}

struct Load {
    shared: Arc<LoadShared>,
    tasks: Vec<JoinHandle<Vec<Sent>>>,
}

/// One request and how it was answered.
struct Sent {
    n: u64,
    target: usize,
    after_kill: bool,
    fail: bool,
    late: bool,
    answer: Answer,
}

enum Answer {
    Accepted(String),
    Duplicate(String),
    Other200,
    Status(u16),
    Failed(String),
}

#[derive(serde::Deserialize)]
struct Receipt {
    status: String,
    id: Option<String>,
}

impl Answer {
    fn of(response: &bench::Response) -> Answer {
        if response.status != 200 {
            return Answer::Status(response.status);
        }
        match serde_json::from_slice::<Receipt>(&response.body) {
            Ok(Receipt {
                status,
                id: Some(id),
            }) if status == "accepted" => Answer::Accepted(id),
            Ok(Receipt {
                status,
                id: Some(id),
            }) if status == "duplicate" => Answer::Duplicate(id),
            _ => Answer::Other200,
        }
    }

    /// The event id of a 200 that names one.
    fn id(&self) -> Option<&str> {
        match self {
            Answer::Accepted(id) | Answer::Duplicate(id) => Some(id),
            _ => None,
        }
    }

    fn is_200(&self) -> bool {
        matches!(
            self,
            Answer::Accepted(_) | Answer::Duplicate(_) | Answer::Other200
        )
    }
}

impl Load {
    fn start(args: &Args, targets: [SocketAddr; 2]) -> Load {
        let shared = Arc::new(LoadShared {
            targets,
            rate: args.rate,
            fail_every: args.fail_every,
            start: Instant::now() + Duration::from_millis(20),
            next: AtomicU64::new(0),
            survivor_only: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let tasks = (0..args.in_flight)
            .map(|_| tokio::spawn(drive(Arc::clone(&shared))))
            .collect();
        Load { shared, tasks }
    }

    fn start_at(&self) -> Instant {
        self.shared.start
    }

    fn survivor_only(&self) {
        self.shared.survivor_only.store(true, Ordering::SeqCst);
    }

    /// No request starts after this (those in flight finish).
    fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for every connection: each ends within one request timeout of the stop.
    async fn finish(self) -> anyhow::Result<Vec<Sent>> {
        let mut sent = Vec::new();
        for task in self.tasks {
            sent.extend(task.await?);
        }
        Ok(sent)
    }
}

/// One connection slot: takes the next due request, sends it when due to the instance it
/// falls to, reads the answer; until the load is stopped.
async fn drive(load: Arc<LoadShared>) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut connections: [Option<Connection>; 2] = [None, None];
    while !load.stop.load(Ordering::SeqCst) {
        let n = load.next.fetch_add(1, Ordering::Relaxed);
        let due = load.start + Duration::from_secs_f64(n as f64 / load.rate);
        sleep_until(due).await;
        if load.stop.load(Ordering::SeqCst) {
            break;
        }
        let after_kill = load.survivor_only.load(Ordering::SeqCst);
        let target = if after_kill { B } else { (n % 2) as usize };
        let fail = n.is_multiple_of(load.fail_every);
        let late = Instant::now() > due + LATE;
        let answer = post(&mut connections[target], load.targets[target], n, fail).await;
        sent.push(Sent {
            n,
            target,
            after_kill,
            fail,
            late,
            answer,
        });
    }
    sent
}

async fn post(slot: &mut Option<Connection>, address: SocketAddr, n: u64, fail: bool) -> Answer {
    let request = bench::post_request(address, &bench::upgrade_result(n, fail));
    let connection = match bench::take_or_open(slot, address).await {
        Ok(connection) => connection,
        Err(kind) => {
            // A refused connection fails at once: do not spin on it.
            sleep(ERROR_PAUSE).await;
            return Answer::Failed(kind);
        }
    };
    match bench::exchange_in(slot, connection, &request).await {
        Ok(response) => Answer::of(&response),
        Err(kind) => Answer::Failed(kind),
    }
}

// ---------------------------------------------------------------------------------------------
// The webhook sink.

struct Sink {
    address: SocketAddr,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
}

#[derive(Debug, Clone)]
struct Arrival {
    /// When the whole request had been read.
    at: Instant,
    wall_ms: i64,
    key: Option<String>,
    /// The device number in the body.
    device: Option<u64>,
}

const SINK_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

impl Sink {
    async fn start(delay: Duration) -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the webhook sink on 127.0.0.1")?;
        let address = listener.local_addr()?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        // Runs until the runtime ends with the program.
        tokio::spawn(accept(listener, Arc::clone(&arrivals), delay));
        Ok(Sink { address, arrivals })
    }

    fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.arrivals).clone()
    }
}

async fn accept(listener: TcpListener, arrivals: Arc<Mutex<Vec<Arrival>>>, delay: Duration) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_sink(stream, Arc::clone(&arrivals), delay));
            }
            Err(_) => sleep(ERROR_PAUSE).await,
        }
    }
}

/// Records and answers the requests of one connection until the client closes it.
async fn serve_sink(stream: TcpStream, arrivals: Arc<Mutex<Vec<Arrival>>>, delay: Duration) {
    let Ok(mut connection) = Connection::from_stream(stream) else {
        return;
    };
    while let Ok(Some(request)) = connection.read_request().await {
        let arrival = Arrival {
            at: Instant::now(),
            wall_ms: wall_ms(),
            key: request.header("idempotency-key").map(str::to_owned),
            device: bench::device_number(&String::from_utf8_lossy(&request.body)),
        };
        lock(&arrivals).push(arrival);
        sleep(delay).await;
        if connection.write(SINK_OK).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The figures.

/// What one instance was sent and answered, before or after the kill.
#[derive(Default)]
struct Tally {
    offered: u64,
    accepted: u64,
    duplicate: u64,
    other_200: u64,
    refused: BTreeMap<String, u64>,
    late: u64,
}

impl Tally {
    fn add(&mut self, sent: &Sent) {
        self.offered += 1;
        self.late += u64::from(sent.late);
        match &sent.answer {
            Answer::Accepted(_) => self.accepted += 1,
            Answer::Duplicate(_) => self.duplicate += 1,
            Answer::Other200 => self.other_200 += 1,
            Answer::Status(status) => *self.refused.entry(status.to_string()).or_default() += 1,
            Answer::Failed(kind) => *self.refused.entry(kind.clone()).or_default() += 1,
        }
    }
}

/// One action A had claimed, as the sink saw it.
struct Takeover {
    /// A's lease on it ended this long after the kill (negative: before it).
    lease_end_ms: i64,
    /// It had reached the sink before the kill: A sent it and died before recording it.
    arrived_before_kill: bool,
    /// Its first arrival once A's lease had ended (so B's send), after the kill.
    delivered: Option<Duration>,
    /// That arrival, after the lease ended.
    notice_ms: Option<i64>,
    /// Its status at the end.
    status: String,
}

struct Report {
    /// By (instance, after the kill).
    tallies: BTreeMap<(usize, bool), Tally>,
    sent: usize,
    /// From the load's start to its stop.
    loaded: Duration,
    answered_200: usize,
    /// Numbers of notifications answered 200 whose event is not stored with their device.
    unstored: Vec<u64>,
    fails_answered: usize,
    /// FAILs answered 200 whose webhook never reached the sink.
    fails_missing: Vec<u64>,
    /// Devices whose webhook arrived although their notification was not answered 200.
    unanswered_delivered: usize,
    arrivals: usize,
    arrivals_without_key: usize,
    duplicate_keys: usize,
    duplicate_extra: usize,
    /// Duplicate keys that are actions A had claimed.
    duplicate_claimed: usize,
    takeovers: Vec<Takeover>,
    /// Per event A had claimed that queued an action: first arrival after the kill.
    event_deliveries: Vec<Option<Duration>>,
    actions_by_status: BTreeMap<String, i64>,
}

impl Report {
    async fn gather(
        client: &Client,
        kill: &Kill,
        (sent, loaded): (&[Sent], Duration),
        claims: &DeadClaims,
        arrivals: &[Arrival],
    ) -> anyhow::Result<Report> {
        let mut tallies: BTreeMap<(usize, bool), Tally> = BTreeMap::new();
        for request in sent {
            tallies
                .entry((request.target, request.after_kill))
                .or_default()
                .add(request);
        }
        let answered: Vec<&Sent> = sent.iter().filter(|s| s.answer.is_200()).collect();
        let delivered: HashSet<u64> = arrivals.iter().filter_map(|a| a.device).collect();
        let fails: HashSet<u64> = answered.iter().filter(|s| s.fail).map(|s| s.n).collect();
        let mut fails_missing: Vec<u64> = fails.difference(&delivered).copied().collect();
        fails_missing.sort_unstable();
        let mut per_key: HashMap<&str, usize> = HashMap::new();
        for key in arrivals.iter().filter_map(|a| a.key.as_deref()) {
            *per_key.entry(key).or_default() += 1;
        }
        let takeovers = takeovers(client, kill, &claims.actions, arrivals).await?;
        let claimed_keys = keys_of(client, &claims.actions).await?;
        let doubled: Vec<&str> = per_key
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(key, _)| *key)
            .collect();
        Ok(Report {
            answered_200: answered.len(),
            unstored: unstored(client, &answered).await?,
            fails_answered: fails.len(),
            fails_missing,
            unanswered_delivered: delivered
                .iter()
                .filter(|device| !fails.contains(device))
                .count(),
            arrivals: arrivals.len(),
            arrivals_without_key: arrivals.iter().filter(|a| a.key.is_none()).count(),
            duplicate_keys: doubled.len(),
            duplicate_extra: per_key.values().map(|count| count - 1).sum(),
            duplicate_claimed: doubled
                .iter()
                .filter(|key| claimed_keys.contains(**key))
                .count(),
            takeovers,
            event_deliveries: event_deliveries(client, kill, &claims.events, arrivals).await?,
            actions_by_status: actions_by_status(client).await?,
            tallies,
            sent: sent.len(),
            loaded,
        })
    }

    /// Whether the bar holds: nothing answered 200 lost (stored, and its webhook sent), and
    /// every action A had claimed sent by B within `lease + 2 s` of the kill.
    fn met(&self, args: &Args, claims: &DeadClaims, done: &Done) -> bool {
        let bound = args.lease + BAR_SLACK;
        claims.survivor.is_some()
            && done.after.is_some()
            && self.unstored.is_empty()
            && self.fails_missing.is_empty()
            && self
                .takeovers
                .iter()
                .all(|t| t.delivered.is_some_and(|d| d <= bound))
    }

    fn print(&self, args: &Args, claims: &DeadClaims, done: &Done) {
        println!(
            "\n=== takeover: {}/s offered, lease {:?} ===",
            args.rate, args.lease
        );
        println!(
            "  {:<22} {:>8} {:>10} {:>10} {:>10}  refused",
            "requests", "offered", "accepted", "duplicate", "other 200"
        );
        for ((instance, after_kill), tally) in &self.tallies {
            let label = format!(
                "{} {} the kill",
                INSTANCES[*instance],
                if *after_kill { "after" } else { "before" }
            );
            println!(
                "  {label:<22} {:>8} {:>10} {:>10} {:>10}  {} {:?}",
                tally.offered,
                tally.accepted,
                tally.duplicate,
                tally.other_200,
                tally.refused.values().sum::<u64>(),
                tally.refused
            );
        }
        let late: u64 = self.tallies.values().map(|t| t.late).sum();
        let seconds = self.loaded.as_secs_f64();
        println!(
            "  sent {} in {seconds:.1} s ({:.0}/s); {late} started > {LATE:?} late for want of a \
             free connection",
            self.sent,
            self.sent as f64 / seconds.max(1e-3)
        );
        println!(
            "  answered 200, not stored            {} of {} (each looked up by its event id, \
             with its device){}",
            self.unstored.len(),
            self.answered_200,
            first_few(&self.unstored)
        );
        println!(
            "  FAIL answered 200, no webhook       {} of {}{}",
            self.fails_missing.len(),
            self.fails_answered,
            first_few(&self.fails_missing)
        );
        println!(
            "  webhooks of FAILs not answered 200  {} (stored before an answer that was lost with A: \
             allowed)",
            self.unanswered_delivered
        );
        println!(
            "  duplicates at the sink              {} keys arrived twice or more, {} extra \
             arrivals of {} ({} of the keys actions A had claimed); allowed: delivery is at least \
             once, a resend carries the same idempotency key (SPEC.md, Delivery; Several \
             instances){}",
            self.duplicate_keys,
            self.duplicate_extra,
            self.arrivals,
            self.duplicate_claimed,
            if self.arrivals_without_key > 0 {
                format!(
                    "; {} arrivals had no Idempotency-Key",
                    self.arrivals_without_key
                )
            } else {
                String::new()
            }
        );
        self.print_claims(args, claims);
        match done.after {
            Some(after) => println!(
                "  nothing pending                     {:.1} s after the load stopped; actions \
                 {:?}",
                after.as_secs_f64(),
                self.actions_by_status
            ),
            None => println!(
                "  STILL PENDING after {:?}            {} events, {} actions; actions {:?}",
                args.drain_wait, done.events_left, done.actions_left, self.actions_by_status
            ),
        }
        let met = self.met(args, claims, done);
        println!(
            "  bar: nothing answered 200 lost, and A's claimed actions delivered by B within \
             lease + 2 s = {:?}: {}",
            args.lease + BAR_SLACK,
            if met { "MET" } else { "MISSED" }
        );
    }

    fn print_claims(&self, args: &Args, claims: &DeadClaims) {
        let Some(survivor) = &claims.survivor else {
            println!(
                "  claims at the kill                  cannot tell A's from B's: B took no claim \
                 within {:?} of the kill",
                args.lease
            );
            return;
        };
        println!(
            "  claims at the kill                  A: {} actions, {} events (scripts running); \
             B ({survivor}): {} actions, {} events{}",
            claims.actions.len(),
            claims.events.len(),
            claims.survivor_held.0,
            claims.survivor_held.1,
            if claims.others.len() > 1 {
                format!(
                    "; NOTE: claims of {} processes besides B",
                    claims.others.len()
                )
            } else {
                String::new()
            }
        );
        if self.takeovers.is_empty() {
            println!("    A held no action claim at the kill: the bar's timing is not exercised");
            return;
        }
        let lease_ends: Vec<i64> = self.takeovers.iter().map(|t| t.lease_end_ms).collect();
        let before = self
            .takeovers
            .iter()
            .filter(|t| t.arrived_before_kill)
            .count();
        println!(
            "    A's leases ended                  {} to {} s after the kill; {before} of the \
             actions had reached the sink before it (sent, not recorded)",
            seconds_ms(lease_ends.iter().min()),
            seconds_ms(lease_ends.iter().max()),
        );
        let delivered: Vec<Duration> = self.takeovers.iter().filter_map(|t| t.delivered).collect();
        let undelivered: Vec<&str> = self
            .takeovers
            .iter()
            .filter(|t| t.delivered.is_none())
            .map(|t| t.status.as_str())
            .collect();
        println!(
            "    delivered by B after the kill     {} of {}: {}   (lease + 2 s = {:.2} s){}",
            delivered.len(),
            self.takeovers.len(),
            spread(&delivered),
            (args.lease + BAR_SLACK).as_secs_f64(),
            if undelivered.is_empty() {
                String::new()
            } else {
                format!("; not delivered after their lease, by status: {undelivered:?}")
            }
        );
        let notice: Vec<Duration> = self
            .takeovers
            .iter()
            .filter_map(|t| t.notice_ms)
            .map(|ms| Duration::from_millis(ms.max(0) as u64))
            .collect();
        println!("    B's send after each lease ended   {}", spread(&notice));
        let events: Vec<Duration> = self.event_deliveries.iter().flatten().copied().collect();
        if !self.event_deliveries.is_empty() {
            println!(
                "    A's claimed events with a webhook {}: delivered {} of them after the kill: {} \
                 (scripts re-run by B; not part of the bar)",
                self.event_deliveries.len(),
                events.len(),
                spread(&events)
            );
        }
    }
}

/// `min / median / max` of durations in seconds, or `n/a`.
fn spread(durations: &[Duration]) -> String {
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    let at = |p| optional(nearest_rank(&sorted, p).map(|d| d.as_secs_f64()), 2);
    format!("min {} / median {} / max {} s", at(0.0), at(0.5), at(1.0))
}

fn seconds_ms(ms: Option<&i64>) -> String {
    optional(ms.map(|ms| *ms as f64 / 1e3), 2)
}

/// The first few numbers of a list, for a look at what went wrong.
fn first_few(numbers: &[u64]) -> String {
    if numbers.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = numbers.iter().take(5).map(u64::to_string).collect();
    format!(
        " (notifications {}{})",
        shown.join(", "),
        if numbers.len() > 5 { ", …" } else { "" }
    )
}

/// The notifications answered 200 whose event is not in the database with their device.
async fn unstored(client: &Client, answered: &[&Sent]) -> anyhow::Result<Vec<u64>> {
    let ids: Vec<String> = answered
        .iter()
        .filter_map(|s| s.answer.id().map(str::to_owned))
        .collect();
    let stored: HashMap<String, Option<String>> = client
        .query(
            "SELECT id, device_id FROM events WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .context("cannot look the answered notifications up")?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut missing: Vec<u64> = answered
        .iter()
        .filter(|s| {
            let device = s.answer.id().and_then(|id| stored.get(id));
            device != Some(&Some(bench::device_id(s.n)))
        })
        .map(|s| s.n)
        .collect();
    missing.sort_unstable();
    Ok(missing)
}

/// The idempotency keys of the claimed actions.
async fn keys_of(client: &Client, claims: &[Claim]) -> anyhow::Result<HashSet<String>> {
    let ids: Vec<&str> = claims.iter().map(|c| c.id.as_str()).collect();
    Ok(client
        .query(
            "SELECT idempotency_key FROM actions WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .context("cannot read the claimed actions' keys")?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// How each action A had claimed reached the sink.
async fn takeovers(
    client: &Client,
    kill: &Kill,
    claims: &[Claim],
    arrivals: &[Arrival],
) -> anyhow::Result<Vec<Takeover>> {
    let ids: Vec<&str> = claims.iter().map(|c| c.id.as_str()).collect();
    let rows: HashMap<String, (String, String)> = client
        .query(
            "SELECT id, idempotency_key, status FROM actions WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .context("cannot read the claimed actions")?
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    Ok(claims
        .iter()
        .map(|claim| {
            let (key, status) = rows.get(&claim.id).cloned().unwrap_or_default();
            let of_key = || arrivals.iter().filter(|a| a.key.as_deref() == Some(&key));
            let after_lease = of_key()
                .filter(|a| a.wall_ms >= claim.lease_until)
                .min_by_key(|a| a.at);
            Takeover {
                lease_end_ms: claim.lease_until - kill.dead_ms,
                arrived_before_kill: of_key().any(|a| a.at <= kill.at),
                delivered: after_lease.map(|a| a.at.saturating_duration_since(kill.at)),
                notice_ms: after_lease.map(|a| a.wall_ms - claim.lease_until),
                status,
            }
        })
        .collect())
}

/// For each event A had claimed that has queued an action since: its first arrival after the
/// kill.
async fn event_deliveries(
    client: &Client,
    kill: &Kill,
    claims: &[Claim],
    arrivals: &[Arrival],
) -> anyhow::Result<Vec<Option<Duration>>> {
    let ids: Vec<&str> = claims.iter().map(|c| c.id.as_str()).collect();
    let keys: Vec<String> = client
        .query(
            "SELECT idempotency_key FROM actions WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await
        .context("cannot read the actions of the claimed events")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(keys
        .iter()
        .map(|key| {
            arrivals
                .iter()
                .filter(|a| a.key.as_deref() == Some(key) && a.at > kill.at)
                .map(|a| a.at - kill.at)
                .min()
        })
        .collect())
}

async fn actions_by_status(client: &Client) -> anyhow::Result<BTreeMap<String, i64>> {
    Ok(client
        .query("SELECT status, count(*) FROM actions GROUP BY status", &[])
        .await
        .context("cannot count the actions")?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}
