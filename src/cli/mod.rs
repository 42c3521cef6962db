//! The command line: `serve`, `check` and `events`. Commands return an exit code (0 success,
//! 1 the thing checked failed) or an error, which `main` prints and turns into exit code 2
//! (the command could not run).

mod events;
mod serve;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "notirouter",
    version,
    about = "Receives Huawei IoT platform notifications, stores them durably and routes them"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "NOTIROUTER_CONFIG",
        default_value = "config/notirouter.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the receiver.
    Serve,
    /// Validate the configuration.
    Check,
    /// Inspect stored events.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
}

/// Runs the command; `Err` means it could not run (exit code 2).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check => Ok(check(&cli.config)),
        Command::Serve => {
            let config = load(&cli.config)?;
            init_logging(config.log.format);
            serve::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events { command } => {
            let config = load(&cli.config)?;
            events::run(&config, command)
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path, std::env::vars()).with_context(|| "invalid configuration")
}

/// `check`: exit 1 for an invalid config, 2 when it cannot be read.
fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path, std::env::vars()) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(error @ ConfigError::Unreadable { .. }) => {
            eprintln!("notirouter: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            println!("{error}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr; the level comes from `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
