//! `notirouter test`: dry runs of the scripts on event files, or on case files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;

use super::load_plugins;
use crate::config::Config;
use crate::script::EventRun;
use crate::script::dry_run::{Case, DryRun};

/// Prints each action the scripts would take, one JSON object a line with `"event"` naming
/// the file. State carries across the files of one run, so a storm can be replayed; the
/// digests the files opened then end, and their `on_digest` actions follow.
pub fn events(config: &Config, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let Some(set) = load_plugins(config) else {
        return Ok(ExitCode::from(1));
    };
    let mut dry_run = DryRun::new(set);
    let mut failed = false;
    for file in files {
        let body =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        match dry_run.run(&body, None) {
            Ok(run) => failed |= print_run(&file.display().to_string(), &run),
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                failed = true;
            }
        }
    }
    // As if every window had ended after the last event.
    for (digest, run) in dry_run.end_digests().map_err(anyhow::Error::msg)? {
        failed |= print_run(&format!("digest {digest}"), &run);
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints a run's actions, one JSON line each naming `event`, and its errors; true if any
/// plugin failed.
fn print_run(event: &str, run: &EventRun) -> bool {
    for action in &run.actions {
        let mut line = action.to_json();
        line["event"] = Value::from(event);
        println!("{line}");
    }
    for error in run.plugins.iter().filter_map(|p| p.error.as_ref()) {
        eprintln!("{event}: {error}");
    }
    run.failed()
}

/// Runs every `*.json` case in `dir`: a pass/fail line each, exit 1 on any failure.
pub fn cases(config: &Config, dir: &Path) -> anyhow::Result<ExitCode> {
    let Some(set) = load_plugins(config) else {
        return Ok(ExitCode::from(1));
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the cases folder {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        eprintln!("no *.json case files in {}", dir.display());
        return Ok(ExitCode::from(1));
    }
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        match run_case(file, Arc::clone(&set)) {
            Ok(name) => {
                passed += 1;
                println!("PASS {name} ({})", file.display());
            }
            Err(reason) => {
                failed += 1;
                println!("FAIL {}: {reason}", file.display());
            }
        }
    }
    println!("cases: {passed} passed, {failed} failed");
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_case(file: &Path, set: Arc<crate::script::PluginSet>) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|error| format!("cannot read: {error}"))?;
    let case: Case =
        serde_json::from_str(&text).map_err(|error| format!("not a case file: {error}"))?;
    case.check(set)
        .map(|()| case.name.clone())
        .map_err(|reason| format!("{}: {reason}", case.name))
}
