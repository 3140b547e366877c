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

/// A logged-in operator, found once per request from the session cookie.
/// Without one: a page redirects to the login, a form post is refused.
pub(crate) struct UiSession {
    label: String,
    csrf: String,
    source: Option<String>,
}

pub(crate) enum NoSession {
    Login,
    Refused,
    /// The store could not be asked (its public reason).
    Store(String),
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::Login => Redirect::to("/ui/login").into_response(),
            NoSession::Refused => page_error(
                StatusCode::FORBIDDEN,
                "no session: log in first (nothing was changed)",
            ),
            NoSession::Store(why) => page_error(StatusCode::SERVICE_UNAVAILABLE, &why),
        }
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

impl FromRequestParts<AppState> for UiSession {
    type Rejection = NoSession;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, NoSession> {
        let reject = if parts.method == axum::http::Method::GET {
            NoSession::Login
        } else {
            NoSession::Refused
        };
        let Some(sid) = cookie_value(&parts.headers) else {
            return Err(reject);
        };
        let id_hash = session_hash(&sid);
        let row = match state.store.ui_session(&id_hash).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(reject),
            Err(e) => return Err(NoSession::Store(e.public_reason())),
        };
        let live = row.expires_at > now_ms();
        let cred = hex::decode(&row.token_hash)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .and_then(|h| state.credential_by_hash(&h));
        match cred {
            Some(c) if live && c.kind == TokenKind::Operator => Ok(UiSession {
                label: c.label.clone(),
                csrf: row.csrf,
                source: parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip().to_string()),
            }),
            _ => {
                // Expired, or its token revoked: gone for every replica.
                if let Err(e) = state.store.delete_ui_session(&id_hash).await {
                    tracing::warn!(error = %crate::error_chain(&e), "could not delete an ended dashboard session; it is deleted at a later login");
                }
                Err(reject)
            }
        }
    }
}

/// What the store keeps of a session cookie: its SHA-256 (a read of the
/// database gives nobody a usable cookie).
fn session_hash(sid: &str) -> String {
    hex::encode(crate::http::auth::token_hash(sid))
}

impl UiSession {
    /// Refuses a form whose CSRF token is not this session's.
    fn check(&self, form: &HashMap<String, String>) -> Result<(), UiError> {
        let given = form.get("csrf").map(String::as_bytes).unwrap_or_default();
        let want = self.csrf.as_bytes();
        let same = given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            tracing::warn!(
                operator = self.label,
                "dashboard form refused: wrong CSRF token"
            );
            Err(UiError::Csrf)
        }
    }

    /// The audit entry of what this operator is about to do, stored with
    /// the write (`store::Audit`).
    fn entry(&self, action: &str, detail: String) -> crate::store::AuditEntry {
        crate::store::AuditEntry::now(&self.label, self.source.as_deref(), action, detail)
    }
}

/// Why a dashboard write was refused or failed.
pub(crate) enum UiError {
    /// The form's CSRF token is not the session's: nothing changed.
    Csrf,
    /// The store failed (its public reason).
    Store(String),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::Csrf => page_error(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is not this session's (reload the page); nothing was changed",
            ),
            UiError::Store(why) => page_error(StatusCode::SERVICE_UNAVAILABLE, &why),
        }
    }
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

// ---- login --------------------------------------------------------------

async fn login_page() -> Response {
    html_response(StatusCode::OK, login_form(None))
}

fn login_form(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            @if let Some(e) = error { p.error #login-error { (e) } }
            form.card method="post" action="/ui/login" {
                label for="token" { "Operator token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button #login type="submit" { "Log in" }
            }
            p.hint { "An operator token (" code { "palettectl token new-operator LABEL" } ", or the server's admin token)." }
        },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// The caller's address, when the server knows it.
pub(crate) struct SourceIp(Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for SourceIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(SourceIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

async fn login(
    State(state): State<AppState>,
    SourceIp(ip): SourceIp,
    Form(f): Form<LoginForm>,
) -> Response {
    let ok = state
        .credential(f.token.trim())
        .is_some_and(|c| c.kind == TokenKind::Operator);
    // Limit what fails, not what succeeds: a token that verifies logs in
    // even from a blocked address.
    if let Some(secs) = ip
        .filter(|_| !ok)
        .and_then(|ip| state.auth_limiter.blocked(ip))
    {
        let mut res = html_response(
            StatusCode::TOO_MANY_REQUESTS,
            login_form(Some(&format!(
                "too many failed logins from this address; try again in {secs} s"
            ))),
        );
        res.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, secs.into());
        return res;
    }
    if !ok {
        state.metrics.auth_failures.increment(1);
        if let Some(ip) = ip {
            state.auth_limiter.failed(ip);
        }
        tracing::warn!(source = ?ip, "dashboard login refused");
        return html_response(
            StatusCode::UNAUTHORIZED,
            login_form(Some("that is not a live operator token")),
        );
    }
    let sid = random_hex();
    let row = crate::store::UiSessionRow {
        id_hash: session_hash(&sid),
        token_hash: hex::encode(crate::http::auth::token_hash(f.token.trim())),
        csrf: random_hex(),
        expires_at: now_ms() + SESSION_TTL.as_millis() as Millis,
    };
    if let Err(e) = state.store.insert_ui_session(&row, now_ms()).await {
        tracing::error!(error = %crate::error_chain(&e), "dashboard login failed: the session could not be stored");
        return html_response(
            StatusCode::SERVICE_UNAVAILABLE,
            login_form(Some(&e.public_reason())),
        );
    }
    let label = state
        .credential(f.token.trim())
        .map(|c| c.label.clone())
        .unwrap_or_default();
    tracing::info!(operator = label, source = ?ip, "dashboard login");
    let cookie = format!(
        "{COOKIE}={sid}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if state.http.tls { "; Secure" } else { "" }
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/".to_string()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

async fn logout(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    if let Some(sid) = cookie_value(&headers) {
        if let Err(e) = state.store.delete_ui_session(&session_hash(&sid)).await {
            return UiError::Store(e.public_reason()).into_response();
        }
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/login".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

// ---- pages --------------------------------------------------------------

fn age(seen: &str) -> String {
    let Ok(t) = palette_protocol::timefmt::parse_rfc3339(seen) else {
        return "?".into();
    };
    let s = ((now_ms() - t).max(0) / 1000) as u64;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn state_of(h: &HostInfo) -> &'static str {
    h.state.unwrap_or(HostState::Offline).as_str()
}

async fn fleet(State(state): State<AppState>, s: UiSession, headers: HeaderMap) -> Response {
    let hosts = state.hosts(None);
    let mut by_state = [0u64; 3];
    for h in &hosts {
        by_state[match h.state {
            Some(HostState::Online) => 0,
            Some(HostState::Stale) => 1,
            _ => 2,
        }] += 1;
    }
    let mix = version_mix(&hosts);
    let max = mix.values().copied().max().unwrap_or(1).max(1);
    let rollouts = state.rollout_list();
    let samples = match samples(&state).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let live = html! {
        section.cards {
            div.card { div.big #count-hosts { (hosts.len()) } div { "hosts" } }
            div.card.ok { div.big #count-online { (by_state[0]) } div { "online" } }
            div.card.warn { div.big { (by_state[1]) } div { "stale" } }
            div.card.bad { div.big { (by_state[2]) } div { "offline" } }
        }
        h2 { "Agent versions" }
        table.bars #versions {
            @for (v, n) in &mix {
                tr {
                    td { (v) }
                    td.bar { span style=(format!("width:{}%", n * 100 / max)) {} }
                    td.num { (n) }
                }
            }
        }
        h2 { "Version mix over time" }
        (chart(&samples))
        h2 { "Rollouts in progress" }
        @let active: Vec<_> = rollouts.iter().filter(|r| matches!(r.phase, crate::rollout::Phase::Running | crate::rollout::Phase::Paused | crate::rollout::Phase::Halted)).collect();
        @if active.is_empty() { p.hint { "None." } }
        @for r in active {
            p { a href=(format!("/ui/rollouts/{}", r.id)) { "Rollout " (r.id) " of " (r.version.to_string()) } " — " span.phase { (r.phase.as_str()) } ", wave " (r.wave) " of " (r.waves.len()) }
        }
    };
    page(&headers, "Fleet", &s, html! {}, live)
}

/// A stacked bar chart of the version mix, one bar per sample (inline SVG).
fn chart(samples: &[(Millis, BTreeMap<String, u64>)]) -> Markup {
    if samples.is_empty() {
        return html! { p.hint { "No samples yet (one a minute)." } };
    }
    let versions: Vec<String> = {
        let mut v: Vec<String> = samples
            .iter()
            .flat_map(|(_, m)| m.keys().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let colours = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
    ];
    let (w, h) = (600.0f64, 160.0f64);
    let bw = w / samples.len() as f64;
    let mut rects = String::new();
    for (i, (_, m)) in samples.iter().enumerate() {
        let total: u64 = m.values().sum::<u64>().max(1);
        let mut y = h;
        for (vi, v) in versions.iter().enumerate() {
            let n = *m.get(v).unwrap_or(&0);
            if n == 0 {
                continue;
            }
            let bh = h * n as f64 / total as f64;
            y -= bh;
            rects.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
                i as f64 * bw,
                y,
                bw.max(1.0),
                bh,
                colours[vi % colours.len()],
                html! { (v) }.into_string(),
                n
            ));
        }
    }
    html! {
        svg.chart #mix-chart viewBox=(format!("0 0 {w} {h}")) preserveAspectRatio="none" role="img" {
            (PreEscaped(rects))
        }
        p.legend {
            @for (vi, v) in versions.iter().enumerate() {
                span.swatch style=(format!("background:{}", colours[vi % colours.len()])) {} " " (v) " "
            }
            " — from " (rfc3339_millis(samples[0].0)) " to " (rfc3339_millis(samples[samples.len() - 1].0))
        }
    }
}

#[derive(Deserialize, Default)]
struct HostFilter {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    selector: String,
}

async fn hosts_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
    Query(f): Query<HostFilter>,
) -> Response {
    let sel = Selector::parse(&f.selector);
    let hosts: Vec<HostInfo> = state
        .hosts(None)
        .into_iter()
        .filter(|h| f.q.is_empty() || h.hostname.to_lowercase().contains(&f.q.to_lowercase()))
        .filter(|h| f.state.is_empty() || state_of(h) == f.state)
        .filter(|h| f.version.is_empty() || version_of(h) == f.version)
        .filter(|h| match &sel {
            Ok(sel) => sel.matches(&h.hostname, &h.labels),
            Err(_) => true,
        })
        .collect();
    let shown = hosts.len().min(1000);
    let filters = html! {
        form.filters #host-filter method="get" action="/ui/hosts" {
            input #q name="q" placeholder="name contains" value=(f.q);
            select name="state" {
                option value="" { "any state" }
                @for st in ["online", "stale", "offline"] {
                    option value=(st) selected[f.state == st] { (st) }
                }
            }
            input name="version" placeholder="version" value=(f.version);
            input name="selector" placeholder="role=web,site!=us" value=(f.selector);
            button #filter type="submit" { "Filter" }
        }
        @if let Err(e) = &sel { p.error { "selector: " (e.to_string()) } }
    };
    let live = html! {
        p.hint { (hosts.len()) " host(s)" @if shown < hosts.len() { ", the first " (shown) " shown" } }
        div.scroll {
            table #hosts {
                thead { tr { th { "Host" } th { "State" } th { "Seen" } th { "Agent" } th { "Running" } th { "Watchdog" } th { "Labels" } th { "Last update" } } }
                tbody {
                    @for h in hosts.iter().take(shown) {
                        tr data-host=(h.hostname) {
                            td { a href=(format!("/ui/hosts/{}", h.hostname)) { (h.hostname) } }
                            td { span class=(format!("state {}", state_of(h))) { (state_of(h)) } }
                            td { (age(&h.last_seen)) }
                            td.version { (version_of(h)) }
                            td.agent-state { @if let Some(r) = &h.report { (format!("{:?}", r.agent_state).to_lowercase()) } @else { "-" } }
                            td { @if let Some(r) = &h.report { (r.watchdog_version) } }
                            td.labels { @for (k, v) in &h.labels { span.label { (k) "=" (v) } " " } }
                            td { @if let Some(u) = h.report.as_ref().and_then(|r| r.last_update.as_ref()) { (u.version.to_string()) " " (format!("{:?}", u.outcome)) ": " (u.message) } }
                        }
                    }
                }
            }
        }
    };
    page(&headers, "Hosts", &s, filters, live)
}

async fn host_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> Response {
    let Ok(host) = palette_protocol::hostname::validate_hostname(&host) else {
        return page_error(StatusCode::BAD_REQUEST, "not a host name");
    };
    let Some(h) = state.hosts(None).into_iter().find(|h| h.hostname == host) else {
        return page_error(StatusCode::NOT_FOUND, &format!("no host {host}"));
    };
    let acks = state.store.host_acks(&host, 20).await.unwrap_or_default();
    let updates = state
        .store
        .update_history(&host, 20)
        .await
        .unwrap_or_default();
    let configs = state.store.config_history(&host).await.unwrap_or_default();
    let desired = state
        .store
        .latest_config(&host, Some(palette_protocol::v2::ConfigSource::Desired))
        .await
        .ok()
        .flatten();
    let reported = state
        .store
        .latest_config(&host, Some(palette_protocol::v2::ConfigSource::Reported))
        .await
        .ok()
        .flatten();
    let diff = match (&desired, &reported) {
        (Some((_, d)), Some((_, r))) => {
            let (d, r) = (String::from_utf8_lossy(d), String::from_utf8_lossy(r));
            if d == r {
                Some("the host has the desired config".to_string())
            } else {
                Some(
                    similar::TextDiff::from_lines(r.as_ref(), d.as_ref())
                        .unified_diff()
                        .header("in place (reported)", "desired")
                        .to_string(),
                )
            }
        }
        _ => None,
    };
    let live = html! {
        dl.facts #host-facts {
            dt { "State" } dd { span class=(format!("state {}", state_of(&h))) #host-state { (state_of(&h)) } " — seen " (age(&h.last_seen)) " ago" @if let Some(i) = h.checkin_interval_secs { ", checks in every " (i) " s" } }
            @if let Some(r) = &h.report {
                dt { "Agent" } dd #host-agent { (version_of(&h)) ", " (format!("{:?}", r.agent_state).to_lowercase()) " (desired " (format!("{:?}", r.desired_state).to_lowercase()) ")" }
                dt { "Watchdog" } dd { (r.watchdog_version) }
                dt { "Platform" } dd { (r.platform) }
                @if let Some(p) = &r.update_progress { dt { "Updating" } dd { (p.version.to_string()) " " (format!("{:?}", p.phase)) } }
                @if let Some(t) = &r.local_trouble { dt { "Trouble" } dd.error { (t) } }
            } @else {
                dt { "Kind" } dd { "a legacy (v1) host" }
            }
            dt { "Labels" } dd { @for (k, v) in &h.labels { span.label { (k) "=" (v) } " " } }
        }
        h2 { "Recent commands" }
        div.scroll { table { @for (kind, a) in &acks { tr { td { (a.at) } td { "#" (a.id) } td { (kind.as_str()) } td { (format!("{:?}", a.outcome)) } td { (a.message) } } } } }
        h2 { "Updates" }
        div.scroll { table #host-updates { @for u in &updates { tr { td { (u.at) } td { (u.product) } td { (u.version.to_string()) } td { (format!("{:?}", u.outcome)) } td { (u.message) } } } } }
        h2 { "Config" }
        @match &diff {
            Some(d) => pre.diff { (d) },
            None => p.hint { "No desired and reported config to compare yet." },
        }
        div.scroll { table { @for c in configs.iter().take(10) { tr { td { (c.created_at) } td { "revision " (c.revision) } td { (c.source.as_str()) } td { (c.size) " bytes" } } } } }
    };
    let actions = html! {
        form.inline method="post" action="/ui/commands" {
            (csrf(&s))
            input type="hidden" name="hosts" value=(h.hostname);
            @for k in ["start", "stop", "restart"] {
                button name="kind" value=(k) id=(format!("host-{k}")) { (k) }
            }
        }
    };
    page(&headers, &format!("Host {host}"), &s, actions, live)
}

async fn releases_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
) -> Response {
    let mut rel = state.releases();
    rel.sort_by(|a, b| b.version.cmp(&a.version).then(b.id.cmp(&a.id)));
    let live = html! {
        div.scroll {
            table #releases {
                thead { tr { th { "Id" } th { "Product" } th { "Version" } th { "Platform" } th { "Kind" } th { "Published" } th { "Status" } th {} } }
                tbody {
                    @for r in &rel {
                        tr {
                            td { (r.id) } td { (r.product) } td { (r.version.to_string()) } td { (r.platform) } td { (r.kind.as_str()) } td { (r.created_at) }
                            td {
                                @if r.rolled_back_at.is_some() { "rolled back" }
                                @else if r.withdrawn_at.is_some() { "withdrawn" }
                                @else if r.held { "held" }
                                @else { "offered" }
                                @if r.manifest.is_some() { " · signed" }
                            }
                            td {
                                @if r.withdrawn_at.is_none() {
                                    form.inline method="post" action=(format!("/ui/releases/{}/withdraw", r.id)) {
                                        (csrf(&s))
                                        button.danger type="submit" { "Withdraw" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        &headers,
        "Releases",
        &s,
        html! { p.hint { "Publish with " code { "palettectl release publish" } "." } },
        live,
    )
}

async fn withdraw(
    State(state): State<AppState>,
    s: UiSession,
    Path(id): Path<i64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    let audit = s.entry(
        "release.withdraw",
        format!("{} (dashboard)", crate::http::v2::release_words(&state, id)),
    );
    match state.withdraw(id, Some(&audit)).await {
        Ok(Some(_)) => Redirect::to("/ui/releases").into_response(),
        Ok(None) => page_error(StatusCode::NOT_FOUND, &format!("no release {id}")),
        Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, &e.public_reason()),
    }
}

fn rollout_row(r: &crate::fleet::rollouts::RolloutStatus) -> Markup {
    html! {
        tr data-rollout=(r.id) {
            td { a href=(format!("/ui/rollouts/{}", r.id)) { (r.id) } }
            td { (r.product) " " (r.version.to_string()) }
            td { (r.selector) }
            td.phase { (r.phase.as_str()) }
            td { (r.wave) " / " (r.waves.len()) }
            td { @for w in &r.wave_progress { span.wave { (w.succeeded) "/" (w.hosts) @if w.failed > 0 { " (" (w.failed) " failed)" } } " " } }
        }
    }
}

async fn rollouts_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
) -> Response {
    let rollouts = state.rollout_list();
    let releases: Vec<_> = state
        .releases()
        .into_iter()
        .filter(|r| r.withdrawn_at.is_none() && r.product != "watchdog")
        .collect();
    let form = html! {
        details.card open[rollouts.is_empty()] {
            summary { "Start a rollout" }
            form #rollout-form method="post" action="/ui/rollouts" {
                (csrf(&s))
                label { "Release " select name="release_id" #rollout-release {
                    @for r in releases.iter().rev() { option value=(r.id) { (r.product) " " (r.version.to_string()) " " (r.platform) @if r.held { " (held)" } } }
                } }
                label { "Selector " input name="selector" placeholder="role=web (empty: every host)"; }
                label { "Waves " input name="waves" value="1,25%,100%"; }
                label { "Soak (seconds) " input name="soak_secs" value="600" inputmode="numeric"; }
                label { "Halt after " input name="halt_after" value="1"; }
                label { "At most at once " input name="max_concurrent" value="0" inputmode="numeric"; }
                button #start-rollout type="submit" { "Start" }
            }
        }
    };
    let live = html! {
        div.scroll {
            table #rollouts {
                thead { tr { th { "Id" } th { "Release" } th { "Selector" } th { "Phase" } th { "Wave" } th { "Progress" } } }
                tbody { @for r in &rollouts { (rollout_row(r)) } }
            }
        }
    };
    page(&headers, "Rollouts", &s, form, live)
}

async fn create_rollout(
    State(state): State<AppState>,
    s: UiSession,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    let get = |k: &str| {
        form.get(k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let Ok(release_id) = get("release_id").parse::<i64>() else {
        return page_error(StatusCode::BAD_REQUEST, "choose a release");
    };
    let new = crate::fleet::rollouts::NewRollout {
        release_id,
        selector: get("selector"),
        waves: get("waves")
            .split(',')
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty())
            .collect(),
        soak_secs: get("soak_secs").parse().unwrap_or(0),
        halt_after: Some(get("halt_after")).filter(|h| !h.is_empty()),
        max_concurrent: get("max_concurrent").parse().unwrap_or(0),
    };
    let audit = s.entry(
        "rollout.create",
        format!("{} (dashboard)", crate::http::v2::rollout_words(&new)),
    );
    match state.create_rollout(new, Some(&audit)).await {
        Ok(r) => Redirect::to(&format!("/ui/rollouts/{}", r.id)).into_response(),
        Err(e) => page_error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn rollout_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let Some(r) = state.rollout(id) else {
        return page_error(StatusCode::NOT_FOUND, &format!("no rollout {id}"));
    };
    let buttons = html! {
        form.inline #rollout-actions method="post" {
            (csrf(&s))
            button #pause formaction=(format!("/ui/rollouts/{id}/pause")) { "Pause" }
            button #resume formaction=(format!("/ui/rollouts/{id}/resume")) { "Resume" }
            button.danger #abort formaction=(format!("/ui/rollouts/{id}/abort")) { "Abort" }
        }
    };
    let live = html! {
        p { "Phase: " strong #rollout-phase { (r.phase.as_str()) } ", wave " span #rollout-wave { (r.wave) } " of " (r.waves.len()) " (" (r.waves.join(", ")) "), soak " (r.soak_secs) " s, halt after " (r.halt_after) }
        @if let Some(why) = &r.reason { p.error #rollout-reason { (why) } }
        div.scroll { table #waves {
            thead { tr { th { "Wave" } th { "Hosts" } th { "Admitted" } th { "Succeeded" } th { "Failed" } } }
            tbody { @for w in &r.wave_progress { tr { td { (w.wave) } td { (w.hosts) } td { (w.admitted) } td { (w.succeeded) } td { (w.failed) } } } }
        } }
        div.scroll { table #rollout-hosts {
            @for h in &r.hosts { tr { td { (h.wave) } td { a href=(format!("/ui/hosts/{}", h.hostname)) { (h.hostname) } } td { @match h.outcome { Some(Outcome::Succeeded) => "succeeded", Some(Outcome::Failed) => "failed", None => { @if h.admitted_at.is_some() { "updating" } @else { "waiting" } } } } td { (h.message) } } }
        } }
    };
    page(
        &headers,
        &format!("Rollout {id}: {} {}", r.product, r.version),
        &s,
        buttons,
        live,
    )
}

async fn rollout_action(
    State(state): State<AppState>,
    s: UiSession,
    Path((id, action)): Path<(i64, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    let action: &'static str = match action.as_str() {
        "pause" => "pause",
        "resume" => "resume",
        "abort" => "abort",
        _ => return page_error(StatusCode::NOT_FOUND, "no such action"),
    };
    let audit = s.entry(
        &format!("rollout.{action}"),
        format!("rollout {id} (dashboard)"),
    );
    match state.rollout_action(id, action, Some(&audit)).await {
        Ok(_) => Redirect::to(&format!("/ui/rollouts/{id}")).into_response(),
        Err(e) => page_error(StatusCode::CONFLICT, &e.to_string()),
    }
}

async fn commands_page(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
) -> Response {
    let rows = state.store.recent_commands(50).await.unwrap_or_default();
    let mut list = Vec::new();
    for c in rows {
        let acks = state.store.acks_for_command(c.id).await.unwrap_or_default();
        list.push((c, acks));
    }
    let form = html! {
        form.card #command-form method="post" action="/ui/commands" {
            (csrf(&s))
            label { "Hosts " input #command-hosts name="hosts" placeholder="web-1, web-2"; }
            label { "or selector " input name="selector" placeholder="role=web"; }
            div.buttons {
                @for k in ["start", "stop", "restart"] {
                    button name="kind" value=(k) id=(format!("send-{k}")) { (k) }
                }
            }
        }
    };
    let live = html! {
        div.scroll { table #commands {
            thead { tr { th { "Id" } th { "Kind" } th { "Issued" } th { "Target" } th { "Results" } } }
            tbody { @for (c, acks) in &list { tr data-command=(c.id) {
                td { (c.id) } td { (c.kind.as_str()) } td { (rfc3339_millis(c.issued_at)) }
                td { @match &c.target { Target::All => "all", Target::Hosts(h) => (h.join(", ")) } }
                td { @for a in acks { span class=(format!("ack {}", if a.outcome == Outcome::Succeeded { "ok" } else { "bad" })) { (a.hostname) ": " (format!("{:?}", a.outcome)) } " " } }
            } } }
        } }
    };
    page(&headers, "Commands", &s, form, live)
}

async fn send_command(
    State(state): State<AppState>,
    s: UiSession,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    let kind = match form.get("kind").map(String::as_str) {
        Some("start") => CommandKind::Start,
        Some("stop") => CommandKind::Stop,
        Some("restart") => CommandKind::Restart,
        _ => return page_error(StatusCode::BAD_REQUEST, "choose start, stop or restart"),
    };
    let mut hosts: Vec<String> = Vec::new();
    for h in form
        .get("hosts")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        match palette_protocol::hostname::validate_hostname(h) {
            Ok(h) => hosts.push(h),
            Err(e) => return page_error(StatusCode::BAD_REQUEST, &format!("{h:?}: {e}")),
        }
    }
    let selector = form.get("selector").map(|s| s.trim()).unwrap_or("");
    if !selector.is_empty() {
        let sel = match Selector::parse(selector) {
            Ok(s) => s,
            Err(e) => return page_error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        hosts.extend(
            state
                .hosts(None)
                .into_iter()
                .filter(|h| sel.matches(&h.hostname, &h.labels))
                .map(|h| h.hostname),
        );
    }
    hosts.sort();
    hosts.dedup();
    if hosts.is_empty() {
        return page_error(
            StatusCode::BAD_REQUEST,
            "name the hosts, or a selector that matches some",
        );
    }
    let target = Target::Hosts(hosts.clone());
    let audit = s.entry(
        "command.create",
        format!(
            "command {{id}} {} to {}, ttl {} s (dashboard)",
            kind.as_str(),
            crate::http::v2::target_words(&target),
            crate::fleet::DEFAULT_COMMAND_TTL_SECS
        ),
    );
    match state
        .issue_command(
            kind,
            target,
            crate::fleet::DEFAULT_COMMAND_TTL_SECS,
            Some(&audit),
        )
        .await
    {
        Ok(_) => Redirect::to("/ui/commands").into_response(),
        Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, &e.public_reason()),
    }
}
