//! The dashboard: the JSON API ([`api`]) and the server-rendered pages ([`pages`]) over the
//! store, with the campaign counts of [`crate::campaign`] kept in memory and brought up to
//! date from the store on each request.

pub mod api;
mod csrf;
mod error;
mod html;
mod login;
mod pages;

use std::sync::Arc;

use actix_web::web;

use crate::campaign::{CampaignIndex, Counter};
use crate::config::Config;
use crate::store::{Store, StoreError};
pub use error::UiError;
pub use login::{LOGIN_PATH, token_from_cookies};

/// What the dashboard's handlers share.
pub struct Dashboard {
    store: Arc<dyn Store>,
    counter: Arc<Counter>,
    csrf: csrf::CsrfToken,
    login: login::Login,
}

impl Dashboard {
    /// The dashboard over `store`, its campaign counts kept in `counter` (which the scripts
    /// may share); `config` gives the token a browser logs in with, and whether its cookie
    /// must be `Secure` (under TLS).
    pub fn new(store: Arc<dyn Store>, counter: Arc<Counter>, config: &Config) -> Dashboard {
        let token = config
            .server
            .access
            .token
            .as_ref()
            .map(|token| token.expose());
        Dashboard {
            store,
            counter,
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
        match self.store.campaign_view() {
            Some(view) => self.counter.read(view, read),
            None => Ok(read(&CampaignIndex::default())),
        }
    }
}

/// Mounts the API and the pages.
pub fn routes(config: &mut web::ServiceConfig) {
    api::routes(config);
    login::routes(config);
    pages::routes(config);
}
