//! Installing a release: download (streaming, verified) into `Updates/`,
//! copy the manager to `manager_in_action`, stop the agent, have the
//! manager verify, unpack and switch `current`, start the agent, check its
//! health, then commit — or roll back and restart the old version. The
//! manager journals each step, so a crash anywhere ends, after recovery, in
//! the old or the new version running.

use std::time::Duration;

use palette_host::manager_result::{ManagerResult, RecoveryKind};
use palette_protocol::v2::{Outcome, ReleaseKind, UpdatePhase, UpdateReport};
use palette_protocol::Version;

use crate::actions::{chain, Ctx};
use crate::client::{Client, Expect};
use crate::error::{HealthError, ManagerError};

/// How a download is checked.
#[derive(Debug, Clone)]
pub enum Integrity {
    /// v2: SHA-256 and size from the release record.
    Sha256 { hex: String, size: u64 },
    /// Legacy v1: MD5 only (accepted only with `trust.allow_legacy_md5`).
    Md5(String),
}

/// What a release installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// The supervised agent (`versions/<v>`).
    Agent,
    /// The watchdog and manager themselves (a self-update).
    Watchdog,
}

impl Product {
    pub fn as_str(self) -> &'static str {
        match self {
            Product::Agent => "agent",
            Product::Watchdog => "watchdog",
        }
    }
}

/// A release this host should install.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub product: Product,
    pub release_id: i64,
    pub version: Version,
    pub kind: ReleaseKind,
    pub url: String,
    pub integrity: Integrity,
    /// The signed manifest and its signature, as the server passed them on.
    pub manifest: Option<String>,
    pub signature: Option<String>,
    /// Installed versions an operator rolled back to this release.
    pub rollback_from: Vec<Version>,
}

/// Whether `cand` should be installed: newer than what runs (an older one
/// only when its signed manifest claims to authorise that downgrade, which
/// `fetch` then verifies, or, on a host that verifies no signatures, when an
/// operator rolled the installed version back) and not already failed.
pub fn wanted(ctx: &Ctx, cand: &Candidate) -> bool {
    let newer = match cand.product {
        Product::Agent => ctx.layout.current_version().is_none_or(|cur| {
            cand.version > cur
                || signed_downgrade(ctx, cand, cur)
                || operator_rollback(ctx, cand, cur)
        }),
        Product::Watchdog => crate::selfupdate::wanted(ctx, cand),
    };
    let waiting = ctx
        .download_retry
        .lock()
        .unwrap()
        .is_some_and(|(id, at, _)| id == cand.release_id && std::time::Instant::now() < at);
    newer && !waiting && !ctx.durable.get().failed_releases.contains(&cand.release_id)
}

/// An older release whose manifest claims a downgrade from `installed` is
/// authorised: considered only when this host verifies signatures.
pub(crate) fn signed_downgrade(ctx: &Ctx, cand: &Candidate, installed: Version) -> bool {
    cand.version < installed
        && ctx.trust.is_some()
        && palette_host::trust::claims_downgrade(cand.manifest.as_deref(), installed)
}

/// An older release an operator rolled `installed` back to, on a host that
/// verifies no signatures (the server is trusted with everything there; a
/// host with `trust.keys` needs the signed manifest to say so).
pub(crate) fn operator_rollback(ctx: &Ctx, cand: &Candidate, installed: Version) -> bool {
    cand.version < installed && ctx.trust.is_none() && cand.rollback_from.contains(&installed)
}

/// With `trust.keys` set: the release's signed manifest must verify and
/// match the offer, before anything is downloaded or stopped.
fn check_trust(ctx: &Ctx, cand: &Candidate) -> Result<(), palette_host::trust::Refusal> {
    let Some(keys) = &ctx.trust else {
        return Ok(());
    };
    let (sha256, size) = match &cand.integrity {
        Integrity::Sha256 { hex, size } => (hex.as_str(), *size),
        Integrity::Md5(_) => ("", 0),
    };
    let (product, installed) = match cand.product {
        Product::Agent => (ctx.settings.product.as_str(), ctx.layout.current_version()),
        Product::Watchdog => ("watchdog", Some(crate::selfupdate::own_version())),
    };
    let offer = palette_host::trust::Offer {
        product,
        platform: &ctx.settings.platform,
        version: cand.version,
        kind: cand.kind,
        sha256,
        size,
        installed,
        now_ms: crate::now_ms(),
    };
    palette_host::trust::check(
        keys,
        cand.manifest.as_deref(),
        cand.signature.as_deref(),
        &offer,
    )
    .map(drop)
}

/// How many failed release ids are remembered.
const MAX_FAILED_KEPT: usize = 256;

/// Longest wait before downloading a release again after a passing
/// failure (the first is `intervals.download_retry_secs`).
const RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// Free space kept beyond what a download and its unpacking need.
const SPACE_MARGIN: u64 = 64 * 1024 * 1024;

/// Schedules another download attempt of `id`, backing off.
fn schedule_retry(ctx: &Ctx, id: i64) -> Duration {
    let first =
        Duration::from_secs(ctx.settings.intervals.download_retry_secs.max(1)).min(RETRY_MAX);
    let mut slot = ctx.download_retry.lock().unwrap();
    let delay = match *slot {
        Some((prev, _, d)) if prev == id => (d * 2).min(RETRY_MAX),
        _ => first,
    };
    let delay = crate::backoff::jittered(delay);
    *slot = Some((id, std::time::Instant::now() + delay, delay));
    // The check-in loops offer a release again as soon as its retry is
    // due (not only after their minute of offer memory): the delay logged
    // is the delay kept.
    ctx.retry_offers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    delay
}

/// Reports a failure for a passing reason and schedules the next attempt;
/// `msg` gets the delay in seconds.
pub(crate) fn retry_later(
    ctx: &Ctx,
    cand: &Candidate,
    msg: impl FnOnce(u64) -> String,
) -> UpdateReport {
    let delay = schedule_retry(ctx, cand.release_id);
    report_with(
        ctx,
        cand.product,
        cand.release_id,
        cand.version,
        Outcome::Failed,
        msg(delay.as_secs()),
        true,
    )
}

/// Records and logs the outcome. A failure is final for this release
/// (not retried until another is offered) unless `retry` says otherwise.
fn report(
    ctx: &Ctx,
    cand_id: i64,
    version: Version,
    outcome: Outcome,
    message: String,
) -> UpdateReport {
    report_with(
        ctx,
        Product::Agent,
        cand_id,
        version,
        outcome,
        message,
        false,
    )
}

pub(crate) fn report_with(
    ctx: &Ctx,
    product: Product,
    cand_id: i64,
    version: Version,
    outcome: Outcome,
    message: String,
    retry: bool,
) -> UpdateReport {
    let what = product.as_str();
    match outcome {
        Outcome::Succeeded => tracing::info!(product = what, %version, message, "update succeeded"),
        Outcome::Failed => tracing::error!(product = what, %version, message, "update failed"),
    }
    let r = UpdateReport {
        release_id: cand_id,
        version,
        outcome,
        message,
    };
    ctx.durable.update(|d| {
        match product {
            Product::Agent => d.last_update = Some(r.clone()),
            Product::Watchdog => d.last_watchdog_update = Some(r.clone()),
        }
        if outcome == Outcome::Failed && !retry && !d.failed_releases.contains(&cand_id) {
            d.failed_releases.push(cand_id);
            // Bounded: a server offering ever new bad releases cannot grow
            // the state file without end (the oldest are forgotten).
            let excess = d.failed_releases.len().saturating_sub(MAX_FAILED_KEPT);
            d.failed_releases.drain(..excess);
        }
    });
    r
}

/// How an update job ended.
#[derive(Debug)]
pub enum Ended {
    /// It ran to an outcome, which was recorded and logged.
    Reported(UpdateReport),
    /// Its download was cancelled (a stop, a newer release, shutdown):
    /// nothing was installed and nothing is held against the release.
    Cancelled,
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Gzip,
    Zip,
    /// An OLE compound file: a Windows Installer package.
    Msi,
    Unknown,
}

/// Recognises a download by its magic bytes.
pub fn sniff(path: &std::path::Path) -> std::io::Result<Content> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut f = fs_err::File::open(path)?;
    let n = f.read(&mut head)?;
    let head = &head[..n];
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Content::Gzip
    } else if head.starts_with(b"PK\x03\x04") {
        Content::Zip
    } else if head.starts_with(&[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1]) {
        Content::Msi
    } else {
        Content::Unknown
    })
}

/// Runs the whole update; never panics, always reports unless cancelled
/// while downloading. `installing` is set once nothing can cancel it any
/// more (the agent is about to be stopped).
pub async fn install(
    ctx: &Ctx,
    client: &Client,
    cand: Candidate,
    cancel: &tokio_util::sync::CancellationToken,
    installing: &std::sync::atomic::AtomicBool,
) -> Ended {
    let total = match &cand.integrity {
        Integrity::Sha256 { size, .. } => Some(*size),
        Integrity::Md5(_) => None,
    };
    ctx.download_bytes
        .store(0, std::sync::atomic::Ordering::Relaxed);
    ctx.set_update_phase(Some((
        cand.product,
        cand.release_id,
        cand.version,
        UpdatePhase::Downloading,
        total,
    )));
    let ended = match cand.product {
        Product::Agent => install_inner(ctx, client, cand, cancel, installing).await,
        Product::Watchdog => {
            crate::selfupdate::install(ctx, client, cand, cancel, installing).await
        }
    };
    ctx.set_update_phase(None);
    match ended {
        Some(r) => Ended::Reported(r),
        None => Ended::Cancelled,
    }
}

/// A verified download, or how the attempt ended.
pub(crate) enum Fetched {
    Got {
        path: std::path::PathBuf,
        sha256: String,
        size: u64,
        /// A Windows Installer package (installed by msiexec), not an archive.
        msi: bool,
    },
    /// Reported (a failure), or `None`: cancelled.
    Ended(Option<UpdateReport>),
}

/// Downloads `cand` into `Updates/` (resuming a part of the same file),
/// after checking there is room for it and its unpacking; verifies it and
/// checks it is an archive. Nothing is stopped here.
pub(crate) async fn fetch(
    ctx: &Ctx,
    client: &Client,
    cand: &Candidate,
    cancel: &tokio_util::sync::CancellationToken,
) -> Fetched {
    let fail = |msg: String| {
        Fetched::Ended(Some(report_with(
            ctx,
            cand.product,
            cand.release_id,
            cand.version,
            Outcome::Failed,
            msg,
            false,
        )))
    };
    let installable = match cand.kind {
        ReleaseKind::Archive => true,
        ReleaseKind::Msi => crate::platform::installs_msi(),
        ReleaseKind::Installer => false,
    };
    if !installable {
        return fail(format!(
            "release kind {} cannot be installed on {} yet",
            cand.kind.as_str(),
            ctx.settings.platform
        ));
    }
    if let Err(refusal) = check_trust(ctx, cand) {
        tracing::error!(product = cand.product.as_str(), version = %cand.version, release = cand.release_id, %refusal, "release refused: its signed manifest does not verify; nothing was downloaded or stopped");
        // What this host may fix (its keys, its clock) is asked again
        // later; what the release is (unsigned, for something else) is not.
        return if refusal.may_pass_later() {
            Fetched::Ended(Some(retry_later(ctx, cand, |secs| {
                format!("refused (signature check): {refusal}; checked again in {secs} s")
            })))
        } else {
            fail(format!("refused (signature check): {refusal}"))
        };
    }
    if let Integrity::Sha256 { hex, .. } = &cand.integrity {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return fail(format!("the server gave a malformed sha256 {hex:?}"));
        }
    }
    tracing::info!(product = cand.product.as_str(), version = %cand.version, release = cand.release_id, "downloading update");
    let updates = ctx.layout.updates();
    // Named by content: a part of this very file is kept and resumed;
    // everything else in Updates/ is left over from earlier attempts.
    let content_id = match &cand.integrity {
        Integrity::Sha256 { hex, .. } => hex.to_ascii_lowercase(),
        Integrity::Md5(hex) => format!("md5-{}", hex.to_ascii_lowercase()),
    };
    let dest = updates.join(format!("{}-{content_id}", cand.product.as_str()));
    let keep = dest.with_extension("part");
    if let Ok(entries) = fs_err::read_dir(&updates) {
        for e in entries.flatten() {
            if e.path() == keep {
                continue;
            }
            let _ = if e.path().is_dir() {
                fs_err::remove_dir_all(e.path())
            } else {
                fs_err::remove_file(e.path())
            };
        }
    }
    let _ = fs_err::create_dir_all(&updates);
    // Room for the download and its unpacking, checked before starting.
    if let Integrity::Sha256 { size, .. } = &cand.integrity {
        let have_part = fs_err::metadata(&keep).map(|m| m.len()).unwrap_or(0);
        let need = size.saturating_sub(have_part) + size.saturating_mul(2) + SPACE_MARGIN;
        if let Some(free) = palette_host::disk::available_space(&updates) {
            if free < need {
                return Fetched::Ended(Some(retry_later(ctx, cand, |secs| {
                    format!(
                        "not enough free disk space for the update: {} MiB needed (download, unpacking and a margin), {} MiB free in {}; nothing was stopped; retrying in {secs} s",
                        need >> 20,
                        free >> 20,
                        updates.display(),
                    )
                })));
            }
        }
    }
    let expect = match &cand.integrity {
        Integrity::Sha256 { hex, size } => Expect::Sha256 {
            hex,
            size: Some(*size),
        },
        Integrity::Md5(hex) => Expect::Md5(hex),
    };
    let downloaded = tokio::select! {
        r = client.download(&cand.url, &dest, expect, ctx.settings.server.download_rate_bytes_per_sec, &ctx.download_bytes) => r,
        _ = cancel.cancelled() => {
            let _ = fs_err::remove_file(dest.with_extension("part"));
            tracing::info!(version = %cand.version, "download cancelled; nothing installed");
            return Fetched::Ended(None);
        }
    };
    let got = match downloaded {
        Ok(g) => g,
        Err(e) if e.is_transient() => {
            return Fetched::Ended(Some(retry_later(ctx, cand, |secs| {
                format!(
                    "download failed, nothing installed; retrying in {secs} s: {}",
                    chain(&e)
                )
            })));
        }
        Err(e) => {
            return fail(format!(
                "download refused, nothing installed: {}",
                chain(&e)
            ))
        }
    };
    *ctx.download_retry.lock().unwrap() = None;
    tracing::info!(version = %cand.version, bytes = got.size, sha256 = got.sha256, "download verified");

    // What the file is decides what can install it: refused here, before
    // anything is stopped.
    let msi = match sniff(&dest) {
        Ok(Content::Gzip | Content::Zip) => false,
        Ok(Content::Msi) if crate::platform::installs_msi() && cand.product == Product::Agent => {
            true
        }
        Ok(Content::Msi) => {
            let _ = fs_err::remove_file(&dest);
            return fail(format!(
                "the release is a Windows Installer (MSI) package, which cannot be installed on {}; the agent was not stopped",
                ctx.settings.platform
            ));
        }
        Ok(Content::Unknown) => {
            let _ = fs_err::remove_file(&dest);
            return fail(
                "the release is neither a tar.gz nor a zip archive; the agent was not stopped"
                    .into(),
            );
        }
        Err(e) => return fail(format!("cannot read the download: {e}")),
    };
    Fetched::Got {
        path: dest,
        sha256: got.sha256,
        size: got.size,
        msi,
    }
}

async fn install_inner(
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
    let (dest, got_sha, got_size, msi) = match fetch(ctx, client, &cand, cancel).await {
        Fetched::Got {
            path,
            sha256,
            size,
            msi,
        } => (path, sha256, size, msi),
        Fetched::Ended(r) => return r,
    };
    installing.store(true, std::sync::atomic::Ordering::SeqCst);
    ctx.set_update_phase(Some((
        cand.product,
        cand.release_id,
        cand.version,
        UpdatePhase::Installing,
        Some(got_size),
    )));

    if let Err(e) = copy_manager(ctx) {
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

/// A manager step failed: the local disk's trouble is passing (the
/// download is deleted to free the space, retried with backoff), anything
/// else is held against the release.
pub(crate) fn local_trouble_or_fail(
    ctx: &Ctx,
    cand: &Candidate,
    dest: &std::path::Path,
    e: &ManagerError,
    what: &str,
) -> UpdateReport {
    if e.is_local_trouble() {
        let _ = fs_err::remove_file(dest);
        retry_later(ctx, cand, |secs| {
            format!(
                "{what}: a local disk problem ({}); nothing was kept, retrying in {secs} s",
                chain(e)
            )
        })
    } else {
        report_with(
            ctx,
            cand.product,
            cand.release_id,
            cand.version,
            Outcome::Failed,
            format!("{what}: {}", chain(e)),
            false,
        )
    }
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
    let phase = ctx.update_progress();
    if let Some(p) = phase {
        ctx.set_update_phase(Some((
            Product::Agent,
            p.release_id,
            p.version,
            UpdatePhase::HealthChecking,
            p.total,
        )));
    }
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

pub(crate) fn copy_manager(ctx: &Ctx) -> Result<(), ManagerError> {
    let src = ctx.layout.manager();
    let dst = ctx.layout.manager_in_action();
    let tmp = dst.with_extension("new");
    let copy = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ManagerError::Copy { path, source }
    };
    // Whatever fails, no partial copy is left on a full disk.
    if let Err(e) = fs_err::copy(&src, &tmp) {
        let _ = fs_err::remove_file(&tmp);
        return Err(copy(&tmp)(e));
    }
    if let Err(e) = fs_err::rename(&tmp, &dst) {
        let _ = fs_err::remove_file(&tmp);
        return Err(copy(&dst)(e));
    }
    Ok(())
}

/// Runs `manager_in_action` in its own process group (it outlives a
/// stopped watchdog) and waits for it. Its output goes to a file, not a
/// pipe, so it never dies of a closed pipe; its outcome is read from the
/// result file it writes (`state/manager-result.json`).
pub(crate) async fn run_manager(ctx: &Ctx, args: &[String]) -> Result<ManagerResult, ManagerError> {
    let exe = ctx.layout.manager_in_action();
    if !exe.exists() {
        copy_manager(ctx)?;
    }
    let spawn = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ManagerError::Spawn { path, source }
    };
    ManagerResult::clear(&ctx.layout).map_err(spawn(&ManagerResult::path(&ctx.layout)))?;
    let out_path = ctx.layout.logs().join("manager-console.log");
    // The manager's stdout/stderr need the std handle.
    let (out, _) = fs_err::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&out_path)
        .map_err(spawn(&out_path))?
        .into_parts();
    let err = out.try_clone().map_err(spawn(&out_path))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("--base")
        .arg(&ctx.layout.base)
        .args(args)
        .stdout(out)
        .stderr(err);
    // Just copied: a fork elsewhere in this process may still hold the
    // copy's write handle until it execs (ETXTBSY); that passes at once.
    let mut tries = 0;
    let mut child = loop {
        match palette_service::spawn_detached(&mut cmd) {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => break other.map_err(spawn(&exe))?,
        }
    };
    let status = child.wait().await.map_err(spawn(&exe))?;
    let result = ManagerResult::load(&ctx.layout).ok().flatten();
    match result {
        Some(r) if r.ok && status.success() => Ok(r),
        Some(r) if !r.ok => Err(ManagerError::Failed {
            op: args[0].clone(),
            reason: r.reason.unwrap_or_else(|| "no reason given".into()),
            local_io: r.local_io,
        }),
        _ => {
            let text = tokio::fs::read_to_string(&out_path)
                .await
                .unwrap_or_default();
            Err(ManagerError::NoResult {
                op: args[0].clone(),
                status: status.to_string(),
                last: text.lines().last().unwrap_or("").trim().to_string(),
            })
        }
    }
}
