//! The command line. Commands return an exit code (0 success, 1 the thing checked or run
//! failed) or an error, which `main` prints and turns into exit code 2 (the command could not
//! run).

mod dead;
mod doctor;
mod events;
mod serve;
mod subscribe;
mod test;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat};
use crate::script::{Limits, PluginSet, ScriptError, Settings};

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
    /// Run the receiver, the script workers and delivery.
    Serve,
    /// Validate the configuration and compile every script.
    Check,
    /// Dry run: show the actions the scripts would take; sends and writes nothing.
    Test {
        /// Run every *.json case file in this folder instead of event files.
        #[arg(long, value_name = "DIR", conflicts_with = "events")]
        cases: Option<PathBuf>,
        /// Notification bodies (JSON files), run in order with shared state.
        #[arg(required_unless_present = "cases")]
        events: Vec<PathBuf>,
    },
    /// Inspect stored events.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// The dead-letter queue.
    Dead {
        #[command(subcommand)]
        command: dead::DeadCommand,
    },
    /// Register the callback URL at the platform for notification types.
    Subscribe {
        /// Where the platform should push, e.g. https://203.0.113.7:8443/v1.0.0/messageReceiver
        #[arg(long)]
        callback_url: String,
        /// Comma-separated notification types (default: the four upgrade types).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
    },
    /// Check the config, store, scripts, TLS files, SMTP and each channel; say what is wrong.
    Doctor,
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
        Command::Test { cases, events } => {
            let config = load(&cli.config)?;
            init_logging(config.log.format);
            match cases {
                Some(dir) => test::cases(&config, &dir),
                None => test::events(&config, &events),
            }
        }
        Command::Events { command } => events::run(&load(&cli.config)?, command),
        Command::Dead { command } => dead::run(&load(&cli.config)?, command),
        Command::Subscribe {
            callback_url,
            types,
        } => {
            let config = load(&cli.config)?;
            init_logging(config.log.format);
            subscribe::run(&config, &callback_url, types)
        }
        Command::Doctor => doctor::run(&cli.config),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path, std::env::vars()).with_context(|| "invalid configuration")
}

/// `check`: exit 1 for an invalid config or script, 2 when the config cannot be read.
fn check(path: &Path) -> ExitCode {
    let config = match Config::load(path, std::env::vars()) {
        Ok(config) => config,
        Err(error @ ConfigError::Unreadable { .. }) => {
            eprintln!("notirouter: {error}");
            return ExitCode::from(2);
        }
        Err(error) => {
            println!("{error}");
            return ExitCode::from(1);
        }
    };
    match load_plugins(&config) {
        Some(set) => {
            println!("{}: ok; {} plugin(s) compiled", path.display(), set.len());
            ExitCode::SUCCESS
        }
        None => ExitCode::from(1),
    }
}

/// Compiles the plugins, printing `file:line:col: message` for each error; `None` if any.
fn load_plugins(config: &Config) -> Option<Arc<PluginSet>> {
    let (set, errors) = compile_plugins(config);
    for error in &errors {
        println!("{error}");
    }
    errors.is_empty().then(|| Arc::new(set))
}

/// Compiles the plugins of `scripts.dir` as `serve` would.
fn compile_plugins(config: &Config) -> (PluginSet, Vec<ScriptError>) {
    let settings = Arc::new(Settings::from_config(config));
    let limits = Limits::from_config(config);
    PluginSet::load(&config.scripts.dir, &limits, settings, None)
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
