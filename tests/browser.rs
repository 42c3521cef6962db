//! The dashboard in a real headless Chromium, driven over WebDriver: open `/ui/`, follow a
//! campaign, read its numbers, filter by error code, and retry a dead letter from `/ui/dead`.
//! The campaign page's screenshot is saved under `target/browser/` (and to
//! `docs/campaign.png` with `UPDATE_SCREENSHOT=1`); a failing test saves one too.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`). Under `CI=true` they must be there; elsewhere the test says why it
//! skips.

#[path = "common/campaign.rs"]
mod campaign;
mod common;
#[path = "common/fake_platform.rs"]
mod fake_platform;
#[path = "common/sinks.rs"]
mod sinks;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;

use serde_json::json;

use campaign::{WAIT, post, send_campaign, start};
use common::{TestServer, wait_until};
use fake_platform::FakePlatform;
use sinks::{Answer, HttpSink};
use webdriver::Browser;

/// A browser, or `None` (with the reason printed) where the tests may be skipped.
fn browser() -> Option<Browser> {
    match webdriver::available() {
        Ok(()) => Some(Browser::start(1280, 1800)),
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("browser tests may not be skipped under CI=true: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping the browser test: {reason}");
            None
        }
    }
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser")
}

/// Runs `test`; if it panics, saves what the browser showed before passing the panic on.
fn with_screenshot_on_failure(browser: &Browser, name: &str, test: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(test)) {
        let path = screenshots().join(format!("{name}-failure.png"));
        browser.screenshot(&path);
        eprintln!(
            "the browser showed {} when the test failed: {}",
            browser.url(),
            path.display()
        );
        resume_unwind(panic);
    }
}

fn number(browser: &Browser, selector: &str) -> String {
    browser.find(selector).text().trim().to_owned()
}

#[test]
fn an_operator_follows_a_campaign_filters_by_error_code_and_retries_a_dead_letter() {
    let Some(browser) = browser() else {
        return;
    };
    let fake = FakePlatform::start();
    let sink = HttpSink::start();
    // The first webhook fails for good (max_attempts = 1); its retry gets the default 200.
    sink.then(Answer::status(500));
    let server = start(&fake, &sink);
    send_campaign(&server);
    post(
        &server,
        &json!({"notifyType": "customAlert", "deviceId": "d7"}),
    );
    server.wait_until_processed();
    let created = wait_until(WAIT, || fake.tasks().len() == 73);
    assert!(created, "{}", server.logs());
    with_screenshot_on_failure(&browser, "campaign", || {
        follow_a_campaign(&browser, &server)
    });
    with_screenshot_on_failure(&browser, "dead", || {
        retry_a_dead_letter(&browser, &server, &sink)
    });
}

fn follow_a_campaign(browser: &Browser, server: &TestServer) {
    browser.open(&server.url("/ui/?refresh=off"));
    let tiles = browser.find_all("li.tile");
    assert_eq!(tiles.len(), 2, "two campaigns");
    browser
        .find("li.tile[data-campaign='software/1.5'] h2 a")
        .click();
    browser.wait_for_url(|url| url.ends_with("/ui/campaigns/software/1.5"));
    assert_eq!(number(browser, "dd[data-count=devices]"), "200");
    assert_eq!(number(browser, "strong[data-count=succeeded]"), "160");
    assert_eq!(number(browser, "strong[data-count=failed]"), "30");
    assert_eq!(number(browser, "strong[data-count=in_progress]"), "10");
    assert_eq!(number(browser, "dd[data-count=recovered]"), "40");
    assert_eq!(number(browser, "dd[data-count=retries]"), "70");
    // 30 / 190
    assert_eq!(number(browser, "dd[data-count=fail_rate]"), "15.8 %");
    assert_eq!(browser.find_all("#device-list tbody tr").len(), 200);
    let screenshot = screenshots().join("campaign.png");
    browser.screenshot(&screenshot);
    if std::env::var("UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/campaign.png");
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::copy(&screenshot, docs).expect("the screenshot can be copied to docs/");
    }

    browser.find("a[data-code='12']").click();
    browser.wait_for_url(|url| url.ends_with("?code=12"));
    browser.find("#device-list tbody");
    let rows = browser.find_all("#device-list tbody tr");
    assert_eq!(rows.len(), 10, "devices whose latest failure is code 12");
    for row in &rows {
        assert!(row.text().contains("failed"), "{}", row.text());
    }
    let csv = browser.find("a[href$='devices.csv?code=12']");
    assert!(csv.attribute("href").is_some());
}

fn retry_a_dead_letter(browser: &Browser, server: &TestServer, sink: &HttpSink) {
    let mut dead = Vec::new();
    let died = wait_until(WAIT, || {
        dead = server
            .get("/api/v1/dead")
            .json()
            .as_array()
            .cloned()
            .unwrap_or_default();
        dead.len() == 1
    });
    assert!(died, "{dead:?}\n{}", server.logs());
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    browser.open(&server.url("/ui/dead?refresh=off"));
    let row = format!("tr[data-id='{id}']");
    browser
        .find(&format!("{row} form[action$='/retry'] button"))
        .click();
    browser.wait_for_url(|url| url.contains("/retry"));
    let consequence = browser.find("#consequence").text();
    assert!(
        consequence.contains("queues the webhook action"),
        "{consequence}"
    );
    browser
        .find("form[method=post] button[type=submit]")
        .click();
    browser.wait_for_url(|url| url.contains("/ui/dead?done="));
    assert!(browser.find("p.notice").text().contains("queued again"));
    assert!(
        browser.find_all(&row).is_empty(),
        "the retried letter left the list"
    );
    let sent = wait_until(WAIT, || sink.requests().len() == 2);
    assert!(sent, "the retry reached the webhook: {}", server.logs());
}
