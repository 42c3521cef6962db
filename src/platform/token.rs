//! The access token: cached, refreshed before it expires, renewed single-flight.
//!
//! Only the most recently issued token is valid (PLATFORM-NOTES.md §4.4), so two renewals at
//! once would revoke each other. In the process, every renewal runs under one async mutex:
//! callers that arrive while it runs wait for it and use its result. The mutex is tokio's, made
//! to be held across the renewal's `.await`; nothing else is ever done while holding it.
//!
//! Instances that share a store share the token too: a renewal first reads the stored token
//! (another instance may have renewed it), and logs in or refreshes only while it holds the
//! store's renewal lock; the others wait for the lock's holder and read what it stored.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;

use super::PlatformError;
use super::shared::Shared;
use crate::model::Millis;
use crate::store::PlatformToken;

/// Renew this long before expiry (a tenth of the lifetime, at most a minute), so that a call
/// does not leave with a token that expires on the way.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// How often a renewal that waits for another instance's looks for its token.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// An issued token; `Debug` hides the values: they are credentials.
pub(crate) type Token = PlatformToken;

/// The login and refresh answer (§4.3).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Issued {
    access_token: String,
    #[serde(default)]
    refresh_token: String,
    expires_in: u64,
}

impl Issued {
    pub(crate) fn into_token(self, now: Millis) -> Token {
        let lifetime = Duration::from_secs(self.expires_in);
        let margin = (lifetime / 10).min(MAX_MARGIN);
        let lifetime_ms = i64::try_from((lifetime - margin).as_millis()).unwrap_or(i64::MAX);
        Token {
            access: self.access_token,
            refresh: self.refresh_token,
            renew_at: Millis(now.0.saturating_add(lifetime_ms)),
            expires_in: self.expires_in,
        }
    }
}

/// How a token is obtained; the client implements it with HTTP calls.
pub(crate) trait Issuer {
    async fn login(&self) -> Result<Token, PlatformError>;
    async fn refresh(&self, refresh_token: &str) -> Result<Token, PlatformError>;
}

/// Why a renewal runs, which decides what token it may take instead.
#[derive(Clone, Copy)]
enum Need<'a> {
    /// The token is due: any fresh token will do; refresh when one can.
    Due,
    /// The platform refused this access token: any other fresh one will do; else log in.
    Refused(&'a str),
    /// Log in whatever is cached (the login check).
    Login,
}

impl Need<'_> {
    fn takes(self, token: &Token, now: Millis) -> bool {
        match self {
            Need::Due => token.is_fresh(now),
            Need::Refused(stale) => token.is_fresh(now) && token.access != stale,
            Need::Login => false,
        }
    }
}

pub(crate) struct Tokens {
    current: Mutex<Option<Token>>,
    /// The store's token, shared with other instances; none for a client on its own.
    shared: Option<Arc<Shared>>,
    /// How long a renewal may hold the store's renewal lock.
    lease: Duration,
}

impl Tokens {
    pub(crate) fn new(shared: Option<Arc<Shared>>, lease: Duration) -> Tokens {
        Tokens {
            current: Mutex::new(None),
            shared,
            lease,
        }
    }

    /// A token that is not about to expire: the cached one, else a refreshed one (a login
    /// when refreshing fails or there is nothing to refresh).
    pub(crate) async fn get(&self, issuer: &impl Issuer) -> Result<Token, PlatformError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|t| t.is_fresh(Millis::now())) {
            return Ok(token.clone());
        }
        let renewed = self.renew(current.as_ref(), Need::Due, issuer).await?;
        *current = Some(renewed.clone());
        Ok(renewed)
    }

    /// Logs in again because the platform refused `stale`, unless another caller (or
    /// instance) already replaced it: then that newer token is returned.
    pub(crate) async fn replace(
        &self,
        stale: &Token,
        issuer: &impl Issuer,
    ) -> Result<Token, PlatformError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|t| t.access != stale.access) {
            return Ok(token.clone());
        }
        let need = Need::Refused(&stale.access);
        let renewed = self.renew(current.as_ref(), need, issuer).await?;
        *current = Some(renewed.clone());
        Ok(renewed)
    }

    /// Logs in now, whatever is cached (the login check).
    pub(crate) async fn login(&self, issuer: &impl Issuer) -> Result<Token, PlatformError> {
        let mut current = self.current.lock().await;
        let renewed = self.renew(current.as_ref(), Need::Login, issuer).await?;
        *current = Some(renewed.clone());
        Ok(renewed)
    }

    /// A token for `need`: on its own, issued at once; shared, the stored one when it will
    /// do, else issued under the store's renewal lock and stored.
    async fn renew(
        &self,
        cached: Option<&Token>,
        need: Need<'_>,
        issuer: &impl Issuer,
    ) -> Result<Token, PlatformError> {
        let Some(shared) = &self.shared else {
            return issue(cached, need, issuer).await;
        };
        loop {
            if let Some(token) = stored_for(shared, need).await? {
                return Ok(token);
            }
            let now = Millis::now();
            let until = Millis(now.0.saturating_add(self.lease.as_millis() as i64));
            if !shared.claim_renewal(now, until).await? {
                tokio::time::sleep(LOCK_POLL).await;
                continue;
            }
            return renew_holding_lock(shared, cached, need, issuer).await;
        }
    }
}

/// The stored token, when it will do for `need`.
async fn stored_for(shared: &Shared, need: Need<'_>) -> Result<Option<Token>, PlatformError> {
    let stored = shared.token().await?;
    Ok(stored.filter(|token| need.takes(token, Millis::now())))
}

/// Renews under the store's lock, and stores the result (which ends the lock).
async fn renew_holding_lock(
    shared: &Shared,
    cached: Option<&Token>,
    need: Need<'_>,
    issuer: &impl Issuer,
) -> Result<Token, PlatformError> {
    // The lock's previous holder may have stored a token between the read and the claim; and
    // the stored token carries the newest refresh token.
    let stored = shared.token().await?;
    if let Some(token) = stored.clone().filter(|t| need.takes(t, Millis::now())) {
        shared.release().await?;
        return Ok(token);
    }
    match issue(stored.as_ref().or(cached), need, issuer).await {
        Ok(token) => {
            shared.store(token.clone()).await?;
            Ok(token)
        }
        Err(error) => {
            if let Err(release) = shared.release().await {
                tracing::warn!(%release, "the platform token's renewal lock is left to its lease");
            }
            Err(error)
        }
    }
}

/// A new token from the platform: a refresh of `previous` when only due, else a login.
async fn issue(
    previous: Option<&Token>,
    need: Need<'_>,
    issuer: &impl Issuer,
) -> Result<Token, PlatformError> {
    let refreshable = previous.filter(|t| !t.refresh.is_empty());
    match (need, refreshable) {
        (Need::Due, Some(old)) => match issuer.refresh(&old.refresh).await {
            Ok(token) => Ok(token),
            Err(error) if error.is_retryable() => Err(error),
            // A refused refresh token (expired, or revoked by a login elsewhere).
            Err(_) => issuer.login().await,
        },
        _ => issuer.login().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Counting {
        logins: AtomicUsize,
        refreshes: AtomicUsize,
    }

    fn issued(access: String, expires_in: u64) -> Token {
        Issued {
            access_token: access,
            refresh_token: "r".into(),
            expires_in,
        }
        .into_token(Millis::now())
    }

    impl Issuer for Counting {
        async fn login(&self) -> Result<Token, PlatformError> {
            let n = self.logins.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            // The first login issues a token that is already due for renewal.
            Ok(issued(format!("login-{n}"), if n == 0 { 0 } else { 3600 }))
        }
        async fn refresh(&self, _: &str) -> Result<Token, PlatformError> {
            let n = self.refreshes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(issued(format!("refresh-{n}"), 3600))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_refresh_and_one_relogin() {
        let issuer = Counting::default();
        let tokens = Tokens::new(None, Duration::from_secs(30));
        let first = tokens.get(&issuer).await.unwrap();
        assert_eq!(first.access, "login-0");
        let all = futures_util::future::join_all((0..20).map(|_| tokens.get(&issuer))).await;
        assert!(
            all.iter()
                .all(|t| t.as_ref().unwrap().access == "refresh-0")
        );
        assert_eq!(issuer.refreshes.load(Ordering::SeqCst), 1);
        let stale = all[0].as_ref().unwrap().clone();
        let all =
            futures_util::future::join_all((0..20).map(|_| tokens.replace(&stale, &issuer))).await;
        assert!(all.iter().all(|t| t.as_ref().unwrap().access == "login-1"));
        assert_eq!(issuer.logins.load(Ordering::SeqCst), 2);
        assert_eq!(format!("{stale:?}"), "PlatformToken(***)");
    }
}
