//! Legacy v1 mode, exactly as the 2017 watchdog polls an Insight Server:
//! commands every 2 minutes (ignoring a repeat of the last one performed and
//! any older than 7 minutes), updates every 3 minutes (`/agent/version`,
//! download, MD5). Unlike the legacy watchdog, a commanded stop is durable
//! and an MD5-only release is installed only with `trust.allow_legacy_md5`.
//!
//! Must not: perform a command or install a release (the controller does);
//! it only polls and passes on what is new.

use std::time::Duration;

use palette_protocol::timefmt::parse_rfc3339;
use palette_protocol::v2::CommandKind;
use tokio_util::sync::CancellationToken;

use crate::backoff::jittered;
use crate::client::Client;
use crate::controller::{Handle, Msg};
use crate::ctx::Ctx;
use crate::error::chain;
use crate::job;
use crate::now_ms;
use crate::offer::Candidate;

/// A legacy command older than this is ignored.
pub const FRESHNESS_MS: i64 = 7 * 60 * 1000;

/// Polls until `shutdown`; commands and releases go to the controller.
pub async fn run(ctx: &Ctx, handle: &Handle, shutdown: &CancellationToken) {
    let commands_every = Duration::from_secs(ctx.settings.intervals.commands_secs);
    let updates_every = Duration::from_secs(ctx.settings.intervals.updates_secs);
    let mut next_cmd = tokio::time::Instant::now();
    let mut next_upd = tokio::time::Instant::now();
    let mut said = Said::default();
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_cmd {
            if let Some(kind) = poll_command(ctx).await {
                if !handle.send(Msg::Perform { id: None, kind }).await {
                    return;
                }
            }
            ctx.transport.progressed();
            next_cmd = tokio::time::Instant::now() + jittered(commands_every);
        }
        if now >= next_upd {
            if let Some((cand, client)) = check_update(ctx, &mut said).await {
                if !handle
                    .send(Msg::Offer {
                        cand: Box::new(cand),
                        client,
                    })
                    .await
                {
                    return;
                }
            }
            next_upd = tokio::time::Instant::now() + jittered(updates_every);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_cmd.min(next_upd)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// What was already logged about releases, so it is logged once.
#[derive(Default)]
struct Said {
    /// The last legacy version refused for want of the MD5 opt-in.
    refused_md5: Option<palette_protocol::Version>,
    /// The last known-bad release skipped.
    skipped_bad: Option<i64>,
}

/// The command to perform, if the poll brought a new, fresh one.
async fn poll_command(ctx: &Ctx) -> Option<CommandKind> {
    let client = match ctx.client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %chain(&e), "cannot talk to the server");
            return None;
        }
    };
    let polled = client.v1_command(&ctx.hostname).await;
    if polled.is_ok() {
        ctx.transport.checked_in();
    }
    let cmd = match polled {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "command poll failed; the agent keeps running");
            return None;
        }
    };
    let key = (cmd.ts.clone(), cmd.command.clone());
    if ctx.durable.get().legacy_last.as_ref() == Some(&key) {
        return None;
    }
    let Ok(ts) = parse_rfc3339(&cmd.ts) else {
        tracing::error!(ts = cmd.ts, "command has an unreadable ts; ignored");
        return None;
    };
    if now_ms() - ts > FRESHNESS_MS {
        tracing::debug!(
            command = cmd.command,
            ts = cmd.ts,
            "command older than 7 minutes; ignored"
        );
        return None;
    }
    ctx.durable.update(|d| d.legacy_last = Some(key));
    let Some(kind) = CommandKind::parse(&cmd.command).filter(|k| k.is_legacy()) else {
        tracing::error!(command = cmd.command, "unknown legacy command; ignored");
        return None;
    };
    tracing::info!(
        command = cmd.command,
        ts = cmd.ts,
        "legacy command received"
    );
    Some(kind)
}

/// The release to offer the controller, if one should be installed.
async fn check_update(ctx: &Ctx, said: &mut Said) -> Option<(Candidate, Client)> {
    let client = match ctx.client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %chain(&e), "cannot talk to the server");
            return None;
        }
    };
    let v = match client.v1_agent_version(&ctx.settings.platform).await {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "update check failed");
            return None;
        }
    };
    let cand = Candidate::from_v1(&v);
    let id = cand.release_id;
    if ctx.durable.get().failed_releases.contains(&id) {
        if said.skipped_bad != Some(id) {
            tracing::warn!(version = %cand.version, md5 = v.md5, "the offered legacy release failed here before; skipped until the server offers another file");
            said.skipped_bad = Some(id);
        }
        return None;
    }
    if ctx.updates.active() == Some(id) || !job::wanted(ctx, &cand) {
        return None;
    }
    if !ctx.settings.trust.allow_legacy_md5 {
        if said.refused_md5 != Some(cand.version) {
            tracing::warn!(version = %cand.version, "a legacy release is offered with only an MD5 and no signature; not installed (set trust.allow_legacy_md5 to accept legacy releases)");
            said.refused_md5 = Some(cand.version);
        }
        return None;
    }
    Some((cand, client))
}
