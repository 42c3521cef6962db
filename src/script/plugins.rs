//! A plugin set: every `*.rhai` file directly in `scripts.dir`, compiled, in file-name order,
//! with the engine that runs them.
//!
//! Each plugin's top level runs once, at load, as a rhai module, so its constants are readable
//! as `global::NAME` and its imports stay available to its functions; each event then calls
//! `on_notification` through a one-line driver without re-running the top level. A set is
//! immutable: a reload builds a new one and swaps it in whole, so no event sees half a set.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Engine, EvalAltResult, Module, Scope};

use super::budget::RunBudget;
use super::run::{self, RunContext};
use super::{Committed, Limits, ScriptError, Settings, engine};
use crate::action::Action;
use crate::model::state::{StateChanges, StateError};
use crate::model::{EventId, EventStatus, Millis};
use crate::store::{EventOutcome, PluginRecord};

pub struct PluginSet {
    engine: Engine,
    plugins: Vec<Plugin>,
    /// `pluginN::on_notification(n, meta)` for each plugin, compiled once per set.
    drivers: Vec<AST>,
    /// `pluginN::on_digest(key, items, total, meta)` for each plugin that defines it.
    digest_drivers: Vec<Option<AST>>,
    settings: Arc<Settings>,
    max_run_time: Duration,
    /// Identifies the contents of `scripts.dir/lib`: a plugin is reused across reloads only
    /// while neither it nor any module it may import changed.
    lib_fingerprint: u64,
}

#[derive(Clone)]
struct Plugin {
    name: String,
    /// The file's path, by which errors are located.
    label: String,
    source: String,
    module: Arc<Module>,
    takes_meta: bool,
    /// How `on_digest` is called, if the plugin defines it.
    on_digest: Option<DigestArity>,
}

/// `on_digest(key, items, total)` or `on_digest(key, items, total, meta)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DigestArity {
    WithoutMeta,
    WithMeta,
}

/// One notification as the scripts see it.
pub struct EventInput {
    pub id: String,
    /// `n`: the body as an object map.
    pub body: Dynamic,
    /// `meta`: `#{id, received_at, path, remote_addr, problems, source}`.
    pub meta: Dynamic,
    /// Set for a digest whose window ended: only its plugin's `on_digest` runs.
    pub digest: Option<DigestInput>,
}

/// The arguments of `on_digest(key, items, total)`, and whose it is.
#[derive(Debug, Clone)]
pub struct DigestInput {
    pub plugin: String,
    pub key: Dynamic,
    /// An array of the first items.
    pub items: Dynamic,
    pub total: i64,
}

/// One run of a plugin set on one event, as it goes.
struct Pass<'a> {
    event: &'a EventInput,
    committed: &'a Committed,
    changes: &'a mut StateChanges,
    now: Millis,
    result: EventRun,
}

/// What one plugin did with one event.
#[derive(Debug, Clone)]
pub struct PluginOutcome {
    pub plugin: String,
    pub error: Option<ScriptError>,
    pub actions: usize,
    pub duration: Duration,
}

/// What all plugins did with one event.
#[derive(Debug, Clone, Default)]
pub struct EventRun {
    pub plugins: Vec<PluginOutcome>,
    pub actions: Vec<Action>,
}

impl EventRun {
    pub fn failed(&self) -> bool {
        self.plugins.iter().any(|outcome| outcome.error.is_some())
    }

    /// The record of this run for the store: `failed` if any plugin failed, with the first
    /// error for `events list`.
    pub fn into_outcome(self, event_id: EventId, replayed_from: Option<EventId>) -> EventOutcome {
        let status = if self.failed() {
            EventStatus::Failed
        } else {
            EventStatus::Handled
        };
        let error = self
            .plugins
            .iter()
            .find_map(|p| p.error.as_ref())
            .map(ToString::to_string);
        let plugins = self
            .plugins
            .iter()
            .map(|p| PluginRecord {
                plugin: p.plugin.clone(),
                error: p.error.as_ref().map(ToString::to_string),
                actions: p.actions,
            })
            .collect();
        EventOutcome {
            event_id,
            status,
            error,
            plugins,
            actions: self.actions,
            replayed_from,
            claimed_by: None,
        }
    }
}

/// The plugin files of `dir`: `*.rhai` directly inside, no dot-files, in file-name order.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default();
            !name.starts_with('.') && name.ends_with(".rhai")
        })
        .collect();
    files.sort();
    Ok(files)
}

impl PluginSet {
    /// Loads every plugin of `dir`. A file that fails to compile keeps its version from
    /// `previous`, if there is one; every failure is returned.
    pub fn load(
        dir: &Path,
        limits: &Limits,
        settings: Arc<Settings>,
        previous: Option<&PluginSet>,
    ) -> (PluginSet, Vec<ScriptError>) {
        let mut engine = engine::build(limits, &settings, dir);
        let lib_fingerprint = fingerprint_folder(&dir.join("lib"));
        let reusable = previous.filter(|set| set.lib_fingerprint == lib_fingerprint);
        let mut errors = Vec::new();
        let files = match plugin_files(dir) {
            Ok(files) => files,
            Err(error) => {
                errors.push(ScriptError::file(
                    &dir.display().to_string(),
                    format!("cannot read scripts.dir: {error}"),
                ));
                Vec::new()
            }
        };
        let mut plugins = Vec::new();
        for path in files {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let unchanged = |source: &str| {
                reusable
                    .and_then(|set| set.plugin(&name))
                    .filter(|p| p.source == source)
            };
            // Located by file name: every plugin is directly in scripts.dir.
            let label = name.clone();
            let loaded = std::fs::read_to_string(&path)
                .map_err(|error| ScriptError::file(&label, format!("cannot read: {error}")))
                .and_then(|source| match unchanged(&source) {
                    Some(plugin) => Ok(plugin.clone()),
                    None => compile(&engine, &name, &label, source),
                });
            match loaded {
                Ok(plugin) => plugins.push(plugin),
                Err(error) => {
                    if let Some(kept) = previous.and_then(|set| set.plugin(&name)) {
                        plugins.push(kept.clone());
                    }
                    errors.push(error);
                }
            }
        }
        for (index, plugin) in plugins.iter().enumerate() {
            engine.register_static_module(module_name(index), plugin.module.clone());
        }
        let driver = |call: String| {
            engine
                .compile(call)
                .expect("a driver is one call of a registered module's function")
        };
        let drivers = plugins
            .iter()
            .enumerate()
            .map(|(index, plugin)| {
                let arguments = if plugin.takes_meta { "n, meta" } else { "n" };
                driver(format!(
                    "{}::on_notification({arguments})",
                    module_name(index)
                ))
            })
            .collect();
        let digest_drivers = plugins
            .iter()
            .enumerate()
            .map(|(index, plugin)| {
                let arguments = match plugin.on_digest? {
                    DigestArity::WithoutMeta => "key, items, total",
                    DigestArity::WithMeta => "key, items, total, meta",
                };
                Some(driver(format!(
                    "{}::on_digest({arguments})",
                    module_name(index)
                )))
            })
            .collect();
        let max_run_time = limits.max_run_time;
        let set = PluginSet {
            engine,
            plugins,
            drivers,
            digest_drivers,
            settings,
            max_run_time,
            lib_fingerprint,
        };
        (set, errors)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().map(|plugin| plugin.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    fn plugin(&self, name: &str) -> Option<&Plugin> {
        self.plugins.iter().find(|plugin| plugin.name == name)
    }

    /// Runs every plugin on `event` (or, for a digest, its plugin's `on_digest`). State
    /// changes go to `changes` (a failed plugin's are rolled back); the actions of failed
    /// plugins are discarded. `Err` means committed state could not be read: nothing of the
    /// run may be kept, and the event is retried.
    pub fn run(
        &self,
        event: &EventInput,
        committed: &Committed,
        changes: &mut StateChanges,
        now: Millis,
    ) -> Result<EventRun, StateError> {
        let mut pass = Pass {
            event,
            committed,
            changes,
            now,
            result: EventRun::default(),
        };
        if let Some(digest) = &event.digest {
            self.run_digest(&mut pass, digest)?;
            return Ok(pass.result);
        }
        for index in 0..self.plugins.len() {
            self.run_one(&mut pass, index, |set| set.call(index, event))?;
        }
        Ok(pass.result)
    }

    /// Runs the `on_digest` of the digest's plugin; a plugin gone since, or without
    /// `on_digest`, is that plugin's error.
    fn run_digest(&self, pass: &mut Pass<'_>, digest: &DigestInput) -> Result<(), StateError> {
        let found = self.plugins.iter().position(|p| p.name == digest.plugin);
        match found.filter(|index| self.digest_drivers[*index].is_some()) {
            Some(index) => {
                let event = pass.event;
                self.run_one(pass, index, |set| set.call_digest(index, digest, event))
            }
            None => {
                let message = format!(
                    "digest {} ended, but the plugin is gone or defines no on_digest(key, items, total); its {} item(s) are dropped",
                    digest.key, digest.total
                );
                pass.result.plugins.push(PluginOutcome {
                    plugin: digest.plugin.clone(),
                    error: Some(ScriptError::file(&digest.plugin, message)),
                    actions: 0,
                    duration: Duration::ZERO,
                });
                Ok(())
            }
        }
    }

    /// Runs plugin `index` through `call`, in a run context of its own.
    fn run_one(
        &self,
        pass: &mut Pass<'_>,
        index: usize,
        call: impl FnOnce(&Self) -> Result<Dynamic, Box<EvalAltResult>>,
    ) -> Result<(), StateError> {
        let (event, changes) = (pass.event, &mut *pass.changes);
        let plugin = &self.plugins[index];
        let checkpoint = changes.checkpoint();
        let started = Instant::now();
        let context = RunContext {
            plugin: plugin.name.clone(),
            event_id: event.id.clone(),
            now: pass.now,
            budget: RunBudget::start(self.max_run_time),
            committed: pass.committed.clone(),
            changes: std::mem::take(changes),
            actions: Vec::new(),
            settings: Arc::clone(&self.settings),
            state_failure: None,
        };
        let (evaluated, context) = run::with_context(context, || call(self));
        *changes = context.changes;
        if let Some(failure) = context.state_failure {
            changes.rollback(checkpoint);
            return Err(failure);
        }
        let error = evaluated
            .err()
            .map(|error| ScriptError::from_eval(&plugin.label, &error, false, self.max_run_time));
        let actions = if error.is_some() {
            changes.rollback(checkpoint);
            0
        } else {
            let count = context.actions.len();
            pass.result.actions.extend(context.actions);
            count
        };
        pass.result.plugins.push(PluginOutcome {
            plugin: plugin.name.clone(),
            error,
            actions,
            duration: started.elapsed(),
        });
        Ok(())
    }

    /// Calls a plugin's `on_notification` with a fresh scope; `n` is a copy, so one plugin's
    /// changes to it are not seen by the next.
    fn call(&self, index: usize, event: &EventInput) -> Result<Dynamic, Box<EvalAltResult>> {
        let mut scope = Scope::new();
        scope.push("n", event.body.clone());
        scope.push("meta", event.meta.clone());
        self.engine
            .eval_ast_with_scope(&mut scope, &self.drivers[index])
    }

    fn call_digest(
        &self,
        index: usize,
        digest: &DigestInput,
        event: &EventInput,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        let driver = self.digest_drivers[index]
            .as_ref()
            .expect("run_digest calls only plugins with an on_digest driver");
        let mut scope = Scope::new();
        scope.push("key", digest.key.clone());
        scope.push("items", digest.items.clone());
        scope.push("total", digest.total);
        scope.push("meta", event.meta.clone());
        self.engine.eval_ast_with_scope(&mut scope, driver)
    }
}

fn module_name(index: usize) -> String {
    format!("plugin{index}")
}

/// How many parameters each function named `name` takes.
fn arities(ast: &AST, name: &str) -> Vec<usize> {
    ast.iter_functions()
        .filter(|function| function.name == name)
        .map(|function| function.params.len())
        .collect()
}

/// Compiles a plugin and runs its top level once. Errors are located by `label`, the file's
/// path.
fn compile(
    engine: &Engine,
    name: &str,
    label: &str,
    source: String,
) -> Result<Plugin, ScriptError> {
    let mut ast = engine
        .compile(&source)
        .map_err(|error| ScriptError::from_parse(label, &error))?;
    ast.set_source(label);
    let takes_meta = match arities(&ast, "on_notification").as_slice() {
        [1] => false,
        [2] | [1, 2] | [2, 1] => true,
        _ => {
            return Err(ScriptError::file(
                label,
                "defines no on_notification(n) or on_notification(n, meta); a plugin must define one".into(),
            ));
        }
    };
    let on_digest = match arities(&ast, "on_digest").as_slice() {
        [] => None,
        [3] => Some(DigestArity::WithoutMeta),
        [4] | [3, 4] | [4, 3] => Some(DigestArity::WithMeta),
        _ => {
            return Err(ScriptError::file(
                label,
                "on_digest must take (key, items, total) or (key, items, total, meta)".into(),
            ));
        }
    };
    let module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
        .map_err(|error| ScriptError::from_eval(label, &error, true, Duration::ZERO))?;
    Ok(Plugin {
        name: name.to_owned(),
        label: label.to_owned(),
        source,
        module: module.into(),
        takes_meta,
        on_digest,
    })
}

/// A hash of the names and contents of every file below `dir` (0 when it does not exist).
fn fingerprint_folder(dir: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path)
            } else {
                files.push(path)
            }
        }
    }
    files.sort();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}
