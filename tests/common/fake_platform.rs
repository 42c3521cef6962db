//! A fake Huawei IoT platform northbound API (PLATFORM-NOTES.md §5), for the tests and for
//! `cargo run --example fake_platform`: login and refresh (each login revokes every earlier
//! token), upgrade tasks with one sub-operation per device, the task and sub-operation
//! queries, a package list seeded with two packages that share a version, and both
//! subscription APIs. It records every request, and answers with injected faults when told.
//!
//! It runs on an actix-web server of its own thread on `127.0.0.1`, so blocking tests and
//! async tests alike can use it; it is listening when `start` returns.

// The tests and the example each use a part of it.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

/// The credentials the fake accepts.
pub const APP_ID: &str = "fake-app";
pub const SECRET: &str = "fake-secret";
/// How long issued tokens last unless a test says otherwise.
const TOKEN_SECONDS: u64 = 3600;
const UPGRADE_TYPES: [&str; 4] = [
    "swUpgradeStateChangeNotify",
    "swUpgradeResultNotify",
    "fwUpgradeStateChangeNotify",
    "fwUpgradeResultNotify",
];

/// The routes, for faults and assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Login,
    Refresh,
    CreateSoftware,
    CreateFirmware,
    ListTasks,
    Task,
    SubOperations,
    Packages,
    Package,
    SubscribeManagement,
    SubscribeService,
    Unknown,
}

impl Route {
    fn of(method: &str, path: &str) -> Route {
        let tail = |prefix: &str| path.strip_prefix(prefix).map(|t| t.trim_start_matches('/'));
        let operations = tail("/iodm/northbound/v1.5.0/operations");
        let category = tail("/iodm/northbound/v1.5.0/category");
        match (method, path) {
            ("POST", "/iocm/app/sec/v1.1.0/login") => Route::Login,
            ("POST", "/iocm/app/sec/v1.1.0/refreshToken") => Route::Refresh,
            ("POST", "/iodm/app/sub/v1.1.0/subscribe") => Route::SubscribeManagement,
            ("POST", "/iocm/app/sub/v1.2.0/subscriptions") => Route::SubscribeService,
            ("POST", _) => match operations {
                Some("softwareUpgrade") => Route::CreateSoftware,
                Some("firmwareUpgrade") => Route::CreateFirmware,
                _ => Route::Unknown,
            },
            ("GET", _) => match (operations, category) {
                (Some(""), _) => Route::ListTasks,
                (Some(rest), _) if rest.ends_with("/subOperations") => Route::SubOperations,
                (Some(_), _) => Route::Task,
                (_, Some("")) => Route::Packages,
                (_, Some(_)) => Route::Package,
                _ => Route::Unknown,
            },
            _ => Route::Unknown,
        }
    }
}

/// An injected answer.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 403 `1010005`, as after a login elsewhere.
    InvalidToken,
    /// 401, the unverified variant.
    Unauthorized,
    /// 403 `1010009`, without `Retry-After`.
    Throttled,
    /// This status with `{"error_code": code}` (no body when the code is empty).
    Error(u16, &'static str),
    /// The normal answer (and its effects), after this long.
    Slow(Duration),
    /// 200 `{}` to a task creation, which still creates the task.
    NoOperationId,
}

/// One request, as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub route: Route,
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as a form (login).
    pub fn form(&self) -> HashMap<String, String> {
        form(&self.body)
    }
}

/// A task the fake created.
#[derive(Debug, Clone)]
pub struct Task {
    pub operation_id: String,
    pub operate_type: &'static str,
    pub file_id: String,
    pub devices: Vec<String>,
    pub policy: Value,
    pub create_time: String,
}

#[derive(Debug, Clone)]
struct SubOperation {
    operation_id: String,
    sub_operation_id: String,
    device_id: String,
    status: String,
}

struct State {
    access: Option<String>,
    refresh: Option<String>,
    issued: u64,
    expires_in: VecDeque<u64>,
    faults: HashMap<Route, VecDeque<Fault>>,
    requests: Vec<Recorded>,
    packages: Vec<Value>,
    tasks: Vec<Task>,
    sub_operations: Vec<SubOperation>,
    subscriptions: Vec<(String, String)>,
    callback_key: &'static str,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running fake; dropping it stops the server.
pub struct FakePlatform {
    state: Shared,
    addr: SocketAddr,
    handle: ServerHandle,
}

impl FakePlatform {
    /// Starts on a free loopback port.
    pub fn start() -> FakePlatform {
        FakePlatform::start_on("127.0.0.1:0".parse().expect("a socket address"))
    }

    /// Starts on `addr`.
    pub fn start_on(addr: SocketAddr) -> FakePlatform {
        let listener = std::net::TcpListener::bind(addr).expect("the fake platform's port is free");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(Mutex::new(State::seeded()));
        let shared = Arc::clone(&state);
        let (sender, handle) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(Arc::clone(&shared)))
                        .app_data(web::PayloadConfig::new(1 << 20))
                        .default_service(web::to(handle_request))
                })
                .workers(2)
                // The process's own signal handling stops it (the example), not just the server.
                .disable_signals()
                .listen(listener)
                .expect("the fake platform can listen")
                .run();
                let _ = sender.send(server.handle());
                let _ = server.await;
            });
        });
        let handle = handle.recv().expect("the fake platform started");
        FakePlatform {
            state,
            addr,
            handle,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `[platform]` section that reaches this fake, plus `extra` keys.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[platform]\nenabled = true\nbase_url = \"{}\"\napp_id = \"{APP_ID}\"\n\
             secret = \"{SECRET}\"\n{extra}",
            self.url()
        )
    }

    /// The next requests to `route` get `faults`, one each, in order.
    pub fn fail_next(&self, route: Route, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.state)
            .faults
            .entry(route)
            .or_default()
            .extend(faults);
    }

    /// The next tokens issued (login or refresh) last these many seconds, in order.
    pub fn next_tokens_last(&self, seconds: impl IntoIterator<Item = u64>) {
        lock(&self.state).expires_in.extend(seconds);
    }

    /// Revokes every token, as a login by another client with the same app id does.
    pub fn revoke_tokens(&self) {
        lock(&self.state).access = None;
    }

    /// Which key the management subscription accepts: `callbackUrl` (the Doc) or
    /// `callbackurl` (the SDKs).
    pub fn accept_callback_key(&self, key: &'static str) {
        lock(&self.state).callback_key = key;
    }

    /// Records a failed sub-operation of an earlier task, for verify-before-retry.
    pub fn seed_failed_sub_operation(&self, operation_id: &str, sub_id: &str, device_id: &str) {
        lock(&self.state).sub_operations.push(SubOperation {
            operation_id: operation_id.to_owned(),
            sub_operation_id: sub_id.to_owned(),
            device_id: device_id.to_owned(),
            status: "fail".to_owned(),
        });
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    pub fn requests_to(&self, route: Route) -> Vec<Recorded> {
        let state = lock(&self.state);
        state
            .requests
            .iter()
            .filter(|r| r.route == route)
            .cloned()
            .collect()
    }

    pub fn count(&self, route: Route) -> usize {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    pub fn tasks(&self) -> Vec<Task> {
        lock(&self.state).tasks.clone()
    }

    /// `(notifyType, callback URL)` of every subscription made.
    pub fn subscriptions(&self) -> Vec<(String, String)> {
        lock(&self.state).subscriptions.clone()
    }

    /// The access token now valid, if any.
    pub fn current_token(&self) -> Option<String> {
        lock(&self.state).access.clone()
    }
}

impl Drop for FakePlatform {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        // A thread of its own, so that dropping works inside an async test too.
        let stopping = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(handle.stop(false));
        });
        let _ = stopping.join();
    }
}

impl State {
    fn seeded() -> State {
        let package = |file_id: &str, version: &str, file_type: &str, model: &str| {
            json!({"fileId": file_id, "name": format!("{file_id}.bin"), "version": version,
                   "fileType": file_type, "deviceType": "Meter", "model": model,
                   "manufacturerName": "Acme", "protocolType": "CoAP",
                   "description": "", "date": "20240101T000000Z",
                   "uploadTime": "20240101T000000Z"})
        };
        State {
            access: None,
            refresh: None,
            issued: 0,
            expires_in: VecDeque::new(),
            faults: HashMap::new(),
            requests: Vec::new(),
            packages: vec![
                package("sw-1.5", "1.5", "softwarePackage", "M1"),
                package("sw-1.6-m1", "1.6", "softwarePackage", "M1"),
                package("sw-1.6-m2", "1.6", "softwarePackage", "M2"),
                package("fw-V1.0.4", "V1.0.4", "firmwarePackage", "M1"),
            ],
            tasks: Vec::new(),
            sub_operations: Vec::new(),
            subscriptions: Vec::new(),
            callback_key: "callbackUrl",
        }
    }

    fn issue(&mut self) -> HttpResponse {
        self.issued += 1;
        let access = format!("access-{}", self.issued);
        let refresh = format!("refresh-{}", self.issued);
        self.access = Some(access.clone());
        self.refresh = Some(refresh.clone());
        let expires_in = self.expires_in.pop_front().unwrap_or(TOKEN_SECONDS);
        HttpResponse::Ok().json(json!({"scope": "default", "tokenType": "bearer",
            "expiresIn": expires_in, "accessToken": access, "refreshToken": refresh}))
    }

    fn authorised(&self, request: &Recorded) -> bool {
        let bearer = self.access.as_ref().map(|token| format!("Bearer {token}"));
        request.header("app_key") == Some(APP_ID)
            && bearer.is_some()
            && request.header("authorization") == bearer.as_deref()
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(&String::from_utf8_lossy(body))
        .map(|query| query.into_inner())
        .unwrap_or_default()
}

fn error(status: u16, code: &str, desc: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status).expect("a valid status");
    match code.is_empty() {
        true => HttpResponse::build(status).finish(),
        false => HttpResponse::build(status).json(json!({"error_code": code, "error_desc": desc})),
    }
}

async fn handle_request(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<Shared>,
) -> HttpResponse {
    let recorded = Recorded {
        route: Route::of(request.method().as_str(), request.path()),
        method: request.method().to_string(),
        path: request.path().to_owned(),
        query: form(request.query_string().as_bytes()),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    };
    let (answer, delay) = {
        let mut state = lock(&state);
        state.requests.push(recorded.clone());
        let fault = state
            .faults
            .get_mut(&recorded.route)
            .and_then(VecDeque::pop_front);
        match fault {
            Some(Fault::Slow(delay)) => (answer(&mut state, &recorded), Some(delay)),
            Some(Fault::NoOperationId) => {
                let _ = answer(&mut state, &recorded);
                (HttpResponse::Ok().json(json!({})), None)
            }
            Some(fault) => (injected(&fault), None),
            None => (answer(&mut state, &recorded), None),
        }
    };
    if let Some(delay) = delay {
        actix_web::rt::time::sleep(delay).await;
    }
    answer
}

fn injected(fault: &Fault) -> HttpResponse {
    match fault {
        Fault::InvalidToken => error(403, "1010005", "Invalid access token or appId."),
        Fault::Unauthorized => error(401, "", ""),
        Fault::Throttled => error(403, "1010009", "app throttle exceed."),
        Fault::Error(status, code) => error(*status, code, "injected"),
        Fault::Slow(_) | Fault::NoOperationId => unreachable!("handled by the caller"),
    }
}

fn answer(state: &mut State, request: &Recorded) -> HttpResponse {
    match request.route {
        Route::Login => login(state, request),
        Route::Refresh => refresh(state, request),
        Route::Unknown => error(404, "", ""),
        _ if !state.authorised(request) => error(403, "1010005", "Invalid access token or appId."),
        Route::CreateSoftware => create_task(state, request, "software_upgrade", "softwarePackage"),
        Route::CreateFirmware => create_task(state, request, "firmware_upgrade", "firmwarePackage"),
        Route::ListTasks => list_tasks(state, request),
        Route::Task => task(state, request),
        Route::SubOperations => sub_operations(state, request),
        Route::Packages => packages(state, request),
        Route::Package => package(state, request),
        Route::SubscribeManagement => subscribe_management(state, request),
        Route::SubscribeService => subscribe_service(state, request),
    }
}

fn login(state: &mut State, request: &Recorded) -> HttpResponse {
    let form_encoded = request
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let form = request.form();
    let known = form.get("appId").map(String::as_str) == Some(APP_ID)
        && form.get("secret").map(String::as_str) == Some(SECRET);
    match (form_encoded, known) {
        (false, _) => error(400, "100228", "login takes a form body"),
        (true, false) => error(400, "100208", "appId or secret is wrong"),
        (true, true) => state.issue(),
    }
}

fn refresh(state: &mut State, request: &Recorded) -> HttpResponse {
    let body = request.json();
    let valid = body["appId"] == APP_ID
        && body["secret"] == SECRET
        && state
            .refresh
            .as_deref()
            .is_some_and(|r| body["refreshToken"] == r);
    match valid {
        true => state.issue(),
        false => error(400, "1010005", "invalid refresh token"),
    }
}

fn create_task(
    state: &mut State,
    request: &Recorded,
    operate_type: &'static str,
    file_type: &str,
) -> HttpResponse {
    let body = request.json();
    let file_id = body["fileId"].as_str().unwrap_or_default().to_owned();
    let known = state
        .packages
        .iter()
        .any(|p| p["fileId"] == file_id && p["fileType"] == file_type);
    let devices: Vec<String> = body["targets"]["devices"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let policy = body.get("policy").cloned().unwrap_or(Value::Null);
    let execute_type = policy["executeType"].as_str();
    let retry_times = policy["retryTimes"].as_i64();
    let problem = if !known {
        Some("123002")
    } else if devices.is_empty() {
        Some("120015")
    } else if devices.len() > 256 {
        Some("123024")
    } else if !policy.is_null() && !matches!(execute_type, Some("now" | "device_online" | "custom"))
    {
        Some("123025")
    } else if policy["retryType"] == true && !retry_times.is_some_and(|n| (1..=5).contains(&n)) {
        Some("123028")
    } else {
        None
    };
    if let Some(code) = problem {
        return error(400, code, "invalid task");
    }
    let operation_id = format!("5c9c03b10a1b2c3d4e5f{:04x}", state.tasks.len() + 1);
    for (index, device) in devices.iter().enumerate() {
        state.sub_operations.push(SubOperation {
            operation_id: operation_id.clone(),
            sub_operation_id: format!("{operation_id}-{index}"),
            device_id: device.clone(),
            status: "wait".to_owned(),
        });
    }
    state.tasks.push(Task {
        operation_id: operation_id.clone(),
        operate_type,
        file_id,
        devices,
        policy,
        create_time: platform_time(SystemTime::now()),
    });
    HttpResponse::Ok().json(json!({"operationId": operation_id}))
}

fn task_json(task: &Task) -> Value {
    json!({"operationId": task.operation_id, "createTime": task.create_time,
           "operateType": task.operate_type, "targets": {"devices": task.devices},
           "policy": task.policy, "status": "processing",
           "staResult": {"total": task.devices.len()}})
}

fn list_tasks(state: &State, request: &Recorded) -> HttpResponse {
    let wanted = request.query.get("operationType");
    let tasks: Vec<Value> = state
        .tasks
        .iter()
        .filter(|task| wanted.is_none_or(|w| w == task.operate_type))
        .map(task_json)
        .collect();
    page(tasks, request)
}

fn task(state: &State, request: &Recorded) -> HttpResponse {
    let id = request.path.rsplit('/').next().unwrap_or_default();
    match state.tasks.iter().find(|task| task.operation_id == id) {
        Some(task) => HttpResponse::Ok().json(task_json(task)),
        None => error(404, "123009", "the task does not exist"),
    }
}

fn sub_operations(state: &State, request: &Recorded) -> HttpResponse {
    let id = request.path.split('/').rev().nth(1).unwrap_or_default();
    let status = request
        .query
        .get("subOperationStatus")
        .filter(|s| !s.is_empty());
    let all: Vec<&SubOperation> = state
        .sub_operations
        .iter()
        .filter(|s| s.operation_id == id)
        .collect();
    if all.is_empty() {
        return error(404, "123009", "the task does not exist");
    }
    let listed = all
        .into_iter()
        .filter(|sub| status.is_none_or(|s| *s == sub.status))
        .map(|sub| {
            json!({"subOperationId": sub.sub_operation_id, "deviceId": sub.device_id,
                          "status": sub.status, "createTime": "20240101T000000Z"})
        })
        .collect();
    page(listed, request)
}

fn packages(state: &State, request: &Recorded) -> HttpResponse {
    let filters = [
        "fileType",
        "version",
        "deviceType",
        "model",
        "manufacturerName",
    ];
    let matching = state
        .packages
        .iter()
        .filter(|package| {
            filters.iter().all(|key| {
                let wanted = request.query.get(*key).filter(|v| !v.is_empty());
                wanted.is_none_or(|value| package[*key] == value.as_str())
            })
        })
        .cloned()
        .collect();
    page(matching, request)
}

fn package(state: &State, request: &Recorded) -> HttpResponse {
    let id = request.path.rsplit('/').next().unwrap_or_default();
    match state.packages.iter().find(|p| p["fileId"] == id) {
        Some(package) => HttpResponse::Ok().json(package),
        None => error(404, "123002", "the package does not exist"),
    }
}

/// `{"data", "pageNo", "pageSize", "totalCount"}` of the requested page.
fn page(all: Vec<Value>, request: &Recorded) -> HttpResponse {
    let number = |key: &str, default: usize| {
        request
            .query
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (page_no, page_size) = (number("pageNo", 0), number("pageSize", 10).clamp(1, 100));
    let data: Vec<Value> = all
        .iter()
        .skip(page_no * page_size)
        .take(page_size)
        .cloned()
        .collect();
    HttpResponse::Ok().json(
        json!({"data": data, "pageNo": page_no, "pageSize": page_size,
                                   "totalCount": all.len()}),
    )
}

fn subscribe_management(state: &mut State, request: &Recorded) -> HttpResponse {
    let body = request.json();
    let notify_type = body["notifyType"].as_str().unwrap_or_default().to_owned();
    let Some(url) = body[state.callback_key].as_str().map(str::to_owned) else {
        return error(400, "100228", "parameter error");
    };
    if !UPGRADE_TYPES.contains(&notify_type.as_str()) {
        return error(400, "100228", "parameter error");
    }
    if !url.starts_with("http") {
        return error(400, "100222", "invalid callback URL");
    }
    if state.subscriptions.iter().any(|(t, _)| *t == notify_type) {
        return error(409, "100227", "already subscribed");
    }
    state.subscriptions.push((notify_type, url));
    HttpResponse::Ok().finish()
}

fn subscribe_service(state: &mut State, request: &Recorded) -> HttpResponse {
    let body = request.json();
    let (Some(notify_type), Some(url)) =
        (body["notifyType"].as_str(), body["callbackUrl"].as_str())
    else {
        return error(400, "100228", "parameter error");
    };
    state
        .subscriptions
        .push((notify_type.to_owned(), url.to_owned()));
    HttpResponse::Created().json(
        json!({"subscriptionId": format!("sub-{}", state.subscriptions.len()),
        "notifyType": notify_type, "callbackUrl": url}),
    )
}

/// `yyyyMMdd'T'HHmmss'Z'`.
fn platform_time(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(['-', ':'], "")
}
