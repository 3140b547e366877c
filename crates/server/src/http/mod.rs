//! The HTTP edge, and the only part of the server that knows axum: the
//! router (legacy `v1`, our `v2`, the dashboard `ui`, `ops`), the
//! extractors and credential checks (`auth`), errors to status codes
//! (`error`), client addresses behind proxies (`client_addr`), the
//! failed-authentication limiter (`ratelimit`), connection and body limits
//! (`conn`, `body`), and serving (`serve`). A handler parses, authorises,
//! makes one call into the fleet, and renders.
//!
//! Must not: keep fleet state, decide who is offered what, or write to the
//! store except through the fleet.

pub mod auth;
pub mod body;
pub mod client_addr;
pub mod conn;
pub mod error;
mod ops;
pub mod ratelimit;
pub mod serve;
pub mod ui;
pub mod v1;
pub mod v2;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::{header, HeaderValue, StatusCode};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::fleet::Fleet;

/// What the HTTP edge runs with, beside the fleet's own settings.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// Limits on connections and request bodies (see `conn`).
    pub limits: conn::Limits,
    /// Failed authentications allowed per source address.
    pub auth_limit: ratelimit::AuthLimit,
    /// Whether the server speaks TLS (dashboard cookies are `Secure`, HSTS).
    pub tls: bool,
    /// Proxies whose forwarded client address is believed (`client_addr`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The handlers' state: the fleet (the domain) and the edge's own parts.
/// Cheap to clone. A handler may take `State<Fleet>` alone (`FromRef`).
#[derive(Clone)]
pub struct AppState(Arc<Edge>);

/// The edge's own parts, beside the fleet.
pub struct Edge {
    pub fleet: Fleet,
    pub http: HttpSettings,
    /// Failed authentications per source address.
    pub auth_limiter: ratelimit::AuthLimiter,
}

impl AppState {
    pub fn new(fleet: Fleet, http: HttpSettings) -> AppState {
        AppState(Arc::new(Edge {
            auth_limiter: ratelimit::AuthLimiter::new(http.auth_limit),
            fleet,
            http,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Edge;
    fn deref(&self) -> &Edge {
        &self.0
    }
}

/// The fleet's methods and views are called on the state directly
/// (`state.publish(..)`): the edge adds no use case of its own.
impl std::ops::Deref for Edge {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

impl FromRef<AppState> for Fleet {
    fn from_ref(s: &AppState) -> Fleet {
        s.fleet.clone()
    }
}

/// Builds the whole HTTP application.
pub fn app(state: AppState) -> Router {
    // Multipart uploads: the file part is capped by `max_config_bytes` as it
    // is read; the whole body may run `DRAIN` over so a 413 reaches the client.
    let config_limit = state.settings.max_config_bytes + 64 * 1024 + body::DRAIN;
    let no_cache = [
        (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
        (header::PRAGMA, "no-cache"),
        (header::EXPIRES, "0"),
    ];
    let mut router = Router::new()
        .merge(v1::router().layer(axum::middleware::from_fn_with_state(
            state.clone(),
            v1::auth_limit_layer,
        )))
        .merge(v2::router().layer(DefaultBodyLimit::disable()))
        .merge(ops::router())
        .merge(ui::router())
        .fallback(|| async { v1::text(StatusCode::NOT_FOUND, "404 page not found\n") })
        .layer(DefaultBodyLimit::max(config_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            v1::heartbeat_layer,
        ));
    for (name, value) in no_cache {
        router = router.layer(SetResponseHeaderLayer::overriding(
            name,
            HeaderValue::from_static(value),
        ));
    }
    // Every answer: no content sniffing; under TLS, browsers keep to
    // HTTPS for this server (HSTS).
    router = router.layer(SetResponseHeaderLayer::if_not_present(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ));
    if state.http.tls {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ));
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client_addr::layer,
        ))
        .with_state(state)
}

/// Under every request body: a deadline (the body timeout and a second of
/// slack, behind the handlers' own 408; artifact uploads have their stall
/// timeout instead), and, for a caller whose credential does not verify,
/// the mark that lets the connection layer evict it first at the cap.
async fn body_guard(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let verified =
        auth::presented_token(req.headers()).is_some_and(|t| state.credential(t).is_some());
    let mark = if verified {
        None
    } else {
        req.extensions()
            .get::<conn::ConnSlot>()
            .map(conn::ConnSlot::unverified_body)
    };
    let upload = req.method() == axum::http::Method::POST && req.uri().path() == "/api/v2/releases";
    let within =
        (!upload).then(|| state.http.limits.body_timeout + std::time::Duration::from_secs(1));
    let req = req.map(|b| axum::body::Body::new(body::Deadline::new(b, within, mark)));
    next.run(req).await
}
