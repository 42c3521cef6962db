//! Serves the fake Huawei IoT platform of the tests, for a local demo of `retry_upgrade` and
//! `subscribe` (see README, "Local demo of upgrade retries").
//!
//!     cargo run --example fake_platform [-- 127.0.0.1:8743]
//!
//! It prints the `[platform]` settings that reach it and then every request it receives.

#[path = "../tests/common/fake_platform.rs"]
mod fake_platform;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use fake_platform::FakePlatform;

fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8743".to_owned())
        .parse()?;
    let platform = FakePlatform::start_on(listen);
    println!("fake platform listening on {}", platform.url());
    println!("settings for notirouter:\n{}", platform.config(""));
    println!("or as environment variables:");
    println!(
        "  NOTIROUTER__PLATFORM__ENABLED=true NOTIROUTER__PLATFORM__BASE_URL={} \\",
        platform.url()
    );
    println!(
        "  NOTIROUTER__PLATFORM__APP_ID={} NOTIROUTER__PLATFORM__SECRET={}",
        fake_platform::APP_ID,
        fake_platform::SECRET
    );
    let mut shown = 0;
    let mut tasks = HashSet::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let requests = platform.requests();
        for request in &requests[shown..] {
            println!("{} {} ({:?})", request.method, request.path, request.route);
        }
        shown = requests.len();
        for task in platform.tasks() {
            if tasks.insert(task.operation_id.clone()) {
                println!(
                    "  created {} {} of {} for {:?}",
                    task.operate_type, task.operation_id, task.file_id, task.devices
                );
            }
        }
    }
}
