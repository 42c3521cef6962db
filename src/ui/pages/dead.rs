//! The dead-letter queue: retry or drop, each through a confirmation page that says what it
//! will do and posts a form carrying the CSRF token.

use actix_web::{HttpResponse, web};
use maud::html;
use serde::Deserialize;

use super::{RefreshQuery, Shared};
use crate::store::DeadLetter;
use crate::ui::UiError;
use crate::ui::api::{DeadChoice, blocking, settle_dead};
use crate::ui::html::{Page, Refresh, encode, secure, time_text};

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/ui/dead", web::get().to(dead))
        .route("/ui/dead/{id}/{choice}", web::get().to(confirm))
        .route("/ui/dead/{id}/{choice}", web::post().to(settle));
}

fn choice(text: &str) -> Result<DeadChoice, UiError> {
    match text {
        "retry" => Ok(DeadChoice::Retry),
        "drop" => Ok(DeadChoice::Drop),
        _ => Err(UiError::NotFound(format!(
            "no dead-letter operation {text:?}; it is retry or drop"
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
struct DoneQuery {
    done: Option<String>,
    what: Option<String>,
}

async fn dead(
    dashboard: Shared,
    done: web::Query<DoneQuery>,
    refresh: web::Query<RefreshQuery>,
) -> Result<HttpResponse, UiError> {
    let letters = blocking(&dashboard, |d| Ok(d.store().dead_letters()?)).await?;
    let page = Page {
        title: "Dead letters",
        here: "/ui/dead",
        refresh: Refresh::from_query(refresh.refresh.as_deref()),
    };
    Ok(page.render(html! {
        @if let (Some(id), Some(what)) = (&done.done, &done.what) {
            p.notice role="status" { "Dead letter " code { (id) } " " (what) "." }
        }
        @if letters.is_empty() {
            p.empty { "The dead-letter queue is empty." }
        } @else {
            table #dead-letters {
                thead { tr { th { "Action" } th { "Kind" } th { "Destination" } th.number { "Attempts" } th { "Queued" } th { "Last error" } th { "Do" } } }
                tbody {
                    @for letter in &letters {
                        tr data-id=(letter.id) {
                            td { code { (letter.id) } }
                            td { (letter.kind) }
                            td { (letter.destination) }
                            td.number { (letter.attempts) }
                            td { (time_text(&letter.created_at)) }
                            td { (letter.last_error.as_deref().unwrap_or("")) }
                            td {
                                form method="get" action={ "/ui/dead/" (encode(&letter.id)) "/retry" } {
                                    button type="submit" { "Retry…" }
                                }
                                form method="get" action={ "/ui/dead/" (encode(&letter.id)) "/drop" } {
                                    button type="submit" { "Drop…" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }))
}

/// What a choice will do to `letter`, in words.
fn consequence(choice: DeadChoice, letter: &DeadLetter) -> String {
    match choice {
        DeadChoice::Retry => format!(
            "This queues the {} action to {} again, due now, with a fresh attempt count ({} attempts were made).",
            letter.kind, letter.destination, letter.attempts
        ),
        DeadChoice::Drop => format!(
            "This gives up on the {} action to {} for good: it will not be sent; its event's story keeps it as dropped.",
            letter.kind, letter.destination
        ),
    }
}

async fn confirm(
    dashboard: Shared,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, UiError> {
    let (id, choice_text) = path.into_inner();
    let choice = choice(&choice_text)?;
    let wanted = id.clone();
    let (letter, csrf) = blocking(&dashboard, move |d| {
        let letter = d
            .store()
            .dead_letters()?
            .into_iter()
            .find(|letter| letter.id == wanted)
            .ok_or_else(|| UiError::NotFound(format!("no dead letter {wanted}")))?;
        Ok((letter, d.csrf.value().to_owned()))
    })
    .await?;
    let verb = match choice {
        DeadChoice::Retry => "Retry",
        DeadChoice::Drop => "Drop",
    };
    let title = format!("{verb} dead letter {id}?");
    let here = format!("/ui/dead/{}/{choice_text}", encode(&id));
    let page = Page {
        title: &title,
        here: &here,
        refresh: Refresh::Paused,
    };
    Ok(page.render(html! {
        p #consequence { (consequence(choice, &letter)) }
        @if let Some(error) = &letter.last_error { p { "Its last error: " (error) } }
        form method="post" action=(here) {
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" { "Yes, " (verb.to_lowercase()) " it" }
            " "
            a href="/ui/dead" { "Cancel" }
        }
    }))
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn settle(
    dashboard: Shared,
    path: web::Path<(String, String)>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, UiError> {
    let (id, choice_text) = path.into_inner();
    let choice = choice(&choice_text)?;
    dashboard.csrf.check(&form.csrf)?;
    let settled = id.clone();
    blocking(&dashboard, move |d| settle_dead(d, &settled, choice)).await?;
    let what = match choice {
        DeadChoice::Retry => "queued again",
        DeadChoice::Drop => "dropped",
    };
    let mut response = HttpResponse::SeeOther();
    secure(&mut response);
    Ok(response
        .insert_header((
            "Location",
            format!("/ui/dead?done={}&what={}", encode(&id), encode(what)),
        ))
        .finish())
}
