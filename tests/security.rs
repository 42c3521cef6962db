//! The receiver on an exposed address: HTTPS (handshake, refusal of plain HTTP, client
//! certificates, certificate rotation without a restart), the token, the address allowlist
//! with and without trusted proxies, `/metrics` on its own address, slow-header clients, and
//! secrets kept out of the logs. Certificates are made for each test with rcgen.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{RECEIVER, SETTLE_TIMEOUT, TestServer, fixtures, metric, wait_until};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use reqwest::blocking::Client;
use serde_json::Value;

/// A token long enough for the config's rule.
const TOKEN: &str = "t0ken-for-tests-0123456789";

/// A certificate authority that signs server and client certificates.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate (PEM) and its key (PEM).
struct Pair {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key can be generated");
        Authority {
            issuer: CertifiedIssuer::self_signed(params, key).expect("the CA signs itself"),
        }
    }

    /// A certificate for the loopback names, signed by this authority.
    fn sign(&self, name: &str) -> Pair {
        let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key can be generated");
        let cert = params.signed_by(&key, &self.issuer).expect("the CA signs");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn certificate(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem().as_bytes()).expect("the CA is PEM")
    }
}

/// Writes a file by renaming a complete copy over it, as certificate tools do.
fn replace_file(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).expect("a file can be written");
    std::fs::rename(&temporary, path).expect("a file can be renamed");
}

/// An HTTPS client that trusts only `authority`, reports the server's certificate and opens a
/// new connection for every request. (A client resuming a TLS session is not sent the
/// certificate again: a test of what is served now needs a fresh client.)
fn https_client(authority: &Authority, identity: Option<&Pair>) -> Client {
    let mut builder = Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([authority.certificate()])
        .tls_info(true)
        .pool_max_idle_per_host(0);
    if let Some(pair) = identity {
        let pem = format!("{}{}", pair.cert, pair.key);
        let identity = reqwest::Identity::from_pem(pem.as_bytes()).expect("an identity");
        builder = builder.identity(identity);
    }
    builder.build().expect("an HTTPS client can be built")
}

/// Starts a server with `[server.tls]` from `server` (and `extra` TOML), reached with `client`.
fn start_tls(server: &Pair, extra: &str, client: Client) -> TestServer {
    let dir = tempfile::tempdir().expect("a folder");
    std::fs::write(dir.path().join("cert.pem"), &server.cert).expect("cert written");
    std::fs::write(dir.path().join("key.pem"), &server.key).expect("key written");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let toml = format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n{extra}",
        cert.display().to_string(),
        key.display().to_string()
    );
    TestServer::start_reached_with(dir, &toml, &[], "https", client)
}

/// The certificate the server presented for `response`'s connection.
fn served_certificate(response: &reqwest::blocking::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the response carries the server's certificate")
        .to_vec()
}

fn post(client: &Client, url: &str, body: &Value) -> reqwest::Result<reqwest::blocking::Response> {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
}

fn status(response: reqwest::Result<reqwest::blocking::Response>) -> u16 {
    response
        .unwrap_or_else(|e| panic!("no answer: {e}"))
        .status()
        .as_u16()
}

#[test]
fn https_is_served_and_plain_http_is_refused_on_the_tls_port() {
    let authority = Authority::new("test CA");
    let server = start_tls(
        &authority.sign("server"),
        "",
        https_client(&authority, None),
    );
    let reply = post(
        server.client(),
        &server.url(RECEIVER),
        &fixtures::sw_fail("d-tls"),
    );
    assert_eq!(status(reply), 200);
    let plain = common::http_client()
        .get(format!("http://{}/healthz", server.addr()))
        .send();
    assert!(
        plain.is_err(),
        "plain HTTP on the TLS port got an answer: {:?}",
        plain.map(|r| r.status())
    );
}

#[test]
fn a_client_certificate_is_required_when_client_ca_is_set() {
    let servers = Authority::new("server CA");
    let clients = Authority::new("client CA");
    let dir = tempfile::tempdir().expect("a folder");
    let client_ca = dir.path().join("clients.pem");
    std::fs::write(&client_ca, clients.pem()).expect("CA written");
    let extra = format!("client_ca = {:?}\n", client_ca.display().to_string());
    let known = https_client(&servers, Some(&clients.sign("platform")));
    let server = start_tls(&servers.sign("server"), &extra, known);
    let body = fixtures::sw_fail("d-mtls");
    assert_eq!(
        status(post(server.client(), &server.url(RECEIVER), &body)),
        200
    );
    let anonymous = https_client(&servers, None);
    assert!(post(&anonymous, &server.url(RECEIVER), &body).is_err());
    let stranger = https_client(&servers, Some(&Authority::new("other CA").sign("stranger")));
    assert!(post(&stranger, &server.url(RECEIVER), &body).is_err());
}

#[test]
fn a_replaced_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let authority = Authority::new("test CA");
    let (first, second) = (authority.sign("first"), authority.sign("second"));
    let server = start_tls(&first, "", https_client(&authority, None));
    let served = || {
        let client = https_client(&authority, None);
        let response = client.get(server.url("/healthz")).send();
        served_certificate(&response.expect("the server answers over HTTPS"))
    };
    assert_eq!(served(), first.der);
    let (cert, key) = (
        server.folder().join("cert.pem"),
        server.folder().join("key.pem"),
    );
    replace_file(&key, &second.key);
    replace_file(&cert, &second.cert);
    assert!(
        wait_until(SETTLE_TIMEOUT, || served() == second.der),
        "the new certificate was not served; logs:\n{}",
        server.logs()
    );
    replace_file(&cert, "not a certificate");
    assert!(
        wait_until(SETTLE_TIMEOUT, || server
            .logs()
            .contains("the previous one stays in service")),
        "a broken certificate was not reported; logs:\n{}",
        server.logs()
    );
    assert_eq!(
        served(),
        second.der,
        "a broken file replaced the certificate"
    );
}

/// Posts to `path` on `server` with the token in the query, the header, or not at all.
fn post_with_token(server: &TestServer, path: &str, token: Option<Token>, device: &str) -> u16 {
    let body = fixtures::sw_fail(device).to_string();
    let url = match token {
        // Test tokens hold no character that needs escaping in a query.
        Some(Token::Query(token)) => server.url(&format!("{path}?token={token}")),
        _ => server.url(path),
    };
    let mut request = server
        .client()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(Token::Header(value)) = token {
        request = request.header("authorization", value);
    }
    status(request.send())
}

enum Token<'a> {
    Query(&'a str),
    Header(&'a str),
}

#[test]
fn the_token_is_accepted_in_the_query_or_the_header_and_denials_are_counted_not_stored() {
    let server = TestServer::start(&format!("[server.auth]\ntoken = {TOKEN:?}\n"));
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        post_with_token(&server, RECEIVER, Some(Token::Query(TOKEN)), "d1"),
        200
    );
    assert_eq!(
        post_with_token(&server, RECEIVER, Some(Token::Header(&bearer)), "d2"),
        200
    );
    let lowercase = format!("bearer {TOKEN}");
    assert_eq!(
        post_with_token(&server, RECEIVER, Some(Token::Header(&lowercase)), "d3"),
        200
    );
    assert_eq!(post_with_token(&server, RECEIVER, None, "d4"), 401);
    let wrong = "t0ken-for-tests-0123456780";
    assert_eq!(
        post_with_token(&server, RECEIVER, Some(Token::Query(wrong)), "d5"),
        401
    );
    let basic = format!("Basic {TOKEN}");
    assert_eq!(
        post_with_token(&server, RECEIVER, Some(Token::Header(&basic)), "d6"),
        401
    );
    let denied = server.post_json(RECEIVER, &fixtures::sw_fail("d7").to_string());
    assert_eq!(denied.error(401), "unauthorized");
    assert_eq!(denied.headers.get("www-authenticate").unwrap(), "Bearer");

    assert_eq!(server.event_ids().len(), 3, "denied requests were stored");
    assert!(server.rejected_rows().is_empty(), "denied bodies were kept");
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(
        server.get("/metrics").status,
        401,
        "/metrics needs the token"
    );
    let metrics = server
        .client()
        .get(server.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .and_then(|r| r.text())
        .expect("metrics with the token");
    let count = |reason| {
        metric(
            &metrics,
            &format!("notirouter_access_denied_total{{reason=\"{reason}\"}}"),
        )
    };
    // No token: d4, the Basic header, d7 and /metrics; a wrong one: d5.
    assert_eq!(count("missing_token"), Some(4.0), "{metrics}");
    assert_eq!(count("wrong_token"), Some(1.0), "{metrics}");
}

#[test]
fn open_paths_need_no_token_and_the_paths_under_them_neither() {
    let secret = "/cb/5d41402abc4b2a76b9719d911017c592/v1.0.0/messageReceiver";
    let server = TestServer::start(&format!(
        "[server]\npaths = [{secret:?}, {RECEIVER:?}]\n[server.auth]\ntoken = {TOKEN:?}\nopen_paths = [{secret:?}]\n"
    ));
    assert_eq!(post_with_token(&server, secret, None, "d1"), 200);
    assert_eq!(
        post_with_token(&server, &format!("{secret}/cmd"), None, "d2"),
        200
    );
    assert_eq!(post_with_token(&server, RECEIVER, None, "d3"), 401);
    assert_eq!(
        post_with_token(&server, "/cb/guess/v1.0.0/messageReceiver", None, "d4"),
        401
    );
}

/// Posts with `X-Forwarded-For: forwarded` (when given) and returns the status.
fn post_forwarded(server: &TestServer, forwarded: Option<&str>, device: &str) -> u16 {
    let mut request = server
        .client()
        .post(server.url(RECEIVER))
        .header("content-type", "application/json")
        .body(fixtures::sw_fail(device).to_string());
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    status(request.send())
}

#[test]
fn allow_ips_refuse_other_addresses_but_not_the_probes() {
    let server =
        TestServer::start("[server.auth]\nallow_ips = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n");
    let refused = server.post_json(RECEIVER, &fixtures::sw_fail("d1").to_string());
    assert_eq!(refused.error(403), "forbidden");
    assert_eq!(
        server.get("/metrics").status,
        403,
        "/metrics is behind allow_ips"
    );
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/readyz").status, 200);
    // Not a trusted proxy: what it forwards is not believed.
    assert_eq!(post_forwarded(&server, Some("192.0.2.1"), "d2"), 403);
    assert!(server.event_ids().is_empty());

    let server = TestServer::start("[server.auth]\nallow_ips = [\"127.0.0.1\"]\n");
    server
        .post_json(RECEIVER, &fixtures::sw_fail("d3").to_string())
        .accepted_clean();
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_is_checked_and_stored() {
    let server = TestServer::start(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[server.auth]\nallow_ips = [\"198.51.100.0/24\"]\n",
    );
    assert_eq!(post_forwarded(&server, Some("198.51.100.7"), "d1"), 200);
    // The client may write anything to the left; the proxy's own entry is the right-most.
    assert_eq!(
        post_forwarded(&server, Some("198.51.100.7, 203.0.113.1"), "d2"),
        403
    );
    assert_eq!(
        post_forwarded(&server, Some("203.0.113.1, 198.51.100.8"), "d3"),
        200
    );
    assert_eq!(
        post_forwarded(&server, None, "d4"),
        403,
        "the proxy itself is not allowed"
    );
    assert_eq!(post_forwarded(&server, Some("not-an-address"), "d5"), 403);
    let stored: Vec<String> = server
        .event_ids()
        .iter()
        .map(|id| {
            server.event_detail(id)["remote_addr"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(stored, ["198.51.100.8", "198.51.100.7"], "newest first");
}

#[test]
fn ipv6_clients_are_matched_against_ipv6_nets() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let server = TestServer::start(
        "[server]\nlisten = \"[::1]:0\"\n[server.auth]\nallow_ips = [\"::1/128\"]\n",
    );
    server
        .post_json(RECEIVER, &fixtures::sw_fail("d1").to_string())
        .accepted_clean();
    let server = TestServer::start(
        "[server]\nlisten = \"[::1]:0\"\n[server.auth]\nallow_ips = [\"127.0.0.1\", \"2001:db8::/32\"]\n",
    );
    server
        .post_json(RECEIVER, &fixtures::sw_fail("d2").to_string())
        .error(403);
}

#[test]
fn metrics_listen_moves_metrics_off_the_receiver() {
    let server = TestServer::start("[server]\nmetrics_listen = \"127.0.0.1:0\"\n");
    assert_eq!(server.get("/metrics").status, 404);
    server.post_accepted(&fixtures::sw_fail("d1"));
    let mut address = None;
    let logged = wait_until(SETTLE_TIMEOUT, || {
        address = server.logs().lines().find_map(|line| {
            let (_, rest) = line.split_once("metrics_addr=")?;
            rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
        });
        address.is_some()
    });
    assert!(logged, "no metrics address logged:\n{}", server.logs());
    let url = format!("http://{}/metrics", address.expect("logged"));
    let text = server
        .client()
        .get(url)
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(
        text.contains("notirouter_notifications_received_total"),
        "{text}"
    );
}

#[test]
fn denials_are_logged_with_the_address_at_a_bounded_rate_and_secrets_never() {
    let secret = "5d41402abc4b2a76b9719d911017c592";
    let path = format!("/cb/{secret}/v1.0.0/messageReceiver");
    let server = TestServer::start_with_env(
        &format!(
            "[server]\npaths = [{path:?}]\n[server.auth]\ntoken = {TOKEN:?}\nopen_paths = [{path:?}]\n"
        ),
        &[("RUST_LOG", "debug")],
    );
    assert_eq!(
        post_with_token(&server, &path, Some(Token::Query(TOKEN)), "d0"),
        200
    );
    server.post_json(&path, "not json").error(400);
    const BURST: usize = 20;
    for n in 0..BURST {
        let guess = format!("{TOKEN}{n}");
        assert_eq!(
            post_with_token(&server, "/elsewhere", Some(Token::Query(&guess)), "d"),
            401
        );
    }
    assert!(
        wait_until(SETTLE_TIMEOUT, || server.logs().contains("request denied")),
        "no denial logged:\n{}",
        server.logs()
    );
    let burst_lines = denial_lines(&server.logs()).len();
    // Deny until the limiter lets the next line through: it counts those left out meanwhile.
    let mut sent = BURST;
    let next_line = wait_until(SETTLE_TIMEOUT, || {
        sent += 1;
        let guess = format!("{TOKEN}-{sent}");
        post_with_token(&server, "/elsewhere", Some(Token::Query(&guess)), "d");
        denial_lines(&server.logs()).len() > burst_lines
    });
    assert!(next_line, "no second denial line:\n{}", server.logs());
    let logs = server.logs();
    let denials = denial_lines(&logs);
    assert!(
        denials[0].contains("remote_addr=127.0.0.1"),
        "{}",
        denials[0]
    );
    assert!(
        burst_lines < BURST,
        "{burst_lines} lines for a burst of {BURST} denials"
    );
    let left_out: usize = denials.iter().map(|line| left_out_of(line)).sum();
    let accounted = denials.len() + left_out;
    assert!(
        (BURST + 1..=sent).contains(&accounted),
        "{sent} denials, {accounted} logged or counted as left out:\n{}",
        denials.join("\n")
    );
    assert!(!logs.contains(TOKEN), "the token was logged:\n{logs}");
    assert!(
        !logs.contains(secret),
        "the secret path was logged:\n{logs}"
    );
}

fn denial_lines(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|line| line.contains("request denied"))
        .collect()
}

/// The `left_out=N` of a denial line: denials not logged since the previous line.
fn left_out_of(line: &str) -> usize {
    line.split("left_out=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("a denial line counts those left out: {line}"))
}

/// Opens a connection that sends a request head one byte at a time and never finishes it.
fn slow_connection(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("a connection opens");
    stream
        .write_all(b"POST /v1.0.0/messageReceiver HTTP/1.1\r\nHost: x\r\n")
        .expect("the request line is sent");
    stream
}

/// True once the server has closed `stream` (end of stream, a reset, or a 408 answer).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    // Non-blocking: nothing to read yet answers at once, so 200 streams are checked quickly.
    stream
        .set_nonblocking(true)
        .expect("a stream can be made non-blocking");
    let mut buffer = [0u8; 256];
    match stream.read(&mut buffer) {
        // End of stream, or the server's 408 before it closes.
        Ok(read) => read == 0 || buffer.starts_with(b"HTTP/1.1 408"),
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn slow_header_clients_neither_starve_others_nor_stay_connected() {
    let server = TestServer::start("[server]\nheader_timeout = \"5s\"\n");
    let mut slow: Vec<TcpStream> = (0..200).map(|_| slow_connection(server.addr())).collect();
    let trickling = Arc::new(AtomicBool::new(true));
    let trickler = {
        let trickling = Arc::clone(&trickling);
        let mut streams: Vec<TcpStream> =
            slow.iter().map(|s| s.try_clone().expect("clone")).collect();
        std::thread::spawn(move || {
            // Bounded: the test stops it, and it gives up on its own after 30 s.
            let deadline = Instant::now() + Duration::from_secs(30);
            while trickling.load(Ordering::Relaxed) && Instant::now() < deadline {
                for stream in &mut streams {
                    let _ = stream.write_all(b"X");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Served while every slow client is still held: not after the header timeout freed them.
    for n in 0..10 {
        let reply = server.post_json(RECEIVER, &fixtures::sw_fail(&format!("d{n}")).to_string());
        reply.accepted_clean();
        let dropped = slow
            .iter_mut()
            .map(closed_by_server)
            .filter(|closed| *closed)
            .count();
        assert_eq!(
            dropped, 0,
            "request {n} was answered only once slow clients were dropped"
        );
    }
    let all_closed = wait_until(SETTLE_TIMEOUT, || slow.iter_mut().all(closed_by_server));
    trickling.store(false, Ordering::Relaxed);
    trickler.join().expect("the trickler ends");
    assert!(
        all_closed,
        "slow clients were still connected after the header timeout"
    );
}

/// What [`endless_answer_sink`] saw of its first connection.
#[derive(Default)]
struct EndlessAnswer {
    /// Bytes of the body written before the client hung up (or all of them).
    written: std::sync::atomic::AtomicUsize,
    /// Whether the client hung up before the body's end.
    hung_up: AtomicBool,
}

/// The most an endless answer sends before it stalls: far more than any excerpt needs, far
/// less than a test machine's memory.
const ENDLESS_LIMIT: usize = 128 << 20;

/// A destination that answers every POST with `answer`, which is told what it sees on the
/// first connection.
fn answering_sink(
    answer: fn(TcpStream, Option<&EndlessAnswer>),
) -> (SocketAddr, Arc<EndlessAnswer>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    let seen = Arc::new(EndlessAnswer::default());
    let first = Arc::clone(&seen);
    std::thread::spawn(move || {
        for (index, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let seen = (index == 0).then(|| Arc::clone(&first));
            std::thread::spawn(move || answer(stream, seen.as_deref()));
        }
    });
    (addr, seen)
}

/// Reads the request and sends the head of a chunked 500 answer; `false` if the client left.
fn start_chunked_error(stream: &mut TcpStream) -> bool {
    let mut request = [0_u8; 4096];
    let _ = stream.read(&mut request);
    let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n\
                transfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).is_ok()
}

fn chunk(bytes: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", bytes.len()).as_bytes(), bytes, b"\r\n"].concat()
}

/// A 500 whose body begins with `endless answer begins` and goes on for [`ENDLESS_LIMIT`]
/// bytes, then stalls without ending.
fn answer_endlessly(mut stream: TcpStream, seen: Option<&EndlessAnswer>) {
    if !start_chunked_error(&mut stream) {
        return;
    }
    let mut body = b"endless answer begins ".to_vec();
    body.resize(64 << 10, b'x');
    let framed = chunk(&body);
    let mut written = 0;
    while written < ENDLESS_LIMIT {
        if stream.write_all(&framed).is_err() {
            if let Some(seen) = seen {
                seen.hung_up.store(true, Ordering::SeqCst);
            }
            return;
        }
        written += body.len();
        if let Some(seen) = seen {
            seen.written.store(written, Ordering::SeqCst);
        }
    }
    // Stalled: the body never ends; the client's timeout or hang-up ends the connection.
    let _ = stream.read(&mut [0_u8; 1]);
}

/// A 500 whose body begins with `trickled answer begins`, then adds a byte every 100 ms for
/// at most a minute.
fn answer_by_trickle(mut stream: TcpStream, seen: Option<&EndlessAnswer>) {
    if !start_chunked_error(&mut stream)
        || stream.write_all(&chunk(b"trickled answer begins")).is_err()
    {
        return;
    }
    for _ in 0..600 {
        std::thread::sleep(Duration::from_millis(100));
        if stream.write_all(&chunk(b".")).is_err() {
            if let Some(seen) = seen {
                seen.hung_up.store(true, Ordering::SeqCst);
            }
            return;
        }
    }
}

/// A server with `delivery` settings whose plugin posts a webhook to `addr` for each event,
/// and the id of one event it accepted.
fn webhook_to(addr: SocketAddr, delivery: &str) -> (TestServer, String) {
    let plugin = format!(
        "fn on_notification(n) {{ webhook(\"http://{addr}/hook\", #{{device: n.deviceId}}); }}"
    );
    let server = TestServer::start_with_plugins(
        &format!("[delivery]\n{delivery}"),
        &[("hook.rhai", plugin.as_str())],
    );
    let id = server.post_accepted(&fixtures::sw_fail("dev-answers"));
    (server, id)
}

#[test]
fn an_endless_answer_is_read_only_as_far_as_the_error_needs() {
    let (addr, seen) = answering_sink(answer_endlessly);
    // A timeout longer than the waits below: only reading less than the whole answer passes.
    // The lease must outlast it.
    let (server, id) = webhook_to(addr, "timeout = \"60s\"\n[store]\nlease = \"65s\"\n");
    let hung_up = wait_until(SETTLE_TIMEOUT, || seen.hung_up.load(Ordering::SeqCst));
    let written = seen.written.load(Ordering::SeqCst);
    assert!(
        hung_up,
        "the server read {written} bytes of the answer without hanging up; logs:\n{}",
        server.logs()
    );
    assert!(written < ENDLESS_LIMIT, "{written}");
    let mut action = Value::Null;
    let recorded = wait_until(SETTLE_TIMEOUT, || {
        action = server.event_detail(&id)["actions"][0].clone();
        action["attempts"]
            .as_u64()
            .is_some_and(|attempts| attempts >= 1)
    });
    assert!(recorded, "no attempt recorded: {action:#}");
    let error = action["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("HTTP 500 Internal Server Error: endless answer begins xxx"),
        "{action:#}"
    );
    assert!(
        error.len() < 1024,
        "the excerpt is short: {} bytes",
        error.len()
    );
}

#[test]
fn a_trickling_answer_ends_with_the_attempt_and_keeps_what_came() {
    let (addr, seen) = answering_sink(answer_by_trickle);
    let (server, id) = webhook_to(addr, "timeout = \"1s\"\nmax_attempts = 1\n");
    let mut action = Value::Null;
    let dead = wait_until(SETTLE_TIMEOUT, || {
        action = server.event_detail(&id)["actions"][0].clone();
        action["status"] == "dead"
    });
    assert!(
        dead,
        "the attempt did not end: {action:#}\nlogs:\n{}",
        server.logs()
    );
    let error = action["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("HTTP 500 Internal Server Error: trickled answer begins"),
        "{action:#}"
    );
    assert!(
        wait_until(SETTLE_TIMEOUT, || seen.hung_up.load(Ordering::SeqCst)),
        "the connection was kept open after the attempt"
    );
}
