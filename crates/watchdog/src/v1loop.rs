//! Legacy v1 mode, exactly as the 2017 watchdog polls an Insight Server:
//! commands every 2 minutes (ignoring a repeat of the last one performed and
//! any older than 7 minutes), updates every 3 minutes (`/agent/version`,
//! download, MD5). Unlike the legacy watchdog, a commanded stop is durable
//! and an MD5-only release is installed only with `trust.allow_legacy_md5`.

use std::time::Duration;

use palette_protocol::timefmt::parse_rfc3339;
use palette_protocol::v2::{CommandKind, ReleaseKind};

use crate::actions::{self, Ctx};
use crate::backoff::jittered;
use crate::now_ms;
use crate::update::{self, Candidate, Integrity};

/// A legacy command older than this is ignored.
pub const FRESHNESS_MS: i64 = 7 * 60 * 1000;

pub async fn run(ctx: &Ctx) {
    let commands_every = Duration::from_secs(ctx.settings.intervals.commands_secs);
    let updates_every = Duration::from_secs(ctx.settings.intervals.updates_secs);
    let mut next_cmd = tokio::time::Instant::now();
    let mut next_upd = tokio::time::Instant::now();
    let mut refused = None;
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_cmd {
            poll_command(ctx).await;
            next_cmd = tokio::time::Instant::now() + jittered(commands_every);
        }
        if now >= next_upd {
            check_update(ctx, &mut refused).await;
            next_upd = tokio::time::Instant::now() + jittered(updates_every);
        }
        tokio::time::sleep_until(next_cmd.min(next_upd)).await;
    }
}

async fn poll_command(ctx: &Ctx) {
    let client = match ctx.client() {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = e, "cannot talk to the server"),
    };
    let cmd = match client.v1_command(&ctx.hostname).await {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            return tracing::warn!(error = %actions::chain(&e), "command poll failed; the agent keeps running")
        }
    };
    let key = (cmd.ts.clone(), cmd.command.clone());
    if ctx.durable.get().legacy_last.as_ref() == Some(&key) {
        return;
    }
    let Ok(ts) = parse_rfc3339(&cmd.ts) else {
        return tracing::error!(ts = cmd.ts, "command has an unreadable ts; ignored");
    };
    if now_ms() - ts > FRESHNESS_MS {
        tracing::debug!(
            command = cmd.command,
            ts = cmd.ts,
            "command older than 7 minutes; ignored"
        );
        return;
    }
    ctx.durable.update(|d| d.legacy_last = Some(key));
    let Some(kind) = CommandKind::parse(&cmd.command).filter(|k| k.is_legacy()) else {
        return tracing::error!(command = cmd.command, "unknown legacy command; ignored");
    };
    tracing::info!(
        command = cmd.command,
        ts = cmd.ts,
        "performing legacy command"
    );
    match actions::perform(ctx, kind).await {
        Ok(m) => tracing::info!(command = cmd.command, message = m, "command done"),
        Err(m) => tracing::error!(command = cmd.command, message = m, "command failed"),
    }
}

/// `refused`: the last legacy version refused for want of the MD5 opt-in
/// (warned about once, not every 3 minutes).
async fn check_update(ctx: &Ctx, refused: &mut Option<palette_protocol::Version>) {
    let client = match ctx.client() {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = e, "cannot talk to the server"),
    };
    let v = match client.v1_agent_version().await {
        Ok(Some(v)) => v,
        Ok(None) => return,
        Err(e) => return tracing::warn!(error = %actions::chain(&e), "update check failed"),
    };
    // Legacy releases have no id: a stable one from the version keeps the
    // failed-release memory working.
    let id = -((v.major as i64) * 1_000_000 + (v.minor as i64) * 1_000 + v.patch as i64) - 1;
    let cand = Candidate {
        release_id: id,
        version: v.version(),
        kind: ReleaseKind::Archive,
        url: v.url.clone(),
        integrity: Integrity::Md5(v.md5.clone()),
    };
    if !update::wanted(ctx, &cand) {
        return;
    }
    if !ctx.settings.trust.allow_legacy_md5 {
        if *refused != Some(cand.version) {
            tracing::warn!(version = %cand.version, "a legacy release is offered with only an MD5 and no signature; not installed (set trust.allow_legacy_md5 to accept legacy releases)");
            *refused = Some(cand.version);
        }
        return;
    }
    update::install(ctx, &client, cand).await;
}
