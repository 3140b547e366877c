//! What the watchdog does on a command: start, stop, restart, GET-CONFIG
//! (download, validate, check the new endpoint accepts the new token,
//! replace `Config.yml` atomically, upload the applied copy, restart the
//! agent if it ran), PUT-CONFIG (upload the current file) and
//! RETRY-UPDATES (forget the failed releases, offer them again). Each
//! returns a one-line outcome for the operator.
//!
//! Must not: acknowledge a command or queue it (the controller does), or
//! install a release; a config is replaced only through a validated atomic
//! write, and put back when the agent is not healthy on it.

use palette_host::agent_config::AgentConfig;
use palette_host::settings::Protocol;
use palette_protocol::v2::{CommandKind, DesiredState};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::ctx::Ctx;
use crate::error::{chain, ActionError};

/// Performs one command; `Ok` carries the message for the operator.
pub async fn perform(ctx: &Ctx, kind: CommandKind) -> Result<String, ActionError> {
    let sup = &ctx.supervisor;
    match kind {
        CommandKind::Start => {
            sup.set_desired(DesiredState::Running).await?;
            Ok("agent started".into())
        }
        CommandKind::Stop => {
            sup.set_desired(DesiredState::Stopped).await?;
            Ok("agent stopped; it stays stopped until a start or restart command".into())
        }
        CommandKind::Restart => {
            sup.restart().await?;
            Ok("agent restarted".into())
        }
        CommandKind::GetConfig => get_config(ctx).await,
        CommandKind::RetryUpdates => {
            let cleared = ctx
                .durable
                .update(|d| std::mem::take(&mut d.failed_releases));
            ctx.updates.clear_retry();
            ctx.updates.offer_again();
            tracing::info!(
                ?cleared,
                "failed-release marks cleared by an operator: offered releases are tried again"
            );
            Ok(format!(
                "{} failed release mark(s) cleared; offered releases are tried again",
                cleared.len()
            ))
        }
        CommandKind::Unknown => Err(ActionError::UnknownCommand {
            version: palette_host::stamp::version(),
        }),
        CommandKind::PutConfig => {
            let client = ctx.client()?;
            let path = ctx.layout.config_yml();
            let bytes = read_file(&path)
                .await
                .map_err(|source| ActionError::ReadConfig { path, source })?;
            upload_config(ctx, &client, bytes).await?;
            Ok("Config.yml uploaded".into())
        }
    }
}

/// Reads a small file off the async worker threads.
async fn read_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    tokio::fs::read(path).await
}

/// Uploads `bytes` as the config this host has.
pub async fn upload_config(ctx: &Ctx, client: &Client, bytes: Vec<u8>) -> Result<(), ActionError> {
    let sha = hex::encode(Sha256::digest(&bytes));
    match ctx.transport.protocol() {
        Protocol::V1 => client.v1_put_config(&ctx.hostname, bytes).await,
        _ => client.report_config(&ctx.hostname, bytes).await.map(|_| ()),
    }
    .map_err(ActionError::Upload)?;
    ctx.durable.update(|d| d.reported_config_sha = Some(sha));
    Ok(())
}

async fn get_config(ctx: &Ctx) -> Result<String, ActionError> {
    let client = ctx.client()?;
    let (rev, bytes) = match ctx.transport.protocol() {
        Protocol::V1 => client.v1_config(&ctx.hostname).await,
        _ => client.desired_config(&ctx.hostname).await,
    }
    .map_err(ActionError::Download)?;
    let applied = apply_config(ctx, bytes, rev).await;
    // As the original watchdog does: after a refused GET-CONFIG the file
    // in place is uploaded, so the legacy server shows what the host runs,
    // not the file it refused.
    if applied.is_err() && ctx.transport.protocol() == Protocol::V1 {
        match read_file(&ctx.layout.config_yml()).await {
            Ok(current) => match upload_config(ctx, &client, current).await {
                Ok(()) => tracing::info!(
                    "the Config.yml in place was uploaded after the refused GET-CONFIG"
                ),
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "could not upload the Config.yml in place after the refused GET-CONFIG")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Config.yml in place to upload it")
            }
        }
    }
    applied
}

/// Validates and applies a new `Config.yml`. On any refusal the old file
/// stays untouched.
pub async fn apply_config(
    ctx: &Ctx,
    bytes: Vec<u8>,
    rev: Option<i64>,
) -> Result<String, ActionError> {
    let target = ctx.layout.config_yml();
    if read_file(&target).await.is_ok_and(|cur| cur == bytes) {
        ctx.durable.update(|d| {
            if rev.is_some() {
                d.config_revision = rev;
            }
        });
        tracing::info!(revision = ?rev, "GET-CONFIG delivered the Config.yml already in place; nothing to do");
        return Ok(format!(
            "Config.yml unchanged{}; agent not restarted",
            rev.map(|r| format!(" (revision {r})")).unwrap_or_default()
        ));
    }
    let scratch = ctx.layout.updates().join("Config.yml.new");
    palette_host::fsx::atomic_write(&scratch, &bytes).map_err(ActionError::Stage)?;
    let new = AgentConfig::parse(&bytes).map_err(ActionError::Refused)?;
    let probe =
        Client::new(new.clone(), &ctx.settings.server).map_err(ActionError::RefusedClient)?;
    probe
        .check_license()
        .await
        .map_err(|source| ActionError::LicenseRefused {
            endpoint: new.endpoint.clone(),
            source,
        })?;
    let previous = read_file(&target).await.ok();
    if let Some(old) = &previous {
        let _ = palette_host::fsx::atomic_write(
            &ctx.layout.config_dir().join("Config.yml.previous"),
            old,
        );
    }
    // Subscribed before the restart: an agent that dies at once on the new
    // file is seen.
    let events = ctx.supervisor.service().events();
    palette_host::fsx::atomic_write(&target, &bytes).map_err(|source| ActionError::Replace {
        path: target.clone(),
        source,
    })?;
    let _ = fs_err::remove_file(&scratch);
    tracing::info!(revision = ?rev, endpoint = new.endpoint, "new Config.yml in place");
    let mut msg = format!(
        "Config.yml applied{}",
        rev.map(|r| format!(" (revision {r})")).unwrap_or_default()
    );
    let restarted = match ctx.supervisor.restart_if_running().await {
        Ok(r) => r,
        Err(source) => {
            return Err(ActionError::RestartAfterApply {
                applied: msg,
                source,
            })
        }
    };
    if restarted {
        // The agent must stay up (and pass its probe) on the new file, or
        // the previous file comes back.
        if let Err(why) = crate::health::watch(ctx, events).await {
            let why = chain(&why);
            let log = crate::health::agent_log_tail(ctx, 5);
            let restart = match &previous {
                Some(old) => {
                    palette_host::fsx::atomic_write(&target, old).map_err(|source| {
                        ActionError::Replace {
                            path: target.clone(),
                            source,
                        }
                    })?;
                    match ctx.supervisor.restart_if_running().await {
                        Ok(_) => String::new(),
                        Err(e) => format!(" but restarting the agent on it failed: {}", chain(&e)),
                    }
                }
                None => " (there was none; the new file stays)".into(),
            };
            tracing::error!(revision = ?rev, why, "new Config.yml rolled back: the agent was not healthy on it");
            // Make sure a start after a crash-exit uses the restored file.
            let _ = ctx.supervisor.set_desired(ctx.supervisor.desired()).await;
            return Err(ActionError::ConfigRolledBack { why, restart, log });
        }
        msg.push_str("; agent restarted and healthy");
    } else {
        msg.push_str("; agent was not running, left stopped");
    }
    ctx.durable.update(|d| {
        if rev.is_some() {
            d.config_revision = rev;
        }
    });
    tracing::info!(revision = ?rev, "new Config.yml applied");
    let probe = probe.with_host_token(ctx.transport.identity.token_for(&new.endpoint));
    if let Err(e) = upload_config(ctx, &probe, bytes).await {
        tracing::warn!(
            error = %chain(&e),
            "applied config could not be uploaded; it will be reported at the next check-in"
        );
        msg.push_str("; upload of the applied copy failed, will retry");
    }
    Ok(msg)
}
