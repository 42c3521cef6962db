//! Hot reload. The watcher is only a hint: any change under `scripts.dir` triggers a debounced
//! rescan that builds a whole new plugin set and swaps it in. A file that fails to compile
//! keeps its previous version. Editors and `git pull` replace files by unlink-then-create or
//! rename-over; a plugin missing at a rescan is only dropped if it is still missing at a second
//! rescan shortly after, so a replaced file is never treated as deleted in between.
//!
//! Only changes start a rescan: the watcher also reports files being opened and read, and a
//! rescan reads every file, so counting reads would make each rescan start the next one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::{Limits, PluginSet, Scripts, Settings};
use crate::metrics::Metrics;

/// Changes closer together than this are one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// How long a vanished plugin is given to come back before it counts as deleted.
const DELETE_GRACE: Duration = Duration::from_millis(300);

/// One report of the watcher that calls for a rescan: a change, or the watcher's own error
/// (after which a rescan is the only way to be sure).
type Change = Result<(), notify::Error>;

pub struct Reloader {
    // Dropping the watcher drops its sender, which ends the reload thread.
    watcher: RecommendedWatcher,
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
    ) -> Result<Reloader, notify::Error> {
        let (sender, changes) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            forward_changes(&sender, event);
        })?;
        watcher.watch(dir, RecursiveMode::Recursive)?;
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
            .map_err(notify::Error::io)?;
        Ok(Reloader { watcher, thread })
    }

    pub fn stop(self) {
        drop(self.watcher);
        let _ = self.thread.join();
    }
}

/// Passes on the watcher's reports that call for a rescan, dropping mere reads.
fn forward_changes(changes: &Sender<Change>, event: notify::Result<Event>) {
    let change = match event {
        Ok(event) if !is_change(&event.kind) => return,
        Ok(_) => Ok(()),
        Err(error) => Err(error),
    };
    // A closed channel means the reloader is stopping: nothing is left to tell.
    let _ = changes.send(change);
}

/// Whether an event may have changed what a rescan would load: a create, modify, rename or
/// delete, or a file closed after writing. Opening, reading and closing after reading are not.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Other => true,
    }
}

impl Reload {
    fn run(&self, changes: &Receiver<Change>) {
        while let Ok(change) = changes.recv() {
            if let Err(error) = change {
                tracing::warn!(%error, "watching scripts.dir failed; rescanning");
            }
            if !drain(changes, DEBOUNCE, Until::Quiet) || !self.reload(changes) {
                return;
            }
        }
    }

    /// Rescans and swaps; `false` once the watcher is gone.
    fn reload(&self, changes: &Receiver<Change>) -> bool {
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
            if !drain(changes, DELETE_GRACE, Until::WindowEnds) {
                return false;
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

/// How [`drain`] ends.
#[derive(Clone, Copy)]
enum Until {
    /// When no change has come for the window: each change restarts it.
    Quiet,
    /// When the window has passed, however many changes arrive meanwhile.
    WindowEnds,
}

/// Consumes changes for `window` as `until` says; `false` once the watcher is gone.
fn drain(changes: &Receiver<Change>, window: Duration, until: Until) -> bool {
    let mut deadline = Instant::now() + window;
    loop {
        match changes.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(_) => {
                if let Until::Quiet = until {
                    deadline = Instant::now() + window;
                }
            }
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn reads_are_not_changes() {
        for kind in [
            AccessKind::Any,
            AccessKind::Read,
            AccessKind::Open(AccessMode::Read),
            AccessKind::Open(AccessMode::Any),
            AccessKind::Close(AccessMode::Read),
            AccessKind::Other,
        ] {
            assert!(!is_change(&EventKind::Access(kind)), "{kind:?}");
        }
    }

    #[test]
    fn writes_creates_renames_and_deletes_are_changes() {
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Any,
        ] {
            assert!(is_change(&kind), "{kind:?}");
        }
    }
}
