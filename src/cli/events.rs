//! `events list` and `events show`: read the store directly, so they work while a server runs.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::model::{EventId, EventStatus};
use crate::store::{EventFilter, EventSummary, SqliteStore, Store};

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
    /// One event's whole story.
    Show {
        id: EventId,
        /// JSON instead of readable text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &Config, command: EventsCommand) -> anyhow::Result<ExitCode> {
    let store = SqliteStore::open_existing(&config.store)?;
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
            let event = store
                .event(id)?
                .with_context(|| format!("no event {id} in {}", config.store.path.display()))?;
            if json {
                let mut value = serde_json::to_value(&event)?;
                // The body is JSON: show it as such rather than as an escaped string.
                if let Ok(body) = serde_json::from_str::<serde_json::Value>(&event.body) {
                    value["body"] = body;
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_detail(&event);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_table(events: &[EventSummary]) {
    println!(
        "{:<26}  {:<24}  {:<28}  {:<36}  {:<8}  {:>4}  {:>7}",
        "ID", "RECEIVED", "TYPE", "DEVICE", "STATUS", "WARN", "ACTIONS"
    );
    for event in events {
        println!(
            "{:<26}  {:<24}  {:<28}  {:<36}  {:<8}  {:>4}  {:>7}",
            event.id,
            event.received_at,
            event.notify_type.as_deref().unwrap_or("-"),
            event.device_id.as_deref().unwrap_or("-"),
            event.status,
            event.warnings.as_array().map_or(0, Vec::len),
            event.actions,
        );
    }
}

fn print_detail(event: &crate::store::EventDetail) {
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
        println!(
            "warning:     {}: {}",
            warning["field"].as_str().unwrap_or("?"),
            warning["error"].as_str().unwrap_or("?")
        );
    }
    println!("actions:     {}", summary.actions);
    println!("body:        {}", event.body);
}
