//! Test doubles for the delivery stage: an HTTP receiver ([`HttpSink`]) for chat and webhook
//! channels and an SMTP server ([`SmtpSink`]) for email. Both are real servers on
//! `127.0.0.1:0`, each on a small tokio runtime of its own so that the blocking tests can use
//! them; they are listening when `start` returns, record everything they receive, and answer
//! as the test scripts them, which it may change at any moment.
//!
//! Scripted answers are consumed in arrival order (HTTP) or per recipient (SMTP), so a test
//! that scripts several failures should make the order of arrival irrelevant to what it
//! asserts, or send to one destination at a time.

// Each test binary that declares this module uses only part of it.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// Locks a test double's state; a panic while it was held already failed the test.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A runtime for one double, and a listener bound (so already accepting connections into the
/// kernel's backlog) before the caller gets the address.
fn listen() -> (Runtime, TcpListener, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound");
    listener
        .set_nonblocking(true)
        .expect("the listener can be made non-blocking");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let listener = {
        let _context = runtime.enter();
        TcpListener::from_std(listener).expect("tokio takes the listener")
    };
    (runtime, listener, addr)
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// How the [`HttpSink`] answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Never answer until [`HttpSink::release`] (then answer with the default), or until the
    /// client gives up and closes the connection.
    pub stall: bool,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: String::new(),
            stall: false,
        }
    }

    pub fn ok() -> Answer {
        Answer::status(200).body("ok")
    }

    pub fn stall() -> Answer {
        Answer {
            stall: true,
            ..Answer::status(200)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: &str) -> Answer {
        self.body = body.to_owned();
        self
    }
}

/// One request the [`HttpSink`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When its head arrived.
    pub at: Instant,
    /// The status it was answered with; `None` while it stalls, or if the client left first.
    pub answered: Option<u16>,
}

impl Received {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON; panics (showing it) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

struct HttpState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Answer>>,
    default: Mutex<Answer>,
    hanging: AtomicUsize,
    most_hanging: AtomicUsize,
    released: watch::Sender<bool>,
}

impl HttpState {
    fn next_answer(&self) -> Answer {
        lock(&self.script)
            .pop_front()
            .unwrap_or_else(|| lock(&self.default).clone())
    }

    /// The answer a stalled request gets once released (a stall itself would never end).
    fn released_answer(&self) -> Answer {
        let answer = lock(&self.default).clone();
        if answer.stall { Answer::ok() } else { answer }
    }
}

/// An HTTP/1.1 server that records each request and answers as scripted: first the answers
/// queued with [`HttpSink::then`], in order of arrival, then the default
/// ([`HttpSink::answer_always`], initially 200).
pub struct HttpSink {
    addr: SocketAddr,
    state: Arc<HttpState>,
    _runtime: Runtime,
}

impl HttpSink {
    pub fn start() -> HttpSink {
        let (runtime, listener, addr) = listen();
        let (released, _) = watch::channel(false);
        let state = Arc::new(HttpState {
            received: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Answer::ok()),
            hanging: AtomicUsize::new(0),
            most_hanging: AtomicUsize::new(0),
            released,
        });
        let shared = Arc::clone(&state);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_http(stream, Arc::clone(&shared)));
            }
        });
        HttpSink {
            addr,
            state,
            _runtime: runtime,
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queues `answer` for the next request not yet answered by an earlier scripted one.
    pub fn then(&self, answer: Answer) -> &HttpSink {
        lock(&self.state.script).push_back(answer);
        self
    }

    /// Answers every request after the scripted ones with `answer`.
    pub fn answer_always(&self, answer: Answer) {
        *lock(&self.state.default) = answer;
    }

    /// Ends every stall, present and future: stalled requests get the default answer.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }

    /// Everything received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    pub fn count(&self) -> usize {
        lock(&self.state.received).len()
    }

    /// The requests answered with a 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.answered
                    .is_some_and(|status| (200..300).contains(&status))
            })
            .collect()
    }

    /// Requests stalled right now, their connection still open.
    pub fn hanging(&self) -> usize {
        self.state.hanging.load(Ordering::SeqCst)
    }

    /// The most requests that were ever stalled at the same time.
    pub fn most_hanging(&self) -> usize {
        self.state.most_hanging.load(Ordering::SeqCst)
    }

    /// How many requests got an answer (of any status).
    pub fn answered(&self) -> usize {
        lock(&self.state.received)
            .iter()
            .filter(|r| r.answered.is_some())
            .count()
    }
}

/// One connection: requests one after another (keep-alive), each answered as scripted.
async fn serve_http(stream: TcpStream, state: Arc<HttpState>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    while let Some(request) = read_request(&mut reader).await {
        // Decided before the request is visible to the test, so that a test which changes the
        // answers once it sees request n cannot change request n's.
        let mut answer = state.next_answer();
        let index = {
            let mut received = lock(&state.received);
            received.push(request);
            received.len() - 1
        };
        if answer.stall {
            let now = state.hanging.fetch_add(1, Ordering::SeqCst) + 1;
            state.most_hanging.fetch_max(now, Ordering::SeqCst);
            let mut released = state.released.subscribe();
            let outcome = tokio::select! {
                _ = released.wait_for(|released| *released) => Some(state.released_answer()),
                // The client sends nothing more on this connection until it has its answer,
                // so anything here means it gave up (EOF or reset).
                _ = reader.fill_buf() => None,
            };
            state.hanging.fetch_sub(1, Ordering::SeqCst);
            match outcome {
                Some(released) => answer = released,
                None => return,
            }
        }
        let reason = reqwest::StatusCode::from_u16(answer.status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Scripted");
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
            answer.status,
            answer.body.len()
        );
        for (name, value) in &answer.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&answer.body);
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        lock(&state.received)[index].answered = Some(answer.status);
    }
}

/// Reads one request (head and `content-length` body); `None` at the end of the connection.
async fn read_request(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Received> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let at = Instant::now();
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let (name, value) = text.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    assert!(
        !headers
            .iter()
            .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked")),
        "the HTTP sink reads content-length bodies only"
    );
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some(Received {
        method,
        path,
        headers,
        body,
        at,
        answered: None,
    })
}

// ---------------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------------

/// Where in the SMTP dialogue a scripted refusal comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The answer to `RCPT TO`.
    Rcpt,
    /// The answer after the message data (`.`).
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    stage: Stage,
    code: u16,
}

/// One message accepted by the [`SmtpSink`].
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope sender (`MAIL FROM`).
    pub from: String,
    /// The envelope recipients (`RCPT TO`).
    pub to: Vec<String>,
    /// The message as transmitted, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
}

impl Mail {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// Header `name` (any case), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    /// Everything after the head.
    pub fn raw_body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

/// A refusal the [`SmtpSink`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub recipient: String,
    pub stage: Stage,
    pub code: u16,
}

#[derive(Default)]
struct SmtpState {
    mails: Mutex<Vec<Mail>>,
    refusals: Mutex<Vec<Refusal>>,
    /// Per recipient: refusals to give once each, in order, before the `always` rule.
    once: Mutex<HashMap<String, VecDeque<Fault>>>,
    always: Mutex<HashMap<String, Fault>>,
    /// `(user, password)` of each successful `AUTH`.
    logins: Mutex<Vec<(String, String)>>,
}

impl SmtpState {
    fn fault_for(&self, recipient: &str) -> Option<Fault> {
        let key = recipient.to_ascii_lowercase();
        if let Some(fault) = lock(&self.once).get_mut(&key).and_then(VecDeque::pop_front) {
            return Some(fault);
        }
        lock(&self.always).get(&key).copied()
    }

    fn refuse(&self, recipient: &str, fault: Fault) -> String {
        lock(&self.refusals).push(Refusal {
            recipient: recipient.to_owned(),
            stage: fault.stage,
            code: fault.code,
        });
        let enhanced = match fault.code {
            400..=499 => "4.3.0",
            _ => "5.1.1",
        };
        format!("{} {enhanced} scripted refusal\r\n", fault.code)
    }
}

/// An SMTP server (plain, no TLS) that advertises `AUTH PLAIN LOGIN`, accepts any login,
/// records each accepted message, and refuses recipients as scripted.
pub struct SmtpSink {
    addr: SocketAddr,
    state: Arc<SmtpState>,
    _runtime: Runtime,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let (runtime, listener, addr) = listen();
        let state = Arc::new(SmtpState::default());
        let shared = Arc::clone(&state);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_smtp(stream, Arc::clone(&shared)));
            }
        });
        SmtpSink {
            addr,
            state,
            _runtime: runtime,
        }
    }

    /// lettre's URL for a plain connection: `smtp://` without `?tls=` means no TLS at all
    /// (`?tls=required` / `opportunistic` would ask for STARTTLS).
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// As [`SmtpSink::url`], with credentials.
    pub fn url_with_login(&self, user: &str, password: &str) -> String {
        format!("smtp://{user}:{password}@{}", self.addr)
    }

    /// The next message to `recipient` is refused with `code` at `stage` (once; calls queue).
    pub fn fail_once(&self, recipient: &str, stage: Stage, code: u16) {
        lock(&self.state.once)
            .entry(recipient.to_ascii_lowercase())
            .or_default()
            .push_back(Fault { stage, code });
    }

    /// Every message to `recipient` is refused with `code` at `stage`, after any `fail_once`.
    pub fn fail_always(&self, recipient: &str, stage: Stage, code: u16) {
        lock(&self.state.always).insert(recipient.to_ascii_lowercase(), Fault { stage, code });
    }

    /// Accepts `recipient` again.
    pub fn heal(&self, recipient: &str) {
        let key = recipient.to_ascii_lowercase();
        lock(&self.state.always).remove(&key);
        lock(&self.state.once).remove(&key);
    }

    /// Every accepted message, in order.
    pub fn mails(&self) -> Vec<Mail> {
        lock(&self.state.mails).clone()
    }

    /// The accepted messages whose envelope names `recipient`.
    pub fn mails_to(&self, recipient: &str) -> Vec<Mail> {
        self.mails()
            .into_iter()
            .filter(|mail| mail.to.iter().any(|to| to.eq_ignore_ascii_case(recipient)))
            .collect()
    }

    pub fn refusals(&self) -> Vec<Refusal> {
        lock(&self.state.refusals).clone()
    }

    pub fn logins(&self) -> Vec<(String, String)> {
        lock(&self.state.logins).clone()
    }
}

/// What is between `<` and `>` in `MAIL FROM:<a@b> SIZE=1`, or the whole argument.
fn angle_address(argument: &str) -> String {
    match (argument.find('<'), argument.find('>')) {
        (Some(start), Some(end)) if start < end => argument[start + 1..end].to_owned(),
        _ => argument
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

fn decode_base64(text: &str) -> String {
    let bytes = BASE64.decode(text.trim()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One SMTP session.
async fn serve_smtp(stream: TcpStream, state: Arc<SmtpState>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut from = String::new();
    let mut to: Vec<String> = Vec::new();
    let mut data_fault: Option<(String, Fault)> = None;
    let mut line = Vec::new();
    if write.write_all(b"220 sink ESMTP ready\r\n").await.is_err() {
        return;
    }
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let (verb, argument) = text.split_once(' ').unwrap_or((&text, ""));
        let answer = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                "250-sink greets you\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
                    .to_owned()
            }
            "HELO" => "250 sink\r\n".to_owned(),
            "AUTH" => {
                let (mechanism, initial) = argument.split_once(' ').unwrap_or((argument, ""));
                let login = match mechanism.to_ascii_uppercase().as_str() {
                    "PLAIN" => {
                        let response = if initial.is_empty() {
                            ask(&mut reader, &mut write, "334 \r\n").await
                        } else {
                            Some(initial.to_owned())
                        };
                        response.and_then(|response| {
                            let decoded = decode_base64(&response);
                            let mut parts = decoded.split('\0').skip(1);
                            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
                        })
                    }
                    "LOGIN" => {
                        let user = if initial.is_empty() {
                            ask(&mut reader, &mut write, "334 VXNlcm5hbWU6\r\n").await
                        } else {
                            Some(initial.to_owned())
                        };
                        let password = ask(&mut reader, &mut write, "334 UGFzc3dvcmQ6\r\n").await;
                        user.zip(password)
                            .map(|(user, password)| (decode_base64(&user), decode_base64(&password)))
                    }
                    _ => None,
                };
                match login {
                    Some(login) => {
                        lock(&state.logins).push(login);
                        "235 2.7.0 authenticated\r\n".to_owned()
                    }
                    None => "535 5.7.8 authentication failed\r\n".to_owned(),
                }
            }
            "MAIL" => {
                from = angle_address(argument.split_once(':').map_or("", |(_, a)| a));
                to.clear();
                data_fault = None;
                "250 2.1.0 sender ok\r\n".to_owned()
            }
            "RCPT" => {
                let recipient = angle_address(argument.split_once(':').map_or("", |(_, a)| a));
                match state.fault_for(&recipient) {
                    Some(fault) if fault.stage == Stage::Rcpt => state.refuse(&recipient, fault),
                    fault => {
                        if let Some(fault) = fault {
                            data_fault.get_or_insert((recipient.clone(), fault));
                        }
                        to.push(recipient);
                        "250 2.1.5 recipient ok\r\n".to_owned()
                    }
                }
            }
            "DATA" if to.is_empty() => "503 5.5.1 no valid recipients\r\n".to_owned(),
            "DATA" => {
                if write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await.is_err() {
                    return;
                }
                let Some(data) = read_data(&mut reader).await else {
                    return;
                };
                let answer = match data_fault.take() {
                    Some((recipient, fault)) => state.refuse(&recipient, fault),
                    None => {
                        let mut mails = lock(&state.mails);
                        mails.push(Mail {
                            from: from.clone(),
                            to: std::mem::take(&mut to),
                            data,
                        });
                        format!("250 2.0.0 queued as {}\r\n", mails.len())
                    }
                };
                to.clear();
                answer
            }
            "RSET" => {
                from.clear();
                to.clear();
                data_fault = None;
                "250 2.0.0 reset\r\n".to_owned()
            }
            "NOOP" => "250 2.0.0 ok\r\n".to_owned(),
            "QUIT" => {
                let _ = write.write_all(b"221 2.0.0 bye\r\n").await;
                return;
            }
            _ => "502 5.5.2 command not implemented\r\n".to_owned(),
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Sends a `334` challenge and reads the client's line.
async fn ask(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    challenge: &str,
) -> Option<String> {
    write.write_all(challenge.as_bytes()).await.ok()?;
    let mut line = String::new();
    match reader.read_line(&mut line).await.ok()? {
        0 => None,
        _ => Some(line.trim_end().to_owned()),
    }
}

/// The message lines up to the lone `.`, with CRLFs kept and leading dots unstuffed.
async fn read_data(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        if line == b".\r\n" || line == b".\n" {
            return Some(data);
        }
        let unstuffed = if line.starts_with(b"..") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
    }
}
