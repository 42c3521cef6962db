//! WAL checkpoints off the writer's path. By default SQLite checkpoints inside the commit that
//! crosses the WAL's size limit, so one request in a few hundred waits for the database file to
//! be written and fsynced. The server's store instead checkpoints from a thread of its own, with
//! a connection of its own, in PASSIVE mode (it never blocks the writer).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::OpenFlags;

use super::open_connection;
use crate::store::StoreError;

/// How often the WAL is folded into the database file.
const EVERY: Duration = Duration::from_millis(200);

/// Stops and joins its thread when dropped.
pub(super) struct Checkpointer {
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let connection = open_connection(path, OpenFlags::default())?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".to_owned())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EVERY);
                    // A failed checkpoint leaves the WAL longer, nothing else; the next one
                    // catches up.
                    let _ = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Checkpointer {
            stopping,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
