//! The web dashboard under `/ui/`: server-rendered HTML (maud), a little
//! embedded JavaScript that refreshes the live part of a page every few
//! seconds, and CSS for wide and narrow screens; no build step, everything
//! in the binary. Behind a login: an operator token becomes a session
//! (12 hours, `HttpOnly`, `SameSite=Strict`, `Secure` under TLS) and every
//! form carries the session's CSRF token. Sessions live in the store, as
//! hashes only (the cookie's and the token's), so every replica knows them
//! and a logout on one ends the session on all. A session lives only as
//! long as its token: a revoked token ends it at the next request.
//! Owns: presenting the fleet and the operator's few writes (commands,
//! rollouts and their buttons, withdrawal), through the same state methods
//! as the v2 API, audited the same way. Must not: hold fleet state of its
//! own.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use palette_protocol::selector::Selector;
use palette_protocol::timefmt::{rfc3339_millis, Millis};
use palette_protocol::v2::{CommandKind, HostInfo, HostState, Outcome, Target};
use serde::Deserialize;

use crate::clock::now_ms;
use crate::fleet::history::{version_mix, version_of};
use crate::http::AppState;
use crate::store::TokenKind;

mod commands;
mod hosts;
mod overview;
mod releases;
mod rollouts;
mod session;

pub(crate) use session::UiSession;
#[allow(unused_imports)]
use {commands::*, hosts::*, overview::*, releases::*, rollouts::*, session::*};

const COOKIE: &str = "palette_session";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// The samples of the last day, oldest first (an unreadable one skipped).
async fn samples(state: &AppState) -> Result<Vec<(Millis, BTreeMap<String, u64>)>, UiError> {
    state
        .version_history()
        .await
        .map_err(|e| UiError::Store(e.public_reason()))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(fleet))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/hosts", get(hosts_page))
        .route("/ui/hosts/{host}", get(host_page))
        .route("/ui/releases", get(releases_page))
        .route("/ui/releases/{id}/withdraw", post(withdraw))
        .route("/ui/rollouts", get(rollouts_page).post(create_rollout))
        .route("/ui/rollouts/{id}", get(rollout_page))
        .route("/ui/rollouts/{id}/{action}", post(rollout_action))
        .route("/ui/commands", get(commands_page).post(send_command))
        .route(
            "/ui/static/app.css",
            get(|| async { asset(CSS, "text/css") }),
        )
        .route(
            "/ui/static/app.js",
            get(|| async { asset(JS, "text/javascript") }),
        )
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Security headers on every dashboard page.
fn html_response(status: StatusCode, body: Markup) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; form-action 'self'; frame-ancestors 'none'",
                ),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body.into_string(),
    )
        .into_response()
}

fn page_error(status: StatusCode, msg: &str) -> Response {
    html_response(
        status,
        layout(
            "Error",
            None,
            html! { p.error { (msg) } p { a href="/ui/" { "Back to the fleet" } } },
        ),
    )
}

/// A whole page, or only its live part when the refresher asks.
fn page(headers: &HeaderMap, title: &str, s: &UiSession, before: Markup, live: Markup) -> Response {
    if headers.contains_key("x-palette-partial") {
        return html_response(StatusCode::OK, live);
    }
    html_response(
        StatusCode::OK,
        layout(
            title,
            Some(s),
            html! {
                (before)
                div #live data-live { (live) }
            },
        ),
    )
}

fn layout(title: &str, s: Option<&UiSession>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · palette" }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui/" { "palette" }
                    @if let Some(s) = s {
                        nav {
                            a href="/ui/" { "Fleet" }
                            a href="/ui/hosts" { "Hosts" }
                            a href="/ui/releases" { "Releases" }
                            a href="/ui/rollouts" { "Rollouts" }
                            a href="/ui/commands" { "Commands" }
                        }
                        form.logout method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            span.who { (s.label) }
                            button #logout type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn csrf(s: &UiSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}
