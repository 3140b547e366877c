//! `/api/v2/hosts/{host}/configs`: config revisions, the latest one of
//! a source, pushes (with the GET-CONFIG that applies them) and reports.

#[allow(unused_imports)]
use super::*;

pub(super) async fn config_history(
    State(state): State<AppState>,
    _op: Operator,
    Path(host): Path<String>,
) -> V2Result<Json<Vec<ConfigRevision>>> {
    let host = host_param(&host)?;
    Ok(Json(state.config_history(&host).await?))
}

pub(super) fn config_response(rev: ConfigRevision, body: Vec<u8>) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, "application/yaml".parse().unwrap());
    h.insert("x-config-revision", rev.revision.into());
    h.insert("x-config-source", rev.source.as_str().parse().unwrap());
    res
}

pub(super) async fn config_revision(
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
pub(super) struct SourceQuery {
    source: Option<String>,
}

pub(super) async fn latest_config(
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
        .latest_config(&host, source)
        .await?
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no config for {host}")))?;
    Ok(config_response(rev, body))
}

#[derive(Deserialize)]
pub(super) struct PushQuery {
    /// Also send the host a GET-CONFIG command (default true).
    apply: Option<bool>,
}

#[derive(Serialize)]
pub(super) struct PushAnswer {
    revision: ConfigRevision,
    command: Option<palette_protocol::v2::Command>,
}

pub(super) async fn push_config(
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

pub(super) async fn report_config(
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
