//! Who may reach the receiver: the address allowlist (403) and the token (401), checked before
//! any handler runs, on every path except the probes.
//!
//! The platform cannot send headers (PLATFORM-NOTES.md §1.2), so its protection is a secret
//! path listed in `open_paths` plus `allow_ips`; the token is for other senders. Behind a
//! reverse proxy the client's address is read from `X-Forwarded-For`, but only when the peer is
//! a trusted proxy, and then the right-most address that is not itself a trusted proxy is the
//! client: everything left of it was written by the client and can be forged.
//!
//! Denials are counted and logged with the address, at most one line a second so that a flood
//! of bad requests cannot flood the log; they are never stored.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, COOKIE, HeaderName};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::Denial;
use super::probes;
use crate::config::AccessConfig;
use crate::metrics::Metrics;

/// At most one denial is logged per this interval; the next line counts those left out.
const DENIAL_LOG_EVERY: Duration = Duration::from_secs(1);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address as the access check decided it (the peer, or the forwarded client of
/// a trusted proxy); stored with each event as its `remote_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

pub struct Access {
    /// SHA-256 of the token: comparing digests takes the same time whatever the length of the
    /// guess, and the token itself is not kept in another place in memory.
    token_digest: Option<[u8; 32]>,
    open_paths: Vec<String>,
    allow_ips: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    metrics: Arc<Metrics>,
    log: LogLimiter,
}

impl Access {
    pub fn new(config: &AccessConfig, metrics: Arc<Metrics>) -> Access {
        Access {
            token_digest: config
                .token
                .as_ref()
                .map(|token| digest(token.expose().as_bytes())),
            open_paths: config.open_paths.clone(),
            allow_ips: config.allow_ips.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            metrics,
            log: LogLimiter::default(),
        }
    }

    /// Decides one request; records the client's address on it when known.
    fn admit(&self, request: &ServiceRequest) -> Result<(), (Denial, Option<IpAddr>)> {
        let forwarded: Vec<&str> = request
            .headers()
            .get_all(X_FORWARDED_FOR)
            .filter_map(|value| value.to_str().ok())
            .collect();
        let client = request
            .peer_addr()
            .and_then(|peer| client_address(peer.ip(), &forwarded, &self.trusted_proxies));
        if let Some(address) = client {
            request.extensions_mut().insert(ClientAddr(address));
        }
        if probes::OPEN_PATHS.contains(&request.path()) {
            return Ok(());
        }
        let allowed = self.allow_ips.is_empty()
            || client
                .is_some_and(|address| self.allow_ips.iter().any(|net| net.contains(&address)));
        if !allowed {
            return Err((Denial::Address, client));
        }
        self.check_token(request).map_err(|denial| (denial, client))
    }

    fn check_token(&self, request: &ServiceRequest) -> Result<(), Denial> {
        let Some(expected) = &self.token_digest else {
            return Ok(());
        };
        if is_open(request.path(), &self.open_paths) || request.path() == crate::ui::LOGIN_PATH {
            return Ok(());
        }
        let presented = presented_token(request).ok_or(Denial::MissingToken)?;
        match bool::from(digest(presented.as_bytes()).ct_eq(expected)) {
            true => Ok(()),
            false => Err(Denial::WrongToken),
        }
    }

    fn deny(&self, denial: Denial, client: Option<IpAddr>) {
        self.metrics.denied(denial.reason());
        if let Some(left_out) = self.log.allow() {
            let remote_addr = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
            tracing::warn!(%remote_addr, reason = denial.reason(), left_out, "request denied: {denial}");
        }
    }
}

/// The access check as actix middleware; a request is answered 401/403 before any handler
/// reads its body.
pub async fn guard(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let access = request.app_data::<web::Data<Access>>().cloned();
    if let Some(access) = access
        && let Err((denial, client)) = access.admit(&request)
    {
        access.deny(denial, client);
        return Ok(request.error_response(denial).map_into_right_body());
    }
    next.call(request)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A path is open when it is an open path or lies under one (`/cb/x` opens `/cb/x/cmd`).
fn is_open(path: &str, open_paths: &[String]) -> bool {
    open_paths.iter().any(|open| {
        path.strip_prefix(open.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// `Authorization: Bearer <token>` (scheme in any case), else the `token` query parameter,
/// else the dashboard's login cookie.
fn presented_token(request: &ServiceRequest) -> Option<String> {
    let from_header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    from_header
        .or_else(|| {
            let query =
                web::Query::<Vec<(String, String)>>::from_query(request.query_string()).ok()?;
            query
                .into_inner()
                .into_iter()
                .find_map(|(name, value)| (name == "token").then_some(value))
        })
        .or_else(|| {
            request
                .headers()
                .get_all(COOKIE)
                .filter_map(|value| value.to_str().ok())
                .find_map(crate::ui::token_from_cookies)
                .map(str::to_owned)
        })
}

/// The client's address: the peer itself unless it is a trusted proxy; then, walking
/// `X-Forwarded-For` from the right, the first address that is not a trusted proxy (or the
/// left-most one when all are). `None` when a hop that matters cannot be read as an address.
pub fn client_address(peer: IpAddr, forwarded: &[&str], trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    let is_trusted = |address: &IpAddr| trusted.iter().any(|net| net.contains(address));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = forwarded
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = parse_hop(hop)?;
        if !is_trusted(&client) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let address = hop
        .parse::<IpAddr>()
        .or_else(|_| {
            hop.parse::<std::net::SocketAddr>()
                .map(|socket| socket.ip())
        })
        .ok()?;
    Some(address.to_canonical())
}

/// Lets one log line through per [`DENIAL_LOG_EVERY`] and counts the ones it held back.
#[derive(Default)]
struct LogLimiter {
    /// When the last line was let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    /// `Some(lines held back since the last one)` when a line may be written now.
    fn allow(&self) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, held_back) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < DENIAL_LOG_EVERY) {
            *held_back += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| net.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = nets(&["10.0.0.0/8"]);
        let client = client_address(ip("203.0.113.9"), &["198.51.100.1"], &trusted);
        assert_eq!(client, Some(ip("203.0.113.9")));
        assert_eq!(
            client_address(ip("10.0.0.1"), &[], &[]),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let forwarded = ["1.1.1.1, 198.51.100.7", "10.0.0.5"];
        let client = client_address(ip("10.0.0.2"), &forwarded, &trusted);
        assert_eq!(client, Some(ip("198.51.100.7")));
        let client = client_address(ip("2001:db8::1"), &["[2001:db9::7]:443"], &trusted);
        assert_eq!(client, Some(ip("2001:db9::7")));
        // Every hop trusted: the left-most is as far as anyone can tell.
        let client = client_address(ip("10.0.0.2"), &["10.9.9.9, 10.0.0.3"], &trusted);
        assert_eq!(client, Some(ip("10.9.9.9")));
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.2"), &[], &trusted),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn an_unreadable_hop_makes_the_client_unknown_unless_a_readable_one_decides_first() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_address(ip("10.0.0.2"), &["junk"], &trusted), None);
        let client = client_address(ip("10.0.0.2"), &["junk, 198.51.100.7"], &trusted);
        assert_eq!(client, Some(ip("198.51.100.7")));
    }

    #[test]
    fn ipv4_mapped_ipv6_peers_match_ipv4_nets() {
        let trusted = nets(&["127.0.0.0/8"]);
        let client = client_address(ip("::ffff:127.0.0.1"), &["192.0.2.1"], &trusted);
        assert_eq!(client, Some(ip("192.0.2.1")));
    }

    #[test]
    fn open_paths_cover_the_paths_under_them_only() {
        let open = vec!["/cb/3f9a/v1".to_owned()];
        assert!(is_open("/cb/3f9a/v1", &open));
        assert!(is_open("/cb/3f9a/v1/cmd", &open));
        assert!(!is_open("/cb/3f9a/v10", &open));
        assert!(!is_open("/cb", &open));
    }

    #[test]
    fn the_log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let limiter = LogLimiter::default();
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        limiter.state.lock().unwrap().0 = Some(Instant::now() - DENIAL_LOG_EVERY);
        assert_eq!(limiter.allow(), Some(2));
    }
}
