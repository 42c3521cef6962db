//! A [`CampaignIndex`] kept up to date with a store: the counts are folded from the store's
//! upgrade notifications and platform actions in the order they were stored, so catching up
//! reads only what arrived since the last look (one range query on the events' primary key and
//! one on the platform-action index); the receiver's write path does no extra work for it.

use std::sync::{Mutex, MutexGuard};

use super::{CampaignIndex, Report, Upgrade};
use crate::store::StoreError;
use crate::store::campaigns::{ActionCursor, CampaignView};

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
    after_seq: i64,
    after_action: Option<ActionCursor>,
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
    /// `seq`, with it counted. The store is read only when the counts do not include it yet,
    /// so that the runs of a batch of events cost one catch-up for the whole batch.
    pub fn report_through(
        &self,
        view: &dyn CampaignView,
        seq: i64,
        upgrade: &Upgrade,
    ) -> Result<Option<Report>, StoreError> {
        let mut counted = self.lock();
        if counted.after_seq < seq {
            counted.catch_up(view)?;
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
    fn catch_up(&mut self, view: &dyn CampaignView) -> Result<(), StoreError> {
        loop {
            let after = self.after_action.get_or_insert_with(ActionCursor::start);
            let actions = view.platform_actions_after(after, CATCH_UP_CHUNK)?;
            for action in &actions {
                self.index
                    .apply_action(&action.id, action.created_at, &action.payload);
            }
            if let Some(last) = actions.last() {
                self.after_action = Some(ActionCursor {
                    created_at: last.created_at,
                    id: last.id.clone(),
                });
            }
            if actions.len() < CATCH_UP_CHUNK {
                break;
            }
        }
        loop {
            let rows = view.upgrade_events_after(self.after_seq, CATCH_UP_CHUNK)?;
            for row in &rows {
                if let Some(upgrade) = Upgrade::parse(&row.notify_type, &row.body, row.received_at)
                {
                    self.index.apply(row.seq, upgrade);
                }
            }
            if let Some(last) = rows.last() {
                self.after_seq = last.seq;
            }
            if rows.len() < CATCH_UP_CHUNK {
                break;
            }
        }
        let tasks = self.index.tasks_to_confirm();
        if !tasks.is_empty() {
            for state in view.action_states(&tasks)? {
                self.index
                    .confirm_task(&state.id, state.status, state.result.as_deref());
            }
        }
        Ok(())
    }
}
