//! The shipped plugins against their case files, through `notirouter test --cases`, as an
//! operator runs them: with the default configuration, and with the platform enabled.

mod common;

use std::path::Path;

use common::{assert_exit, notirouter, stdout};

fn run_cases(config: &str, cases: &str) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    notirouter()
        .current_dir(root)
        .args(["--config", config, "test", "--cases", cases])
        .output()
        .expect("the notirouter binary runs")
}

fn assert_all_pass(output: &std::process::Output, count: usize) {
    assert_exit(output, 0);
    let text = stdout(output);
    assert!(
        text.contains(&format!("cases: {count} passed, 0 failed")),
        "{text}"
    );
    assert!(!text.contains("FAIL "), "{text}");
}

#[test]
fn the_shipped_plugins_pass_their_cases_with_the_default_config() {
    let output = run_cases("config/notirouter.toml", "scripts/cases");
    assert_all_pass(&output, 7);
}

#[test]
fn the_shipped_retry_plugin_passes_its_cases_with_the_platform_enabled() {
    let config = "scripts/cases/with-platform/notirouter.toml";
    let output = run_cases(config, "scripts/cases/with-platform");
    assert_all_pass(&output, 5);
}
