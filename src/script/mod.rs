//! Scripted routing: operators' rhai plugins decide what happens to each notification.
//!
//! [`PluginSet`] compiles and runs the plugins; [`Scripts`] holds the current set and swaps it
//! on reload ([`reload`]); [`worker`] runs stored events through it on plain threads and
//! commits each batch's outcomes, actions and state changes in one transaction; [`dry_run`]
//! serves `notirouter test`. Bindings only queue actions: no script ever waits on the network.

mod bindings;
mod budget;
mod campaigns;
mod digests;
pub mod dry_run;
mod engine;
mod input;
mod plugins;
pub mod reload;
mod run;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rhai::{Dynamic, EvalAltResult, Position};
use serde::Serialize;

use crate::campaign::{Report, Upgrade};
use crate::config::{ChannelKind, Config};
use crate::model::state::{StateError, StateView};

pub use campaigns::StoreCampaigns;
pub use input::EventParts;
pub use plugins::{DigestInput, EventInput, EventRun, PluginOutcome, PluginSet, plugin_files};

/// What a run reads besides its own changes: committed script state, and the campaigns.
#[derive(Clone)]
pub struct Committed {
    pub state: Arc<dyn StateView + Send + Sync>,
    pub campaigns: Arc<dyn Campaigns>,
}

/// The campaign counts that `campaign(n)` reads.
pub trait Campaigns: Send + Sync {
    /// The campaign of `result`, an upgrade result, counted with it: the event `event_id`,
    /// being run. `None` when nothing of it is counted.
    fn report(&self, result: &Upgrade, event_id: &str) -> Result<Option<Report>, StateError>;
}

/// The limits every run is held to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_operations: u64,
    pub max_run_time: Duration,
}

/// What the bindings need to know of the configuration.
pub struct Settings {
    /// `vars`, the `[vars]` table.
    pub vars: Dynamic,
    pub channels: BTreeMap<String, ChannelKind>,
    pub platform: PlatformBudget,
}

pub struct PlatformBudget {
    pub enabled: bool,
    pub max_upgrade_retries: i64,
    pub retry_budget_window: Duration,
    /// `targetVersion` → `fileId`.
    pub packages: HashMap<String, String>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let vars = rhai::serde::to_dynamic(&config.vars)
            .unwrap_or_else(|_| Dynamic::from(rhai::Map::new()));
        Settings {
            vars,
            channels: config
                .channels
                .iter()
                .map(|(name, channel)| (name.clone(), channel.kind))
                .collect(),
            platform: PlatformBudget {
                enabled: config.platform.enabled,
                max_upgrade_retries: i64::from(config.platform.max_upgrade_retries),
                retry_budget_window: config.platform.retry_budget_window,
                packages: config.platform.packages.clone().into_iter().collect(),
            },
        }
    }
}

impl Limits {
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            max_operations: config.scripts.max_operations,
            max_run_time: config.scripts.max_run_time,
        }
    }
}

/// An error located in a script: `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ScriptError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ScriptError {
    /// An error about a whole file.
    pub(crate) fn file(file: &str, message: String) -> ScriptError {
        ScriptError {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message,
        }
    }

    fn at(file: &str, position: Position, message: String) -> ScriptError {
        ScriptError {
            file: file.to_owned(),
            line: position.line().unwrap_or(0),
            column: position.position().unwrap_or(0),
            message,
        }
    }

    pub(crate) fn from_parse(file: &str, error: &rhai::ParseError) -> ScriptError {
        ScriptError::at(file, error.position(), error.err_type().to_string())
    }

    /// Locates a run-time error: in the file of the innermost function it was raised in (a
    /// plugin's, or a `lib/` module's), at its line and column. An error outside any function
    /// is located in `file` when `file` was being evaluated (a plugin's top level); at run time
    /// it comes from the driver or a limit, which stop a run wherever it is, so its position
    /// is unknown (0:0).
    pub(crate) fn from_eval(
        file: &str,
        error: &EvalAltResult,
        top_level: bool,
        max_run_time: Duration,
    ) -> ScriptError {
        let mut inner = error;
        let mut source = None;
        let mut located = top_level;
        loop {
            match inner {
                EvalAltResult::ErrorInFunctionCall(_, function_source, next, _) => {
                    if !function_source.is_empty() {
                        source = Some(function_source.to_string());
                    }
                    located = true;
                    inner = next;
                }
                EvalAltResult::ErrorInModule(module, next, _) => {
                    source = Some(module.to_string());
                    located = true;
                    inner = next;
                }
                _ => break,
            }
        }
        let position = if located {
            inner.position()
        } else {
            Position::NONE
        };
        // A module's source is its import path ("lib/name"); name its file.
        let file = match source {
            Some(module) if !module.ends_with(".rhai") => format!("{module}.rhai"),
            Some(source) => source,
            None => file.to_owned(),
        };
        let message = match inner {
            EvalAltResult::ErrorTerminated(..) => {
                format!(
                    "max_run_time ({}) exceeded",
                    humantime::format_duration(max_run_time)
                )
            }
            EvalAltResult::ErrorTooManyOperations(_) => "max_operations exceeded".to_owned(),
            EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
            EvalAltResult::ErrorFunctionNotFound(called, _) => {
                let name = called.split(' ').next().unwrap_or_default();
                match bindings::SIGNATURES
                    .iter()
                    .find(|(binding, _)| *binding == name)
                {
                    Some((_, signature)) => {
                        format!("{name}: wrong number of arguments; expected {signature}")
                    }
                    None => format!("unknown function {called}"),
                }
            }
            other => {
                // Display appends " (line L, position P)"; the position is reported apart.
                let text = other.to_string();
                match text.rsplit_once(" (line ") {
                    Some((message, _)) if !other.position().is_none() => message.to_owned(),
                    _ => text,
                }
            }
        };
        ScriptError::at(&file, position, message)
    }
}

/// The current plugin set, shared by the script workers and swapped whole on reload. The lock
/// is held only to clone the `Arc`, never while a script runs.
#[derive(Clone)]
pub struct Scripts {
    current: Arc<RwLock<Arc<PluginSet>>>,
}

impl Scripts {
    pub fn new(set: PluginSet) -> Scripts {
        Scripts {
            current: Arc::new(RwLock::new(Arc::new(set))),
        }
    }

    pub fn current(&self) -> Arc<PluginSet> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    pub fn replace(&self, set: PluginSet) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
    }
}
