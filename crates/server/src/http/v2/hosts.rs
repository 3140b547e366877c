//! `/api/v2/hosts`: the inventory, one host, its labels, its history,
//! and retiring it.

#[allow(unused_imports)]
use super::*;

#[derive(Deserialize)]
pub(super) struct SelectorQuery {
    #[serde(default)]
    selector: String,
}

/// Every host, newest contact first; `?selector=role=web,site!=us` keeps
/// the hosts whose labels (their own and assigned) match.
pub(super) async fn list_hosts(
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
pub(super) struct HostLabels {
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
pub(super) struct AssignLabels {
    assigned: Labels,
    #[serde(default, rename = "own")]
    _own: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "labels")]
    _labels: Option<serde::de::IgnoredAny>,
}

pub(super) fn host_labels_of(state: &AppState, host: &str) -> HostLabels {
    let labels = state.host_labels(host);
    let assigned = state.assigned_labels(host);
    let own = state.host_own_labels(host);
    HostLabels {
        own,
        assigned,
        labels,
    }
}

pub(super) async fn get_host_labels(
    State(state): State<AppState>,
    _op: Operator,
    Path(host): Path<String>,
) -> V2Result<Json<HostLabels>> {
    let host = host_param(&host)?;
    Ok(Json(host_labels_of(&state, &host)))
}

/// `PUT /hosts/{host}/labels {"assigned": {...}}`: replaces the labels an
/// operator assigned to the host.
pub(super) async fn put_host_labels(
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
    state.assign_labels(&host, new.assigned, &audit).await?;
    Ok(Json(host_labels_of(&state, &host)))
}

pub(super) async fn get_host(
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
pub(super) struct LimitQuery {
    limit: Option<u32>,
}

/// One command a host answered, for its history.
#[derive(Serialize)]
pub(super) struct HostCommand {
    id: i64,
    kind: palette_protocol::v2::CommandKind,
    outcome: palette_protocol::v2::Outcome,
    message: String,
    at: String,
}

#[derive(Serialize)]
pub(super) struct HostHistory {
    commands: Vec<HostCommand>,
    updates: Vec<palette_protocol::v2::HostUpdate>,
    configs: Vec<ConfigRevision>,
}

/// A host's recent history, newest first: the commands it answered (with
/// their outcome), the update outcomes it reported (agent and watchdog) and
/// its config revisions (`limit` each, default 20, at most 1000).
pub(super) async fn host_history(
    State(state): State<AppState>,
    _op: Operator,
    Path(host): Path<String>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> V2Result<Json<HostHistory>> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let host = host_param(&host)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let commands = state
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
    let updates = state.update_history(&host, limit).await?;
    let mut configs = state.config_history(&host).await?;
    configs.truncate(limit as usize);
    Ok(Json(HostHistory {
        commands,
        updates,
        configs,
    }))
}

pub(super) async fn retire_host(
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
