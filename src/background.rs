//! Background stages give way to the receiver on a busy CPU.
//!
//! The platform counts a slow answer as a failure and blocklists a callback after ten in a
//! row, so under load the threads that answer it (the HTTP workers and the store writer) come
//! first. Scripts and delivery work from the durable store and catch up as soon as the
//! receiver leaves CPU time; on an idle machine the priority changes nothing. WAL checkpoints
//! keep the normal priority: they use little CPU, and a late one is a longer write burst on
//! the disk the writer fsyncs to.

/// How much nicer than the process background threads run: at +10, a busy background thread
/// gets about a ninth of the CPU share of a busy receiver thread.
const NICER_BY: i32 = 10;

/// The highest nice value Linux allows.
#[cfg(target_os = "linux")]
const NICEST: i32 = 19;

/// Lowers the calling thread's CPU priority, relative to the process's. Best effort: without
/// it only the receiver's latency under load suffers, so a failure is logged and ignored.
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let thread = Some(rustix::thread::gettid());
        let lowered = getpriority_process(thread)
            .and_then(|nice| setpriority_process(thread, (nice + NICER_BY).min(NICEST)));
        if let Err(error) = lowered {
            tracing::debug!(%error, "cannot lower a background thread's priority");
        }
    }
}
