//! The dashboard: the JSON API ([`api`]) and the server-rendered pages ([`pages`]) over the
//! store, with the campaign counts of [`campaign`] kept in memory and brought up to date from
//! the store on each request.
//!
//! The counts are folded from the store's upgrade notifications and platform actions in the
//! order they were stored, so catching up reads only what arrived since the last request (one
//! range query on the events' primary key and one on the platform-action index); the
//! receiver's write path does no extra work for the dashboard.

pub mod api;
pub mod campaign;
mod csrf;
mod error;
mod html;
mod login;
mod pages;

use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::web;

use crate::config::Config;
use crate::store::campaigns::{ActionCursor, CampaignView};
use crate::store::{Store, StoreError};
use campaign::{CampaignIndex, Upgrade};
pub use error::UiError;
pub use login::{LOGIN_PATH, token_from_cookies};

/// Rows read per query while catching up, so that the store's reader is never held long.
const CATCH_UP_CHUNK: usize = 5_000;

/// What the dashboard's handlers share.
pub struct Dashboard {
    store: Arc<dyn Store>,
    counted: Mutex<Counted>,
    csrf: csrf::CsrfToken,
    login: login::Login,
}

/// The campaign counts and how far into the store they reach.
struct Counted {
    index: CampaignIndex,
    after_seq: i64,
    after_action: ActionCursor,
}

impl Dashboard {
    /// The dashboard over `store`; `config` gives the token a browser logs in with, and
    /// whether its cookie must be `Secure` (under TLS).
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Dashboard {
        let token = config
            .server
            .access
            .token
            .as_ref()
            .map(|token| token.expose());
        Dashboard {
            store,
            counted: Mutex::new(Counted {
                index: CampaignIndex::default(),
                after_seq: 0,
                after_action: ActionCursor::start(),
            }),
            csrf: csrf::CsrfToken::generate(),
            login: login::Login::new(token, config.server.tls.is_some()),
        }
    }

    /// Counts what the store already holds on a thread of its own, so that the first request
    /// after a start (which would otherwise read the whole store) finds the counts ready.
    pub fn count_ahead(self: Arc<Self>) {
        let counting = std::thread::Builder::new()
            .name("dashboard-count".to_owned())
            .spawn(move || {
                if let Err(error) = self.campaigns(|_| ()) {
                    tracing::warn!(%error, "cannot count the campaigns ahead; the first dashboard request will");
                }
            });
        if let Err(error) = counting {
            tracing::warn!(%error, "cannot start counting the campaigns ahead; the first dashboard request will");
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Brings the counts up to date with the store, then reads them with `read`. A store
    /// without a campaign view has no campaigns.
    pub fn campaigns<T>(&self, read: impl FnOnce(&CampaignIndex) -> T) -> Result<T, StoreError> {
        let mut counted = self.lock();
        if let Some(view) = self.store.campaign_view() {
            counted.catch_up(view)?;
        }
        Ok(read(&counted.index))
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
            let actions = view.platform_actions_after(&self.after_action, CATCH_UP_CHUNK)?;
            for action in &actions {
                self.index
                    .apply_action(&action.id, action.created_at, &action.payload);
            }
            if let Some(last) = actions.last() {
                self.after_action = ActionCursor {
                    created_at: last.created_at,
                    id: last.id.clone(),
                };
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
                    self.index.apply(upgrade);
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

/// Mounts the API and the pages.
pub fn routes(config: &mut web::ServiceConfig) {
    api::routes(config);
    login::routes(config);
    pages::routes(config);
}
