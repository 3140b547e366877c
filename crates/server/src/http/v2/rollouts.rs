//! `/api/v2/rollouts`, `/pins`, `/windows`: staged rollouts and what
//! shapes them.

#[allow(unused_imports)]
use super::*;

pub(super) fn rollout_error(e: RolloutError) -> V2Error {
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

pub(super) async fn create_rollout(
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

pub(super) async fn list_rollouts(
    State(state): State<AppState>,
    _op: Operator,
) -> V2Result<Json<Vec<RolloutStatus>>> {
    Ok(Json(state.rollout_list()))
}

pub(super) fn id_param(id: &str) -> V2Result<i64> {
    id.parse()
        .map_err(|_| bad(format!("id {id:?} is not a number")))
}

pub(super) async fn get_rollout(
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

pub(super) async fn rollout_action(
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
pub(super) struct NewPin {
    selector: String,
    #[serde(default = "agent_product")]
    product: String,
    version: String,
}

pub(super) fn agent_product() -> String {
    "agent".into()
}

pub(super) async fn create_pin(
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
    let pin = Pin {
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
    let pin = state.add_pin(pin, sel, &audit).await?;
    Ok((StatusCode::CREATED, Json(pin)))
}

pub(super) async fn list_pins(
    State(state): State<AppState>,
    _op: Operator,
) -> V2Result<Json<Vec<Pin>>> {
    Ok(Json(state.pins()))
}

pub(super) async fn delete_pin(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> V2Result<StatusCode> {
    let id = id_param(&id)?;
    let audit = op.entry("pin.delete", format!("pin {id}"));
    if !state.remove_pin(id, &audit).await? {
        return Err(V2Error::new(StatusCode::NOT_FOUND, format!("no pin {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct NewWindow {
    selector: String,
    schedule: String,
    #[serde(default = "utc")]
    tz: String,
}

pub(super) fn utc() -> String {
    "UTC".into()
}

pub(super) async fn create_window(
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
    let info = WindowInfo {
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
    let info = state.add_window(info, sel, window, &audit).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub(super) async fn list_windows(
    State(state): State<AppState>,
    _op: Operator,
) -> V2Result<Json<Vec<WindowInfo>>> {
    Ok(Json(state.windows()))
}

pub(super) async fn delete_window(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> V2Result<StatusCode> {
    let id = id_param(&id)?;
    let audit = op.entry("window.delete", format!("window {id}"));
    if !state.remove_window(id, &audit).await? {
        return Err(V2Error::new(
            StatusCode::NOT_FOUND,
            format!("no window {id}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
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
