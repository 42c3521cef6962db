//! `campaign(n)` in a server: the counts of [`crate::campaign`], shared with the dashboard,
//! caught up from the store only when the event being run is not counted yet.

use std::sync::Arc;

use super::{Campaigns, Committed};
use crate::campaign::{Counter, Report, Upgrade};
use crate::model::EventId;
use crate::model::state::StateError;
use crate::store::Store;

pub struct StoreCampaigns {
    pub store: Arc<dyn Store>,
    pub counter: Arc<Counter>,
}

impl Campaigns for StoreCampaigns {
    fn report(&self, result: &Upgrade, event_id: &str) -> Result<Option<Report>, StateError> {
        let Some(view) = self.store.campaign_view() else {
            return Ok(None);
        };
        // An id that is not a stored event's is counted by catching up.
        let seq = event_id.parse::<EventId>().map_or(i64::MAX, EventId::seq);
        self.counter
            .report_through(view, seq, result)
            .map_err(|error| StateError(error.to_string()))
    }
}

impl Committed {
    /// What runs read in a server or a CLI command: `store`'s state, and campaigns counted
    /// in `counter` from `store`.
    pub fn of_store(store: Arc<dyn Store>, counter: Arc<Counter>) -> Committed {
        Committed {
            state: store.clone(),
            campaigns: Arc::new(StoreCampaigns { store, counter }),
        }
    }
}
