//! The v2 check-in loop: a long poll that reports this host's state and
//! acknowledgements and gets back commands (each performed once, by id), the
//! release to run and the config revision to have. Commands reach a
//! connected host in well under a second. The server being down only
//! delays this loop (jittered backoff); the agent is untouched.

use std::time::Duration;

use palette_protocol::timefmt::parse_rfc3339;
use palette_protocol::v2::{CheckinRequest, CommandAck, HostReport, Outcome};
use sha2::{Digest, Sha256};

use palette_host::settings::Protocol;

use crate::actions::{self, Ctx};
use crate::backoff::Backoff;
use crate::client::ClientError;
use crate::now_ms;
use crate::update::{self, Candidate, Integrity};

pub async fn host_report(ctx: &Ctx) -> HostReport {
    let d = ctx.durable.get();
    HostReport {
        hostname: ctx.hostname.clone(),
        product: ctx.settings.product.clone(),
        platform: ctx.settings.platform.clone(),
        watchdog_version: crate::VERSION.into(),
        agent_version: ctx.layout.current_version(),
        agent_state: ctx.supervisor.agent_state().await,
        desired_state: d.desired,
        config_revision: d.config_revision,
        last_update: d.last_update,
    }
}

/// Whether a failed check-in shows a server that knows only the legacy v1
/// API (it answers 404 on `/api/v2/checkin`).
pub fn legacy_only(err: &ClientError) -> bool {
    matches!(err, ClientError::Status { status, .. } if *status == reqwest::StatusCode::NOT_FOUND)
}

/// Runs the check-in loop. Returns only when `server.protocol` is `auto`
/// and the server turns out to speak only the legacy v1 API.
pub async fn run(ctx: &Ctx) {
    let auto = ctx.settings.server.protocol == Protocol::Auto;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut seen_release = None;
    let mut seen_config = None;
    let mut down_since: Option<std::time::Instant> = None;
    let wait = Duration::from_secs(ctx.settings.server.checkin_wait_secs);
    loop {
        let client = match ctx.client() {
            Ok(c) => c,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(
                    error = e,
                    retry_s = delay.as_secs(),
                    "cannot talk to the server"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let sent_acks = ctx.durable.get().pending_acks;
        let req = CheckinRequest {
            store_id: ctx.durable.get().store_id,
            host: host_report(ctx).await,
            results: sent_acks.clone(),
            seen_release,
            seen_config,
        };
        let resp = match client.checkin(&req, wait).await {
            Ok(r) => r,
            Err(e) if auto && legacy_only(&e) => {
                tracing::warn!(endpoint = client.config.endpoint, "the server does not know the v2 API (404 on /api/v2/checkin): using the legacy v1 API (set server.protocol to pin one)");
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if down_since.is_none() {
                    down_since = Some(std::time::Instant::now());
                    tracing::warn!(error = %actions::chain(&e), retry_ms = delay.as_millis() as u64, "check-in failed; the agent keeps running, retrying with backoff");
                } else {
                    tracing::debug!(error = %actions::chain(&e), "check-in still failing");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        if let Some(since) = down_since.take() {
            tracing::info!(
                after_s = since.elapsed().as_secs(),
                "server reachable again"
            );
        }
        if !sent_acks.is_empty() {
            ctx.durable.update(|d| {
                d.pending_acks
                    .retain(|a| !sent_acks.iter().any(|s| s.id == a.id))
            });
        }
        if let Some(store) = resp.store_id.as_deref() {
            if let Some(old) = ctx.durable.update(|d| d.switch_store(store)) {
                tracing::warn!(
                    old_store = old,
                    new_store = store,
                    "the server's store changed (restored or replaced): command and release ids start afresh; forgetting those of the old store"
                );
            }
        }
        seen_release = resp.release.as_ref().map(|r| r.id);
        seen_config = resp.config_revision;

        // Only redeliveries: the server did not take our acknowledgements.
        // Never spin on that; pause before the next check-in.
        let only_repeats = !resp.commands.is_empty()
            && resp
                .commands
                .iter()
                .all(|c| ctx.durable.get().performed(c.id).is_some());
        for cmd in resp.commands {
            let (outcome, message) = if let Some(prev) = ctx.durable.get().performed(cmd.id) {
                (prev, "already performed".to_string())
            } else if parse_rfc3339(&cmd.expires_at)
                .map(|t| t < now_ms())
                .unwrap_or(false)
            {
                ctx.durable
                    .update(|d| d.mark_performed(cmd.id, Outcome::Failed));
                (
                    Outcome::Failed,
                    format!("{} expired before it could be performed", cmd.kind.as_str()),
                )
            } else {
                // Recorded before acting: a crash mid-way never repeats it.
                ctx.durable
                    .update(|d| d.mark_performed(cmd.id, Outcome::Failed));
                tracing::info!(
                    id = cmd.id,
                    command = cmd.kind.as_str(),
                    "performing command"
                );
                let (o, m) = match actions::perform(ctx, cmd.kind).await {
                    Ok(m) => (Outcome::Succeeded, m),
                    Err(m) => (Outcome::Failed, m),
                };
                ctx.durable.update(|d| d.mark_performed(cmd.id, o));
                match o {
                    Outcome::Succeeded => tracing::info!(
                        id = cmd.id,
                        command = cmd.kind.as_str(),
                        message = m,
                        "command done"
                    ),
                    Outcome::Failed => tracing::error!(
                        id = cmd.id,
                        command = cmd.kind.as_str(),
                        message = m,
                        "command failed"
                    ),
                }
                (o, m)
            };
            let ack = CommandAck {
                id: cmd.id,
                hostname: ctx.hostname.clone(),
                outcome,
                message,
                at: String::new(),
            };
            ctx.durable.update(|d| d.pending_acks.push(ack));
        }

        if let Some(r) = resp.release {
            let cand = Candidate {
                release_id: r.id,
                version: r.version,
                kind: r.kind,
                url: r.url.clone(),
                integrity: Integrity::Sha256 {
                    hex: r.sha256.clone(),
                    size: r.size,
                },
            };
            if update::wanted(ctx, &cand) {
                update::install(ctx, &client, cand).await;
            }
        }

        report_config_if_changed(ctx, &client).await;
        if only_repeats {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Uploads `Config.yml` when it differs from what was last reported.
async fn report_config_if_changed(ctx: &Ctx, client: &crate::client::Client) {
    let Ok(bytes) = fs_err::read(ctx.layout.config_yml()) else {
        return;
    };
    let sha = hex::encode(Sha256::digest(&bytes));
    if ctx.durable.get().reported_config_sha.as_deref() == Some(sha.as_str()) {
        return;
    }
    match actions::upload_config(ctx, client, bytes).await {
        Ok(()) => tracing::info!("current Config.yml reported to the server"),
        Err(e) => tracing::warn!(error = e, "could not report Config.yml; will retry"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_404_means_legacy() {
        let st = |status| ClientError::Status {
            url: "u".into(),
            status,
            body: String::new(),
        };
        assert!(legacy_only(&st(reqwest::StatusCode::NOT_FOUND)));
        assert!(!legacy_only(&st(reqwest::StatusCode::UNAUTHORIZED)));
        assert!(!legacy_only(&st(reqwest::StatusCode::BAD_GATEWAY)));
    }
}
