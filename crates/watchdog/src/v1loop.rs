//! Legacy v1 mode, exactly as the 2017 watchdog polls an Insight Server:
//! commands every 2 minutes (ignoring a repeat of the last one performed and
//! any older than 7 minutes), updates every 3 minutes (`/agent/version`,
//! download, MD5). Unlike the legacy watchdog, a commanded stop is durable
//! and an MD5-only release is installed only with `trust.allow_legacy_md5`.

use std::time::Duration;

use palette_protocol::timefmt::parse_rfc3339;
use palette_protocol::v2::{CommandKind, ReleaseKind};

use tokio_util::sync::CancellationToken;

use crate::actions::{self, Ctx};
use crate::backoff::jittered;
use crate::controller::{Handle, Msg};
use crate::now_ms;
use crate::update::{self, Candidate, Integrity};

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn legacy_ids_follow_the_content() {
        let v: palette_protocol::Version = "1.0.1000".parse().unwrap();
        let w: palette_protocol::Version = "1.1.0".parse().unwrap();
        let a = legacy_release_id("aa", &v);
        assert!(a < 0);
        assert_eq!(a, legacy_release_id("AA", &v));
        assert_ne!(
            a,
            legacy_release_id("bb", &v),
            "a fixed file is a new release"
        );
        assert_ne!(a, legacy_release_id("aa", &w), "versions never collide");
    }
}

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
            ctx.progressed();
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

/// A legacy release has no id: one made from its content (MD5 and
/// version), so a fixed file re-published under the same version is a new
/// release, and two versions never collide.
pub fn legacy_release_id(md5: &str, version: &palette_protocol::Version) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{}|{version}", md5.to_ascii_lowercase()).as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    // Negative: never equal to a v2 release id.
    -((i64::from_be_bytes(b) & i64::MAX) | 1)
}

/// The command to perform, if the poll brought a new, fresh one.
async fn poll_command(ctx: &Ctx) -> Option<CommandKind> {
    let client = match ctx.client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %actions::chain(&e), "cannot talk to the server");
            return None;
        }
    };
    let polled = client.v1_command(&ctx.hostname).await;
    if polled.is_ok() {
        ctx.checked_in();
    }
    let cmd = match polled {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %actions::chain(&e), "command poll failed; the agent keeps running");
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
async fn check_update(ctx: &Ctx, said: &mut Said) -> Option<(Candidate, crate::client::Client)> {
    let client = match ctx.client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %actions::chain(&e), "cannot talk to the server");
            return None;
        }
    };
    let v = match client.v1_agent_version(&ctx.settings.platform).await {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %actions::chain(&e), "update check failed");
            return None;
        }
    };
    let id = legacy_release_id(&v.md5, &v.version());
    let cand = Candidate {
        product: crate::update::Product::Agent,
        release_id: id,
        version: v.version(),
        kind: ReleaseKind::Archive,
        url: v.url.clone(),
        integrity: Integrity::Md5(v.md5.clone()),
        // Legacy releases are never signed.
        manifest: None,
        signature: None,
        rollback_from: Vec::new(),
    };
    if ctx.durable.get().failed_releases.contains(&id) {
        if said.skipped_bad != Some(id) {
            tracing::warn!(version = %cand.version, md5 = v.md5, "the offered legacy release failed here before; skipped until the server offers another file");
            said.skipped_bad = Some(id);
        }
        return None;
    }
    if ctx.active_update() == Some(id) || !update::wanted(ctx, &cand) {
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
