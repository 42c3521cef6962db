//! The platform state that every instance of one app shares through the store (ARCHITECTURE.md
//! invariant 6): the token with its renewal lock, and the call window. Store calls block, so
//! each runs off the async threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::PlatformError;
use crate::model::Millis;
use crate::store::{CallLimit, Claimer, PlatformToken, Store, StoreError};

/// One client's handle on its app's shared state.
pub(crate) struct Shared {
    store: Arc<dyn Store>,
    app: String,
    /// This client as a renewal claimer: unique even among clients of one process.
    by: Claimer,
}

impl Shared {
    pub(crate) fn new(store: Arc<dyn Store>, app: &str) -> Shared {
        static CLIENTS: AtomicUsize = AtomicUsize::new(0);
        let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
        Shared {
            store,
            app: app.to_owned(),
            by: Claimer::of_this_process(&format!("platform-{n}")),
        }
    }

    pub(crate) async fn token(&self) -> Result<Option<PlatformToken>, PlatformError> {
        self.run(|store, app, _| store.platform_token(app)).await
    }

    /// Takes the renewal lock until `until`; false while another claimer holds it.
    pub(crate) async fn claim_renewal(
        &self,
        now: Millis,
        until: Millis,
    ) -> Result<bool, PlatformError> {
        self.run(move |store, app, by| store.claim_token_renewal(app, by, now, until))
            .await
    }

    /// Stores a renewed token and ends the lock.
    pub(crate) async fn store(&self, token: PlatformToken) -> Result<(), PlatformError> {
        let stored = self
            .run(move |store, app, by| store.store_platform_token(app, by, &token, Millis::now()))
            .await?;
        if !stored {
            tracing::warn!(
                "another instance took the platform token's renewal while this one renewed it; \
                 its token replaces this one"
            );
        }
        Ok(())
    }

    /// Ends the lock after a renewal that failed, so that the others need not wait its lease.
    pub(crate) async fn release(&self) -> Result<(), PlatformError> {
        self.run(|store, app, by| store.release_token_renewal(app, by))
            .await
    }

    pub(crate) async fn reserve_call(
        &self,
        limit: CallLimit,
        now: Millis,
    ) -> Result<Millis, PlatformError> {
        self.run(move |store, app, _| store.reserve_platform_call(app, limit, now))
            .await
    }

    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Store, &str, &Claimer) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, PlatformError> {
        let store = Arc::clone(&self.store);
        let app = self.app.clone();
        let by = self.by.clone();
        let result = tokio::task::spawn_blocking(move || call(&*store, &app, &by))
            .await
            .unwrap_or(Err(StoreError::Panicked));
        Ok(result?)
    }
}
