//! The access token: cached, refreshed before it expires, renewed single-flight.
//!
//! Only the most recently issued token is valid (PLATFORM-NOTES.md §4.4), so two renewals at
//! once would revoke each other. Every renewal therefore runs under one async mutex: callers
//! that arrive while it runs wait for it and use its result. The mutex is tokio's, made to be
//! held across the renewal's `.await`; nothing else is ever done while holding it.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::PlatformError;

/// Renew this long before expiry (a tenth of the lifetime, at most a minute), so that a call
/// does not leave with a token that expires on the way.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// An issued token. `Debug` hides the values: they are credentials.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) access: String,
    refresh: String,
    renew_at: Instant,
    expires_in: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// Seconds the platform said the token lasts.
    pub(crate) fn expires_in(&self) -> u64 {
        self.expires_in
    }
}

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
    pub(crate) fn into_token(self, now: Instant) -> Token {
        let lifetime = Duration::from_secs(self.expires_in);
        let margin = (lifetime / 10).min(MAX_MARGIN);
        Token {
            access: self.access_token,
            refresh: self.refresh_token,
            renew_at: now + lifetime - margin,
            expires_in: self.expires_in,
        }
    }
}

/// How a token is obtained; the client implements it with HTTP calls.
pub(crate) trait Issuer {
    async fn login(&self) -> Result<Token, PlatformError>;
    async fn refresh(&self, refresh_token: &str) -> Result<Token, PlatformError>;
}

#[derive(Default)]
pub(crate) struct Tokens {
    current: Mutex<Option<Token>>,
}

impl Tokens {
    /// A token that is not about to expire: the cached one, else a refreshed one (a login
    /// when refreshing fails or there is nothing to refresh).
    pub(crate) async fn get(&self, issuer: &impl Issuer) -> Result<Token, PlatformError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.clone());
        }
        let renewed = match current.as_ref().filter(|t| !t.refresh.is_empty()) {
            Some(old) => match issuer.refresh(&old.refresh).await {
                Ok(token) => token,
                Err(error) if error.is_retryable() => return Err(error),
                // A refused refresh token (expired, or revoked by a login elsewhere).
                Err(_) => issuer.login().await?,
            },
            None => issuer.login().await?,
        };
        *current = Some(renewed.clone());
        Ok(renewed)
    }

    /// Logs in again because the platform refused `stale`, unless another caller already
    /// replaced it while this one waited: then that newer token is returned.
    pub(crate) async fn replace(
        &self,
        stale: &Token,
        issuer: &impl Issuer,
    ) -> Result<Token, PlatformError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|t| t.access != stale.access) {
            return Ok(token.clone());
        }
        let renewed = issuer.login().await?;
        *current = Some(renewed.clone());
        Ok(renewed)
    }

    /// Logs in now, whatever is cached (the login check).
    pub(crate) async fn login(&self, issuer: &impl Issuer) -> Result<Token, PlatformError> {
        let mut current = self.current.lock().await;
        let renewed = issuer.login().await?;
        *current = Some(renewed.clone());
        Ok(renewed)
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
        .into_token(Instant::now())
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
        let tokens = Tokens::default();
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
        assert_eq!(format!("{stale:?}"), "Token(***)");
    }
}
