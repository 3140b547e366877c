//! The watchdog's side of its self-update (releases of product
//! `watchdog`): download and verify like any release, then hand the rest to
//! `manager_in_action self-update`, which swaps the binaries, restarts the
//! watchdog onto the new one and puts the old one back unless the new one
//! proves itself in time (see `palette_manager::selfupdate`).
//!
//! At every start, before anything else, `on_start` settles a self-update
//! the journal says is unfinished (`palette_host::self_journal`): it
//! reports a finished one, puts the old binaries back after an interrupted
//! one, or — when this process *is* the new watchdog — returns
//! `Probation`: `prove` then runs the self-check, waits for the first
//! check-in, and writes the proof the manager waits for.
//!
//! The agent keeps running throughout: a watchdog stopped for a self-update
//! leaves it (`leaves_agent_running`), the next one adopts it.
//!
//! Must not: touch the agent, its versions or the agent update's journal,
//! or swap binaries itself while a manager runs (the manager does; only a
//! new watchdog that fails its self-check with no manager left puts the old
//! binaries back).

use std::sync::Arc;
use std::time::Duration;

use palette_host::self_journal::{self, SelfJournal, SelfOutcome, SelfProof, SelfStep};
use palette_protocol::v2::{Outcome, UpdatePhase, UpdateReport};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::ctx::{Ctx, Phase};
use crate::error::{chain, ManagerError, SelfCheckError};
use crate::install::{self, Fetched};
use crate::offer::{Candidate, Product};
use crate::own_version;

/// Whether a watchdog release should be installed now: self-update is on,
/// it is newer than this watchdog, and no update is unfinished.
pub(crate) fn wanted(ctx: &Ctx, cand: &Candidate) -> bool {
    ctx.settings.self_update.enabled
        && (cand.version > own_version() || install::signed_downgrade(ctx, cand, own_version()))
        && !ctx.layout.journal().exists()
        && !ctx.layout.self_journal().exists()
}

/// Whether a stop now is part of a self-update (asked when the stop
/// begins): the agent is then left running for the next watchdog, which
/// adopts it.
pub(crate) fn leaves_agent_running(ctx: &Ctx) -> bool {
    matches!(
        SelfJournal::load(&ctx.layout),
        Ok(Some(j)) if matches!(j.step, SelfStep::Swapping | SelfStep::Restarting | SelfStep::Reverting)
    )
}

/// The restart command the manager is given: the setting, else the
/// service manager this watchdog runs under; none: the manager restarts
/// the watchdog itself.
fn restart_words(ctx: &Ctx) -> Vec<String> {
    if !ctx.settings.self_update.restart.is_empty() {
        return ctx.settings.self_update.restart.clone();
    }
    crate::platform::service_restart_command().unwrap_or_default()
}

/// Downloads the release and hands it to the manager. Returns only when
/// this watchdog is still running afterwards: the manager refused the
/// release, died, or put this (old) watchdog back in place.
pub(crate) async fn install(
    ctx: &Ctx,
    client: &Client,
    cand: Candidate,
    cancel: &CancellationToken,
    installing: &std::sync::atomic::AtomicBool,
) -> Option<UpdateReport> {
    let (path, sha256, size) = match install::fetch(ctx, client, &cand, cancel).await {
        Fetched::Got {
            path, sha256, size, ..
        } => (path, sha256, size),
        Fetched::Ended(r) => return r,
    };
    installing.store(true, std::sync::atomic::Ordering::SeqCst);
    ctx.updates.set_phase(Some(Phase {
        product: Product::Watchdog,
        release_id: cand.release_id,
        version: cand.version,
        step: UpdatePhase::Installing,
        total: Some(size),
    }));
    if let Err(e) = install::copy_manager(ctx) {
        return Some(install::local_trouble_or_fail(
            ctx,
            &cand,
            &path,
            &e,
            "the manager could not be put in place",
        ));
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return Some(install::report_with(
                ctx,
                Product::Watchdog,
                cand.release_id,
                cand.version,
                Outcome::Failed,
                format!("cannot find this watchdog's executable: {e}"),
                false,
            ))
        }
    };
    let mut args = vec![
        "self-update".to_string(),
        path.display().to_string(),
        format!("--version={}", cand.version),
        format!("--sha256={sha256}"),
        format!("--release-id={}", cand.release_id),
        format!("--watchdog-exe={}", exe.display()),
        format!("--previous={}", own_version()),
        format!("--prove-secs={}", ctx.settings.self_update.prove_secs),
    ];
    let words = restart_words(ctx);
    for w in &words {
        args.push(format!("--restart-word={w}"));
    }
    tracing::info!(
        version = %cand.version,
        restart = if words.is_empty() { "by the manager".to_string() } else { words.join(" ") },
        "handing the self-update to the manager: this watchdog is replaced by the new one, which must check in within {} s",
        ctx.settings.self_update.prove_secs
    );
    let ran = install::run_manager(ctx, &args).await;
    // Still running: the manager is done with this attempt.
    let journal = SelfJournal::load(&ctx.layout).ok().flatten();
    match (ran, journal) {
        // Died (killed, crashed) before it journaled anything: nothing was
        // changed, and an interruption is no verdict on the release.
        (Err(e @ ManagerError::NoResult { .. }), None) => {
            Some(install::retry_later(ctx, &cand, |secs| {
                format!(
                    "the self-update to {} was interrupted before anything was changed (the manager ended without a result: {}); it is tried again in {secs} s",
                    cand.version,
                    chain(&e)
                )
            }))
        }
        (Err(e), None) => Some(install::local_trouble_or_fail(
            ctx,
            &cand,
            &path,
            &e,
            "the manager refused the watchdog release; nothing was changed",
        )),
        (_, Some(j)) => match settle(ctx, j) {
            Settled::Reported(r) => r,
            Settled::Probation(_) => None,
        },
        (Ok(_), None) => None,
    }
}

/// What a start found.
pub(crate) enum Startup {
    Normal,
    /// This process is the new watchdog of an unfinished self-update.
    Probation(SelfJournal),
}

enum Settled {
    Reported(Option<UpdateReport>),
    Probation(SelfJournal),
}

/// Settles an unfinished self-update at start (see the module doc). Waits
/// for a manager still at work unless it waits for this watchdog.
pub(crate) async fn on_start(ctx: &Ctx) -> Startup {
    loop {
        let j = match SelfJournal::load(&ctx.layout) {
            Ok(Some(j)) => j,
            Ok(None) => {
                let _ = fs_err::remove_file(ctx.layout.self_proof());
                return Startup::Normal;
            }
            Err(e) => {
                let aside = ctx.layout.self_journal().with_extension("json.corrupt");
                let _ = fs_err::rename(ctx.layout.self_journal(), &aside);
                tracing::error!(error = %e, aside = %aside.display(), "the self-update journal is unreadable: set aside; the binaries on disk stay as they are");
                return Startup::Normal;
            }
        };
        let mine = j.version == own_version();
        if palette_host::lock::is_held(&ctx.layout.manager_lock()) {
            if mine && matches!(j.step, SelfStep::Swapping | SelfStep::Restarting) {
                tracing::info!(version = %j.version, "this is the new watchdog of a self-update: it proves itself by checking in");
                return Startup::Probation(j);
            }
            tracing::warn!(step = ?j.step, "a manager is carrying out a self-update; waiting for it");
            wait_for_manager(ctx, &CancellationToken::new()).await;
            continue;
        }
        return match settle(ctx, j) {
            Settled::Reported(_) => Startup::Normal,
            Settled::Probation(j) => Startup::Probation(j),
        };
    }
}

/// Waits until no manager runs; `false` if `shutdown` came first.
async fn wait_for_manager(ctx: &Ctx, shutdown: &CancellationToken) -> bool {
    let lock = ctx.layout.manager_lock();
    while palette_host::lock::is_held(&lock) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.cancelled() => return false,
        }
    }
    true
}

/// Settles a journal no manager is working on.
fn settle(ctx: &Ctx, j: SelfJournal) -> Settled {
    let mine = j.version == own_version();
    let layout = &ctx.layout;
    let report = |outcome, message: String, retry| {
        let r = install::report_with(
            ctx,
            Product::Watchdog,
            j.release_id,
            j.version,
            outcome,
            message,
            retry,
        );
        if let Err(e) = SelfJournal::clear(layout) {
            tracing::error!(error = %e, "could not clear the self-update journal");
        }
        let _ = fs_err::remove_dir_all(layout.self_new());
        Settled::Reported(Some(r))
    };
    match (j.step, &j.outcome) {
        (SelfStep::Done, Some(SelfOutcome { ok, message })) => report(
            if *ok {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            },
            message.clone(),
            false,
        ),
        (SelfStep::Swapping | SelfStep::Restarting, _) if mine => Settled::Probation(j),
        (SelfStep::Staged, _) => report(
            Outcome::Failed,
            format!(
                "the self-update to {} was interrupted before the binaries were swapped; nothing was changed; it is tried again",
                j.version
            ),
            true,
        ),
        (step, _) => {
            let restored = if own_version().to_string() == j.previous {
                self_journal::restore_old(layout, &j.watchdog_exe)
            } else {
                tracing::warn!(running = %own_version(), previous = j.previous, new = %j.version, "this watchdog is neither the old nor the new one of the unfinished self-update; its binaries are left as they are");
                Ok(())
            };
            if let Err(e) = restored {
                tracing::error!(error = %e, "could not put the old binaries back; trying again at the next start");
                return Settled::Reported(None);
            }
            match (step, j.failure.clone()) {
                (SelfStep::Reverting, Some(why)) => report(Outcome::Failed, why, false),
                _ => report(
                    Outcome::Failed,
                    format!(
                        "the self-update to {} was interrupted (step {step:?}); the old binaries were put back; it is tried again",
                        j.version
                    ),
                    true,
                ),
            }
        }
    }
}

/// The new watchdog's self-check: the manager it came with runs.
async fn self_check(ctx: &Ctx) -> Result<(), SelfCheckError> {
    const WITHIN: Duration = Duration::from_secs(20);
    let exe = ctx.layout.manager();
    let shown = exe.display().to_string();
    let run = tokio::process::Command::new(&exe)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(WITHIN, run).await {
        Err(_) => Err(SelfCheckError::TimedOut {
            exe: shown,
            secs: WITHIN.as_secs(),
        }),
        Ok(Err(error)) => Err(SelfCheckError::Spawn { exe: shown, error }),
        Ok(Ok(out)) if out.status.success() && out.stdout.starts_with(b"palette-manager ") => {
            Ok(())
        }
        Ok(Ok(out)) => Err(SelfCheckError::Failed {
            exe: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

/// On probation: self-check, first check-in, proof; then, once the manager
/// is done, report the outcome.
pub(crate) async fn prove(
    ctx: Arc<Ctx>,
    j: SelfJournal,
    news: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let proof = |problem: Option<String>| SelfProof {
        version: j.version,
        pid: std::process::id(),
        problem,
    };
    if let Err(e) = self_check(&ctx).await {
        let problem = e.to_string();
        tracing::error!(
            problem,
            "the self-check failed: the old watchdog is put back"
        );
        let _ = proof(Some(problem.clone())).save(&ctx.layout);
        if !palette_host::lock::is_held(&ctx.layout.manager_lock()) {
            // No manager to put the old one back: this watchdog does it,
            // and exits for the service manager to start the old binary.
            let mut j = j.clone();
            j.step = SelfStep::Reverting;
            j.failure = Some(format!(
                "watchdog {} refused: its self-check failed: {problem}; the old watchdog {} was put back",
                j.version, j.previous
            ));
            let _ = j.save(&ctx.layout);
            if let Err(e) = self_journal::restore_old(&ctx.layout, &j.watchdog_exe) {
                tracing::error!(error = %e, "could not put the old binaries back");
            }
            tracing::error!(
                "exiting: the old watchdog takes over when the service manager starts it again"
            );
            std::process::exit(1);
        }
        return;
    }
    let mut checkins = ctx.transport.checkins();
    tokio::select! {
        r = checkins.wait_for(|n| *n > 0) => if r.is_err() { return },
        _ = shutdown.cancelled() => return,
    }
    if let Err(e) = proof(None).save(&ctx.layout) {
        tracing::error!(error = %e, "could not write the self-update proof");
        return;
    }
    tracing::info!(version = %j.version, "self-check passed and checked in: proof written for the manager");
    if !wait_for_manager(&ctx, &shutdown).await {
        return; // stopped (replaced) while the manager decides
    }
    match SelfJournal::load(&ctx.layout) {
        Ok(Some(done)) if done.step == SelfStep::Done => {
            let _ = settle(&ctx, done);
        }
        Ok(Some(mut open)) if open.version == j.version => {
            // The manager died before deciding: the proof stands.
            open.step = SelfStep::Done;
            open.outcome = Some(SelfOutcome {
                ok: true,
                message: format!(
                    "watchdog {} installed; it passed its self-check and checked in (was {}; the manager did not finish, the new watchdog committed itself)",
                    open.version, open.previous
                ),
            });
            let _ = open.save(&ctx.layout);
            let _ = settle(&ctx, open);
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "cannot read the self-update journal"),
    }
    news.notify_one();
    tracing::info!(version = %own_version(), "self-update settled: {}", ctx.durable.get().last_watchdog_update.map(|u| u.message).unwrap_or_default());
}
