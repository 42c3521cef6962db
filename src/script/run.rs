//! The context of one plugin run, reachable from the bindings.
//!
//! Bindings are plain functions registered once on the engine; the run they act on is kept in
//! a thread-local for the duration of the call, because script threads run one plugin at a
//! time and rhai offers no cheaper way to hand per-call state to native functions. A binding
//! called outside a run (at a plugin's top level) gets a script error.

use std::cell::RefCell;
use std::sync::Arc;

use crate::action::Action;
use crate::model::Millis;
use crate::model::state::{Effective, StateChanges, StateError};

use super::budget::RunBudget;
use super::{Committed, Settings};

pub(crate) struct RunContext {
    pub plugin: String,
    pub event_id: String,
    pub now: Millis,
    pub budget: RunBudget,
    pub committed: Committed,
    pub changes: StateChanges,
    pub actions: Vec<Action>,
    pub settings: Arc<Settings>,
    /// Set when committed state could not be read: the whole run is then abandoned.
    pub state_failure: Option<StateError>,
}

impl RunContext {
    /// Runs `act` on the effective state, recording a read failure so that the run is abandoned
    /// rather than continued on a guess.
    pub fn with_state<T>(
        &mut self,
        act: impl FnOnce(&mut Effective<'_>) -> Result<T, StateError>,
    ) -> Result<T, String> {
        let mut state = Effective {
            committed: &*self.committed.state,
            changes: &mut self.changes,
            now: self.now,
        };
        act(&mut state).map_err(|failure| {
            let message = failure.to_string();
            self.state_failure = Some(failure);
            message
        })
    }
}

thread_local! {
    static CURRENT: RefCell<Option<RunContext>> = const { RefCell::new(None) };
}

/// Runs `body` with `context` installed, and returns the context as the run left it.
pub(crate) fn with_context<T>(context: RunContext, body: impl FnOnce() -> T) -> (T, RunContext) {
    CURRENT.with_borrow_mut(|current| *current = Some(context));
    let result = body();
    let context = CURRENT
        .with_borrow_mut(Option::take)
        .expect("the run context is only taken here, after the run");
    (result, context)
}

/// Gives a binding its run, or an error naming the binding when called outside one.
pub(crate) fn current<T>(
    binding: &str,
    act: impl FnOnce(&mut RunContext) -> Result<T, String>,
) -> Result<T, Box<rhai::EvalAltResult>> {
    CURRENT.with_borrow_mut(|current| match current {
        Some(run) => act(run).map_err(|message| format!("{binding}: {message}").into()),
        None => Err(format!(
            "{binding} can only be called while handling a notification, inside on_notification"
        )
        .into()),
    })
}

/// The plugin and event of the current run, for log lines.
pub(crate) fn tags() -> (String, String) {
    CURRENT.with_borrow(|current| match current {
        Some(run) => (run.plugin.clone(), run.event_id.clone()),
        None => (String::new(), String::new()),
    })
}

/// True once the current run has used up `max_run_time`.
pub(crate) fn budget_spent() -> bool {
    CURRENT.with_borrow(|current| current.as_ref().is_some_and(|run| run.budget.is_spent()))
}
