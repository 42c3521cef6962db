//! SPEC.md: a 200 `accepted` means the notification is durably stored and survives `kill -9`
//! from that moment. These tests run the real binary, kill or stop it, and check the store.

mod common;

use common::load::Load;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{RECEIVER, SETTLE_TIMEOUT, TestServer, fixtures, in_parallel, wait_until};
use serde_json::Value;

/// Asserts that `events list` shows every id in `expected`.
fn assert_all_listed(server: &TestServer, expected: &[String]) {
    let listed: BTreeSet<String> = server.event_ids().into_iter().collect();
    let missing: Vec<&String> = expected.iter().filter(|id| !listed.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted notifications were lost: {missing:?}",
        missing.len(),
        expected.len()
    );
}

#[test]
fn every_accepted_notification_survives_kill_9() {
    const THREADS: usize = 6;
    const PER_THREAD: usize = 50;
    let mut server = TestServer::start("");
    let posted: Vec<(String, String)> = in_parallel(THREADS, PER_THREAD, |thread, n| {
        let body = fixtures::sw_fail(&format!("dev-{thread}-{n}")).to_string();
        (server.post_json(RECEIVER, &body).accepted_clean(), body)
    });
    server.kill9();

    let server = server.restart();
    let listed: BTreeSet<String> = server.event_ids().into_iter().collect();
    let accepted: BTreeSet<String> = posted.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(accepted.len(), THREADS * PER_THREAD);
    assert_eq!(listed, accepted);
    // The duplicate key survives too: a re-push after the crash is not a new event.
    let (first_id, first_body) = &posted[0];
    assert_eq!(
        &server.post_json(RECEIVER, first_body).duplicate(),
        first_id
    );
}

#[test]
fn notifications_accepted_before_a_kill_9_under_load_survive_it() {
    let mut server = TestServer::start("");
    let load = Load::start(&[server.url(RECEIVER)], 4, "load");
    let busy = wait_until(Duration::from_secs(30), || load.accepted_so_far() >= 200);
    assert!(
        busy,
        "the load got only {} accepted",
        load.accepted_so_far()
    );
    // Killed while the threads are still posting: some requests die with the process.
    server.kill9();
    let accepted = load.finish();

    let server = server.restart();
    assert_all_listed(&server, &accepted);
    server
        .post_json(RECEIVER, &fixtures::sw_fail("after-crash").to_string())
        .accepted_clean();
}

/// One HTTP/1.1 connection driven by hand, to keep a request half-sent across a SIGTERM.
struct RawConnection {
    reader: BufReader<TcpStream>,
}

impl RawConnection {
    fn open(server: &TestServer) -> RawConnection {
        let stream = TcpStream::connect(server.addr()).expect("the server accepts a connection");
        stream
            .set_read_timeout(Some(SETTLE_TIMEOUT))
            .expect("a read timeout can be set");
        RawConnection {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).expect("the request can be written");
        stream.flush().expect("the request can be flushed");
    }

    /// The head of a JSON POST to the receiver with a body of `length` bytes.
    fn send_head(&mut self, length: usize, extra_headers: &str) {
        let head = format!(
            "POST {RECEIVER} HTTP/1.1\r\nHost: notirouter\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\n{extra_headers}\r\n"
        );
        self.send(head.as_bytes());
    }

    /// Sends the head of the connection's last request with `Expect: 100-continue` and waits
    /// for the interim answer, which the server gives only once it has started the request.
    fn start_last_request(&mut self, length: usize) {
        self.send_head(length, "Connection: close\r\nExpect: 100-continue\r\n");
        let mut interim = String::new();
        self.reader
            .read_line(&mut interim)
            .expect("an interim answer arrives");
        assert!(interim.contains(" 100 "), "not 100 Continue: {interim:?}");
        let mut blank = String::new();
        self.reader
            .read_line(&mut blank)
            .expect("the interim answer ends");
        assert_eq!(blank.trim_end(), "", "the interim answer has no headers");
    }

    /// Reads one answer and returns its status and JSON body.
    fn read_answer(&mut self) -> (u16, Value) {
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("an answer arrives");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.reader.read_line(&mut header).expect("headers arrive");
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a numeric content length");
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("the body arrives");
        (
            status,
            serde_json::from_slice(&body).expect("the answer is JSON"),
        )
    }
}

fn accepted_id(status: u16, answer: &Value) -> String {
    assert_eq!(
        (status, &answer["status"]),
        (200, &"accepted".into()),
        "{answer}"
    );
    answer["id"].as_str().expect("ids are strings").to_owned()
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let mut server = TestServer::start("");
    let load = Load::start(&[server.url(RECEIVER)], 3, "load");
    let busy = wait_until(Duration::from_secs(30), || load.accepted_so_far() >= 50);
    assert!(
        busy,
        "the load got only {} accepted",
        load.accepted_so_far()
    );

    // A first, complete request proves the connection is held by a worker; the second is
    // started (the server said 100 Continue) and left half-sent, so it is certainly in flight
    // when SIGTERM arrives. A request whose head the server has not read yet is not in flight:
    // a graceful stop closes such a connection, as an unread request is never answered.
    let mut connection = RawConnection::open(&server);
    let warm_up = fixtures::sw_fail("warm-up").to_string();
    connection.send_head(warm_up.len(), "Connection: keep-alive\r\n");
    connection.send(warm_up.as_bytes());
    let (status, answer) = connection.read_answer();
    let warm_up_id = accepted_id(status, &answer);
    let in_flight = fixtures::sw_fail("in-flight").to_string();
    let (first_half, second_half) = in_flight.as_bytes().split_at(in_flight.len() / 2);
    connection.start_last_request(in_flight.len());
    connection.send(first_half);

    server.sigterm();
    let noticed = wait_until(SETTLE_TIMEOUT, || {
        server.logs().contains("SIGTERM received")
    });
    assert!(
        noticed,
        "the server did not log the SIGTERM:\n{}",
        server.logs()
    );
    let mut accepted = load.finish();
    connection.send(second_half);
    let (status, answer) = connection.read_answer();
    accepted.push(accepted_id(status, &answer));
    accepted.push(warm_up_id);

    let exit = server.wait_for_exit(Duration::from_secs(5));
    assert!(
        exit.success(),
        "exit status {exit:?}; logs:\n{}",
        server.logs()
    );
    // The CLI reads the store of the stopped server.
    assert_all_listed(&server, &accepted);
}
