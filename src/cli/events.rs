//! `events list`, `show` and `replay`: they open the store directly, so they work while a
//! server runs.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use std::sync::Arc;

use serde_json::{Value, json};

use super::load_plugins;
use crate::config::Config;
use crate::model::state::StateChanges;
use crate::model::{EventId, EventStatus, Millis};
use crate::script::{Committed, EventInput};
use crate::store::{self, EventDetail, EventFilter, EventSummary, Opener, Store};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// The most recent events first.
    List {
        /// Only events in this state: pending, handled or failed.
        #[arg(long)]
        status: Option<EventStatus>,
        /// Only events of this notifyType.
        #[arg(long = "type")]
        notify_type: Option<String>,
        /// Only events of this deviceId.
        #[arg(long)]
        device: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One event's whole story: body, warnings, each plugin's outcome, each action.
    Show {
        id: EventId,
        /// JSON instead of readable text.
        #[arg(long)]
        json: bool,
    },
    /// Run the current scripts on a stored event again and queue their actions (with fresh
    /// idempotency keys, linked to the event by `replayed_from`).
    Replay {
        id: EventId,
        /// Only print the actions; queue nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(config: &Config, command: EventsCommand) -> anyhow::Result<ExitCode> {
    let store = store::open(&config.store, Opener::Command)?;
    match command {
        EventsCommand::List {
            status,
            notify_type,
            device,
            limit,
            json,
        } => {
            let filter = EventFilter {
                status,
                notify_type,
                device_id: device,
                limit,
            };
            let events = store.list_events(&filter)?;
            if json {
                for event in &events {
                    println!("{}", serde_json::to_string(event)?);
                }
            } else {
                print_table(&events);
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Show { id, json } => {
            let event = store.event(id)?.with_context(|| no_event(id, config))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail_json(&event))?);
            } else {
                print_detail(&event);
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Replay { id, dry_run } => replay(config, store, id, dry_run),
    }
}

fn no_event(id: EventId, config: &Config) -> String {
    format!("no event {id} in {}", config.store.path.display())
}

/// `events show --json`: the summary's keys, where it came from, the body as JSON, and the
/// plugin runs and actions in full.
fn detail_json(event: &EventDetail) -> Value {
    let mut value = serde_json::to_value(&event.summary).expect("a summary serialises");
    let body =
        serde_json::from_str(&event.body).unwrap_or_else(|_| Value::from(event.body.clone()));
    let extra = json!({
        "path": event.path,
        "remote_addr": event.remote_addr,
        "body": body,
        "plugins": event.plugin_runs,
        "actions": event.actions,
    });
    for (key, item) in extra.as_object().expect("json! of an object is an object") {
        value[key] = item.clone();
    }
    value
}

fn replay(
    config: &Config,
    store: Arc<dyn Store>,
    id: EventId,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let event = store
        .stored_event(id)?
        .with_context(|| no_event(id, config))?;
    let Some(set) = load_plugins(config) else {
        return Ok(ExitCode::from(1));
    };
    let input = EventInput::from_stored(&event).map_err(anyhow::Error::msg)?;
    let committed = Committed::of_store(store.clone(), Default::default());
    let mut changes = StateChanges::default();
    let now = Millis::now();
    let run = set.run(&input, &committed, &mut changes, now)?;
    for action in &run.actions {
        let mut line = action.to_json();
        line["event"] = Value::from(id.to_string());
        println!("{line}");
    }
    let failed = run.failed();
    for error in run.plugins.iter().filter_map(|p| p.error.as_ref()) {
        eprintln!("{error}");
    }
    if !dry_run {
        let queued = run.actions.len();
        store.record_outcomes(&[run.into_outcome(id, Some(id))], &changes, now)?;
        eprintln!("queued {queued} action(s) for event {id}");
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(events: &[EventSummary]) {
    println!(
        "{:<26}  {:<24}  {:<28}  {:<36}  {:<8}  {:>4}  {:>7}  RESULTS",
        "ID", "RECEIVED", "TYPE", "DEVICE", "STATUS", "WARN", "ACTIONS"
    );
    for event in events {
        println!(
            "{:<26}  {:<24}  {:<28}  {:<36}  {:<8}  {:>4}  {:>7}  {}",
            event.id,
            event.received_at,
            event.notify_type.as_deref().unwrap_or("-"),
            event.device_id.as_deref().unwrap_or("-"),
            event.status,
            event.warnings.as_array().map_or(0, Vec::len),
            event.actions,
            event.results.join(","),
        );
    }
}

fn print_detail(event: &EventDetail) {
    let summary = &event.summary;
    println!("id:          {}", summary.id);
    println!("received:    {}", summary.received_at);
    println!("path:        {}", event.path);
    println!(
        "from:        {}",
        event.remote_addr.as_deref().unwrap_or("-")
    );
    println!(
        "type:        {}",
        summary.notify_type.as_deref().unwrap_or("-")
    );
    println!(
        "device:      {}",
        summary.device_id.as_deref().unwrap_or("-")
    );
    println!("status:      {}", summary.status);
    if let Some(error) = &summary.error {
        println!("error:       {error}");
    }
    for warning in summary.warnings.as_array().into_iter().flatten() {
        let text = |key: &str| warning[key].as_str().unwrap_or("?").to_owned();
        println!("warning:     {}: {}", text("field"), text("error"));
    }
    for run in &event.plugin_runs {
        match &run.error {
            Some(error) => println!("plugin:      {} failed: {error}", run.plugin),
            None => println!("plugin:      {} ok, {} action(s)", run.plugin, run.actions),
        }
    }
    for action in &event.actions {
        println!(
            "action:      {} {} {} to {} ({} attempt(s)){}",
            action.id,
            action.status,
            action.kind,
            action.destination,
            action.attempts,
            action
                .result
                .as_deref()
                .map(|result| format!("; result: {result}"))
                .or_else(|| action
                    .last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}")))
                .unwrap_or_default()
        );
    }
    println!("body:        {}", event.body);
}
