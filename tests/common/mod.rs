//! Shared harness of the integration tests: the real `notirouter` binary started on a loopback
//! port in its own temporary folder ([`TestServer`]), the CLI run against the same config
//! ([`run_cli`]), a polling [`wait_until`], read-only access to the SQLite store, and platform
//! notification fixtures (PLATFORM-NOTES.md §2).
//!
//! Every server listens on `127.0.0.1:0` and has its own store, so tests run in parallel.

// Each test binary (`receiver`, `cli`, `durability`) compiles this module and uses only part
// of it; the rest would otherwise be reported as dead code in that binary.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::Value;
use tempfile::TempDir;

pub mod load;
pub mod pg;

/// Longest wait for a server to log its address and become ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for anything asynchronous the tests observe (rows written by the store writer,
/// a process exiting).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The callback path of the default configuration.
pub const RECEIVER: &str = "/v1.0.0/messageReceiver";
/// The command-status sub-path served under [`RECEIVER`].
pub const RECEIVER_CMD: &str = "/v1.0.0/messageReceiver/cmd";
/// Both validation modes, for tests whose expectation does not depend on the mode.
pub const MODES: [&str; 2] = ["lenient", "strict"];

/// Runs `work(thread, n)` for `n` in `0..per_thread` on each of `threads` threads at once, and
/// returns every result, thread by thread.
pub fn in_parallel<T: Send>(
    threads: usize,
    per_thread: usize,
    work: impl Fn(usize, usize) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || (0..per_thread).map(|n| work(thread, n)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("a worker thread does not panic"))
            .collect()
    })
}

/// Polls `condition` every 10 ms until it holds (true) or `timeout` passes (false).
#[must_use]
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A blocking HTTP client for loopback servers: no proxy, and a timeout so that a hung
/// server fails the test instead of hanging it.
pub fn http_client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client can be built")
}

/// A `notirouter` command with an environment free of the caller's `NOTIROUTER…` variables,
/// so that a developer's shell cannot change what a test sees.
pub fn notirouter() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_notirouter"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NOTIROUTER") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG").stdin(Stdio::null());
    command
}

/// Runs `notirouter --config CONFIG ARGS...` and returns what it did.
pub fn run_cli(config: &Path, args: &[&str]) -> Output {
    run_cli_with_env(config, args, &[])
}

/// As [`run_cli`], with extra environment variables.
pub fn run_cli_with_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    notirouter()
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the notirouter binary runs")
}

/// Asserts the exit code, showing the command's output when it differs.
pub fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "unexpected exit status\nstdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Both output streams, for messages whose stream does not matter.
pub fn all_output(output: &Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

/// Parses `--json` output: one JSON object per line.
pub fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

/// A config file with exactly `text`, in a folder of its own (kept alive by the `TempDir`).
pub fn config_file(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary folder can be created");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("the config file can be written");
    (dir, path)
}

/// The config of a test server: the caller's TOML plus a loopback port chosen by the OS, a
/// store inside `dir` and an empty scripts folder there, unless the caller set them. Merging
/// tables keeps keys unique.
fn server_config(dir: &Path, extra_toml: &str) -> String {
    let mut table: toml::Table = extra_toml
        .parse()
        .unwrap_or_else(|e| panic!("the test's extra config is TOML: {e}"));
    let mut set_default = |section: &str, key: &str, value: toml::Value| {
        table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("[{section}] is a table in the test's config"))
            .entry(key)
            .or_insert(value);
    };
    set_default("server", "listen", "127.0.0.1:0".into());
    let store = dir.join("store.db").to_string_lossy().into_owned();
    set_default("store", "path", store.into());
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).expect("the scripts folder can be created");
    set_default(
        "scripts",
        "dir",
        scripts.to_string_lossy().into_owned().into(),
    );
    toml::to_string(&table).expect("a TOML table serialises")
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing the body) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts `200 {"status":"accepted","id","warnings"}` and returns the id and warnings.
    pub fn accepted(&self) -> (String, Value) {
        let json = self.json();
        assert_eq!(
            (self.status, &json["status"]),
            (200, &"accepted".into()),
            "{json}"
        );
        assert_eq!(keys(&json), ["id", "status", "warnings"], "{json}");
        let id = json["id"].as_str().expect("the id is a string").to_owned();
        assert_eq!(id.len(), 26, "an event id is a ULID: {id}");
        (id, json["warnings"].clone())
    }

    /// Asserts an accepted answer without warnings and returns its id.
    pub fn accepted_clean(&self) -> String {
        let (id, warnings) = self.accepted();
        assert_eq!(warnings, serde_json::json!([]), "expected no warnings");
        id
    }

    /// Asserts `200 {"status":"duplicate","id"}` and returns the id.
    pub fn duplicate(&self) -> String {
        let json = self.json();
        assert_eq!(self.status, 200, "{json}");
        assert_eq!(keys(&json), ["id", "status"], "{json}");
        assert_eq!(json["status"], "duplicate", "{json}");
        json["id"].as_str().expect("the id is a string").to_owned()
    }

    /// Asserts `STATUS {"error": "..."}` with no other key and returns the message.
    pub fn error(&self, status: u16) -> String {
        let json = self.json();
        assert_eq!(self.status, status, "{json}");
        assert_eq!(keys(&json), ["error"], "{json}");
        let message = json["error"].as_str().expect("the error is a string");
        assert!(!message.is_empty(), "{json}");
        message.to_owned()
    }
}

/// The keys of a JSON object, sorted.
pub fn keys(value: &Value) -> Vec<String> {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    object
        .keys()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// One row of the store's `rejected` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub received_at: i64,
    pub path: String,
    pub remote_addr: Option<String>,
    pub reason: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub body_len: i64,
}

/// The real binary serving on a loopback port, in a temporary folder that holds its config and
/// store. Dropping it kills the process (SIGKILL) if it still runs.
pub struct TestServer {
    dir: Arc<TempDir>,
    config: PathBuf,
    env: Vec<(String, String)>,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    /// `http`, or `https` for a server with `[server.tls]`.
    scheme: &'static str,
    http: Client,
}

impl TestServer {
    /// Starts a server whose config is `extra_toml` plus a free port and a fresh store.
    pub fn start(extra_toml: &str) -> TestServer {
        TestServer::start_with_env(extra_toml, &[])
    }

    /// As [`TestServer::start`], with `NOTIROUTER__…` (or other) environment variables.
    pub fn start_with_env(extra_toml: &str, env: &[(&str, &str)]) -> TestServer {
        TestServer::start_in(
            tempfile::tempdir().expect("a folder can be created"),
            extra_toml,
            env,
        )
    }

    /// As [`TestServer::start`], with these `(file name, source)` plugins in its scripts folder.
    pub fn start_with_plugins(extra_toml: &str, plugins: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary folder can be created");
        let scripts = dir.path().join("scripts");
        std::fs::create_dir_all(&scripts).expect("the scripts folder can be created");
        for (name, source) in plugins {
            std::fs::write(scripts.join(name), source).expect("a plugin can be written");
        }
        TestServer::start_in(dir, extra_toml, &[])
    }

    /// As [`TestServer::start_with_env`], reached over `scheme` with `client` (for HTTPS, one
    /// that trusts the server's certificate), in `dir` (where the test may have put files the
    /// config names).
    pub fn start_reached_with(
        dir: TempDir,
        extra_toml: &str,
        env: &[(&str, &str)],
        scheme: &'static str,
        client: Client,
    ) -> TestServer {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, server_config(dir.path(), extra_toml))
            .expect("the config file can be written");
        let env = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        TestServer::spawn(Arc::new(dir), config, env, (scheme, client))
    }

    fn start_in(dir: TempDir, extra_toml: &str, env: &[(&str, &str)]) -> TestServer {
        TestServer::start_reached_with(dir, extra_toml, env, "http", http_client())
    }

    /// Kills this process if it still runs, then starts a new one on the same folder, config,
    /// environment and store (on a new port).
    pub fn restart(self) -> TestServer {
        let (dir, config, env) = (Arc::clone(&self.dir), self.config.clone(), self.env.clone());
        let reach = (self.scheme, self.http.clone());
        drop(self);
        TestServer::spawn(dir, config, env, reach)
    }

    fn spawn(
        dir: Arc<TempDir>,
        config: PathBuf,
        env: Vec<(String, String)>,
        (scheme, http): (&'static str, Client),
    ) -> TestServer {
        let mut child = notirouter()
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the notirouter binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while reader
                .read_until(b'\n', &mut line)
                .is_ok_and(|read| read > 0)
            {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                sink.lock()
                    .expect("the log lock is not poisoned")
                    .push(text);
                line.clear();
            }
        });
        let mut server = TestServer {
            dir,
            config,
            env,
            child,
            logs,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            scheme,
            http,
        };
        server.addr = server.wait_for_address();
        let ready = wait_until(STARTUP_TIMEOUT, || {
            server
                .http
                .get(server.url("/readyz"))
                .send()
                .is_ok_and(|response| response.status() == 200)
        });
        assert!(
            ready,
            "the server never became ready; logs:\n{}",
            server.logs()
        );
        server
    }

    /// Waits for the `listening addr=127.0.0.1:PORT` log line.
    fn wait_for_address(&mut self) -> SocketAddr {
        let mut address = None;
        let found = wait_until(STARTUP_TIMEOUT, || {
            address = self.logs().lines().find_map(|line| {
                let (_, rest) = line.split_once("listening addr=")?;
                rest.split_whitespace().next()?.parse().ok()
            });
            address.is_some() || self.has_exited()
        });
        match address {
            Some(address) if found => address,
            _ => panic!(
                "the server did not log its address (exited: {:?}); logs:\n{}",
                self.child.try_wait(),
                self.logs()
            ),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// The client the harness reaches this server with, for requests the helpers do not make.
    pub fn client(&self) -> &Client {
        &self.http
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("store.db")
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs
            .lock()
            .expect("the log lock is not poisoned")
            .join("\n")
    }

    /// POSTs `body` (sent as is) with `Content-Type: application/json`.
    pub fn post_json(&self, path: &str, body: &str) -> Reply {
        self.post_raw(path, Some("application/json"), body.as_bytes())
    }

    /// POSTs exactly `body`, with the given content type or none.
    pub fn post_raw(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
        let mut request = self.http.post(self.url(path)).body(body.to_vec());
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        into_reply(request.send())
    }

    pub fn get(&self, path: &str) -> Reply {
        into_reply(self.http.get(self.url(path)).send())
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let reply = self.get("/metrics");
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.text()
    }

    /// Runs the CLI with this server's config, folder and environment.
    pub fn cli(&self, args: &[&str]) -> Output {
        notirouter()
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .output()
            .expect("the notirouter binary runs")
    }

    /// Waits until the scripts have processed every stored event.
    pub fn wait_until_processed(&self) {
        let processed = wait_until(SETTLE_TIMEOUT, || {
            self.events(&["--status", "pending"]).is_empty()
        });
        assert!(
            processed,
            "events still pending after {SETTLE_TIMEOUT:?}: {}",
            self.logs()
        );
    }

    /// `events list --json` with `args` (filters) added; at most 1000 events unless limited.
    pub fn events(&self, args: &[&str]) -> Vec<Value> {
        let mut all_args = vec!["events", "list", "--json", "--limit", "1000"];
        all_args.extend_from_slice(args);
        let output = self.cli(&all_args);
        assert_exit(&output, 0);
        json_lines(&output)
    }

    /// The ids `events list --json` shows, newest first.
    pub fn event_ids(&self) -> Vec<String> {
        self.events(&[])
            .iter()
            .map(|event| event["id"].as_str().expect("ids are strings").to_owned())
            .collect()
    }

    /// The `rejected` table, oldest first, read through a read-only connection.
    pub fn rejected_rows(&self) -> Vec<RejectedRow> {
        let connection = rusqlite::Connection::open_with_flags(
            self.store_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("the store opens read-only");
        connection
            .busy_timeout(SETTLE_TIMEOUT)
            .expect("a busy timeout can be set");
        let mut statement = connection
            .prepare(
                "SELECT received_at, path, remote_addr, reason, content_type, body, body_len
                 FROM rejected ORDER BY seq",
            )
            .expect("the rejected table has the documented columns");
        statement
            .query_map([], |row| {
                Ok(RejectedRow {
                    received_at: row.get(0)?,
                    path: row.get(1)?,
                    remote_addr: row.get(2)?,
                    reason: row.get(3)?,
                    content_type: row.get(4)?,
                    body: row.get(5)?,
                    body_len: row.get(6)?,
                })
            })
            .and_then(Iterator::collect)
            .expect("the rejected rows can be read")
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|status| status.is_some())
    }

    /// SIGKILL, then reap the process.
    pub fn kill9(&mut self) {
        // Fails only when the process is already gone, which is what we want anyway.
        let _ = self.child.kill();
        self.child.wait().expect("the killed server can be reaped");
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("`kill` runs");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit; panics (with the logs) after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = self.child.try_wait().expect("the server can be polled");
            status.is_some()
        });
        match status {
            Some(status) if exited => status,
            _ => panic!(
                "the server did not exit within {timeout:?}; logs:\n{}",
                self.logs()
            ),
        }
    }

    /// SIGTERM, then wait for the exit status (at most `timeout`).
    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> ExitStatus {
        self.sigterm();
        self.wait_for_exit(timeout)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if !self.has_exited() {
            self.kill9();
        }
    }
}

fn into_reply(sent: reqwest::Result<reqwest::blocking::Response>) -> Reply {
    let response = sent.unwrap_or_else(|e| panic!("the request got no answer: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .unwrap_or_else(|e| panic!("the answer's body could not be read: {e}"))
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// Notification bodies as the platform sends them (PLATFORM-NOTES.md §2). Each takes the
/// device id, so that a test can make bodies that are not duplicates of each other.
pub mod fixtures {
    use serde_json::{Value, json};

    /// `swUpgradeResultNotify` FAIL, §2.3.
    pub fn sw_fail(device_id: &str) -> Value {
        json!({
            "notifyType": "swUpgradeResultNotify",
            "deviceId": device_id, "appId": "O8syWKWBEMGUO7j0mqOskvH6x2Ea",
            "operationId": "5c9b1f2e0a1b2c3d4e5f6a7b", "subOperationId": "5c9b1f2e0a1b2c3d4e5f6a7c",
            "curVersion": "1.3", "targetVersion": "1.5", "sourceVersion": "1.3",
            "swUpgradeResult": "FAIL", "upgradeTime": "120",
            "resultDesc": "upgrade failed", "errorCode": "7",
            "description": "package verification failed"
        })
    }

    /// `swUpgradeResultNotify` SUCCESS: no error fields needed.
    pub fn sw_success(device_id: &str) -> Value {
        json!({
            "notifyType": "swUpgradeResultNotify",
            "deviceId": device_id, "appId": "O8syWKWBEMGUO7j0mqOskvH6x2Ea",
            "operationId": "5c9b1f2e0a1b2c3d4e5f6a7b", "subOperationId": "5c9b1f2e0a1b2c3d4e5f6a7d",
            "curVersion": "1.5", "targetVersion": "1.5", "sourceVersion": "1.3",
            "swUpgradeResult": "SUCCESS", "upgradeTime": "95"
        })
    }

    /// `fwUpgradeResultNotify`, §2.5: `status`, not `fwUpgradeResult`, and no `errorCode`.
    pub fn fw_result(device_id: &str) -> Value {
        json!({
            "notifyType": "fwUpgradeResultNotify",
            "deviceId": device_id, "appId": "O8syWKWBEMGUO7j0mqOskvH6x2Ea",
            "operationId": "5c9b20aa0a1b2c3d4e5f6a80", "subOperationId": "5c9b20aa0a1b2c3d4e5f6a81",
            "curVersion": "V1.0.3", "targetVersion": "V1.0.4", "sourceVersion": "V1.0.3",
            "status": "FAIL", "statusDesc": "FAIL", "upgradeTime": "300"
        })
    }

    /// `swUpgradeStateChangeNotify`, §2.2.
    pub fn sw_state(device_id: &str) -> Value {
        json!({
            "notifyType": "swUpgradeStateChangeNotify",
            "deviceId": device_id, "appId": "O8syWKWBEMGUO7j0mqOskvH6x2Ea",
            "operationId": "5c9b1f2e0a1b2c3d4e5f6a7b", "subOperationId": "5c9b1f2e0a1b2c3d4e5f6a7c",
            "swUpgradeState": "downloading"
        })
    }

    /// `fwUpgradeStateChangeNotify`, §2.4.
    pub fn fw_state(device_id: &str) -> Value {
        json!({
            "notifyType": "fwUpgradeStateChangeNotify",
            "deviceId": device_id, "appId": "O8syWKWBEMGUO7j0mqOskvH6x2Ea",
            "operationId": "5c9b20aa0a1b2c3d4e5f6a80", "subOperationId": "5c9b20aa0a1b2c3d4e5f6a81",
            "step": "2", "stepDesc": "downloaded"
        })
    }

    /// NB-IoT command status, §2.6: no `notifyType`; recognised by `commandId` and `result`.
    pub fn command_status(device_id: &str) -> Value {
        json!({
            "deviceId": device_id, "commandId": "702c2f2c0d6d4e2e9ad5a7c2d2f6b0a1",
            "result": {"resultCode": "DELIVERED", "resultDetail": null}
        })
    }

    /// Every well-formed fixture, named, for tests that cover all types.
    pub fn all_well_formed(device_id: &str) -> Vec<(&'static str, Value)> {
        vec![
            ("sw_fail", sw_fail(device_id)),
            ("sw_success", sw_success(device_id)),
            ("fw_result", fw_result(device_id)),
            ("sw_state", sw_state(device_id)),
            ("fw_state", fw_state(device_id)),
            ("command_status", command_status(device_id)),
        ]
    }

    /// `value` without `field`.
    pub fn without(mut value: Value, field: &str) -> Value {
        value
            .as_object_mut()
            .expect("fixtures are objects")
            .remove(field);
        value
    }

    /// `value` with `field` set to `new`.
    pub fn with(mut value: Value, field: &str, new: Value) -> Value {
        value[field] = new;
        value
    }
}

/// The value of one Prometheus series (`name{labels}` exactly as rendered), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------
// Script helpers (tests/scripts.rs, tests/hot_reload.rs): plugin folders with sub-folders, one
// event's outcome, and the Action JSON of its actions.
// ---------------------------------------------------------------------------------------------

impl TestServer {
    /// As [`TestServer::start_with_plugins`], but a file name may name a sub-folder of the
    /// scripts folder (`lib/format.rhai`), which is created.
    pub fn start_with_script_files(extra_toml: &str, files: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary folder can be created");
        write_script_files(&dir.path().join("scripts"), files);
        TestServer::start_in(dir, extra_toml, &[])
    }

    /// The folder the server runs in, holding its config and store.
    pub fn folder(&self) -> &Path {
        self.dir.path()
    }

    /// The scripts folder the harness configures (unless the test set `scripts.dir`).
    pub fn scripts_dir(&self) -> PathBuf {
        self.dir.path().join("scripts")
    }

    /// POSTs `body` to [`RECEIVER`], asserts `accepted` and returns the event id.
    pub fn post_accepted(&self, body: &Value) -> String {
        self.post_json(RECEIVER, &body.to_string()).accepted().0
    }

    /// `events show ID --json`.
    pub fn event_detail(&self, id: &str) -> Value {
        let output = self.cli(&["events", "show", id, "--json"]);
        assert_exit(&output, 0);
        serde_json::from_str(&stdout(&output))
            .unwrap_or_else(|e| panic!("events show --json is JSON ({e}): {}", stdout(&output)))
    }

    /// Waits until event `id` is no longer `pending` and returns `events show ID --json`.
    pub fn wait_for_outcome(&self, id: &str) -> Value {
        let mut detail = Value::Null;
        let done = wait_until(SETTLE_TIMEOUT, || {
            detail = self.event_detail(id);
            detail["status"] != "pending"
        });
        assert!(
            done,
            "event {id} still pending after {SETTLE_TIMEOUT:?}; logs:\n{}",
            self.logs()
        );
        detail
    }
}

/// Writes `(relative path, text)` files under `dir`, creating folders as needed.
pub fn write_script_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = dir.join(name);
        let parent = path.parent().expect("a script file has a folder");
        std::fs::create_dir_all(parent).expect("the scripts folder can be created");
        std::fs::write(&path, text).expect("a script file can be written");
    }
}

/// The Action JSON (the `action` field) of each action in an `events show --json` answer.
pub fn queued_actions(detail: &Value) -> Vec<Value> {
    detail["actions"]
        .as_array()
        .unwrap_or_else(|| panic!("`actions` is an array: {detail}"))
        .iter()
        .map(|record| record["action"].clone())
        .collect()
}
