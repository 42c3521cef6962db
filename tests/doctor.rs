//! `notirouter doctor` against SPEC.md's exit codes: 0 when the config, store, scripts, SMTP
//! server and every channel's host are fine (with real loopback servers, which must receive
//! nothing), 1 with a plain-words line for each problem, 2 when the config cannot be read.
//! Passwords and channel URLs never appear in its output.

mod common;
#[path = "common/sinks.rs"]
mod sinks;

use std::net::TcpListener;
use std::process::Output;

use common::{TestServer, all_output, assert_exit, config_file, run_cli, stdout};
use sinks::{HttpSink, SmtpSink};

/// The path of a chat URL: a secret, like a Slack webhook's.
const CHANNEL_SECRET: &str = "/services/T000/B000/XXXXsecretXXXX";
const SMTP_PASSWORD: &str = "hunter2-smtp";

/// A loopback port that nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port can be bound");
    listener.local_addr().expect("it has an address").port()
}

fn config(smtp_url: &str, channel_url: &str) -> String {
    format!(
        "[email]\ntransport = \"smtp\"\nsmtp_url = {smtp_url:?}\n\
         [channels.hook]\nkind = \"webhook\"\nurl = {channel_url:?}\n\
         [channels.ops]\nkind = \"log\"\n"
    )
}

/// The doctor's line about `subject`.
fn line<'a>(output: &'a Output, subject: &str) -> &'a str {
    let text = std::str::from_utf8(&output.stdout).expect("UTF-8 output");
    text.lines()
        .find(|line| {
            line.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .starts_with(subject)
        })
        .unwrap_or_else(|| panic!("no line about {subject}:\n{text}"))
}

fn assert_no_secret(output: &Output) {
    let text = all_output(output);
    assert!(
        !text.contains(SMTP_PASSWORD),
        "the SMTP password was shown:\n{text}"
    );
    assert!(
        !text.contains("XXXXsecretXXXX"),
        "the channel URL was shown:\n{text}"
    );
}

#[test]
fn a_healthy_setup_passes_every_check_and_nothing_is_sent() {
    let (smtp, sink) = (SmtpSink::start(), HttpSink::start());
    let server = TestServer::start(&config(
        &smtp.url_with_login("doctor", SMTP_PASSWORD),
        &sink.url(CHANNEL_SECRET),
    ));
    let output = server.cli(&["doctor"]);
    assert_exit(&output, 0);
    assert!(line(&output, "config").starts_with("ok"));
    assert!(
        line(&output, "store").contains("takes writes"),
        "{}",
        stdout(&output)
    );
    assert!(line(&output, "scripts").starts_with("ok"));
    assert!(
        line(&output, "email").contains("accepts a session"),
        "{}",
        stdout(&output)
    );
    assert!(line(&output, "channel hook").contains("accepts connections"));
    assert!(line(&output, "channel ops").starts_with("ok"));
    assert!(stdout(&output).ends_with("no problem found\n"));
    assert_no_secret(&output);
    assert_eq!(sink.count(), 0, "doctor posted to a channel");
    assert!(smtp.mails().is_empty(), "doctor sent an email");
}

#[test]
fn an_unreachable_smtp_server_and_channel_are_problems_named_in_plain_words() {
    let smtp_url = format!("smtp://doctor:{SMTP_PASSWORD}@127.0.0.1:{}", closed_port());
    let channel_url = format!("http://127.0.0.1:{}{CHANNEL_SECRET}", closed_port());
    let (_dir, path) = config_file(&format!(
        "[store]\npath = \"never-created/store.db\"\n[scripts]\ndir = \"scripts\"\n{}",
        config(&smtp_url, &channel_url)
    ));
    std::fs::create_dir_all(path.with_file_name("scripts")).expect("a scripts folder");
    let output = notirouter_in(&path, &["doctor"]);
    assert_exit(&output, 1);
    let email = line(&output, "email");
    assert!(
        email.starts_with("PROBLEM") && email.contains("check email.smtp_url"),
        "{email}"
    );
    let hook = line(&output, "channel hook");
    assert!(
        hook.starts_with("PROBLEM") && hook.contains("cannot connect"),
        "{hook}"
    );
    assert!(line(&output, "store").contains("does not exist yet"));
    assert!(
        stdout(&output).ends_with("2 problem(s) found\n"),
        "{}",
        stdout(&output)
    );
    assert_no_secret(&output);
}

/// Runs the CLI in the config's folder, so that relative paths resolve there.
fn notirouter_in(config: &std::path::Path, args: &[&str]) -> Output {
    common::notirouter()
        .current_dir(config.parent().expect("the config has a folder"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn a_broken_script_or_config_fails_and_an_unreadable_config_cannot_run() {
    let (_dir, path) = config_file("[scripts]\ndir = \"scripts\"\n[store]\npath = \"store.db\"\n");
    let scripts = path.with_file_name("scripts");
    std::fs::create_dir_all(&scripts).expect("a scripts folder");
    std::fs::write(
        scripts.join("alerts.rhai"),
        "fn on_notification(n) { emial(",
    )
    .expect("written");
    let output = notirouter_in(&path, &["doctor"]);
    assert_exit(&output, 1);
    assert!(
        line(&output, "scripts").contains("alerts.rhai:1:"),
        "{}",
        stdout(&output)
    );

    let (_dir, path) = config_file("[server]\nlisen = 1\n");
    let output = run_cli(&path, &["doctor"]);
    assert_exit(&output, 1);
    assert!(
        line(&output, "config").contains("unknown field `lisen`"),
        "{}",
        stdout(&output)
    );

    let output = run_cli(
        std::path::Path::new("/nonexistent/notirouter.toml"),
        &["doctor"],
    );
    assert_exit(&output, 2);
}
