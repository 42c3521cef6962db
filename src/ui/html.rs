//! The pieces every page is made of: the layout with its navigation and refresh control,
//! times, percentages, the stacked bar, links. maud escapes every value it interpolates.

use actix_web::HttpResponse;
use actix_web::http::header::{self, HeaderValue};
use maud::{DOCTYPE, Markup, html};

use crate::campaign::Counts;
use crate::model::Millis;

/// Pages reload themselves this often unless paused (`?refresh=off`).
const REFRESH_SECONDS: u32 = 15;

/// No inline script or style, nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The stylesheet, served from the binary.
pub const STYLESHEET: &str = include_str!("assets/dashboard.css");

/// Whether a page reloads itself; the choice lives in the URL, so it survives the reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    Auto,
    Paused,
}

impl Refresh {
    pub fn from_query(value: Option<&str>) -> Refresh {
        match value {
            Some("off") => Refresh::Paused,
            _ => Refresh::Auto,
        }
    }
}

/// A page of the dashboard. `here` is the page's own URL without the refresh choice, so
/// that the pause link can keep the page's filters.
pub struct Page<'a> {
    pub title: &'a str,
    pub here: &'a str,
    pub refresh: Refresh,
}

impl Page<'_> {
    pub fn render(&self, content: Markup) -> HttpResponse {
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    @if self.refresh == Refresh::Auto {
                        meta http-equiv="refresh" content=(REFRESH_SECONDS);
                    }
                    title { (self.title) " · notirouter" }
                    link rel="stylesheet" href="/ui/assets/dashboard.css";
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header {
                        nav aria-label="Dashboard" {
                            a href="/ui/" { "Campaigns" }
                            a href="/ui/events" { "Events" }
                            a href="/ui/dead" { "Dead letters" }
                        }
                        (self.refresh_control())
                    }
                    main #main {
                        h1 { (self.title) }
                        (content)
                    }
                }
            }
        };
        page_response(markup)
    }

    fn refresh_control(&self) -> Markup {
        let separator = if self.here.contains('?') { '&' } else { '?' };
        html! {
            p.refresh {
                "Updated at " (time(Millis::now())) ". "
                @match self.refresh {
                    Refresh::Auto => {
                        "Reloads every " (REFRESH_SECONDS) " s. "
                        a href={ (self.here) (separator) "refresh=off" } { "Pause auto-refresh" }
                    }
                    Refresh::Paused => {
                        "Auto-refresh paused. "
                        a href=(self.here) { "Resume auto-refresh" }
                    }
                }
            }
        }
    }
}

/// An HTML answer with the dashboard's security headers.
pub fn page_response(markup: Markup) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    secure(&mut response);
    response
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// The headers every page and form answer carries.
pub fn secure(response: &mut actix_web::HttpResponseBuilder) {
    response
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
}

/// A time in UTC, machine-readable in `datetime`.
pub fn time(at: Millis) -> Markup {
    let rfc3339 = at.to_rfc3339();
    let shown = format!(
        "{} UTC",
        rfc3339.get(..19).unwrap_or(&rfc3339).replace('T', " ")
    );
    html! { time datetime=(rfc3339) { (shown) } }
}

/// A time given as RFC 3339 text (as the store lists them).
pub fn time_text(rfc3339: &str) -> Markup {
    let shown = format!(
        "{} UTC",
        rfc3339.get(..19).unwrap_or(rfc3339).replace('T', " ")
    );
    html! { time datetime=(rfc3339) { (shown) } }
}

pub fn percent(rate: f64) -> String {
    format!("{:.1} %", rate * 100.0)
}

/// Succeeded, failed and in progress as one bar of three segments, each labelled in text
/// beside it, so that colour is never the only signal.
pub fn stacked_bar(counts: &Counts) -> Markup {
    let total = counts.devices.max(1) as f64;
    let segments = [
        ("succeeded", counts.succeeded),
        ("failed", counts.failed),
        ("in-progress", counts.in_progress),
    ];
    let mut offset = 0.0;
    let rects: Vec<(&str, f64, f64)> = segments
        .iter()
        .map(|&(class, count)| {
            let width = count as f64 / total * 100.0;
            offset += width;
            (class, offset - width, width)
        })
        .collect();
    let label = format!(
        "{} succeeded, {} failed, {} in progress of {} devices",
        counts.succeeded, counts.failed, counts.in_progress, counts.devices
    );
    html! {
        svg.bar viewBox="0 0 100 8" preserveAspectRatio="none" role="img" aria-label=(label) {
            @for (class, x, width) in rects {
                rect class=(class) x=(format!("{x:.3}")) y="0" width=(format!("{width:.3}")) height="8" {}
            }
        }
        ul.legend {
            li.succeeded { span.swatch aria-hidden="true" {} "Succeeded " strong data-count="succeeded" { (counts.succeeded) } }
            li.failed { span.swatch aria-hidden="true" {} "Failed " strong data-count="failed" { (counts.failed) } }
            li.in-progress { span.swatch aria-hidden="true" {} "In progress " strong data-count="in_progress" { (counts.in_progress) } }
        }
    }
}

/// Percent-encodes one path segment or query value.
pub fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

pub fn device_link(device_id: &str) -> Markup {
    html! { a href={ "/ui/devices/" (encode(device_id)) } { (device_id) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_leaves_unreserved_characters_alone_and_escapes_the_rest() {
        assert_eq!(encode("1.5-rc_1~x"), "1.5-rc_1~x");
        assert_eq!(encode("a/b c?<&>"), "a%2Fb%20c%3F%3C%26%3E");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn times_show_utc_and_carry_rfc3339() {
        let markup = time(Millis(0)).into_string();
        assert_eq!(
            markup,
            "<time datetime=\"1970-01-01T00:00:00.000Z\">1970-01-01 00:00:00 UTC</time>"
        );
    }
}
