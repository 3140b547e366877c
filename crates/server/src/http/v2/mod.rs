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

mod caller;
mod checkin;
mod commands;
mod configs;
mod hosts;
mod releases;
mod rollouts;
mod tokens;

pub(crate) use {caller::target_words, releases::release_words, rollouts::rollout_words};
#[allow(unused_imports)]
use {
    caller::*, checkin::*, commands::*, configs::*, hosts::*, releases::*, rollouts::*, tokens::*,
};

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
            tracing::error!(error = %crate::chain::error_chain(&e), "store failed");
        }
        let mut err = V2Error::new(crate::http::error::store_status(&e), e.public_reason());
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
            tracing::error!(error = %crate::chain::error_chain(&e), "artifact not stored: the disk is full");
            V2Error::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the server's disk is full: the artifact was not stored; retry later",
            )
        }
        IngestError::Remote { .. } => {
            tracing::error!(error = %crate::chain::error_chain(&e), "artifact not stored: object storage failed");
            V2Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}: nothing was published; retry later"),
            )
        }
        IngestError::Io { .. } => {
            tracing::error!(error = %crate::chain::error_chain(&e), "artifact write failed");
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
