//! The legacy Insight Server v1 API, as `../shared/reference/legacy-v1-protocol.md`
//! describes it, with the legacy defects fixed (credentials on writes,
//! validated host names, a durable inventory, no lost operator commands).

// Handlers return a finished `Response` as their error: it is the answer.
#![allow(clippy::result_large_err)]

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use palette_protocol::v1;
use palette_protocol::v2::{CommandKind, ConfigSource, Target};
use palette_protocol::{validate_hostname, Version};
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::http::auth::{credential_key, role, Role};
use crate::http::body::BodyError;
use crate::http::AppState;
use crate::store::StoreError;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// A v1 answer: a status and a plain-text line.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT)], body.into()).into_response()
}

fn body_with_type(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn not_authorized() -> Response {
    text(StatusCode::UNAUTHORIZED, "Not authorized\n")
}

fn require(state: &AppState, headers: &HeaderMap, min: Role) -> Result<Role, Response> {
    let r = role(state, headers);
    if r < min {
        state.metrics.auth_failures.increment(1);
    }
    if r >= min {
        Ok(r)
    } else if min == Role::Operator && r == Role::Agent {
        Err(text(
            StatusCode::FORBIDDEN,
            "Operator credential required\n",
        ))
    } else {
        Err(not_authorized())
    }
}

/// Failed authentications on the v1 API count against the caller's address
/// like on v2 (`ratelimit`): a blocked address presenting a credential is
/// answered 429 with `Retry-After` before anything else; a 401 to a
/// presented credential is a failure. Requests without one (anonymous
/// config uploads, `ping`) are not counted.
pub async fn auth_limit_layer(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = crate::http::auth::presented_token(req.headers());
    // Limit what fails, not what succeeds: a credential that verifies is
    // served even from a blocked address (behind a load balancer, the
    // whole fleet may share one).
    let verified = presented.is_some_and(|t| state.credential(t).is_some());
    let presented = presented.is_some() && !verified;
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let (true, Some(ip)) = (presented, ip) else {
        return next.run(req).await;
    };
    if let Some(secs) = state.auth_limiter.blocked(ip) {
        let mut res = text(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed authentications from {ip}; retry in {secs} s\n"),
        );
        res.headers_mut().insert(header::RETRY_AFTER, secs.into());
        return res;
    }
    let res = next.run(req).await;
    if res.status() == StatusCode::UNAUTHORIZED && state.auth_limiter.failed(ip) {
        tracing::warn!(
            source = %ip,
            failures = state.http.auth_limit.failures,
            block_secs = state.http.auth_limit.block.as_secs(),
            "too many failed authentications (v1): this address is refused for a while"
        );
    }
    res
}

/// A host that enrolled has its own token, which the v1 API does not take:
/// the license key may no longer act for it, here or on v2.
fn enrolled_refusal(state: &AppState, host: &str) -> Response {
    state.metrics.auth_failures.increment(1);
    tracing::warn!(
        host,
        "v1 request for an enrolled host refused: only its host token may act for it (v2 API)"
    );
    text(
        StatusCode::FORBIDDEN,
        format!("{host} has enrolled: only its own host token may act for it, on the v2 API\n"),
    )
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/ping", get(ping))
        .route("/api/v1/license", get(license))
        .route("/api/v1/agent/version", get(agent_version))
        .route("/api/v1/agent", get(agent_download))
        .route("/api/v1/command", get(get_command).put(put_command))
        .route("/api/v1/config", get(get_config).put(put_config))
        .route("/api/v1/agents", get(agents))
        .route("/commands/new", any(put_command))
        .route("/commands/recent", any(get_command))
        .route(
            "/updates/products/agent/{version}/{file}",
            get(versioned_download),
        )
}

async fn ping() -> Response {
    text(StatusCode::OK, "PONG\n")
}

async fn license(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require(&state, &headers, Role::Agent) {
        return r;
    }
    body_with_type(StatusCode::OK, TEXT, v1::encode(&v1::License::unlimited()))
}

#[derive(Deserialize)]
struct PlatformQuery {
    platform: Option<String>,
}

/// The legacy offer (the newest MSI), or with `platform=P` (our own
/// watchdog in v1 mode) the newest agent release for that platform.
fn v1_offer(
    state: &AppState,
    q: &PlatformQuery,
) -> Option<(String, palette_protocol::v2::Release)> {
    match q.platform.as_deref() {
        Some(p) => state.v1_offer_for(p),
        None => state.v1_latest(),
    }
}

async fn agent_version(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<PlatformQuery>,
) -> Response {
    if let Err(r) = require(&state, &headers, Role::Agent) {
        return r;
    }
    match v1_offer(&state, &q) {
        Some((body, _)) => body_with_type(StatusCode::OK, TEXT, body),
        None => text(StatusCode::NOT_FOUND, "No latest version found yet\n"),
    }
}

pub async fn serve_artifact(state: &AppState, sha256: &str, req: Request) -> Response {
    let path = match state
        .artifacts
        .local_file(sha256, state.settings.max_artifact_bytes)
        .await
    {
        Ok(p) => p,
        Err(e) => return artifact_unavailable(e),
    };
    let svc = ServeFile::new_with_mime(path, &"application/octet-stream".parse().unwrap());
    match svc.oneshot(req).await {
        Ok(res) => {
            if res.status().is_success() {
                if let Some(n) = res
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                {
                    state.metrics.artifact_bytes.increment(n);
                }
            }
            res.map(Body::new)
        }
        Err(e) => match e {},
    }
}

/// A download whose artifact cannot be had: 503 (retry) while storage is
/// unreachable, 502 when what it holds is missing or wrong; logged either
/// way, since a release names it.
fn artifact_unavailable(e: crate::artifacts::FetchError) -> Response {
    let chain = crate::chain::error_chain(&e);
    if e.is_transient() {
        tracing::warn!(error = %chain, "artifact download failed; the client retries");
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the artifact storage is unavailable; retry later\n",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        r
    } else {
        tracing::error!(error = %chain, "a release's artifact cannot be served");
        text(StatusCode::BAD_GATEWAY, format!("{e}\n"))
    }
}

async fn agent_download(
    State(state): State<AppState>,
    Query(q): Query<PlatformQuery>,
    req: Request,
) -> Response {
    if let Err(r) = require(&state, req.headers(), Role::Agent) {
        return r;
    }
    match v1_offer(&state, &q) {
        Some((_, release)) => serve_artifact(&state, &release.sha256, req).await,
        None => text(StatusCode::NOT_FOUND, "No latest version found yet\n"),
    }
}

async fn versioned_download(
    State(state): State<AppState>,
    Path((version, _file)): Path<(String, String)>,
    req: Request,
) -> Response {
    if let Err(r) = require(&state, req.headers(), Role::Agent) {
        return r;
    }
    let release = version
        .parse::<Version>()
        .ok()
        .and_then(|v| state.msi_release(&v));
    match release {
        Some(r) => serve_artifact(&state, &r.sha256, req).await,
        None => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

#[derive(Deserialize)]
struct HostQuery {
    hostname: Option<String>,
}

/// The host name of a query, validated (the middleware already refused an
/// invalid one with 400).
fn query_host(q: &HostQuery) -> Option<String> {
    q.hostname
        .as_deref()
        .and_then(|h| validate_hostname(h).ok())
}

async fn get_command(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HostQuery>,
) -> Response {
    if let Err(r) = require(&state, &headers, Role::Agent) {
        return r;
    }
    match state.v1_command_for(query_host(&q).as_deref()) {
        Some(cmd) => body_with_type(StatusCode::OK, JSON, v1::encode(&cmd)),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// Reads the form fields of a urlencoded or multipart body, within the
/// body timeout.
async fn form_fields(
    state: &AppState,
    req: Request,
    file_field: Option<&str>,
) -> Result<(Vec<(String, String)>, Option<Vec<u8>>), Response> {
    let within = state.http.limits.body_timeout;
    tokio::time::timeout(within, form_fields_inner(state, req, file_field))
        .await
        .unwrap_or_else(|_| {
            Err(text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "The request body did not arrive within {} s\n",
                    within.as_secs()
                ),
            ))
        })
}

async fn form_fields_inner(
    state: &AppState,
    req: Request,
    file_field: Option<&str>,
) -> Result<(Vec<(String, String)>, Option<Vec<u8>>), Response> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut fields = Vec::new();
    let mut file = None;
    if is_multipart {
        let mut mp = Multipart::from_request(req, state)
            .await
            .map_err(|e| text(StatusCode::BAD_REQUEST, format!("{}\n", e.body_text())))?;
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let status = e.status();
                    let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                        format!(
                            "Upload is larger than {} bytes\n",
                            state.settings.max_config_bytes
                        )
                    } else {
                        format!("Malformed multipart body: {}\n", e.body_text())
                    };
                    return Err(text(status, msg));
                }
            };
            let name = field.name().unwrap_or_default().to_string();
            let is_file = Some(name.as_str()) == file_field;
            let cap = if is_file {
                state.settings.max_config_bytes
            } else {
                64 * 1024
            };
            let data = crate::http::body::read_limited(field, cap)
                .await
                .map_err(|e| match e {
                    BodyError::TooLarge => text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("Upload is larger than {cap} bytes\n"),
                    ),
                    BodyError::Broken(e) => text(
                        e.status(),
                        format!("Malformed multipart body: {}\n", e.body_text()),
                    ),
                })?;
            if is_file {
                file = Some(data.to_vec());
            } else {
                fields.push((name, String::from_utf8_lossy(&data).into_owned()));
            }
        }
    } else {
        let limit = state.settings.max_json_bytes;
        let bytes = crate::http::body::read_limited(req.into_body().into_data_stream(), limit)
            .await
            .map_err(|_| text(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large\n"))?;
        fields = form_urlencoded::parse(&bytes).into_owned().collect();
    }
    Ok((fields, file))
}

async fn put_command(State(state): State<AppState>, req: Request) -> Response {
    if let Err(r) = require(&state, req.headers(), Role::Operator) {
        return r;
    }
    let actor = Actor::of(&state, &req);
    let (fields, _) = match form_fields(&state, req, None).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some((_, word)) = fields.iter().find(|(k, _)| k == "command") else {
        return text(StatusCode::BAD_REQUEST, "No 'command' parameter given\n");
    };
    let Some(kind) = CommandKind::parse(word).filter(|k| k.is_legacy()) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "Unknown command {word:?}: expected one of start, stop, GET-CONFIG, PUT-CONFIG\n"
            ),
        );
    };
    let ttl = crate::fleet::LEGACY_FRESHNESS_MS as u64 / 1000;
    let audit = actor.entry(
        "command.create",
        format!(
            "command {{id}} {} to every host, ttl {ttl} s (v1)",
            kind.as_str()
        ),
    );
    match state
        .issue_command(kind, Target::All, ttl, Some(&audit))
        .await
    {
        Ok(row) => {
            tracing::info!(
                id = row.id,
                command = kind.as_str(),
                "legacy command issued to all hosts"
            );
            let cmd = v1::Command {
                ts: palette_protocol::timefmt::rfc3339_secs(row.legacy_ts),
                command: kind.as_str().into(),
            };
            body_with_type(StatusCode::OK, JSON, v1::encode(&cmd))
        }
        Err(e) => store_failed(e),
    }
}

/// A store failure as a v1 answer: 507 for a full disk, 503 when busy,
/// 500 otherwise; outages are logged once per episode by the store.
pub fn store_failed(e: StoreError) -> Response {
    if !e.is_outage() {
        tracing::error!(error = %crate::chain::error_chain(&e), "request failed");
    }
    let mut res = text(
        crate::http::error::store_status(&e),
        format!("{}\n", e.public_reason()),
    );
    if e.is_outage() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    res
}

async fn get_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HostQuery>,
) -> Response {
    if let Err(r) = require(&state, &headers, Role::Agent) {
        return r;
    }
    let Some(host) = query_host(&q) else {
        return text(StatusCode::BAD_REQUEST, "No 'hostname' parameter given\n");
    };
    // Only what an operator set: a config a host reported (or anyone
    // uploaded without a credential) is never handed out by GET-CONFIG.
    let found = state
        .latest_config(&host, Some(ConfigSource::Desired))
        .await;
    match found {
        Ok(Some((rev, body))) => {
            let mut res = (StatusCode::OK, body).into_response();
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT));
            res.headers_mut()
                .insert("x-config-revision", rev.revision.into());
            res
        }
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            format!("No config set for {host} by an operator\n"),
        ),
        Err(e) => store_failed(e),
    }
}

async fn put_config(State(state): State<AppState>, req: Request) -> Response {
    let role = role(&state, req.headers());
    let actor = Actor::of(&state, &req);
    let query_host = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "hostname")
            .map(|(_, v)| v.into_owned())
    });
    // No body is read for a caller who could not store it: without a
    // credential, only a host whose config the server asked for may upload
    // (its name is in the query or in the body, so: any such host).
    if role == Role::Anonymous {
        let expected = match &query_host {
            Some(h) => state.config_upload_expected(h),
            None => state.any_config_upload_expected(),
        };
        if !expected {
            return not_authorized();
        }
    }
    let (fields, file) = match form_fields(&state, req, Some("uploadfile")).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let host = query_host.or_else(|| {
        fields
            .iter()
            .find(|(k, _)| k == "hostname")
            .map(|(_, v)| v.clone())
    });
    let Some(host) = host else {
        return text(StatusCode::BAD_REQUEST, "No 'hostname' parameter given\n");
    };
    let host = match validate_hostname(&host) {
        Ok(h) => h,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid hostname: {e}\n")),
    };
    let Some(file) = file else {
        return text(StatusCode::BAD_REQUEST, "No 'uploadfile' file part given\n");
    };
    if file.len() > state.settings.max_config_bytes {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Upload is larger than {} bytes\n",
                state.settings.max_config_bytes
            ),
        );
    }
    if role != Role::Operator && state.is_enrolled(&host) {
        return enrolled_refusal(&state, &host);
    }
    let source = if role == Role::Operator {
        ConfigSource::Desired
    } else if state.config_upload_expected(&host) {
        ConfigSource::Reported
    } else if role == Role::Anonymous {
        return not_authorized();
    } else {
        return text(
            StatusCode::FORBIDDEN,
            format!("No config was requested from {host}; an operator credential is required\n"),
        );
    };
    let audit = (source == ConfigSource::Desired).then(|| {
        actor.entry(
            "config.push",
            format!("host {host} revision {{id}} ({} bytes) (v1)", file.len()),
        )
    });
    match state
        .store_config(&host, source, &file, audit.as_ref())
        .await
    {
        Ok(_) => text(
            StatusCode::OK,
            format!(
                "Successfully stored Config.yml for {host}. Written bytes: {}\n",
                file.len()
            ),
        ),
        Err(e) => store_failed(e),
    }
}

async fn agents(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require(&state, &headers, Role::Operator) {
        return r;
    }
    let map: serde_json::Map<String, serde_json::Value> = state
        .legacy_agents()
        .into_iter()
        .map(|(h, t)| (h, serde_json::Value::String(t)))
        .collect();
    body_with_type(StatusCode::OK, JSON, v1::encode(&map))
}

/// Any request carrying a `hostname` query parameter: an invalid one is
/// refused with 400 before any handler runs; a valid one from a known
/// credential counts as a heartbeat.
pub async fn heartbeat_layer(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(q) = req.uri().query() {
        if let Some((_, host)) = form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "hostname")
        {
            match validate_hostname(&host) {
                Ok(h) => {
                    let r = role(&state, req.headers());
                    if r == Role::Agent && state.is_enrolled(&h) {
                        return enrolled_refusal(&state, &h);
                    }
                    if r >= Role::Agent && req.method() != Method::OPTIONS {
                        if let (Role::Agent, Some(key)) = (r, credential_key(req.headers())) {
                            if let Err(e) = state.admit_host(&h, &key) {
                                let mut res = text(
                                    StatusCode::TOO_MANY_REQUESTS,
                                    format!("Too many new host names for this credential; retry in {} s\n", e.retry_after_secs),
                                );
                                res.headers_mut()
                                    .insert(header::RETRY_AFTER, e.retry_after_secs.into());
                                return res;
                            }
                        }
                        state.legacy_heartbeat(&h);
                    }
                }
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid hostname: {e}\n")),
            }
        }
    }
    next.run(req).await
}

/// Who made a legacy write, for the audit log: the credential's label and
/// the caller's address, taken before the body is read.
struct Actor {
    label: String,
    source: Option<String>,
}

impl Actor {
    fn of(state: &AppState, req: &Request) -> Actor {
        Actor {
            label: crate::http::auth::presented_token(req.headers())
                .and_then(|t| state.credential(t))
                .map(|c| c.label.clone())
                .unwrap_or_default(),
            source: req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
        }
    }

    fn entry(&self, action: &str, detail: String) -> crate::store::AuditEntry {
        crate::store::AuditEntry::now(&self.label, self.source.as_deref(), action, detail)
    }
}
