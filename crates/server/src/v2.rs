//! Our v2 API (JSON under `/api/v2`, described in `docs/api-v2.md`):
//! check-in long poll, targeted commands with acknowledgements, releases,
//! config revisions and the host inventory.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use palette_protocol::timefmt::rfc3339_millis;
use palette_protocol::v2::{
    ApiError, CheckinRequest, CheckinResponse, CommandStatus, ConfigRevision, ConfigSource,
    NewCommand, Release, ReleaseKind, Target,
};
use palette_protocol::{validate_hostname, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::artifacts::IngestError;
use crate::auth::{role, Role};
use crate::body::BodyError;
use crate::state::{command_wire, now_ms, AppState, DEFAULT_COMMAND_TTL_SECS};
use crate::store::{NewRelease, StoreError};

/// A v2 error: a status and a one-line reason as `{"error": "..."}`.
pub struct V2Error(pub StatusCode, pub String);

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<StoreError> for V2Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => {
                V2Error(StatusCode::CONFLICT, format!("{what} already exists"))
            }
            other => {
                tracing::error!(error = %other, source = ?std::error::Error::source(&other), "store failed");
                V2Error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the server log".into(),
                )
            }
        }
    }
}

fn bad(msg: impl Into<String>) -> V2Error {
    V2Error(StatusCode::BAD_REQUEST, msg.into())
}

type V2Result<T> = Result<T, V2Error>;

fn require(state: &AppState, headers: &HeaderMap, min: Role) -> V2Result<Role> {
    let r = role(state, headers);
    if r >= min {
        Ok(r)
    } else if r == Role::Anonymous {
        Err(V2Error(
            StatusCode::UNAUTHORIZED,
            "missing or unknown token".into(),
        ))
    } else {
        Err(V2Error(
            StatusCode::FORBIDDEN,
            "an operator token is required".into(),
        ))
    }
}

fn host_param(h: &str) -> V2Result<String> {
    validate_hostname(h).map_err(|e| bad(format!("invalid hostname: {e}")))
}

/// Parses a JSON body with a one-line reason on failure.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> V2Result<T> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

async fn read_body(req: Request, limit: usize) -> V2Result<bytes::Bytes> {
    crate::body::read_limited(req.into_body().into_data_stream(), limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => V2Error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {limit} bytes"),
            ),
            BodyError::Broken(_) => bad("the request body could not be read"),
        })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v2/checkin", post(checkin))
        .route("/api/v2/commands", post(create_command).get(list_commands))
        .route("/api/v2/commands/{id}", get(get_command))
        .route("/api/v2/releases", post(publish_release).get(list_releases))
        .route("/api/v2/artifacts/{sha256}", get(download_artifact))
        .route("/api/v2/hosts", get(list_hosts))
        .route("/api/v2/hosts/{host}", get(get_host))
        .route(
            "/api/v2/hosts/{host}/configs",
            get(config_history).post(push_config),
        )
        .route("/api/v2/hosts/{host}/configs/reported", post(report_config))
        .route("/api/v2/hosts/{host}/configs/latest", get(latest_config))
        .route(
            "/api/v2/hosts/{host}/configs/{revision}",
            get(config_revision),
        )
        .route("/api/v2/agent-tokens", post(add_agent_token))
        .route("/api/v2/operator-tokens", post(add_operator_token))
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<u64>,
}

async fn checkin(
    State(state): State<AppState>,
    q: Result<Query<WaitQuery>, QueryRejection>,
    req: Request,
) -> V2Result<Json<CheckinResponse>> {
    require(&state, req.headers(), Role::Agent)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let body = read_body(req, state.settings.max_json_bytes).await?;
    let mut ci: CheckinRequest = parse_json(&body)?;
    let host = host_param(&ci.host.hostname)?;
    ci.host.hostname = host.clone();
    let now = now_ms();
    for mut ack in ci.results.drain(..) {
        ack.hostname = host.clone();
        if state.store.command(ack.id).await?.is_none() {
            tracing::warn!(
                host,
                id = ack.id,
                "acknowledgement of an unknown command ignored"
            );
            continue;
        }
        if state.store.record_ack(&ack, now).await? {
            tracing::info!(host, id = ack.id, outcome = ?ack.outcome, message = ack.message, "command acknowledged");
        }
    }
    state.record_report(&ci.host);
    let report_json = serde_json::to_string(&ci.host).expect("report serialises");
    state.store.save_report(&host, &report_json, now).await?;

    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(state.settings.max_wait_secs));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = state.subscribe();
    loop {
        changes.borrow_and_update();
        let answer = answer_for(&state, &host, &ci).await?;
        let news = !answer.commands.is_empty()
            || answer.release.as_ref().map(|r| r.id) != ci.seen_release
            || answer.config_revision != ci.seen_config;
        if news {
            return Ok(Json(answer));
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(Json(answer));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(answer)),
        }
    }
}

async fn answer_for(
    state: &AppState,
    host: &str,
    ci: &CheckinRequest,
) -> V2Result<CheckinResponse> {
    let commands = state.pending_for(host).await?;
    let release = state.release_for(&ci.host.product, &ci.host.platform);
    let config_revision = state
        .store
        .latest_config(host, Some(ConfigSource::Desired))
        .await?
        .map(|(rev, _)| rev.revision);
    Ok(CheckinResponse {
        commands,
        release,
        config_revision,
    })
}

async fn create_command(
    State(state): State<AppState>,
    req: Request,
) -> V2Result<(StatusCode, Json<CommandStatus>)> {
    require(&state, req.headers(), Role::Operator)?;
    let body = read_body(req, state.settings.max_json_bytes).await?;
    let new: NewCommand = parse_json(&body)?;
    if new.kind == palette_protocol::v2::CommandKind::Unknown {
        return Err(bad(
            "kind must be one of start, stop, restart, GET-CONFIG, PUT-CONFIG",
        ));
    }
    let target = match new.target {
        Target::All => Target::All,
        Target::Hosts(hosts) => {
            if hosts.is_empty() {
                return Err(bad("target hosts list is empty"));
            }
            let mut valid = hosts
                .iter()
                .map(|h| host_param(h))
                .collect::<V2Result<Vec<_>>>()?;
            valid.sort();
            valid.dedup();
            Target::Hosts(valid)
        }
    };
    let ttl = new.ttl_secs.unwrap_or(DEFAULT_COMMAND_TTL_SECS);
    if ttl == 0 || ttl > 7 * 24 * 3600 {
        return Err(bad("ttl_secs must be between 1 and 604800"));
    }
    let row = state.issue_command(new.kind, target.clone(), ttl).await?;
    tracing::info!(
        id = row.id,
        kind = new.kind.as_str(),
        ?target,
        ttl,
        "command issued"
    );
    Ok((
        StatusCode::CREATED,
        Json(CommandStatus {
            command: command_wire(&row),
            target,
            results: Vec::new(),
        }),
    ))
}

async fn list_commands(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> V2Result<Json<Vec<CommandStatus>>> {
    require(&state, &headers, Role::Operator)?;
    let rows = state.store.recent_commands(100).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let results = state.store.acks_for_command(row.id).await?;
        out.push(CommandStatus {
            command: command_wire(&row),
            target: row.target.clone(),
            results,
        });
    }
    Ok(Json(out))
}

async fn get_command(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> V2Result<Json<CommandStatus>> {
    require(&state, &headers, Role::Operator)?;
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("command id {id:?} is not a number")))?;
    let row = state
        .store
        .command(id)
        .await?
        .ok_or_else(|| V2Error(StatusCode::NOT_FOUND, format!("no command {id}")))?;
    let results = state.store.acks_for_command(id).await?;
    Ok(Json(CommandStatus {
        command: command_wire(&row),
        target: row.target.clone(),
        results,
    }))
}

#[derive(Deserialize)]
struct PublishQuery {
    product: Option<String>,
    version: String,
    platform: String,
    kind: String,
    sha256: Option<String>,
    signature: Option<String>,
}

fn plain_name(what: &str, s: &str) -> V2Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{what} {s:?} must be 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

async fn publish_release(
    State(state): State<AppState>,
    q: Result<Query<PublishQuery>, QueryRejection>,
    req: Request,
) -> V2Result<(StatusCode, Json<Release>)> {
    require(&state, req.headers(), Role::Operator)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let product = q.product.unwrap_or_else(|| "agent".into());
    plain_name("product", &product)?;
    plain_name("platform", &q.platform)?;
    let version: Version = q.version.parse().map_err(|e| bad(format!("{e}")))?;
    let kind = ReleaseKind::parse(&q.kind).ok_or_else(|| {
        bad(format!(
            "kind {:?} must be one of archive, msi, installer",
            q.kind
        ))
    })?;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > state.settings.max_artifact_bytes {
            return Err(V2Error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "artifact is larger than the limit of {} bytes",
                    state.settings.max_artifact_bytes
                ),
            ));
        }
    }
    let stream = req.into_body().into_data_stream();
    let ingested = state
        .artifacts
        .ingest(stream, state.settings.max_artifact_bytes, q.sha256.as_deref())
        .await
        .map_err(|e| match e {
            IngestError::TooLarge { .. } => V2Error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            IngestError::Empty | IngestError::ShaMismatch { .. } | IngestError::Body(_) => bad(e.to_string()),
            IngestError::Io { .. } => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "artifact write failed");
                V2Error(StatusCode::INTERNAL_SERVER_ERROR, "could not store the artifact; see the server log".into())
            }
        })?;
    let release = state
        .add_release(NewRelease {
            product,
            version,
            platform: q.platform,
            kind,
            sha256: ingested.sha256,
            md5: ingested.md5,
            size: ingested.size,
            signature: q.signature,
            created_at: now_ms(),
        })
        .await?;
    tracing::info!(id = release.id, product = release.product, version = %release.version, platform = release.platform, kind = release.kind.as_str(), size = release.size, "release published");
    Ok((StatusCode::CREATED, Json(release)))
}

async fn list_releases(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> V2Result<Json<Vec<Release>>> {
    require(&state, &headers, Role::Agent)?;
    let mut all = state.releases();
    all.sort_by(|a, b| b.version.cmp(&a.version).then(b.id.cmp(&a.id)));
    Ok(Json(all))
}

async fn download_artifact(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    req: Request,
) -> Response {
    if let Err(e) = require(&state, req.headers(), Role::Agent) {
        return e.into_response();
    }
    if state.artifacts.path_for(&sha256).is_none() {
        return bad("artifact id must be 64 lower-case hex digits").into_response();
    }
    if !state.has_artifact(&sha256) {
        return V2Error(StatusCode::NOT_FOUND, format!("no artifact {sha256}")).into_response();
    }
    crate::v1::serve_artifact(&state, &sha256, req).await
}

async fn list_hosts(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> V2Result<Json<Vec<palette_protocol::v2::HostInfo>>> {
    require(&state, &headers, Role::Operator)?;
    Ok(Json(state.hosts(None)))
}

async fn get_host(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> V2Result<Json<palette_protocol::v2::HostInfo>> {
    require(&state, &headers, Role::Operator)?;
    let host = host_param(&host)?;
    state
        .hosts(None)
        .into_iter()
        .find(|h| h.hostname == host)
        .map(Json)
        .ok_or_else(|| V2Error(StatusCode::NOT_FOUND, format!("no host {host}")))
}

async fn config_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> V2Result<Json<Vec<ConfigRevision>>> {
    require(&state, &headers, Role::Operator)?;
    let host = host_param(&host)?;
    Ok(Json(state.store.config_history(&host).await?))
}

fn config_response(rev: ConfigRevision, body: Vec<u8>) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, "application/yaml".parse().unwrap());
    h.insert("x-config-revision", rev.revision.into());
    h.insert("x-config-source", rev.source.as_str().parse().unwrap());
    res
}

async fn config_revision(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((host, revision)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    require(&state, &headers, Role::Agent)?;
    let host = host_param(&host)?;
    let revision: i64 = revision
        .parse()
        .map_err(|_| bad(format!("revision {revision:?} is not a number")))?;
    let (rev, body) = state
        .store
        .config_revision(&host, revision)
        .await?
        .ok_or_else(|| {
            V2Error(
                StatusCode::NOT_FOUND,
                format!("no config revision {revision} for {host}"),
            )
        })?;
    Ok(config_response(rev, body))
}

#[derive(Deserialize)]
struct SourceQuery {
    source: Option<String>,
}

async fn latest_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(host): Path<String>,
    q: Result<Query<SourceQuery>, QueryRejection>,
) -> Result<Response, V2Error> {
    require(&state, &headers, Role::Agent)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let host = host_param(&host)?;
    let source = match q.source.as_deref() {
        None => None,
        Some("desired") => Some(ConfigSource::Desired),
        Some("reported") => Some(ConfigSource::Reported),
        Some(other) => return Err(bad(format!("source {other:?} must be desired or reported"))),
    };
    let (rev, body) = state
        .store
        .latest_config(&host, source)
        .await?
        .ok_or_else(|| V2Error(StatusCode::NOT_FOUND, format!("no config for {host}")))?;
    Ok(config_response(rev, body))
}

#[derive(Deserialize)]
struct PushQuery {
    /// Also send the host a GET-CONFIG command (default true).
    apply: Option<bool>,
}

#[derive(Serialize)]
struct PushAnswer {
    revision: ConfigRevision,
    command: Option<palette_protocol::v2::Command>,
}

async fn push_config(
    State(state): State<AppState>,
    Path(host): Path<String>,
    q: Result<Query<PushQuery>, QueryRejection>,
    req: Request,
) -> V2Result<(StatusCode, Json<PushAnswer>)> {
    require(&state, req.headers(), Role::Operator)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let host = host_param(&host)?;
    let body = read_body(req, state.settings.max_config_bytes).await?;
    if body.is_empty() {
        return Err(bad("config body is empty"));
    }
    let revision = state
        .store_config(&host, ConfigSource::Desired, &body)
        .await?;
    let command = if q.apply.unwrap_or(true) {
        let row = state
            .issue_command(
                palette_protocol::v2::CommandKind::GetConfig,
                Target::Hosts(vec![host.clone()]),
                DEFAULT_COMMAND_TTL_SECS,
            )
            .await?;
        Some(command_wire(&row))
    } else {
        None
    };
    Ok((StatusCode::CREATED, Json(PushAnswer { revision, command })))
}

async fn report_config(
    State(state): State<AppState>,
    Path(host): Path<String>,
    req: Request,
) -> V2Result<(StatusCode, Json<ConfigRevision>)> {
    require(&state, req.headers(), Role::Agent)?;
    let host = host_param(&host)?;
    let body = read_body(req, state.settings.max_config_bytes).await?;
    if body.is_empty() {
        return Err(bad("config body is empty"));
    }
    let revision = state
        .store_config(&host, ConfigSource::Reported, &body)
        .await?;
    Ok((StatusCode::CREATED, Json(revision)))
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

async fn add_agent_token(State(state): State<AppState>, req: Request) -> V2Result<StatusCode> {
    require(&state, req.headers(), Role::Operator)?;
    let body = read_body(req, 4096).await?;
    let t: TokenBody = parse_json(&body)?;
    if t.token.trim().len() < 8 || t.token.contains(char::is_whitespace) {
        return Err(bad(
            "agent token must be at least 8 characters without spaces",
        ));
    }
    state.add_agent_token(&t.token).await?;
    tracing::info!("agent token registered");
    Ok(StatusCode::CREATED)
}

#[derive(Deserialize)]
struct LabelBody {
    label: String,
}

#[derive(Serialize)]
struct NewToken {
    token: String,
    label: String,
    created_at: String,
}

async fn add_operator_token(
    State(state): State<AppState>,
    req: Request,
) -> V2Result<(StatusCode, Json<NewToken>)> {
    require(&state, req.headers(), Role::Operator)?;
    let body = read_body(req, 4096).await?;
    let l: LabelBody = parse_json(&body)?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("pop_{}", hex::encode(raw));
    state.add_operator_token(&token, &l.label).await?;
    tracing::info!(label = l.label, "operator token created");
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            token,
            label: l.label,
            created_at: rfc3339_millis(now_ms()),
        }),
    ))
}
