//! Operating the server: `/healthz` (the process answers), `/readyz` (the
//! store takes a committed write now) and `/metrics` (Prometheus text,
//! operator credential).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::http::auth::{role, Role};
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// A small read-only page saying what this is and where to look.
async fn index() -> Response {
    let body = concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>palette-server</title></head><body>",
        "<h1>palette-server ",
        env!("CARGO_PKG_VERSION"),
        "</h1><p>The control point of a palette-updater fleet.</p><ul>",
        "<li>API: <code>/api/v2/…</code> (operators and watchdogs; see <code>docs/api-v2.md</code> in the source) ",
        "and the legacy Insight Server <code>/api/v1/…</code></li>",
        "<li><a href=\"/healthz\">/healthz</a> — alive; <a href=\"/readyz\">/readyz</a> — the store takes writes</li>",
        "<li><code>/metrics</code> — Prometheus text (operator token)</li>",
        "<li><a href=\"/ui/\">/ui/</a> — the dashboard (log in with an operator token)</li>",
        "<li>Operate the fleet with <code>palettectl</code>.</li>",
        "</ul></body></html>\n"
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn healthz() -> Response {
    crate::http::v1::text(StatusCode::OK, "ok\n")
}

/// How long `/readyz` waits for the store's answer: a load balancer's
/// health check must hear "not ready" while it still waits, not a
/// connection timeout (a stopped PostgreSQL takes its connect timeout).
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(READY_WITHIN, state.store_ready()).await {
        Ok(Ok(())) => crate::http::v1::text(StatusCode::OK, "ready\n"),
        Ok(Err(e)) => crate::http::v1::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", e.public_reason()),
        ),
        Err(_) => crate::http::v1::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the database did not answer within {} s\n",
                READY_WITHIN.as_secs()
            ),
        ),
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if role(&state, &headers) < Role::Operator {
        state.metrics.auth_failures.increment(1);
        return crate::http::v1::text(StatusCode::UNAUTHORIZED, "operator credential required\n");
    }
    state.refresh_gauges();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
