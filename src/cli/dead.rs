//! `dead list`, `dead retry` and `dead drop`: the dead-letter queue, read and changed in the
//! store directly; a running server picks re-queued actions up within a second.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;
use crate::store::{self, DeadLetter, Opener};

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// Actions that exhausted their attempts or failed permanently, oldest first.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead actions again, due now, with a fresh attempt count.
    Retry {
        /// The action to retry.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Retry every dead action.
        #[arg(long)]
        all: bool,
    },
    /// Give up on a dead action for good (it stays in its event's story as `dropped`).
    Drop { id: String },
}

pub fn run(config: &Config, command: DeadCommand) -> anyhow::Result<ExitCode> {
    let store = store::open(&config.store, Opener::Command)?;
    match command {
        DeadCommand::List { json } => {
            let dead = store.dead_letters()?;
            if json {
                for letter in &dead {
                    println!("{}", serde_json::to_string(letter)?);
                }
            } else {
                print_table(&dead);
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadCommand::Retry { id, .. } => {
            let requeued = store.requeue_dead(id.as_deref())?;
            if let (Some(id), 0) = (&id, requeued) {
                anyhow::bail!("no dead action {id}; `notirouter dead list` shows them");
            }
            println!("{requeued} action(s) queued again");
            Ok(ExitCode::SUCCESS)
        }
        DeadCommand::Drop { id } => {
            let dropped = store.drop_dead(&id)?;
            anyhow::ensure!(
                dropped,
                "no dead action {id}; `notirouter dead list` shows them"
            );
            println!("dropped {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_table(dead: &[DeadLetter]) {
    println!(
        "{:<26}  {:<26}  {:<8}  {:<20}  {:>8}  {:<24}  LAST ERROR",
        "ID", "EVENT", "KIND", "DESTINATION", "ATTEMPTS", "CREATED"
    );
    for letter in dead {
        println!(
            "{:<26}  {:<26}  {:<8}  {:<20}  {:>8}  {:<24}  {}",
            letter.id,
            letter.event_id,
            letter.kind,
            letter.destination,
            letter.attempts,
            letter.created_at,
            letter.last_error.as_deref().unwrap_or("-")
        );
    }
}
