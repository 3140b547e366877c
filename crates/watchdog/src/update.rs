//! An agent update, after the shared download (`install`): copy the
//! manager to `manager_in_action`, have it stage the release while the
//! agent runs on, stop the agent, have the manager switch `current` (or
//! run the MSI), start the agent, check its health, then commit — or roll
//! back and restart the old version. The manager journals each step, so a
//! crash anywhere ends, after recovery (`recover`, at the next start), in
//! the old or the new version running.
//!
//! Must not: download or verify anything itself (the shared half does),
//! touch the watchdog's own binaries (a self-update is `selfupdate`), or
//! install while an operator's stop is in force (the controller sees to
//! that).

use palette_host::manager_result::RecoveryKind;
use palette_protocol::v2::{Outcome, UpdatePhase, UpdateReport};
use palette_protocol::Version;

use crate::client::Client;
use crate::ctx::{Ctx, Phase};
use crate::error::{chain, HealthError, ManagerError};
use crate::install::{self, local_trouble_or_fail, retry_later, run_manager, Fetched};
use crate::offer::{Candidate, Product};

/// Whether the agent release `cand` is one to install over what runs:
/// newer (an older one only when its signed manifest claims to authorise
/// that downgrade, which the download then verifies, or, on a host that
/// verifies no signatures, when an operator rolled the installed version
/// back), or any when no version is installed.
pub(crate) fn wanted(ctx: &Ctx, cand: &Candidate) -> bool {
    ctx.layout.current_version().is_none_or(|cur| {
        cand.version > cur
            || install::signed_downgrade(ctx, cand, cur)
            || operator_rollback(ctx, cand, cur)
    })
}

/// An older release an operator rolled `installed` back to, on a host that
/// verifies no signatures (the server is trusted with everything there; a
/// host with `trust.keys` needs the signed manifest to say so).
pub(crate) fn operator_rollback(ctx: &Ctx, cand: &Candidate, installed: Version) -> bool {
    cand.version < installed && ctx.trust.is_none() && cand.rollback_from.contains(&installed)
}

/// Records and logs an agent update's outcome; a failure is final for
/// this release (not retried until another is offered).
fn report(
    ctx: &Ctx,
    cand_id: i64,
    version: Version,
    outcome: Outcome,
    message: String,
) -> UpdateReport {
    install::report_with(
        ctx,
        Product::Agent,
        cand_id,
        version,
        outcome,
        message,
        false,
    )
}

/// Installs the agent release `cand`: download, stage, stop, switch, start,
/// health check, commit or roll back. `installing` is set once nothing can
/// cancel it any more (the agent is about to be stopped). `None`: the
/// download was cancelled.
pub(crate) async fn install(
    ctx: &Ctx,
    client: &Client,
    cand: Candidate,
    cancel: &tokio_util::sync::CancellationToken,
    installing: &std::sync::atomic::AtomicBool,
) -> Option<UpdateReport> {
    let fail = |msg: String| {
        Some(report(
            ctx,
            cand.release_id,
            cand.version,
            Outcome::Failed,
            msg,
        ))
    };
    let (dest, got_sha, got_size, msi) = match install::fetch(ctx, client, &cand, cancel).await {
        Fetched::Got {
            path,
            sha256,
            size,
            msi,
        } => (path, sha256, size, msi),
        Fetched::Ended(r) => return r,
    };
    installing.store(true, std::sync::atomic::Ordering::SeqCst);
    ctx.updates.set_phase(Some(Phase {
        product: cand.product,
        release_id: cand.release_id,
        version: cand.version,
        step: UpdatePhase::Installing,
        total: Some(got_size),
    }));

    if let Err(e) = install::copy_manager(ctx) {
        return Some(local_trouble_or_fail(
            ctx,
            &cand,
            &dest,
            &e,
            "the manager could not be put in place",
        ));
    }
    let args = vec![
        if msi { "install-msi" } else { "update" }.to_string(),
        dest.display().to_string(),
        format!("--version={}", cand.version),
        format!("--sha256={got_sha}"),
        format!("--release-id={}", cand.release_id),
    ];
    if !msi {
        // Verified and unpacked into staging while the agent runs on: it
        // is stopped only for the switch.
        let mut stage = args.clone();
        stage.push("--stage-only".into());
        if let Err(e) = run_manager(ctx, &stage).await {
            if let ManagerError::NoResult { .. } = e {
                tracing::error!(error = %chain(&e), "the manager died while staging the update; recovering now");
                return Some(after_manager_death(ctx, &cand, false).await);
            }
            return Some(local_trouble_or_fail(
                ctx,
                &cand,
                &dest,
                &e,
                "the manager refused the update; the agent was not stopped",
            ));
        }
    }
    if let Err(e) = ctx.supervisor.pause().await {
        let _ = ctx.supervisor.resume().await;
        return fail(format!(
            "could not stop the agent for the update: {}",
            chain(&e)
        ));
    }
    if let Err(e) = run_manager(ctx, &args).await {
        if let ManagerError::NoResult { .. } = e {
            // The manager died mid-way (killed, crashed): finish or undo
            // what it journaled now, not at the next watchdog start.
            tracing::error!(error = %chain(&e), "the manager died during the update; recovering now");
            return Some(after_manager_death(ctx, &cand, true).await);
        }
        let _ = ctx.supervisor.resume().await;
        return Some(local_trouble_or_fail(
            ctx,
            &cand,
            &dest,
            &e,
            "the manager refused the update, old version kept",
        ));
    }
    let done = finish(ctx, cand.release_id, cand.version).await;
    // Installed (or rolled back): the download is no longer needed, and a
    // release is not kept twice on disk until the next download.
    if let Err(e) = fs_err::remove_file(&dest) {
        tracing::warn!(error = %e, "could not remove the finished download");
    }
    Some(done)
}
/// After the manager died during an update: `recover` decides. Before the
/// switch the old version stays (a passing failure: retried later); after
/// it the new version is health-checked and committed or rolled back.
async fn after_manager_death(ctx: &Ctx, cand: &Candidate, paused: bool) -> UpdateReport {
    match run_manager(ctx, &["recover".into()]).await {
        Ok(r) if r.recovery == Some(RecoveryKind::NeedsHealthCheck) => {
            Box::pin(finish(ctx, cand.release_id, cand.version)).await
        }
        other => {
            if paused {
                let _ = ctx.supervisor.resume().await;
            }
            let how = match other {
                Ok(_) => "its work was undone".to_string(),
                Err(e) => format!("recovery failed too: {}", chain(&e)),
            };
            retry_later(ctx, cand, |secs| {
                format!(
                    "the manager died before switching versions; {how}; the old version runs; retrying in {secs} s"
                )
            })
        }
    }
}

/// Commits the switched-to version. A manager that died while committing
/// is followed by `recover`: an open journal is committed again, a closed
/// one means the commit was done.
async fn commit(ctx: &Ctx) -> Result<(), ManagerError> {
    match run_manager(ctx, &["commit".into()]).await {
        Ok(_) => Ok(()),
        Err(ManagerError::NoResult { .. }) => {
            tracing::error!("the manager died while committing; checking the journal");
            match run_manager(ctx, &["recover".into()]).await?.recovery {
                Some(RecoveryKind::NeedsHealthCheck) => {
                    run_manager(ctx, &["commit".into()]).await.map(drop)
                }
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

/// Starts the switched-to version, checks it, and commits or rolls back.
/// Success is reported only for the version `versions/current` names.
async fn finish(ctx: &Ctx, release_id: i64, version: Version) -> UpdateReport {
    let checked = match health_check(ctx).await {
        Ok(()) if ctx.layout.current_version() != Some(version) => Err(format!(
            "versions/current names {} instead",
            ctx.layout
                .current_version()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "nothing".into())
        )),
        Ok(()) => Ok(()),
        Err(why) => Err(chain(&why)),
    };
    match checked {
        // Recorded before the commit: a watchdog killed while the manager
        // commits leaves the outcome the manager then makes true.
        Ok(()) => {
            let done = report(
                ctx,
                release_id,
                version,
                Outcome::Succeeded,
                format!("version {version} installed and healthy"),
            );
            match commit(ctx).await {
                Ok(()) => done,
                Err(e) => report(
                    ctx,
                    release_id,
                    version,
                    Outcome::Failed,
                    format!(
                        "version {version} runs but could not be committed: {}",
                        chain(&e)
                    ),
                ),
            }
        }
        Err(why) => {
            let _ = ctx.supervisor.pause().await;
            let rolled = roll_back(ctx).await;
            let _ = ctx.supervisor.resume().await;
            let back = ctx.layout.current_version();
            let msg = match (rolled, back) {
                (Ok(_), Some(back)) => format!(
                    "version {version} failed its health check ({why}); rolled back to {back}"
                ),
                (Ok(_), None) => format!(
                    "version {version} failed its health check ({why}); NO AGENT INSTALLED: this host never had a working version to roll back to"
                ),
                (Err(e), _) => format!(
                    "version {version} failed its health check ({why}); ROLLBACK FAILED: {}",
                    chain(&e)
                ),
            };
            report(ctx, release_id, version, Outcome::Failed, msg)
        }
    }
}

/// How often a rollback whose manager died is run again at once.
const ROLLBACK_TRIES: usize = 3;

/// Rolls back, at once again when the manager dies mid-way (killed,
/// crashed): the rollback is journaled and safe to repeat, and the broken
/// version must not stay current while this watchdog runs. A closed
/// journal after a death means the rollback got to its end.
async fn roll_back(ctx: &Ctx) -> Result<(), ManagerError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match run_manager(ctx, &["rollback".into()]).await {
            Ok(_) => return Ok(()),
            Err(e @ ManagerError::NoResult { .. }) => {
                if !ctx.layout.journal().exists() {
                    tracing::warn!(error = %chain(&e), "the manager died at the end of the rollback; its journal is closed, the rollback is done");
                    return Ok(());
                }
                if tries >= ROLLBACK_TRIES {
                    return Err(e);
                }
                tracing::error!(error = %chain(&e), "the manager died during the rollback; running it again now");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Resumes supervision; the agent must then pass the health watch.
async fn health_check(ctx: &Ctx) -> Result<(), HealthError> {
    ctx.updates.enter(UpdatePhase::HealthChecking);
    let events = ctx.supervisor.service().events();
    ctx.supervisor
        .resume()
        .await
        .map_err(HealthError::DidNotStart)?;
    crate::health::watch(ctx, events).await
}

/// After a restart: finishes an update a crash interrupted. A manager
/// still running (detached, left by the watchdog before this one) holds the
/// manager lock: this waits for it, then runs `manager_in_action recover`
/// like any other manager step, never over a live manager.
pub async fn recover(ctx: &Ctx) -> Option<UpdateReport> {
    let lock_path = ctx.layout.manager_lock();
    let staging_left = fs_err::read_dir(ctx.layout.versions())
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".staging-"))
        })
        .unwrap_or(false);
    if !ctx.layout.journal().exists() && !staging_left && !palette_host::lock::is_held(&lock_path) {
        return None; // nothing was interrupted: no manager run needed
    }
    if palette_host::lock::is_held(&lock_path) {
        tracing::warn!("a manager started before this watchdog is still running; waiting for it before recovering");
        let waited = tokio::task::spawn_blocking(move || {
            palette_host::lock::lock_waiting(&lock_path, |_| {}).map(drop)
        })
        .await;
        if let Ok(Err(e)) = waited {
            tracing::error!(error = %e, "cannot wait for the running manager");
        } else {
            tracing::info!("the earlier manager finished");
        }
    }
    // Read before `recover`, which may close it.
    let journal_id = palette_host::journal::Journal::load(&ctx.layout)
        .ok()
        .flatten()
        .map(|j| j.release_id);
    let result = match run_manager(ctx, &["recover".into()]).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %chain(&e), "update recovery failed");
            return None;
        }
    };
    match (result.recovery, result.version) {
        (Some(RecoveryKind::Discarded), Some(version)) => {
            tracing::warn!(%version, "an update interrupted before its switch was discarded; the old version stays");
            None
        }
        (Some(RecoveryKind::NeedsHealthCheck), Some(version)) => {
            tracing::warn!(%version, "an update was interrupted after its switch; checking the new version's health");
            let _ = ctx.supervisor.pause().await;
            Some(finish(ctx, journal_id.unwrap_or(0), version).await)
        }
        (Some(RecoveryKind::RolledBack), Some(version)) => {
            let back = result
                .current
                .map(|v| v.to_string())
                .unwrap_or_else(|| "no version".into());
            Some(report(
                ctx,
                journal_id.unwrap_or(0),
                version,
                Outcome::Failed,
                format!("version {version} was being rolled back when it was interrupted; the rollback was finished: {back} runs"),
            ))
        }
        (Some(RecoveryKind::Stale), Some(version)) => {
            tracing::error!(%version, current = ?result.current.map(|v| v.to_string()), "the update journal named a version versions/current does not: set aside, nothing reported as installed; what is on disk runs");
            None
        }
        _ => None,
    }
}
