//! `POST /api/v2/checkin`: a host's report, its acknowledgements, and the
//! long poll that answers with what changed for it. Must not: hold a
//! database connection while it waits.

#[allow(unused_imports)]
use super::*;

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    wait: Option<u64>,
}

pub(super) async fn checkin(
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
pub(super) struct LongPoll<'a>(&'a AppState, &'a str);

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

pub(super) async fn answer_for(
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
