//! Logging a browser in: the token, typed once into `/ui/login`, comes back as a cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS) that the receiver's access check
//! accepts in place of the `Authorization` header. Only `/ui/login` itself is served
//! without the token (`allow_ips` still applies).

use actix_web::{HttpResponse, web};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Dashboard;
use super::html::{Page, Refresh, secure};

/// The path served without the token.
pub const LOGIN_PATH: &str = "/ui/login";
/// The cookie that carries the token.
pub const TOKEN_COOKIE: &str = "notirouter_token";

/// What login checks the typed token against.
pub struct Login {
    /// SHA-256 of `server.auth.token`, or `None` when there is none.
    token_digest: Option<[u8; 32]>,
    /// Set under TLS.
    secure_cookie: bool,
}

impl Login {
    pub fn new(token: Option<&str>, secure_cookie: bool) -> Login {
        Login {
            token_digest: token.map(|token| Sha256::digest(token.as_bytes()).into()),
            secure_cookie,
        }
    }

    fn admits(&self, presented: &str) -> bool {
        self.token_digest.is_some_and(|expected| {
            let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
            bool::from(digest.ct_eq(&expected))
        })
    }
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route(LOGIN_PATH, web::get().to(form))
        .route(LOGIN_PATH, web::post().to(log_in));
}

fn page(dashboard: &Dashboard, refused: bool) -> HttpResponse {
    let page = Page {
        title: "Log in",
        here: LOGIN_PATH,
        refresh: Refresh::Paused,
    };
    let mut response = page.render(html! {
        @if dashboard.login.token_digest.is_none() {
            p { "This server has no token (server.auth.token): the dashboard needs no login." }
            p { a href="/ui/" { "Open the dashboard" } }
        } @else {
            @if refused { p.notice role="alert" { "That is not the server's token." } }
            form method="post" action=(LOGIN_PATH) {
                label { "Token (server.auth.token) "
                    input type="password" name="token" autocomplete="current-password" required;
                }
                " "
                button type="submit" { "Log in" }
            }
        }
    });
    if refused {
        *response.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
    }
    response
}

async fn form(dashboard: web::Data<Dashboard>) -> HttpResponse {
    page(&dashboard, false)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn log_in(dashboard: web::Data<Dashboard>, typed: web::Form<LoginForm>) -> HttpResponse {
    let login = &dashboard.login;
    if !login.admits(&typed.token) {
        return page(&dashboard, true);
    }
    let secure_attribute = if login.secure_cookie { "; Secure" } else { "" };
    let cookie = format!(
        "{TOKEN_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure_attribute}",
        typed.token
    );
    let mut response = HttpResponse::SeeOther();
    secure(&mut response);
    response
        .insert_header(("Set-Cookie", cookie))
        .insert_header(("Location", "/ui/"))
        .finish()
}

/// The token a request's `Cookie` header carries, if any.
pub fn token_from_cookies(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == TOKEN_COOKIE).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_cookie_is_found_among_others() {
        assert_eq!(
            token_from_cookies("a=1; notirouter_token=abc.def; b=2"),
            Some("abc.def")
        );
        assert_eq!(token_from_cookies("a=1"), None);
    }

    #[test]
    fn only_the_configured_token_logs_in() {
        let login = Login::new(Some("a-long-enough-token-1234"), false);
        assert!(login.admits("a-long-enough-token-1234"));
        assert!(!login.admits("a-long-enough-token-123"));
        assert!(!Login::new(None, false).admits(""));
    }
}
