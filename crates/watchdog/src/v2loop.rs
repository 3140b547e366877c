//! The v2 check-in loop: a long poll that reports this host's state and
//! acknowledgements and gets back commands (each performed once, by id), the
//! release to run and the config revision to have. Commands reach a
//! connected host in well under a second. The server being down only
//! delays this loop (jittered backoff); the agent is untouched.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use palette_protocol::timefmt::parse_rfc3339;
use palette_protocol::v2::{CheckinRequest, CommandAck, HostReport, Outcome};
use sha2::{Digest, Sha256};

use palette_host::settings::Protocol;

use crate::actions::{self, Ctx};
use crate::backoff::Backoff;
use crate::client::ClientError;
use crate::controller::{Handle, Msg};
use crate::now_ms;
use crate::update::{self, Candidate, Integrity, Product};

pub async fn host_report(ctx: &Ctx) -> HostReport {
    let d = ctx.durable.get();
    HostReport {
        hostname: ctx.hostname.clone(),
        product: ctx.settings.product.clone(),
        platform: ctx.settings.platform.clone(),
        watchdog_version: palette_host::stamp::version().into(),
        agent_version: ctx.layout.current_version(),
        agent_state: ctx.supervisor.agent_state().await,
        desired_state: d.desired,
        config_revision: d.config_revision,
        last_update: d.last_update,
        last_watchdog_update: d.last_watchdog_update,
        update_progress: ctx.update_progress(),
        // A host without any agent says so plainly in its status.
        local_trouble: ctx.durable.trouble().or_else(|| {
            ctx.layout.current_version().is_none().then(|| {
                "no agent installed: no release has been installed on this host yet".into()
            })
        }),
        labels: ctx.settings.labels.clone(),
    }
}

/// Whether a failed check-in shows a server that knows only the legacy v1
/// API (it answers 404 on `/api/v2/checkin`).
pub fn legacy_only(err: &ClientError) -> bool {
    matches!(err, ClientError::Status { status, .. } if *status == reqwest::StatusCode::NOT_FOUND)
}

/// Runs the check-in loop until `shutdown`. Returns `true` only when
/// `server.protocol` is `auto` and the server turns out to speak only the
/// legacy v1 API. Commands and releases go to the controller; this loop
/// never waits for them, and checks in again at once when the controller
/// has acknowledgements or an update outcome to report.
pub async fn run(ctx: &Arc<Ctx>, handle: &Handle, shutdown: &CancellationToken) -> bool {
    let auto = ctx.settings.server.protocol == Protocol::Auto;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut seen_release = None;
    let mut seen_config = None;
    let mut seen_watchdog_release = None;
    let mut down_since: Option<std::time::Instant> = None;
    // The last offer sent to the controller, per product: sent again only
    // when it changes or a minute passed (the controller may have been busy).
    let mut last_offer = OfferMemory::default();
    let mut retry_epoch = 0;
    let wait = Duration::from_secs(ctx.settings.server.checkin_wait_secs);
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return false;
        }
        if let Some(at) = last_start {
            let next = at + MIN_CHECKIN_GAP;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.cancelled() => return false,
            }
        }
        last_start = Some(tokio::time::Instant::now());
        let client = match ctx.client() {
            Ok(c) => c,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(
                    error = %actions::chain(&e),
                    retry_s = delay.as_secs(),
                    "cannot talk to the server"
                );
                ctx.progressed();
                if sleep_or_shutdown(delay, shutdown).await {
                    return false;
                }
                continue;
            }
        };
        ctx.durable.retry_save();
        ctx.identity.retry_save();
        // Enrolling is never cancelled halfway (a token the server made and
        // this host dropped would leave the name taken): it runs to its
        // answer or its timeout. A failure is a failed check-in.
        let enrolled = ctx.identity.ensure(&client, &ctx.hostname).await;
        let client = match &enrolled {
            Ok(Some(token)) => client.with_host_token(Some(token.clone())),
            _ => client,
        };
        let durable = ctx.durable.get();
        let sent_acks = durable.pending_acks;
        let req = CheckinRequest {
            store_id: durable.store_id,
            host: host_report(ctx).await,
            results: sent_acks.clone(),
            seen_release,
            seen_config,
            seen_watchdog_release: Some(seen_watchdog_release),
        };
        let answer = match enrolled {
            Err(e) => Err(e),
            Ok(_) => tokio::select! {
                r = client.checkin(&req, wait) => r,
                _ = handle.news.notified() => continue,
                _ = shutdown.cancelled() => return false,
            },
        };
        ctx.progressed();
        let resp = match answer {
            Ok(r) => {
                ctx.checked_in();
                r
            }
            Err(e) if crate::identity::token_refused(&client, &e) => {
                tracing::warn!(error = %actions::chain(&e), "the server refused this host's token (revoked?): enrolling again");
                ctx.identity.forget();
                if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                    return false;
                }
                continue;
            }
            Err(e) if auto && legacy_only(&e) => {
                tracing::warn!(endpoint = client.config.endpoint, "the server does not know the v2 API (404 on /api/v2/checkin): using the legacy v1 API (set server.protocol to pin one)");
                return true;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if down_since.is_none() {
                    down_since = Some(std::time::Instant::now());
                    let hint = e
                        .transport_hint()
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    tracing::warn!(error = %actions::chain(&e), retry_ms = delay.as_millis() as u64, "check-in failed; the agent keeps running, retrying with backoff{hint}");
                } else {
                    tracing::debug!(error = %actions::chain(&e), "check-in still failing");
                }
                if sleep_or_shutdown(delay, shutdown).await {
                    return false;
                }
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
        seen_watchdog_release = resp.watchdog_release.as_ref().map(|r| r.id);
        seen_config = resp.config_revision;

        // Only redeliveries: the server did not take our acknowledgements.
        // Never spin on that; pause before the next check-in.
        let known = ctx.durable.get();
        let only_repeats = !resp.commands.is_empty()
            && resp
                .commands
                .iter()
                .all(|c| ctx.command_in_flight(c.id) || known.performed(c.id).is_some());
        if !take_commands(ctx, handle, &known, resp.commands).await {
            return false;
        }

        for (product, r) in [
            (Product::Agent, resp.release),
            (Product::Watchdog, resp.watchdog_release),
        ] {
            let Some(r) = r else { continue };
            let cand = Candidate {
                product,
                release_id: r.id,
                version: r.version,
                kind: r.kind,
                url: r.url.clone(),
                integrity: Integrity::Sha256 {
                    hex: r.sha256.clone(),
                    size: r.size,
                },
                manifest: r.manifest.clone(),
                signature: r.signature.clone(),
                rollback_from: r.rollback_from.clone(),
            };
            let epoch = ctx.retry_offers.load(std::sync::atomic::Ordering::Relaxed);
            if epoch != retry_epoch {
                retry_epoch = epoch;
                last_offer = OfferMemory::default();
            }
            let offer = ctx.active_update() != Some(cand.release_id)
                && update::wanted(ctx, &cand)
                && last_offer.fresh(product, cand.release_id);
            let msg = Msg::Offer {
                cand: Box::new(cand),
                client: client.clone(),
            };
            if offer && !handle.send(msg).await {
                return false;
            }
        }

        report_config_if_changed(ctx, &client).await;
        // Only commands already performed or still being performed came
        // back: the server holds them until it has our acknowledgements.
        // Wait for the controller's news (an ack ready), or back off if the
        // server does not take them — never spin.
        if only_repeats {
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = handle.news.notified() => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }
}

/// The most new commands taken from one check-in answer; the rest come
/// again with the next one (the server keeps what is not acknowledged).
pub const MAX_COMMANDS_PER_ANSWER: usize = 64;
/// The most acknowledgements held for the server (with the commands being
/// performed); beyond, no command is taken until some are delivered.
pub const MAX_PENDING_ACKS: usize = 256;
/// The least time between the starts of two check-ins: a server that
/// answers at once cannot make this host spin.
pub const MIN_CHECKIN_GAP: Duration = Duration::from_secs(1);

/// Takes the commands of one answer, within `MAX_COMMANDS_PER_ANSWER` and
/// `MAX_PENDING_ACKS`: refusals and repeats become acknowledgements, new
/// ones are marked performed (before acting: a crash never repeats one) and
/// sent to the controller — with one durable write for the whole batch.
/// `false` when the controller is gone.
async fn take_commands(
    ctx: &Ctx,
    handle: &Handle,
    known: &crate::durable::Durable,
    commands: Vec<palette_protocol::v2::Command>,
) -> bool {
    let mut room =
        MAX_PENDING_ACKS.saturating_sub(known.pending_acks.len() + ctx.commands_in_flight());
    let mut new_room = MAX_COMMANDS_PER_ANSWER;
    let mut seen = std::collections::HashSet::new();
    let mut acks = Vec::new();
    let mut perform = Vec::new();
    let mut left = 0usize;
    for cmd in commands {
        if ctx.command_in_flight(cmd.id) || !seen.insert(cmd.id) {
            continue; // the controller has it, or a duplicate in this answer
        }
        if room == 0 {
            left += 1;
            continue;
        }
        let refusal = if let Some(prev) = known.performed(cmd.id) {
            Some((prev, "already performed".to_string()))
        } else {
            match parse_rfc3339(&cmd.expires_at) {
                Ok(t) if t < now_ms() => Some((
                    Outcome::Failed,
                    format!("{} expired before it could be performed", cmd.kind.as_str()),
                )),
                Ok(_) => None,
                Err(_) => Some((
                    Outcome::Failed,
                    format!(
                        "{} refused: its expiry {:?} cannot be read",
                        cmd.kind.as_str(),
                        cmd.expires_at
                    ),
                )),
            }
        };
        match refusal {
            Some((outcome, message)) => {
                if message != "already performed" {
                    tracing::warn!(
                        id = cmd.id,
                        command = cmd.kind.as_str(),
                        message,
                        "command not performed"
                    );
                }
                room -= 1;
                acks.push(CommandAck {
                    id: cmd.id,
                    hostname: ctx.hostname.clone(),
                    outcome,
                    message,
                    at: String::new(),
                });
            }
            None if new_room == 0 => left += 1,
            None => {
                room -= 1;
                new_room -= 1;
                perform.push(cmd);
            }
        }
    }
    if left > 0 {
        tracing::warn!(
            left,
            taken = acks.len() + perform.len(),
            "the server sent more commands than are taken at once; the rest are taken from later check-ins"
        );
    }
    if acks.is_empty() && perform.is_empty() {
        return true;
    }
    ctx.durable.update(|d| {
        for ack in &acks {
            d.mark_performed(ack.id, ack.outcome);
        }
        d.pending_acks.extend(acks.iter().cloned());
        for cmd in &perform {
            d.mark_performed(cmd.id, Outcome::Failed);
        }
    });
    if !acks.is_empty() {
        handle.news.notify_one();
    }
    for cmd in perform {
        ctx.start_command(cmd.id);
        if !handle
            .send(Msg::Perform {
                id: Some(cmd.id),
                kind: cmd.kind,
            })
            .await
        {
            return false;
        }
    }
    true
}

/// The last offer sent per product, and when.
#[derive(Default)]
struct OfferMemory {
    agent: Option<(i64, std::time::Instant)>,
    watchdog: Option<(i64, std::time::Instant)>,
}

impl OfferMemory {
    /// Whether offering `id` now is news (and notes it as sent).
    fn fresh(&mut self, product: Product, id: i64) -> bool {
        let slot = match product {
            Product::Agent => &mut self.agent,
            Product::Watchdog => &mut self.watchdog,
        };
        let fresh =
            slot.is_none_or(|(last, at)| last != id || at.elapsed() > Duration::from_secs(60));
        if fresh {
            *slot = Some((id, std::time::Instant::now()));
        }
        fresh
    }
}

/// Sleeps `d`; `true` if shutdown came first.
pub(crate) async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
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
        Err(e) => {
            tracing::warn!(error = %actions::chain(&e), "could not report Config.yml; will retry")
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
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
