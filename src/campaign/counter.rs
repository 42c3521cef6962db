//! A [`CampaignIndex`] kept up to date with a store: the counts are folded from the store's
//! upgrade notifications and platform actions in the order its [`CampaignView`] reads them,
//! so catching up reads only what was stored since the last look (one range query on an index
//! of that order for each); the receiver's write path does no extra work for it.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use super::{CampaignIndex, Report, Upgrade};
use crate::store::StoreError;
use crate::store::campaigns::{ActionCursor, CampaignView, EventCursor, UpgradeRow};

/// Rows read per query while catching up, so that the store's reader is never held long.
const CATCH_UP_CHUNK: usize = 5_000;

/// The campaign counts and how far into the store they reach.
#[derive(Default)]
pub struct Counter {
    counted: Mutex<Counted>,
}

#[derive(Default)]
struct Counted {
    index: CampaignIndex,
    events: EventCursor,
    actions: ActionCursor,
    /// Upgrade notifications counted before the catch-up reached them, by arrival number: a
    /// script's own event that the store still held back (behind a transaction that was
    /// running). The catch-up passes over them, once.
    counted_ahead: HashSet<i64>,
}

impl Counter {
    /// Brings the counts up to date with `view`, then reads them with `read`.
    pub fn read<T>(
        &self,
        view: &dyn CampaignView,
        read: impl FnOnce(&CampaignIndex) -> T,
    ) -> Result<T, StoreError> {
        let mut counted = self.lock();
        counted.catch_up(view)?;
        Ok(read(&counted.index))
    }

    /// The report of the campaign of upgrade result `upgrade`, the event of arrival number
    /// `seq`, with it counted. The store is caught up with only when the counts do not include
    /// it yet, so that the runs of a batch of events cost one catch-up for the whole batch;
    /// if the catch-up cannot reach it yet, it is counted on its own.
    pub fn report_through(
        &self,
        view: &dyn CampaignView,
        seq: i64,
        upgrade: &Upgrade,
    ) -> Result<Option<Report>, StoreError> {
        // Where the event stands does not change: it is read before taking the lock.
        let position = view.upgrade_event_position(seq)?;
        let mut counted = self.lock();
        if !counted.includes(seq, position.as_ref()) {
            counted.catch_up(view)?;
            if position.is_some() && !counted.includes(seq, position.as_ref()) {
                counted.count_ahead(view, seq)?;
            }
        }
        Ok(upgrade
            .campaign()
            .and_then(|key| counted.index.report(&key)))
    }

    fn lock(&self) -> MutexGuard<'_, Counted> {
        // A panic mid-fold leaves counts that are at worst one notification short.
        self.counted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Counted {
    /// Whether the upgrade notification of arrival number `seq`, at `position` in the
    /// catch-up's order (`None`: there is none), is counted.
    fn includes(&self, seq: i64, position: Option<&EventCursor>) -> bool {
        position.is_some_and(|position| *position <= self.events)
            || self.counted_ahead.contains(&seq)
    }

    fn catch_up(&mut self, view: &dyn CampaignView) -> Result<(), StoreError> {
        self.catch_up_actions(view)?;
        self.catch_up_events(view)?;
        let tasks = self.index.tasks_to_confirm();
        if !tasks.is_empty() {
            for state in view.action_states(&tasks)? {
                self.index
                    .confirm_task(&state.id, state.status, state.result.as_deref());
            }
        }
        Ok(())
    }

    fn catch_up_actions(&mut self, view: &dyn CampaignView) -> Result<(), StoreError> {
        loop {
            let actions = view.platform_actions_after(&self.actions, CATCH_UP_CHUNK)?;
            for action in &actions {
                self.index
                    .apply_action(&action.id, action.created_at, &action.payload);
            }
            if let Some(last) = actions.last() {
                self.actions = last.position.clone();
            }
            if actions.len() < CATCH_UP_CHUNK {
                return Ok(());
            }
        }
    }

    fn catch_up_events(&mut self, view: &dyn CampaignView) -> Result<(), StoreError> {
        loop {
            let rows = view.upgrade_events_after(&self.events, CATCH_UP_CHUNK)?;
            for row in &rows {
                if !self.counted_ahead.remove(&row.seq) {
                    self.count(row);
                }
            }
            if let Some(last) = rows.last() {
                self.events = last.position.clone();
            }
            if rows.len() < CATCH_UP_CHUNK {
                return Ok(());
            }
        }
    }

    /// Counts the upgrade notification of arrival number `seq` ahead of the catch-up.
    fn count_ahead(&mut self, view: &dyn CampaignView, seq: i64) -> Result<(), StoreError> {
        if let Some(row) = view.upgrade_event(seq)? {
            self.count(&row);
            self.counted_ahead.insert(seq);
        }
        Ok(())
    }

    fn count(&mut self, row: &UpgradeRow) {
        if let Some(upgrade) = Upgrade::parse(&row.notify_type, &row.body, row.received_at) {
            self.index.apply(row.seq, upgrade);
        }
    }
}
