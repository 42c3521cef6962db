//! The northbound HTTP client: TLS (mutual, with the platform's CA), the common headers, the
//! call limit, and the two answers every call may get: an invalid token (log in once and
//! repeat once) and throttling (back off and repeat, a few times, then give up for now).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::PlatformError;
use super::errors::{Failure, answer_error, classify, transport_error};
use super::limiter::Limiter;
use super::shared::Shared;
use super::token::{Issued, Issuer, Token, Tokens};
use crate::config::PlatformConfig;
use crate::model::Millis;
use crate::store::Store;

const LOGIN: &str = "/iocm/app/sec/v1.1.0/login";
const REFRESH: &str = "/iocm/app/sec/v1.1.0/refreshToken";
/// The platform counts calls per app in 60 s windows. It counts them as they arrive, and an
/// early call may arrive later than it started (a new connection, a slow network) while a call
/// a window later does not: a second of slack keeps every 60 s of arrivals within the limit.
const CALL_WINDOW: Duration = Duration::from_secs(61);
/// Throttled calls are repeated after 1 s, 2 s, 4 s; then the delivery retries later.
const THROTTLE_BACKOFF: Duration = Duration::from_secs(1);
const THROTTLE_REPEATS: u32 = 3;

/// One call: method, path under the base URL, query pairs and body.
pub(crate) struct Call<'a> {
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'a str, String)>,
    pub body: Body,
}

pub(crate) enum Body {
    Empty,
    Json(Value),
    /// The login form, `appId` and `secret`: built when sent, so that the secret is held in
    /// one place only.
    Credentials,
}

impl<'a> Call<'a> {
    pub(crate) fn get(path: String, query: Vec<(&'a str, String)>) -> Call<'a> {
        Call {
            method: Method::GET,
            path,
            query,
            body: Body::Empty,
        }
    }

    pub(crate) fn post(path: String, body: Value) -> Call<'a> {
        Call {
            method: Method::POST,
            path,
            query: Vec::new(),
            body: Body::Json(body),
        }
    }
}

/// A 2xx answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, or an error saying what was expected.
    pub(crate) fn json(&self, expected: &'static str) -> Result<Value, PlatformError> {
        serde_json::from_slice(&self.body).map_err(|_| PlatformError::Unexpected {
            what: format!("HTTP {} with a body that is not JSON", self.status),
            expected,
        })
    }
}

pub(crate) struct Client {
    http: reqwest::Client,
    base_url: String,
    app_id: String,
    secret: crate::config::Secret,
    timeout: Duration,
    limiter: Limiter,
    tokens: Tokens,
}

impl Client {
    /// A client whose token and call limit are its own, or, given `store`, shared with every
    /// instance on that store.
    pub(crate) fn new(
        config: &PlatformConfig,
        timeout: Duration,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Client, PlatformError> {
        let credentials = config.credentials()?;
        let shared = store.map(|store| Arc::new(Shared::new(store, credentials.app_id)));
        let max = config.max_calls_per_minute;
        let limiter = match &shared {
            Some(shared) => Limiter::shared(max, CALL_WINDOW, Arc::clone(shared)),
            None => Limiter::new(max, CALL_WINDOW),
        };
        let http = super::tls::builder(config)?
            .timeout(timeout)
            .user_agent(concat!("notirouter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| transport_error(credentials.base_url, &error, timeout))?;
        Ok(Client {
            http,
            base_url: credentials.base_url.to_owned(),
            app_id: credentials.app_id.to_owned(),
            secret: credentials.secret.clone(),
            timeout,
            limiter,
            tokens: Tokens::new(shared, renewal_lease(timeout)),
        })
    }

    pub(crate) fn app_id(&self) -> &str {
        &self.app_id
    }

    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Logs in now, replacing any cached token.
    pub(crate) async fn login(&self) -> Result<Token, PlatformError> {
        self.tokens.login(self).await
    }

    /// Makes `call` with a valid token: after an invalid-token answer it logs in once and
    /// repeats once; a throttled call is repeated after a growing pause, a few times.
    pub(crate) async fn call(&self, call: &Call<'_>) -> Result<Answer, PlatformError> {
        let mut token = self.tokens.get(self).await?;
        let mut relogged = false;
        let mut throttled = 0;
        loop {
            let (status, body) = self.send(call, Some(&token)).await?;
            if status.is_success() {
                return Ok(Answer { status, body });
            }
            let code = super::errors::ErrorBody::parse(&body);
            let failure = classify(status, code.code(), false);
            match failure {
                Failure::InvalidToken if !relogged => {
                    tracing::info!(
                        status = status.as_u16(),
                        "platform token refused; logging in again"
                    );
                    token = self.tokens.replace(&token, self).await?;
                    relogged = true;
                }
                Failure::Throttled if throttled < THROTTLE_REPEATS => {
                    back_off(&mut throttled).await;
                }
                _ => return Err(answer_error(failure, status, &body)),
            }
        }
    }

    /// One request, counted by the limiter; any answer is returned, only transport errors fail.
    async fn send(
        &self,
        call: &Call<'_>,
        token: Option<&Token>,
    ) -> Result<(StatusCode, Vec<u8>), PlatformError> {
        let address = format!("{}{}", self.base_url, call.path);
        let mut url =
            reqwest::Url::parse(&address).map_err(|_| PlatformError::BadAddress(address))?;
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }
        let mut request = self.http.request(call.method.clone(), url);
        if let Some(token) = token {
            let mut bearer =
                HeaderValue::from_str(&format!("Bearer {}", token.access)).map_err(|_| {
                    PlatformError::Unexpected {
                        what: "an access token that cannot be sent as a header".to_owned(),
                        expected: "a printable token",
                    }
                })?;
            bearer.set_sensitive(true);
            request = request
                .header("app_key", &self.app_id)
                .header(AUTHORIZATION, bearer);
        }
        request = match &call.body {
            Body::Credentials => request.form(&[
                ("appId", self.app_id.as_str()),
                ("secret", self.secret.expose()),
            ]),
            Body::Json(body) => request.header(CONTENT_TYPE, "application/json").json(body),
            Body::Empty => request,
        };
        self.limiter.acquire().await?;
        let transport =
            |error: reqwest::Error| transport_error(&self.base_url, &error, self.timeout);
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        Ok((status, body.to_vec()))
    }

    /// Login and refresh, which carry the secret and answer a token; throttling is waited out
    /// like any call's.
    async fn issue(&self, call: Call<'_>) -> Result<Token, PlatformError> {
        let mut throttled = 0;
        loop {
            let (status, body) = self.send(&call, None).await?;
            if status.is_success() {
                let issued: Issued =
                    serde_json::from_slice(&body).map_err(|_| PlatformError::Unexpected {
                        what: format!("HTTP {status} without a token"),
                        expected: "{\"accessToken\", \"expiresIn\", ...}",
                    })?;
                return Ok(issued.into_token(Millis::now()));
            }
            let code = super::errors::ErrorBody::parse(&body);
            match classify(status, code.code(), true) {
                Failure::Throttled if throttled < THROTTLE_REPEATS => {
                    back_off(&mut throttled).await;
                }
                failure => return Err(answer_error(failure, status, &body)),
            }
        }
    }
}

/// `text` as one path segment: everything but unreserved characters percent-encoded, so that
/// an id from a notification cannot change the path or add a query.
pub(crate) fn segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// How long a renewal may hold the store's renewal lock: a refresh and a login, each with
/// its throttled repeats.
fn renewal_lease(timeout: Duration) -> Duration {
    let backoffs = THROTTLE_BACKOFF * (2u32.pow(THROTTLE_REPEATS) - 1);
    (timeout + backoffs) * 2
}

/// Waits out the `throttled`-th throttled answer in a row: 1 s, then 2 s, then 4 s.
async fn back_off(throttled: &mut u32) {
    let pause = THROTTLE_BACKOFF * 2u32.pow(*throttled);
    tracing::warn!(
        pause_ms = pause.as_millis() as u64,
        "the platform throttled a call; backing off"
    );
    tokio::time::sleep(pause).await;
    *throttled += 1;
}

impl Issuer for Client {
    async fn login(&self) -> Result<Token, PlatformError> {
        let login = Call {
            method: Method::POST,
            path: LOGIN.to_owned(),
            query: Vec::new(),
            body: Body::Credentials,
        };
        let token = self.issue(login).await?;
        tracing::info!(expires_in = token.expires_in, "logged in to the platform");
        Ok(token)
    }

    async fn refresh(&self, refresh_token: &str) -> Result<Token, PlatformError> {
        let body = serde_json::json!({
            "appId": self.app_id,
            "secret": self.secret.expose(),
            "refreshToken": refresh_token,
        });
        let token = self.issue(Call::post(REFRESH.to_owned(), body)).await?;
        tracing::debug!(expires_in = token.expires_in, "platform token refreshed");
        Ok(token)
    }
}
