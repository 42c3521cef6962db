//! Hot reload. The watcher is only a hint: any change under `scripts.dir` triggers a debounced
//! rescan that builds a whole new plugin set and swaps it in. A file that fails to compile
//! keeps its previous version. Editors and `git pull` replace files by unlink-then-create or
//! rename-over; a plugin missing at a rescan is only dropped if it is still missing at a second
//! rescan shortly after, so a replaced file is never treated as deleted in between.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

use super::{Limits, PluginSet, Scripts, Settings};
use crate::metrics::Metrics;

/// Changes closer together than this are one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// How long a vanished plugin is given to come back before it counts as deleted.
const DELETE_GRACE: Duration = Duration::from_millis(300);

pub struct Reloader {
    // Dropping the debouncer stops the watcher, which ends the reload thread.
    debouncer: Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
    thread: JoinHandle<()>,
}

struct Reload {
    dir: PathBuf,
    limits: Limits,
    settings: Arc<Settings>,
    scripts: Scripts,
    metrics: Arc<Metrics>,
}

impl Reloader {
    pub fn watch(
        dir: &Path,
        limits: Limits,
        settings: Arc<Settings>,
        scripts: Scripts,
        metrics: Arc<Metrics>,
    ) -> Result<Reloader, notify_debouncer_mini::notify::Error> {
        let (sender, changes) = std::sync::mpsc::channel();
        let mut debouncer = new_debouncer(DEBOUNCE, sender)?;
        debouncer.watcher().watch(dir, RecursiveMode::Recursive)?;
        let reload = Reload {
            dir: dir.to_path_buf(),
            limits,
            settings,
            scripts,
            metrics,
        };
        let thread = std::thread::Builder::new()
            .name("script-reload".to_owned())
            .spawn(move || reload.run(&changes))
            .map_err(notify_debouncer_mini::notify::Error::io)?;
        Ok(Reloader { debouncer, thread })
    }

    pub fn stop(self) {
        drop(self.debouncer);
        let _ = self.thread.join();
    }
}

impl Reload {
    fn run(&self, changes: &Receiver<DebounceEventResult>) {
        while let Ok(change) = changes.recv() {
            if let Err(error) = change {
                tracing::warn!(%error, "watching scripts.dir failed; rescanning");
            }
            if !self.reload(changes) {
                return;
            }
        }
    }

    /// Rescans and swaps; `false` once the watcher is gone.
    fn reload(&self, changes: &Receiver<DebounceEventResult>) -> bool {
        let started = Instant::now();
        let current = self.scripts.current();
        let (mut set, mut errors) = PluginSet::load(
            &self.dir,
            &self.limits,
            Arc::clone(&self.settings),
            Some(&current),
        );
        if current
            .names()
            .any(|name| !set.names().any(|kept| kept == name))
        {
            // Give an editor's unlink-then-create time to finish before calling it a delete:
            // the whole grace, however many changes arrive meanwhile.
            let deadline = Instant::now() + DELETE_GRACE;
            loop {
                match changes.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(_) => continue,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return false,
                }
            }
            (set, errors) = PluginSet::load(
                &self.dir,
                &self.limits,
                Arc::clone(&self.settings),
                Some(&current),
            );
        }
        for error in &errors {
            tracing::warn!(%error, "plugin failed to load; its previous version stays in use");
        }
        self.metrics.script_reload(errors.is_empty(), set.len());
        tracing::info!(
            plugins = set.len(),
            errors = errors.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "scripts reloaded"
        );
        self.scripts.replace(set);
        true
    }
}
