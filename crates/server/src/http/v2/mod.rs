//! Our v2 API (JSON under `/api/v2`, described in `docs/api-v2.md`):
//! check-in long poll, targeted commands with acknowledgements, releases,
//! config revisions and the host inventory.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::request::Parts;
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
use crate::fleet::rollouts::{NewRollout, Pin, RolloutError, RolloutStatus, WindowInfo};
use crate::fleet::{command_wire, now_ms, PublishError, TooManyNewHosts, DEFAULT_COMMAND_TTL_SECS};
use crate::http::auth::{credential_key, role, Role, TokenHash};
use crate::http::body::BodyError;
use crate::http::AppState;
use crate::store::TokenKind;
use crate::store::{AuditEntry, NewRelease, StoreError};
use palette_protocol::selector::{Labels, Selector};

/// A v2 error: a status and a one-line reason as `{"error": "..."}`.
pub struct V2Error {
    status: StatusCode,
    message: String,
    retry_after_secs: Option<u64>,
}

impl V2Error {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        V2Error {
            status,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        res
    }
}

impl From<StoreError> for V2Error {
    fn from(e: StoreError) -> Self {
        // Outages are logged once per episode by the store; anything else
        // (a corrupt row) is logged here.
        if !e.is_outage() && !matches!(e, StoreError::Conflict(_)) {
            tracing::error!(error = %crate::error_chain(&e), "store failed");
        }
        let mut err = V2Error::new(e.status(), e.public_reason());
        if e.is_outage() {
            err.retry_after_secs = Some(30);
        }
        err
    }
}

impl From<TooManyNewHosts> for V2Error {
    fn from(e: TooManyNewHosts) -> Self {
        V2Error {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "too many new host names for this credential; retry in {} s",
                e.retry_after_secs
            ),
            retry_after_secs: Some(e.retry_after_secs),
        }
    }
}

impl From<crate::fleet::RollbackError> for V2Error {
    fn from(e: crate::fleet::RollbackError) -> Self {
        use crate::fleet::RollbackError as E;
        match e {
            E::Store(e) => e.into(),
            E::NoSuchRelease(_) => V2Error::new(StatusCode::NOT_FOUND, e.to_string()),
            E::Manifest(_) => V2Error::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            E::Watchdog | E::NothingOlder { .. } | E::NotNewest { .. } => {
                V2Error::new(StatusCode::CONFLICT, e.to_string())
            }
        }
    }
}

impl From<PublishError> for V2Error {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Store(e) => e.into(),
            PublishError::Artifact(e) => ingest_error(e),
        }
    }
}

fn ingest_error(e: IngestError) -> V2Error {
    match e {
        IngestError::TooLarge { .. } => V2Error::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        IngestError::Stalled { .. } => V2Error::new(StatusCode::REQUEST_TIMEOUT, e.to_string()),
        IngestError::Empty | IngestError::ShaMismatch { .. } | IngestError::Body(_) => {
            bad(e.to_string())
        }
        IngestError::Io { .. } if e.is_disk_full() => {
            tracing::error!(error = %crate::error_chain(&e), "artifact not stored: the disk is full");
            V2Error::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the server's disk is full: the artifact was not stored; retry later",
            )
        }
        IngestError::Remote { .. } => {
            tracing::error!(error = %crate::error_chain(&e), "artifact not stored: object storage failed");
            V2Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}: nothing was published; retry later"),
            )
        }
        IngestError::Io { .. } => {
            tracing::error!(error = %crate::error_chain(&e), "artifact write failed");
            V2Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not store the artifact; see the server log",
            )
        }
    }
}

fn bad(msg: impl Into<String>) -> V2Error {
    V2Error::new(StatusCode::BAD_REQUEST, msg.into())
}

type V2Result<T> = Result<T, V2Error>;

/// The answer to a caller below `min`: 401 without a known token, 403 with
/// one of too low a role. Counted and logged (never the secret).
fn refuse(state: &AppState, parts: &Parts, have: Role, min: Role) -> V2Error {
    state.metrics.auth_failures.increment(1);
    // An unknown secret is a guess: counted against its address.
    if have == Role::Anonymous && crate::http::auth::presented_token(&parts.headers).is_some() {
        if let Some(ip) = source_ip(parts) {
            if state.auth_limiter.failed(ip) {
                tracing::warn!(
                    source = %ip,
                    failures = state.http.auth_limit.failures,
                    block_secs = state.http.auth_limit.block.as_secs(),
                    "too many failed authentications: this address is refused for a while"
                );
            }
        }
    }
    tracing::warn!(
        path = %parts.uri.path(),
        source = source_of(parts).unwrap_or_default(),
        role = ?have,
        needed = ?min,
        "request refused: credentials"
    );
    if have == Role::Anonymous {
        V2Error::new(StatusCode::UNAUTHORIZED, "missing or unknown token")
    } else {
        V2Error::new(StatusCode::FORBIDDEN, "an operator token is required")
    }
}

/// The caller's address, when the server knows it.
fn source_of(parts: &Parts) -> Option<String> {
    source_ip(parts).map(|ip| ip.to_string())
}

fn source_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Before any credential is checked: an address blocked for failing too
/// often is answered 429 while it presents credentials.
fn not_blocked(state: &AppState, parts: &Parts) -> V2Result<()> {
    let (Some(ip), Some(token)) = (
        source_ip(parts),
        crate::http::auth::presented_token(&parts.headers),
    ) else {
        return Ok(());
    };
    // Limit what fails, not what succeeds: a credential that verifies is
    // served even from a blocked address (behind a load balancer, the
    // whole fleet may share one).
    if state.credential(token).is_some() {
        return Ok(());
    }
    match state.auth_limiter.blocked(ip) {
        None => Ok(()),
        Some(secs) => {
            let mut e = V2Error::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed authentications from {ip}; try again in {secs} s"),
            );
            e.retry_after_secs = Some(secs);
            Err(e)
        }
    }
}

/// An operator, authenticated once per request by this extractor (every
/// other caller is refused before the handler runs): the token's label and
/// the caller's address, for the audit log.
pub(crate) struct Operator {
    pub label: String,
    pub source: Option<String>,
}

impl axum::extract::FromRequestParts<AppState> for Operator {
    type Rejection = V2Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, V2Error> {
        not_blocked(state, parts)?;
        let cred =
            crate::http::auth::presented_token(&parts.headers).and_then(|t| state.credential(t));
        match cred.filter(|c| c.kind == TokenKind::Operator) {
            Some(c) => Ok(Operator {
                label: c.label.clone(),
                source: source_of(parts),
            }),
            None => Err(refuse(
                state,
                parts,
                role(state, &parts.headers),
                Role::Operator,
            )),
        }
    }
}

impl Operator {
    /// The audit entry of what this operator is about to do: it goes with
    /// the write, in its transaction (`store::Audit`).
    pub(crate) fn entry(&self, action: &str, detail: String) -> AuditEntry {
        AuditEntry::now(&self.label, self.source.as_deref(), action, detail)
    }
}

/// A command's target in words, for the audit log.
pub(crate) fn target_words(t: &Target) -> String {
    match t {
        Target::All => "every host".into(),
        Target::Hosts(h) => format!("host {}", h.join(", ")),
    }
}

/// Who may act for a host, authenticated once per request (anyone else is
/// refused before the handler runs): an operator, the fleet's enrollment
/// key (a license key), or one host's own token.
pub(crate) enum Caller {
    Operator(Operator),
    /// A license key; the hash the new-host budget is counted under.
    Enrollment(TokenHash),
    /// A host token: it acts for this host name only.
    Host(String),
}

impl axum::extract::FromRequestParts<AppState> for Caller {
    type Rejection = V2Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, V2Error> {
        not_blocked(state, parts)?;
        let cred =
            crate::http::auth::presented_token(&parts.headers).and_then(|t| state.credential(t));
        match cred.as_deref().map(|c| c.kind) {
            Some(TokenKind::Operator) => Ok(Caller::Operator(Operator {
                label: cred.expect("matched").label.clone(),
                source: source_of(parts),
            })),
            Some(TokenKind::Host) => Ok(Caller::Host(cred.expect("matched").label.clone())),
            Some(TokenKind::Agent) => Ok(Caller::Enrollment(
                credential_key(&parts.headers).expect("a token was presented"),
            )),
            None => Err(refuse(state, parts, Role::Anonymous, Role::Host)),
        }
    }
}

impl Caller {
    /// Refuses a caller that may not act for `host`: a host token for any
    /// other host; the enrollment key for a host that has enrolled (only
    /// its own token may act for it then), or for any host when the server
    /// requires host tokens.
    fn act_for(&self, state: &AppState, host: &str) -> V2Result<()> {
        let refusal = match self {
            Caller::Operator(_) => return Ok(()),
            Caller::Host(own) if own == host => return Ok(()),
            Caller::Host(own) => format!("this host token belongs to {own}; it may not act for {host}"),
            Caller::Enrollment(_) if state.is_enrolled(host) => format!(
                "{host} has enrolled: only its own host token may act for it (an enrollment key may not)"
            ),
            Caller::Enrollment(_) if state.settings.require_host_tokens => format!(
                "this server requires host tokens: {host} must enroll first (POST /api/v2/enroll)"
            ),
            Caller::Enrollment(_) => return Ok(()),
        };
        state.metrics.auth_failures.increment(1);
        tracing::warn!(
            host,
            reason = refusal,
            "request refused: not this caller's host"
        );
        Err(V2Error::new(StatusCode::FORBIDDEN, refusal))
    }

    /// Refuses the enrollment key where the server requires host tokens:
    /// it may enroll, nothing else (listing releases, downloads included).
    fn beyond_enrolling(&self, state: &AppState) -> V2Result<()> {
        if matches!(self, Caller::Enrollment(_)) && state.settings.require_host_tokens {
            state.metrics.auth_failures.increment(1);
            return Err(V2Error::new(
                StatusCode::FORBIDDEN,
                "this server requires host tokens: the enrollment key may only enroll (POST /api/v2/enroll)",
            ));
        }
        Ok(())
    }

    /// Counts a new host name against an enrollment key's budget.
    fn admit(&self, state: &AppState, host: &str) -> V2Result<()> {
        match self {
            Caller::Enrollment(key) => Ok(state.admit_host(host, key)?),
            _ => Ok(()),
        }
    }
}

fn host_param(h: &str) -> V2Result<String> {
    validate_hostname(h).map_err(|e| bad(format!("invalid hostname: {e}")))
}

/// Parses a JSON body with a one-line reason on failure.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> V2Result<T> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// Reads a (non-artifact) body within `limit` bytes and the body timeout.
async fn read_body(state: &AppState, req: Request, limit: usize) -> V2Result<bytes::Bytes> {
    let within = state.http.limits.body_timeout;
    let read = crate::http::body::read_limited(req.into_body().into_data_stream(), limit);
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| {
            V2Error::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    within.as_secs()
                ),
            )
        })?
        .map_err(|e| match e {
            BodyError::TooLarge => V2Error::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {limit} bytes"),
            ),
            BodyError::Broken(_) => bad("the request body could not be read"),
        })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v2/checkin", post(checkin))
        .route("/api/v2/enroll", post(enroll))
        .route("/api/v2/commands", post(create_command).get(list_commands))
        .route("/api/v2/commands/{id}", get(get_command))
        .route("/api/v2/releases", post(publish_release).get(list_releases))
        .route("/api/v2/releases/{id}/withdraw", post(withdraw_release))
        .route("/api/v2/releases/{id}/rollback", post(rollback_release))
        .route("/api/v2/releases/{id}/reach", get(release_reach))
        .route("/api/v2/rollouts", get(list_rollouts).post(create_rollout))
        .route("/api/v2/rollouts/{id}", get(get_rollout))
        .route("/api/v2/rollouts/{id}/{action}", post(rollout_action))
        .route("/api/v2/pins", get(list_pins).post(create_pin))
        .route("/api/v2/pins/{id}", axum::routing::delete(delete_pin))
        .route("/api/v2/windows", get(list_windows).post(create_window))
        .route("/api/v2/windows/{id}", axum::routing::delete(delete_window))
        .route(
            "/api/v2/hosts/{host}/labels",
            get(get_host_labels).put(put_host_labels),
        )
        .route("/api/v2/artifacts/{sha256}", get(download_artifact))
        .route("/api/v2/hosts", get(list_hosts))
        .route("/api/v2/hosts/{host}", get(get_host).delete(retire_host))
        .route("/api/v2/hosts/{host}/history", get(host_history))
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
        .route(
            "/api/v2/tokens/operator/rotate",
            post(rotate_operator_tokens),
        )
        .route("/api/v2/audit", get(audit_log))
        .route("/api/v2/tokens", get(list_tokens))
        .route("/api/v2/tokens/{kind}/{id}/revoke", post(revoke_token))
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<u64>,
}

async fn checkin(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<WaitQuery>, QueryRejection>,
    req: Request,
) -> V2Result<Json<CheckinResponse>> {
    state.metrics.checkins.increment(1);
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let body = read_body(&state, req, state.settings.max_json_bytes).await?;
    let mut ci: CheckinRequest = parse_json(&body)?;
    let host = host_param(&ci.host.hostname)?;
    ci.host.hostname = host.clone();
    let report_json = serde_json::to_string(&ci.host).expect("report serialises");
    if report_json.len() > state.settings.max_report_bytes {
        return Err(V2Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "host report is {} bytes, more than the limit of {}",
                report_json.len(),
                state.settings.max_report_bytes
            ),
        ));
    }
    caller.act_for(&state, &host)?;
    caller.admit(&state, &host)?;
    let now = now_ms();
    if ci
        .store_id
        .as_deref()
        .is_some_and(|s| s != state.store_id())
        && !ci.results.is_empty()
    {
        tracing::info!(
            host,
            their_store = ci.store_id.as_deref(),
            acks = ci.results.len(),
            "acknowledgements for another store's commands ignored (the host last talked to a different server store)"
        );
        ci.results.clear();
    }
    for mut ack in ci.results.drain(..) {
        ack.hostname = host.clone();
        let Some(cmd) = state.command_row(ack.id).await? else {
            tracing::warn!(
                host,
                id = ack.id,
                "acknowledgement of an unknown command ignored"
            );
            continue;
        };
        if !cmd.targets(&host) {
            tracing::warn!(
                host,
                id = ack.id,
                "acknowledgement refused: the command is not addressed to this host"
            );
            continue;
        }
        if state.record_ack(&ack, now).await? {
            state
                .metrics
                .ack_latency
                .record((now - cmd.issued_at).max(0) as f64 / 1000.0);
            tracing::info!(host, id = ack.id, outcome = ?ack.outcome, message = ack.message, "command acknowledged");
        }
    }
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(state.settings.max_wait_secs));
    for (product, u) in state.record_report(
        &ci.host,
        wait.as_millis() as palette_protocol::timefmt::Millis,
    ) {
        tracing::info!(host, product, version = %u.version, outcome = ?u.outcome, message = u.message, "update outcome reported");
    }

    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = state.subscribe();
    let _in_flight = LongPoll::new(&state, &host);
    loop {
        changes.borrow_and_update();
        let answer = answer_for(&state, &host, &ci).await?;
        let news = !answer.commands.is_empty()
            || answer.release.as_ref().map(|r| r.id) != ci.seen_release
            || answer.config_revision != ci.seen_config
            || ci
                .seen_watchdog_release
                .is_some_and(|seen| answer.watchdog_release.as_ref().map(|r| r.id) != seen);
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

/// Counts a check-in as a long poll in flight while it lives; its end is
/// contact with the host too.
struct LongPoll<'a>(&'a AppState, &'a str);

impl<'a> LongPoll<'a> {
    fn new(state: &'a AppState, host: &'a str) -> Self {
        state.metrics.long_polls.increment(1.0);
        LongPoll(state, host)
    }
}

impl Drop for LongPoll<'_> {
    fn drop(&mut self) {
        self.0.metrics.long_polls.decrement(1.0);
        self.0.poll_ended(self.1);
    }
}

async fn answer_for(
    state: &AppState,
    host: &str,
    ci: &CheckinRequest,
) -> V2Result<CheckinResponse> {
    let commands = state.pending_for(host).await?;
    let release = state.release_for_host(&ci.host);
    let watchdog_release = state.release_for("watchdog", &ci.host.platform);
    // Most hosts have no config at all: no database read for them.
    let config_revision = if state.host_has_config(host) {
        state
            .store
            .latest_config(host, Some(ConfigSource::Desired))
            .await?
            .map(|(rev, _)| rev.revision)
    } else {
        None
    };
    Ok(CheckinResponse {
        store_id: Some(state.store_id().to_string()),
        commands,
        release,
        config_revision,
        watchdog_release,
    })
}

async fn create_command(
    State(state): State<AppState>,
    op: Operator,
    req: Request,
) -> V2Result<(StatusCode, Json<CommandStatus>)> {
    let body = read_body(&state, req, state.settings.max_json_bytes).await?;
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
    let audit = op.entry(
        "command.create",
        format!(
            "command {{id}} {} to {}, ttl {ttl} s",
            new.kind.as_str(),
            target_words(&target)
        ),
    );
    let row = state
        .issue_command(new.kind, target.clone(), ttl, Some(&audit))
        .await?;
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
    _op: Operator,
) -> V2Result<Json<Vec<CommandStatus>>> {
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
    _op: Operator,
    Path(id): Path<String>,
) -> V2Result<Json<CommandStatus>> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("command id {id:?} is not a number")))?;
    let row = state
        .store
        .command(id)
        .await?
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no command {id}")))?;
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
    /// Publish even a version lower than the newest offered one.
    force: Option<bool>,
    /// Offer it to no host until a rollout starts.
    #[serde(default)]
    hold: bool,
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

/// The signed manifest and its signature from the publish request's
/// `X-Palette-Manifest` / `X-Palette-Signature` headers (each base64): both
/// or neither, each bounded, the manifest well-formed. The signature is
/// not verified here — the server holds no key and is not trusted; hosts
/// verify against their own keys.
fn signed_manifest(headers: &HeaderMap) -> V2Result<(Option<String>, Option<String>)> {
    use base64::Engine as _;
    use palette_protocol::manifest::{Manifest, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES};
    let get = |name: &str, max: usize| -> V2Result<Option<String>> {
        let Some(v) = headers.get(name) else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(|_| bad(format!("{name} must be base64")))?;
        if bytes.len() > max {
            return Err(bad(format!("{name} is longer than {max} bytes")));
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| bad(format!("{name} must be UTF-8 text")))
    };
    let manifest = get(HEADER_MANIFEST, MAX_MANIFEST_BYTES)?;
    let signature = get(HEADER_SIGNATURE, MAX_SIGNATURE_BYTES)?;
    match (&manifest, &signature) {
        (Some(m), Some(_)) => {
            Manifest::parse(m).map_err(|e| bad(e.to_string()))?;
        }
        (None, None) => {}
        _ => {
            return Err(bad(format!(
                "{HEADER_MANIFEST} and {HEADER_SIGNATURE} go together"
            )))
        }
    }
    Ok((manifest, signature))
}

const HEADER_MANIFEST: &str = "x-palette-manifest";
const HEADER_SIGNATURE: &str = "x-palette-signature";

async fn publish_release(
    State(state): State<AppState>,
    op: Operator,
    q: Result<Query<PublishQuery>, QueryRejection>,
    req: Request,
) -> V2Result<(StatusCode, Json<Release>)> {
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
    // Refused before a byte is read: a lower version than the newest one
    // offered is almost always a mistake (hosts never downgrade to it).
    if let Some(newest) = state.release_for(&product, &q.platform) {
        if version < newest.version && !q.force.unwrap_or(false) {
            return Err(V2Error::new(
                StatusCode::CONFLICT,
                format!(
                    "version {version} is lower than {}, the newest {product} release offered for {}; hosts never downgrade to it. Withdraw the newer one first, or publish with force=true",
                    newest.version, q.platform
                ),
            ));
        }
    }
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > state.settings.max_artifact_bytes {
            return Err(V2Error::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "artifact is larger than the limit of {} bytes",
                    state.settings.max_artifact_bytes
                ),
            ));
        }
    }
    let (manifest, signature) = signed_manifest(req.headers())?;
    let stream = req.into_body().into_data_stream();
    let staged = state
        .artifacts
        .ingest(
            stream,
            state.settings.max_artifact_bytes,
            q.sha256.as_deref(),
            state.http.limits.upload_stall_timeout,
        )
        .await
        .map_err(ingest_error)?;
    let force = q.force.unwrap_or(false);
    if let Err(problem) = check_release(&staged, &product, &q.platform, kind, &version).await {
        if matches!(problem, ReleaseProblem::BinaryOtherVersion { .. }) {
            return Err(V2Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                problem.to_string(),
            ));
        }
        if !force {
            return Err(V2Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{problem} (to publish it all the same: palettectl release publish --force, or ?force=true)"),
            ));
        }
        tracing::warn!(%problem, version = %version, "release published with force despite a problem");
    }
    let audit = op.entry(
        "release.publish",
        format!(
            "release {{id}} {} {} {} {} sha256 {}{}",
            product,
            version,
            q.platform,
            kind.as_str(),
            staged.ingested.sha256,
            if signature.is_some() {
                ", signed"
            } else {
                ", unsigned"
            }
        ),
    );
    let release = state
        .publish(
            staged,
            NewRelease {
                product,
                version,
                platform: q.platform,
                kind,
                sha256: String::new(),
                md5: String::new(),
                size: 0,
                signature,
                manifest,
                created_at: now_ms(),
                withdrawn_at: None,
                rolled_back_at: None,
                held: q.hold
                    || state.rollouts.default == crate::fleet::rollouts::DefaultRollout::Manual,
            },
            Some(&audit),
        )
        .await?;
    tracing::info!(id = release.id, product = release.product, version = %release.version, platform = release.platform, kind = release.kind.as_str(), size = release.size, "release published");
    Ok((StatusCode::CREATED, Json(release)))
}

/// Platforms hosts report: `{os}-{arch}` as Rust names them.
const KNOWN_OS: &[&str] = &["linux", "windows", "macos", "freebsd"];
const KNOWN_ARCH: &[&str] = &[
    "x86_64",
    "aarch64",
    "x86",
    "arm",
    "riscv64",
    "powerpc64",
    "s390x",
];

/// What is wrong with a release a host could never use.
#[derive(Debug, thiserror::Error)]
enum ReleaseProblem {
    #[error("platform {0:?} is none a host reports (they look like linux-x86_64, windows-x86_64, linux-aarch64)")]
    UnknownPlatform(String),
    #[error("the archive could not be checked: {0}")]
    Uncheckable(String),
    #[error("the archive cannot be installed: {0}")]
    Uninstallable(String),
    #[error("the archive's VERSION file says {said:?}, not {version}")]
    OtherVersion { said: String, version: Version },
    /// A watchdog release whose binary says another version: the new
    /// watchdog would take itself for the old one and the self-update
    /// could only time out. Never published, not even with force.
    #[error("the release is version {version}, but its {file} says it is {said} (its version slot): build or stamp the binaries with {version}")]
    BinaryOtherVersion {
        file: String,
        said: String,
        version: Version,
    },
}

/// What is wrong with a release a host could never use: a platform no host
/// reports, an archive that does not unpack (with every check a host
/// makes: paths, links, limits), or one whose `VERSION` says another
/// version.
async fn check_release(
    staged: &crate::artifacts::Staged,
    product: &str,
    platform: &str,
    kind: ReleaseKind,
    version: &Version,
) -> Result<(), ReleaseProblem> {
    let known = platform
        .split_once('-')
        .is_some_and(|(os, arch)| KNOWN_OS.contains(&os) && KNOWN_ARCH.contains(&arch));
    if !known {
        return Err(ReleaseProblem::UnknownPlatform(platform.to_string()));
    }
    if kind != ReleaseKind::Archive {
        return Ok(());
    }
    let path = staged.path().to_path_buf();
    let size = staged.ingested.size;
    let inspected = tokio::task::spawn_blocking(move || {
        palette_manager::extract::inspect(
            &path,
            palette_manager::extract::Limits::for_archive(size, None),
        )
    })
    .await
    .map_err(|e| ReleaseProblem::Uncheckable(e.to_string()))?;
    match inspected {
        Err(e) => Err(ReleaseProblem::Uninstallable(e.to_string())),
        Ok(i) => {
            if product == "watchdog" {
                if let Some((file, said)) = i
                    .stamps
                    .iter()
                    .find(|(_, v)| v.parse::<Version>().ok().as_ref() != Some(version))
                {
                    return Err(ReleaseProblem::BinaryOtherVersion {
                        file: file.clone(),
                        said: said.clone(),
                        version: *version,
                    });
                }
            }
            match i.version {
                Some(v) if v.parse::<Version>().ok().as_ref() != Some(version) => {
                    Err(ReleaseProblem::OtherVersion {
                        said: v,
                        version: *version,
                    })
                }
                _ => Ok(()),
            }
        }
    }
}

/// `GET /api/v2/releases/{id}/reach`: the hosts that can take the release
/// now, and why each other host of its product cannot.
async fn release_reach(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> V2Result<Json<palette_protocol::v2::Reach>> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("release id {id:?} is not a number")))?;
    let release = state
        .releases()
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no release {id}")))?;
    Ok(Json(state.reach(&release)))
}

async fn withdraw_release(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> V2Result<Json<Release>> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("release id {id:?} is not a number")))?;
    let audit = op.entry("release.withdraw", release_words(&state, id));
    let r = state
        .withdraw(id, Some(&audit))
        .await?
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no release {id}")))?;
    tracing::warn!(id, product = r.product, version = %r.version, platform = r.platform, "release withdrawn: no host is offered it any more");
    Ok(Json(r))
}

/// The answer to a rollback: the release rolled back and the one its hosts
/// come down to.
#[derive(Serialize)]
struct RolledBack {
    rolled_back: Release,
    target: Release,
}

/// `POST /api/v2/releases/{id}/rollback`: withdraws release `id` and offers
/// the hosts running it the newest older release as a downgrade. With
/// `X-Palette-Manifest` / `X-Palette-Signature`, the target's manifest is
/// replaced by one re-signed to authorise that downgrade (needed by hosts
/// that verify signatures). `?dry_run=true` only answers what would happen.
async fn rollback_release(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    q: Result<Query<DryRunQuery>, QueryRejection>,
    headers: HeaderMap,
) -> V2Result<Json<RolledBack>> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("release id {id:?} is not a number")))?;
    if q.dry_run {
        let (rolled_back, target) = state.rollback_plan(id)?;
        return Ok(Json(RolledBack {
            rolled_back,
            target,
        }));
    }
    let signed = match signed_manifest(&headers)? {
        (Some(m), Some(s)) => Some((m, s)),
        _ => None,
    };
    let resigned = signed.is_some();
    let (plan_bad, plan_target) = state.rollback_plan(id)?;
    let audit = op.entry(
        "release.rollback",
        format!(
            "release {id} {} {} {} rolled back to {} (release {}){}",
            plan_bad.product,
            plan_bad.version,
            plan_bad.platform,
            plan_target.version,
            plan_target.id,
            if resigned {
                ", target manifest re-signed"
            } else {
                ""
            }
        ),
    );
    let (bad_r, target) = state.roll_back(id, signed, Some(&audit)).await?;
    tracing::warn!(id, product = bad_r.product, version = %bad_r.version, platform = bad_r.platform, to = %target.version, resigned, "release rolled back: withdrawn, its hosts are offered the older release");
    Ok(Json(RolledBack {
        rolled_back: bad_r,
        target,
    }))
}

#[derive(Deserialize)]
struct DryRunQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn list_releases(
    State(state): State<AppState>,
    caller: Caller,
) -> V2Result<Json<Vec<Release>>> {
    caller.beyond_enrolling(&state)?;
    let mut all = state.releases();
    all.sort_by(|a, b| b.version.cmp(&a.version).then(b.id.cmp(&a.id)));
    Ok(Json(all))
}

async fn download_artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
    req: Request,
) -> Response {
    if let Err(e) = caller.beyond_enrolling(&state) {
        return e.into_response();
    }
    if state.artifacts.path_for(&sha256).is_none() {
        return bad("artifact id must be 64 lower-case hex digits").into_response();
    }
    if !state.has_artifact(&sha256) {
        return V2Error::new(StatusCode::NOT_FOUND, format!("no artifact {sha256}"))
            .into_response();
    }
    crate::http::v1::serve_artifact(&state, &sha256, req).await
}

#[derive(Deserialize)]
struct SelectorQuery {
    #[serde(default)]
    selector: String,
}

/// Every host, newest contact first; `?selector=role=web,site!=us` keeps
/// the hosts whose labels (their own and assigned) match.
async fn list_hosts(
    State(state): State<AppState>,
    _op: Operator,
    q: Result<Query<SelectorQuery>, QueryRejection>,
) -> V2Result<Json<Vec<palette_protocol::v2::HostInfo>>> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let sel = Selector::parse(&q.selector).map_err(|e| bad(e.to_string()))?;
    let mut hosts = state.hosts(None);
    if !sel.is_all() {
        hosts.retain(|h| sel.matches(&h.hostname, &h.labels));
    }
    Ok(Json(hosts))
}

/// A host's labels: its own (from its watchdog), those operators
/// assigned, and the two together (assigned ones win).
#[derive(Serialize, Deserialize)]
struct HostLabels {
    #[serde(default)]
    own: Labels,
    #[serde(default)]
    assigned: Labels,
    #[serde(default)]
    labels: Labels,
}

/// `PUT /hosts/{host}/labels`: `assigned` is required (a missing or
/// misspelt field must not erase a host's labels); `own` and `labels`, as
/// a GET answers them, may be sent back and are ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignLabels {
    assigned: Labels,
    #[serde(default, rename = "own")]
    _own: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "labels")]
    _labels: Option<serde::de::IgnoredAny>,
}

fn host_labels_of(state: &AppState, host: &str) -> HostLabels {
    let labels = state.host_labels(host);
    let assigned = state
        .rollouts
        .cache
        .read()
        .unwrap()
        .assigned
        .get(host)
        .cloned()
        .unwrap_or_default();
    let own = state.host_own_labels(host);
    HostLabels {
        own,
        assigned,
        labels,
    }
}

async fn get_host_labels(
    State(state): State<AppState>,
    _op: Operator,
    Path(host): Path<String>,
) -> V2Result<Json<HostLabels>> {
    let host = host_param(&host)?;
    Ok(Json(host_labels_of(&state, &host)))
}

/// `PUT /hosts/{host}/labels {"assigned": {...}}`: replaces the labels an
/// operator assigned to the host.
async fn put_host_labels(
    State(state): State<AppState>,
    op: Operator,
    Path(host): Path<String>,
    req: Request,
) -> V2Result<Json<HostLabels>> {
    let host = host_param(&host)?;
    let body = read_body(&state, req, state.settings.max_json_bytes).await?;
    let new: AssignLabels = parse_json(&body)?;
    palette_protocol::selector::check_labels(&new.assigned).map_err(|e| bad(e.to_string()))?;
    if !state.knows_host(&host) {
        return Err(V2Error::new(
            StatusCode::NOT_FOUND,
            format!("no host {host} (labels are assigned to hosts that have checked in)"),
        ));
    }
    let json = serde_json::to_string(&new.assigned).expect("labels serialise");
    let audit = op.entry("host.labels", format!("host {host} assigned {json}"));
    state
        .store
        .set_host_labels(&host, &json, Some(&audit))
        .await?;
    audit.log();
    state
        .rollouts
        .cache
        .write()
        .unwrap()
        .assigned
        .insert(host.clone(), new.assigned);
    Ok(Json(host_labels_of(&state, &host)))
}

fn rollout_error(e: RolloutError) -> V2Error {
    match e {
        RolloutError::Store(e) => e.into(),
        RolloutError::NoRelease(_) | RolloutError::NotFound(_) => {
            V2Error::new(StatusCode::NOT_FOUND, e.to_string())
        }
        RolloutError::Invalid(_) => bad(e.to_string()),
        RolloutError::Withdrawn(_)
        | RolloutError::Watchdog
        | RolloutError::Active(..)
        | RolloutError::Phase { .. } => V2Error::new(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn create_rollout(
    State(state): State<AppState>,
    op: Operator,
    req: Request,
) -> V2Result<(StatusCode, Json<RolloutStatus>)> {
    let body = read_body(&state, req, state.settings.max_json_bytes).await?;
    let new: NewRollout = parse_json(&body)?;
    let audit = op.entry("rollout.create", rollout_words(&new));
    let r = state
        .create_rollout(new, Some(&audit))
        .await
        .map_err(rollout_error)?;
    Ok((StatusCode::CREATED, Json(r)))
}

async fn list_rollouts(
    State(state): State<AppState>,
    _op: Operator,
) -> V2Result<Json<Vec<RolloutStatus>>> {
    Ok(Json(state.rollout_list()))
}

fn id_param(id: &str) -> V2Result<i64> {
    id.parse()
        .map_err(|_| bad(format!("id {id:?} is not a number")))
}

async fn get_rollout(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> V2Result<Json<RolloutStatus>> {
    let id = id_param(&id)?;
    state
        .rollout(id)
        .map(Json)
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no rollout {id}")))
}

async fn rollout_action(
    State(state): State<AppState>,
    op: Operator,
    Path((id, action)): Path<(String, String)>,
) -> V2Result<Json<RolloutStatus>> {
    let id = id_param(&id)?;
    let action: &'static str = match action.as_str() {
        "pause" => "pause",
        "resume" => "resume",
        "abort" => "abort",
        other => {
            return Err(V2Error::new(
                StatusCode::NOT_FOUND,
                format!("no rollout action {other:?} (pause, resume, abort)"),
            ))
        }
    };
    let audit = op.entry(&format!("rollout.{action}"), format!("rollout {id}"));
    let r = state
        .rollout_action(id, action, Some(&audit))
        .await
        .map_err(rollout_error)?;
    Ok(Json(r))
}

#[derive(Deserialize)]
struct NewPin {
    selector: String,
    #[serde(default = "agent_product")]
    product: String,
    version: String,
}

fn agent_product() -> String {
    "agent".into()
}

async fn create_pin(
    State(state): State<AppState>,
    op: Operator,
    req: Request,
) -> V2Result<(StatusCode, Json<Pin>)> {
    let body = read_body(&state, req, state.settings.max_json_bytes).await?;
    let new: NewPin = parse_json(&body)?;
    let sel = Selector::parse(&new.selector).map_err(|e| bad(e.to_string()))?;
    if sel.is_all() {
        return Err(bad(
            "a pin needs a selector (pinning every host is `release withdraw` of the newer ones)",
        ));
    }
    plain_name("product", &new.product)?;
    let version: Version = new.version.parse().map_err(|_| {
        bad(format!(
            "version {:?} is not MAJOR.MINOR.PATCH",
            new.version
        ))
    })?;
    let now = now_ms();
    let mut pin = Pin {
        id: 0,
        selector: sel.to_string(),
        product: new.product,
        version,
        created_at: rfc3339_millis(now),
    };
    let audit = op.entry(
        "pin.create",
        format!(
            "pin {{id}}: '{}' on {} {}",
            pin.selector, pin.product, pin.version
        ),
    );
    pin.id = state.store.insert_pin(&pin, now, Some(&audit)).await?;
    audit.with_id(pin.id).log();
    state
        .rollouts
        .cache
        .write()
        .unwrap()
        .pins
        .push((pin.clone(), sel));
    state.notify_change();
    Ok((StatusCode::CREATED, Json(pin)))
}

async fn list_pins(State(state): State<AppState>, _op: Operator) -> V2Result<Json<Vec<Pin>>> {
    let cache = state.rollouts.cache.read().unwrap();
    Ok(Json(cache.pins.iter().map(|(p, _)| p.clone()).collect()))
}

async fn delete_pin(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> V2Result<StatusCode> {
    let id = id_param(&id)?;
    let audit = op.entry("pin.delete", format!("pin {id}"));
    if !state.store.delete_pin(id, Some(&audit)).await? {
        return Err(V2Error::new(StatusCode::NOT_FOUND, format!("no pin {id}")));
    }
    state
        .rollouts
        .cache
        .write()
        .unwrap()
        .pins
        .retain(|(p, _)| p.id != id);
    state.notify_change();
    audit.log();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct NewWindow {
    selector: String,
    schedule: String,
    #[serde(default = "utc")]
    tz: String,
}

fn utc() -> String {
    "UTC".into()
}

async fn create_window(
    State(state): State<AppState>,
    op: Operator,
    req: Request,
) -> V2Result<(StatusCode, Json<WindowInfo>)> {
    let body = read_body(&state, req, state.settings.max_json_bytes).await?;
    let new: NewWindow = parse_json(&body)?;
    let sel = Selector::parse(&new.selector).map_err(|e| bad(e.to_string()))?;
    if new.schedule.len() > 200 || new.tz.len() > 64 {
        return Err(bad("schedule or time zone too long"));
    }
    let window = crate::rollout::window::Window::parse(&new.schedule, &new.tz)
        .map_err(|e| bad(e.to_string()))?;
    let now = now_ms();
    let mut info = WindowInfo {
        id: 0,
        selector: sel.to_string(),
        schedule: new.schedule.trim().to_string(),
        tz: new.tz,
        created_at: rfc3339_millis(now),
    };
    let audit = op.entry(
        "window.create",
        format!(
            "window {{id}}: '{}' {} {}",
            info.selector, info.schedule, info.tz
        ),
    );
    info.id = state.store.insert_window(&info, now, Some(&audit)).await?;
    audit.with_id(info.id).log();
    state
        .rollouts
        .cache
        .write()
        .unwrap()
        .windows
        .push((info.clone(), sel, window));
    state.notify_change();
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list_windows(
    State(state): State<AppState>,
    _op: Operator,
) -> V2Result<Json<Vec<WindowInfo>>> {
    let cache = state.rollouts.cache.read().unwrap();
    Ok(Json(
        cache.windows.iter().map(|(w, _, _)| w.clone()).collect(),
    ))
}

async fn delete_window(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> V2Result<StatusCode> {
    let id = id_param(&id)?;
    let audit = op.entry("window.delete", format!("window {id}"));
    if !state.store.delete_window(id, Some(&audit)).await? {
        return Err(V2Error::new(
            StatusCode::NOT_FOUND,
            format!("no window {id}"),
        ));
    }
    state
        .rollouts
        .cache
        .write()
        .unwrap()
        .windows
        .retain(|(w, _, _)| w.id != id);
    state.notify_change();
    audit.log();
    Ok(StatusCode::NO_CONTENT)
}

async fn get_host(
    State(state): State<AppState>,
    _op: Operator,
    Path(host): Path<String>,
) -> V2Result<Json<palette_protocol::v2::HostInfo>> {
    let host = host_param(&host)?;
    state
        .hosts(None)
        .into_iter()
        .find(|h| h.hostname == host)
        .map(Json)
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no host {host}")))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<u32>,
}

/// One command a host answered, for its history.
#[derive(Serialize)]
struct HostCommand {
    id: i64,
    kind: palette_protocol::v2::CommandKind,
    outcome: palette_protocol::v2::Outcome,
    message: String,
    at: String,
}

#[derive(Serialize)]
struct HostHistory {
    commands: Vec<HostCommand>,
    updates: Vec<palette_protocol::v2::HostUpdate>,
    configs: Vec<ConfigRevision>,
}

/// A host's recent history, newest first: the commands it answered (with
/// their outcome), the update outcomes it reported (agent and watchdog) and
/// its config revisions (`limit` each, default 20, at most 1000).
async fn host_history(
    State(state): State<AppState>,
    _op: Operator,
    Path(host): Path<String>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> V2Result<Json<HostHistory>> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let host = host_param(&host)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let commands = state
        .store
        .host_acks(&host, limit)
        .await?
        .into_iter()
        .map(|(kind, a)| HostCommand {
            id: a.id,
            kind,
            outcome: a.outcome,
            message: a.message,
            at: a.at,
        })
        .collect();
    let updates = state.store.update_history(&host, limit).await?;
    let mut configs = state.store.config_history(&host).await?;
    configs.truncate(limit as usize);
    Ok(Json(HostHistory {
        commands,
        updates,
        configs,
    }))
}

async fn retire_host(
    State(state): State<AppState>,
    op: Operator,
    Path(host): Path<String>,
) -> V2Result<StatusCode> {
    let host = host_param(&host)?;
    let audit = op.entry("host.retire", format!("host {host}"));
    if state.retire_host(&host, Some(&audit)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(V2Error::new(
            StatusCode::NOT_FOUND,
            format!("no host {host}"),
        ))
    }
}

async fn config_history(
    State(state): State<AppState>,
    _op: Operator,
    Path(host): Path<String>,
) -> V2Result<Json<Vec<ConfigRevision>>> {
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
    caller: Caller,
    Path((host, revision)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    let host = host_param(&host)?;
    caller.act_for(&state, &host)?;
    let revision: i64 = revision
        .parse()
        .map_err(|_| bad(format!("revision {revision:?} is not a number")))?;
    let (rev, body) = state
        .store
        .config_revision(&host, revision)
        .await?
        .ok_or_else(|| {
            V2Error::new(
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
    caller: Caller,
    Path(host): Path<String>,
    q: Result<Query<SourceQuery>, QueryRejection>,
) -> Result<Response, V2Error> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let host = host_param(&host)?;
    caller.act_for(&state, &host)?;
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
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no config for {host}")))?;
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
    op: Operator,
    Path(host): Path<String>,
    q: Result<Query<PushQuery>, QueryRejection>,
    req: Request,
) -> V2Result<(StatusCode, Json<PushAnswer>)> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let host = host_param(&host)?;
    let body = read_body(&state, req, state.settings.max_config_bytes).await?;
    if body.is_empty() {
        return Err(bad("config body is empty"));
    }
    let audit = op.entry(
        "config.push",
        format!("host {host} revision {{id}} ({} bytes)", body.len()),
    );
    let revision = state
        .store_config(&host, ConfigSource::Desired, &body, Some(&audit))
        .await?;
    let command = if q.apply.unwrap_or(true) {
        // A write of its own, with its own audit entry: if it fails, the
        // answer says the revision was stored and the command was not.
        let audit = op.entry(
            "command.create",
            format!(
                "command {{id}} GET-CONFIG to host {host}, ttl {DEFAULT_COMMAND_TTL_SECS} s (applies config revision {})",
                revision.revision
            ),
        );
        let row = state
            .issue_command(
                palette_protocol::v2::CommandKind::GetConfig,
                Target::Hosts(vec![host.clone()]),
                DEFAULT_COMMAND_TTL_SECS,
                Some(&audit),
            )
            .await
            .map_err(|e| {
                let mut err = V2Error::from(e);
                err.message = format!(
                    "config revision {} was stored, but the command to apply it was not ({}); push again or send GET-CONFIG",
                    revision.revision, err.message
                );
                err
            })?;
        Some(command_wire(&row))
    } else {
        None
    };
    Ok((StatusCode::CREATED, Json(PushAnswer { revision, command })))
}

async fn report_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(host): Path<String>,
    req: Request,
) -> V2Result<(StatusCode, Json<ConfigRevision>)> {
    let host = host_param(&host)?;
    caller.act_for(&state, &host)?;
    caller.admit(&state, &host)?;
    let body = read_body(&state, req, state.settings.max_config_bytes).await?;
    if body.is_empty() {
        return Err(bad("config body is empty"));
    }
    let revision = state
        .store_config(&host, ConfigSource::Reported, &body, None)
        .await?;
    Ok((StatusCode::CREATED, Json(revision)))
}

#[derive(Deserialize)]
struct EnrollBody {
    hostname: String,
}

/// A host's new credential, shown once.
#[derive(Serialize)]
struct Enrolled {
    hostname: String,
    host_token: String,
    token_id: i64,
}

/// Enrolls a host: the fleet's enrollment key (or an operator) gets a new
/// host token for a host name that has none. 409 when it has one.
async fn enroll(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> V2Result<(StatusCode, Json<Enrolled>)> {
    if let Caller::Host(own) = &caller {
        return Err(V2Error::new(
            StatusCode::FORBIDDEN,
            format!("a host token (of {own}) cannot enroll a host; the fleet's enrollment key can"),
        ));
    }
    let body = read_body(&state, req, 4096).await?;
    let e: EnrollBody = parse_json(&body)?;
    let host = host_param(&e.hostname)?;
    caller.admit(&state, &host)?;
    let audit = match &caller {
        Caller::Operator(op) => {
            Some(op.entry("host.enroll", format!("host {host} (token {{id}})")))
        }
        _ => None,
    };
    let (token_id, host_token) = state.enroll_host(&host, audit.as_ref()).await?;
    tracing::info!(
        host,
        token_id,
        "host enrolled: it has its own host token now"
    );
    state.heartbeat(&host);
    Ok((
        StatusCode::CREATED,
        Json(Enrolled {
            hostname: host,
            host_token,
            token_id,
        }),
    ))
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
    /// What the key is for (shown by `token list`).
    #[serde(default)]
    label: Option<String>,
}

async fn add_agent_token(
    State(state): State<AppState>,
    op: Operator,
    req: Request,
) -> V2Result<StatusCode> {
    let body = read_body(&state, req, 4096).await?;
    let t: TokenBody = parse_json(&body)?;
    if t.token.trim().len() < 8 || t.token.contains(char::is_whitespace) {
        return Err(bad(
            "agent token must be at least 8 characters without spaces",
        ));
    }
    let label = t.label.as_deref().unwrap_or("");
    let audit = op.entry(
        "token.add-agent",
        if label.is_empty() {
            "an agent token (license key)".into()
        } else {
            format!("an agent token (license key) labelled '{label}'")
        },
    );
    state.add_agent_token(&t.token, label, Some(&audit)).await?;
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
    op: Operator,
    req: Request,
) -> V2Result<(StatusCode, Json<NewToken>)> {
    let body = read_body(&state, req, 4096).await?;
    let l: LabelBody = parse_json(&body)?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("pop_{}", hex::encode(raw));
    let audit = op.entry(
        "token.add-operator",
        format!("operator token '{}'", l.label),
    );
    state
        .add_operator_token(&token, &l.label, Some(&audit))
        .await?;
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

#[derive(Serialize)]
struct RotatedToken {
    /// The new token (shown only here).
    token: String,
    label: String,
    created_at: String,
    /// How many live tokens with that label were revoked.
    revoked: u64,
}

/// `token rotate`: a new operator token labelled LABEL and the live ones
/// with that label revoked, in one transaction, audited as `token.rotate`
/// by the caller; 404 when no live operator token has the label.
async fn rotate_operator_tokens(
    State(state): State<AppState>,
    op: Operator,
    req: Request,
) -> V2Result<Json<RotatedToken>> {
    let body = read_body(&state, req, 4096).await?;
    let l: LabelBody = parse_json(&body)?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("pop_{}", hex::encode(raw));
    let audit = op.entry(
        "token.rotate",
        format!(
            "operator token '{}': a new one, the old ones revoked",
            l.label
        ),
    );
    let revoked = state
        .rotate_operator_tokens(&token, &l.label, Some(&audit))
        .await?;
    if revoked == 0 {
        return Err(V2Error::new(
            StatusCode::NOT_FOUND,
            format!("no live operator token is labelled '{}'", l.label),
        ));
    }
    tracing::warn!(label = l.label, revoked, "operator token rotated");
    Ok(Json(RotatedToken {
        token,
        label: l.label,
        created_at: rfc3339_millis(now_ms()),
        revoked,
    }))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

/// One audit log entry on the wire.
#[derive(Serialize)]
struct AuditWire {
    id: i64,
    at: String,
    actor: String,
    source: Option<String>,
    action: String,
    detail: String,
}

/// The newest operator actions, newest first (`limit`, default 100, at
/// most 10,000).
async fn audit_log(
    State(state): State<AppState>,
    _op: Operator,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> V2Result<Json<Vec<AuditWire>>> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = state.audit_log(limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, e)| AuditWire {
                id,
                at: rfc3339_millis(e.at),
                actor: e.actor,
                source: e.source,
                action: e.action,
                detail: e.detail,
            })
            .collect(),
    ))
}

/// A token on the wire: never its secret or hash.
#[derive(Serialize)]
struct TokenWire {
    kind: crate::store::TokenKind,
    id: i64,
    label: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    /// When it last authenticated a request (up to a minute behind).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_used: Option<String>,
}

impl From<crate::store::TokenRow> for TokenWire {
    fn from(t: crate::store::TokenRow) -> Self {
        TokenWire {
            kind: t.kind,
            id: t.id,
            label: t.label,
            created_at: rfc3339_millis(t.created_at),
            revoked_at: t.revoked_at.map(rfc3339_millis),
            last_used: t.last_used.map(rfc3339_millis),
        }
    }
}

/// Every stored token (the one in PALETTE_ADMIN_TOKEN is not stored: it
/// is changed by changing that variable).
async fn list_tokens(
    State(state): State<AppState>,
    _op: Operator,
) -> V2Result<Json<Vec<TokenWire>>> {
    Ok(Json(
        state
            .tokens()
            .await?
            .into_iter()
            .map(TokenWire::from)
            .collect(),
    ))
}

async fn revoke_token(
    State(state): State<AppState>,
    op: Operator,
    Path((kind, id)): Path<(String, String)>,
) -> V2Result<Json<TokenWire>> {
    let kind = match kind.as_str() {
        "agent" => crate::store::TokenKind::Agent,
        "operator" => crate::store::TokenKind::Operator,
        "host" => crate::store::TokenKind::Host,
        _ => {
            return Err(bad(format!(
                "token kind {kind:?} must be agent, operator or host"
            )))
        }
    };
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("token id {id:?} is not a number")))?;
    let no_such = || {
        V2Error::new(
            StatusCode::NOT_FOUND,
            format!("no live {} token {id}", kind.as_str()),
        )
    };
    let live = state.live_token(kind, id).await?.ok_or_else(no_such)?;
    let audit = op.entry("token.revoke", token_words(&live));
    let row = state
        .revoke_token(kind, id, Some(&audit))
        .await?
        .ok_or_else(no_such)?;
    tracing::warn!(?kind, id, label = row.label, "token revoked");
    Ok(Json(TokenWire::from(row)))
}

/// A release in words, for the audit log (`release 3 agent 2.0.0
/// linux-x86_64`, or just `release 3` when there is none).
pub(crate) fn release_words(state: &AppState, id: i64) -> String {
    match state.releases().into_iter().find(|r| r.id == id) {
        Some(r) => format!("release {id} {} {} {}", r.product, r.version, r.platform),
        None => format!("release {id}"),
    }
}

/// A rollout about to be created, in words (`{id}` is its id).
pub(crate) fn rollout_words(new: &NewRollout) -> String {
    format!(
        "rollout {{id}} of release {} to '{}', waves {}, soak {} s, halt after {}",
        new.release_id,
        if new.selector.is_empty() {
            "*"
        } else {
            &new.selector
        },
        if new.waves.is_empty() {
            "100%".to_string()
        } else {
            new.waves.join(",")
        },
        new.soak_secs,
        new.halt_after.as_deref().unwrap_or("1")
    )
}

/// A token in words, for the audit log (`operator token 2 'ci'`).
pub(crate) fn token_words(t: &crate::store::TokenRow) -> String {
    if t.label.is_empty() {
        format!("{} token {}", t.kind.as_str(), t.id)
    } else {
        format!("{} token {} '{}'", t.kind.as_str(), t.id, t.label)
    }
}
