//! `/api/v2/commands`: issuing targeted commands and reading their
//! acknowledgements.

#[allow(unused_imports)]
use super::*;

pub(super) async fn create_command(
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

pub(super) async fn list_commands(
    State(state): State<AppState>,
    _op: Operator,
) -> V2Result<Json<Vec<CommandStatus>>> {
    Ok(Json(state.command_statuses(100).await?))
}

pub(super) async fn get_command(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> V2Result<Json<CommandStatus>> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("command id {id:?} is not a number")))?;
    let status = state
        .command_status(id)
        .await?
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no command {id}")))?;
    Ok(Json(status))
}
