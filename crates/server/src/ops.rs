//! Operating the server: `/healthz` (the process answers), `/readyz` (the
//! store takes a committed write now) and `/metrics` (Prometheus text,
//! operator credential).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::{role, Role};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Response {
    crate::v1::text(StatusCode::OK, "ok\n")
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => crate::v1::text(StatusCode::OK, "ready\n"),
        Err(e) => crate::v1::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", e.public_reason()),
        ),
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if role(&state, &headers) < Role::Operator {
        state.metrics.auth_failures.increment(1);
        return crate::v1::text(StatusCode::UNAUTHORIZED, "operator credential required\n");
    }
    state.refresh_gauges();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
