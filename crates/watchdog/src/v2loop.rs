//! The v2 check-in loop: a long poll that reports this host's state and
//! acknowledgements and gets back commands (each performed once, by id), the
//! release to run and the config revision to have. Commands reach a
//! connected host in well under a second. The server being down only
//! delays this loop (jittered backoff); the agent is untouched.
//!
//! Must not: perform a command or install a release (the controller does,
//! and queues the acknowledgements this loop delivers), or wait for the
//! controller: it only hands over and checks in again.

use std::sync::Arc;
use std::time::Duration;

use palette_host::settings::Protocol;
use palette_protocol::timefmt::parse_rfc3339;
use palette_protocol::v2::{CheckinRequest, CheckinResponse, CommandAck, HostReport, Outcome};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::actions;
use crate::backoff::Backoff;
use crate::client::{Client, ClientError};
use crate::controller::{Handle, Msg};
use crate::ctx::Ctx;
use crate::durable::Durable;
use crate::error::chain;
use crate::identity::token_refused;
use crate::job;
use crate::now_ms;
use crate::offer::{Candidate, OfferMemory, Product};

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
        update_progress: ctx.updates.progress(),
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
///
/// Each round has three steps: [`CheckinLoop::check_in`] (pace, enroll,
/// long-poll with the pending acknowledgements; back off on failure),
/// [`CheckinLoop::deliver_acks`] (what the server took leaves the durable
/// state) and [`CheckinLoop::apply_answer`] (store, commands, offers,
/// config).
pub async fn run(ctx: &Arc<Ctx>, handle: &Handle, shutdown: &CancellationToken) -> bool {
    let mut checkins = CheckinLoop::new(ctx, handle, shutdown);
    loop {
        match checkins.check_in().await {
            CheckedIn::Answered(answer) => {
                let Answer { resp, client, acks } = *answer;
                checkins.deliver_acks(&acks);
                if !checkins.apply_answer(resp, &client).await {
                    return false;
                }
            }
            CheckedIn::Again => {}
            CheckedIn::Legacy => return true,
            CheckedIn::Shutdown => return false,
        }
    }
}

/// What one check-in came to.
enum CheckedIn {
    /// The server answered.
    Answered(Box<Answer>),
    /// No answer this time (it failed and was waited out, or the controller
    /// had news first): check in again.
    Again,
    /// `auto` found a server that knows only the legacy v1 API.
    Legacy,
    Shutdown,
}

/// An answered check-in.
struct Answer {
    resp: CheckinResponse,
    /// The client it went through (with this host's token).
    client: Client,
    /// The acknowledgements it carried.
    acks: Vec<CommandAck>,
}

/// What the last answer offered, sent back with the next check-in: the
/// server answers at once when it changes.
#[derive(Default)]
struct Seen {
    release: Option<i64>,
    config: Option<i64>,
    watchdog_release: Option<i64>,
}

/// The check-in loop's state from one round to the next.
struct CheckinLoop<'a> {
    ctx: &'a Ctx,
    handle: &'a Handle,
    shutdown: &'a CancellationToken,
    /// `server.protocol` is `auto`: a 404 means a legacy-only server.
    auto: bool,
    /// How long the server may hold a check-in.
    wait: Duration,
    backoff: Backoff,
    seen: Seen,
    /// Since when check-ins fail (logged once, and when they pass again).
    down_since: Option<std::time::Instant>,
    /// The last offer sent to the controller, per product: sent again only
    /// when it changes or a minute passed (the controller may have been busy).
    offers: OfferMemory,
    /// The offer epoch `offers` belongs to (`Updates::offer_epoch`).
    offer_epoch: u64,
    last_start: Option<tokio::time::Instant>,
}

impl<'a> CheckinLoop<'a> {
    fn new(ctx: &'a Ctx, handle: &'a Handle, shutdown: &'a CancellationToken) -> Self {
        CheckinLoop {
            ctx,
            handle,
            shutdown,
            auto: ctx.settings.server.protocol == Protocol::Auto,
            wait: Duration::from_secs(ctx.settings.server.checkin_wait_secs),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            seen: Seen::default(),
            down_since: None,
            offers: OfferMemory::default(),
            offer_epoch: 0,
            last_start: None,
        }
    }

    /// Waits out `delay`; `Again`, or `Shutdown` if it came first.
    async fn pause(&self, delay: Duration) -> CheckedIn {
        if sleep_or_shutdown(delay, self.shutdown).await {
            CheckedIn::Shutdown
        } else {
            CheckedIn::Again
        }
    }

    /// One check-in, at least `MIN_CHECKIN_GAP` after the last one began:
    /// enrolls first when this host has no token, reports the host and the
    /// pending acknowledgements, and waits for the answer (cut short by the
    /// controller's news). A failure is backed off here.
    async fn check_in(&mut self) -> CheckedIn {
        let ctx = self.ctx;
        if self.shutdown.is_cancelled() {
            return CheckedIn::Shutdown;
        }
        if let Some(at) = self.last_start {
            let next = at + MIN_CHECKIN_GAP;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.shutdown.cancelled() => return CheckedIn::Shutdown,
            }
        }
        self.last_start = Some(tokio::time::Instant::now());
        let client = match ctx.client() {
            Ok(c) => c,
            Err(e) => {
                let delay = self.backoff.next_delay();
                tracing::error!(
                    error = %chain(&e),
                    retry_s = delay.as_secs(),
                    "cannot talk to the server"
                );
                ctx.transport.progressed();
                return self.pause(delay).await;
            }
        };
        let identity = &ctx.transport.identity;
        ctx.durable.retry_save();
        identity.retry_save();
        // Enrolling is never cancelled halfway (a token the server made and
        // this host dropped would leave the name taken): it runs to its
        // answer or its timeout. A failure is a failed check-in.
        let enrolled = identity.ensure(&client, &ctx.hostname).await;
        let client = match &enrolled {
            Ok(Some(token)) => client.with_host_token(Some(token.clone())),
            _ => client,
        };
        let durable = ctx.durable.get();
        let acks = durable.pending_acks;
        let req = CheckinRequest {
            store_id: durable.store_id,
            host: host_report(ctx).await,
            results: acks.clone(),
            seen_release: self.seen.release,
            seen_config: self.seen.config,
            seen_watchdog_release: Some(self.seen.watchdog_release),
        };
        let answer = match enrolled {
            Err(e) => Err(e),
            Ok(_) => tokio::select! {
                r = client.checkin(&req, self.wait) => r,
                _ = self.handle.news.notified() => return CheckedIn::Again,
                _ = self.shutdown.cancelled() => return CheckedIn::Shutdown,
            },
        };
        ctx.transport.progressed();
        let resp = match answer {
            Ok(r) => {
                ctx.transport.checked_in();
                r
            }
            Err(e) if token_refused(&client, &e) => {
                tracing::warn!(error = %chain(&e), "the server refused this host's token (revoked?): enrolling again");
                identity.forget();
                let delay = self.backoff.next_delay();
                return self.pause(delay).await;
            }
            Err(e) if self.auto && legacy_only(&e) => {
                tracing::warn!(endpoint = client.config.endpoint, "the server does not know the v2 API (404 on /api/v2/checkin): using the legacy v1 API (set server.protocol to pin one)");
                return CheckedIn::Legacy;
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                if self.down_since.is_none() {
                    self.down_since = Some(std::time::Instant::now());
                    let hint = e
                        .transport_hint()
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    tracing::warn!(error = %chain(&e), retry_ms = delay.as_millis() as u64, "check-in failed; the agent keeps running, retrying with backoff{hint}");
                } else {
                    tracing::debug!(error = %chain(&e), "check-in still failing");
                }
                return self.pause(delay).await;
            }
        };
        self.backoff.reset();
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                after_s = since.elapsed().as_secs(),
                "server reachable again"
            );
        }
        CheckedIn::Answered(Box::new(Answer { resp, client, acks }))
    }

    /// The server answered a check-in that carried `sent`: it has them, so
    /// they leave the durable state (acknowledgements queued meanwhile
    /// stay for the next check-in).
    fn deliver_acks(&self, sent: &[CommandAck]) {
        if !sent.is_empty() {
            self.ctx.durable.update(|d| {
                d.pending_acks
                    .retain(|a| !sent.iter().any(|s| s.id == a.id))
            });
        }
    }

    /// Acts on an answer: notes the server's store (a new one resets the
    /// ids kept), takes its commands, passes its offers on, reports a
    /// changed `Config.yml`, and pauses when only repeats came back.
    /// `false` when the controller is gone or on shutdown.
    async fn apply_answer(&mut self, resp: CheckinResponse, client: &Client) -> bool {
        let ctx = self.ctx;
        if let Some(store) = resp.store_id.as_deref() {
            if let Some(old) = ctx.durable.update(|d| d.switch_store(store)) {
                tracing::warn!(
                    old_store = old,
                    new_store = store,
                    "the server's store changed (restored or replaced): command and release ids start afresh; forgetting those of the old store"
                );
            }
        }
        self.seen = Seen {
            release: resp.release.as_ref().map(|r| r.id),
            config: resp.config_revision,
            watchdog_release: resp.watchdog_release.as_ref().map(|r| r.id),
        };

        // Only redeliveries: the server did not take our acknowledgements.
        // Never spin on that; pause before the next check-in.
        let known = ctx.durable.get();
        let only_repeats = !resp.commands.is_empty()
            && resp
                .commands
                .iter()
                .all(|c| ctx.commands.contains(c.id) || known.performed(c.id).is_some());
        if !take_commands(ctx, self.handle, &known, resp.commands).await {
            return false;
        }
        for (product, r) in [
            (Product::Agent, resp.release),
            (Product::Watchdog, resp.watchdog_release),
        ] {
            let Some(r) = r else { continue };
            if !self.pass_on(Candidate::from_v2(product, &r), client).await {
                return false;
            }
        }

        report_config_if_changed(ctx, client).await;
        // Only commands already performed or still being performed came
        // back: the server holds them until it has our acknowledgements.
        // Wait for the controller's news (an ack ready), or back off if the
        // server does not take them — never spin.
        if only_repeats {
            tokio::select! {
                _ = tokio::time::sleep(self.backoff.next_delay()) => {}
                _ = self.handle.news.notified() => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
        true
    }

    /// Offers `cand` to the controller unless the job already works on it,
    /// it is not wanted here, or it was offered within the last minute (and
    /// nothing happened since that calls for offering it again). `false`
    /// when the controller is gone.
    async fn pass_on(&mut self, cand: Candidate, client: &Client) -> bool {
        let ctx = self.ctx;
        let epoch = ctx.updates.offer_epoch();
        if epoch != self.offer_epoch {
            self.offer_epoch = epoch;
            self.offers = OfferMemory::default();
        }
        let offer = ctx.updates.active() != Some(cand.release_id)
            && job::wanted(ctx, &cand)
            && self.offers.fresh(cand.product, cand.release_id);
        let msg = Msg::Offer {
            cand: Box::new(cand),
            client: client.clone(),
        };
        !offer || self.handle.send(msg).await
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
    known: &Durable,
    commands: Vec<palette_protocol::v2::Command>,
) -> bool {
    let mut room = MAX_PENDING_ACKS.saturating_sub(known.pending_acks.len() + ctx.commands.count());
    let mut new_room = MAX_COMMANDS_PER_ANSWER;
    let mut seen = std::collections::HashSet::new();
    let mut acks = Vec::new();
    let mut perform = Vec::new();
    let mut left = 0usize;
    for cmd in commands {
        if ctx.commands.contains(cmd.id) || !seen.insert(cmd.id) {
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
        ctx.commands.start(cmd.id);
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

/// Sleeps `d`; `true` if shutdown came first.
pub(crate) async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// Uploads `Config.yml` when it differs from what was last reported.
async fn report_config_if_changed(ctx: &Ctx, client: &Client) {
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
            tracing::warn!(error = %chain(&e), "could not report Config.yml; will retry")
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
