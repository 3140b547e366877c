//! The update steps, each recorded in the journal before the next begins:
//! verify → unpack into `versions/<v>` → switch `current`. The watchdog then
//! starts the agent and checks its health, and calls `commit` or
//! `rollback`. `recover` finishes what a crash interrupted.

use std::io::Read;
use std::path::{Path, PathBuf};

use palette_host::journal::{Journal, Step};
use palette_host::Layout;
use palette_protocol::Version;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::extract::{self, ExtractError, Limits};

#[derive(Debug, Error)]
pub enum OpError {
    #[error("artifact {path} has sha256 {actual}, expected {expected}; nothing was installed")]
    ChecksumFailed {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("could not unpack {path}; nothing was installed")]
    Extract {
        path: PathBuf,
        #[source]
        source: ExtractError,
    },
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("undoing the MSI install failed")]
    Msi(#[source] crate::msi::MsiError),
    #[error("no update is in progress (no journal)")]
    NoJournal,
    #[error("the update journal says step {0:?}, which this operation cannot follow")]
    WrongStep(Step),
    #[error("the update journal names {journal} but versions/current names {}; not committed, nothing pruned", .current.map(|v| v.to_string()).unwrap_or_else(|| "nothing".into()))]
    Mismatch {
        journal: Version,
        current: Option<Version>,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpError {
    let what = what.into();
    move |source| OpError::Io { what, source }
}

/// SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs_err::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// What to install.
#[derive(Debug, Clone)]
pub struct UpdateRequest {
    pub artifact: PathBuf,
    pub version: Version,
    pub sha256: String,
    pub release_id: i64,
}

fn append_installer_log(layout: &Layout, lines: &[String]) {
    use std::io::Write;
    let path = layout.logs().join("installer.log");
    if let Ok(mut f) = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        for l in lines {
            let _ = writeln!(f, "{l}");
        }
    }
}

/// Verifies, unpacks and switches `current` to the new version. On any
/// error before the switch, the old version is untouched and the journal
/// is cleared. A release `stage_archive` already staged is only switched.
pub fn install_archive(
    layout: &Layout,
    req: &UpdateRequest,
    limits: Limits,
) -> Result<(), OpError> {
    let staging = staging_dir(layout, &req.version);
    let staged = Journal::load_or_set_aside(layout)
        .map_err(io("reading the update journal"))?
        .filter(|j| {
            j.staged
                && j.step == Step::Verified
                && j.version == req.version
                && j.sha256.eq_ignore_ascii_case(&req.sha256)
                && staging.is_dir()
        });
    let journal = match staged {
        Some(j) => {
            tracing::info!(version = %req.version, "staged while the agent ran; switching");
            j
        }
        None => stage_archive(layout, req, limits)?,
    };
    switch_staged(layout, req, journal)
}

fn staging_dir(layout: &Layout, v: &Version) -> PathBuf {
    layout.versions().join(format!(".staging-{v}"))
}

/// Verifies the artifact and unpacks it into `versions/.staging-<v>`,
/// journaled (`Verified`, staged): nothing the agent uses is touched, so
/// the agent runs on meanwhile. On error the staging and the journal are
/// removed.
pub fn stage_archive(
    layout: &Layout,
    req: &UpdateRequest,
    limits: Limits,
) -> Result<Journal, OpError> {
    layout
        .ensure_dirs()
        .map_err(io("creating the install folders"))?;
    if let Some(j) = Journal::load_or_set_aside(layout).map_err(io("reading the update journal"))? {
        tracing::warn!(version = %j.version, step = ?j.step, "an earlier update was interrupted; recovering it first");
        if matches!(j.step, Step::Switched | Step::RollingBack) {
            rollback(layout)?;
        } else {
            recover(layout)?;
        }
    }
    let actual =
        sha256_file(&req.artifact).map_err(io(format!("reading {}", req.artifact.display())))?;
    if !actual.eq_ignore_ascii_case(&req.sha256) {
        return Err(OpError::ChecksumFailed {
            path: req.artifact.clone(),
            expected: req.sha256.clone(),
            actual,
        });
    }
    let previous = layout.current_version();
    let mut journal = Journal {
        release_id: req.release_id,
        version: req.version,
        previous,
        artifact: req.artifact.clone(),
        sha256: actual,
        step: Step::Verified,
        msi: false,
        staged: false,
    };
    journal
        .save(layout)
        .map_err(io("writing the update journal"))?;
    crate::fault::point("update:verified");
    tracing::info!(version = %req.version, previous = ?previous.map(|v| v.to_string()), "artifact verified; unpacking");

    let staging = staging_dir(layout, &req.version);
    let _ = fs_err::remove_dir_all(&staging);
    append_installer_log(
        layout,
        &[format!(
            "== unpacking {} as version {}",
            req.artifact.display(),
            req.version
        )],
    );
    match extract::extract(&req.artifact, &staging, limits) {
        Ok(listing) => append_installer_log(layout, &listing),
        Err(source) => {
            let _ = fs_err::remove_dir_all(&staging);
            let _ = Journal::clear(layout);
            append_installer_log(layout, &[format!("!! refused: {source}")]);
            return Err(OpError::Extract {
                path: req.artifact.clone(),
                source,
            });
        }
    }
    journal.staged = true;
    journal
        .save(layout)
        .map_err(io("writing the update journal"))?;
    crate::fault::point("update:unpacked");
    Ok(journal)
}

/// Moves a staged release into `versions/<v>` and switches `current`.
fn switch_staged(
    layout: &Layout,
    req: &UpdateRequest,
    mut journal: Journal,
) -> Result<(), OpError> {
    let staging = staging_dir(layout, &req.version);
    // What runs now is what a rollback goes back to.
    let previous = layout.current_version();
    journal.previous = previous;
    let dest = layout.version_dir(&req.version);
    if Some(req.version) != previous && dest.exists() {
        fs_err::remove_dir_all(&dest)
            .map_err(io(format!("removing the old copy {}", dest.display())))?;
    }
    if Some(req.version) == previous {
        // Reinstalling the running version: keep it until the switch.
        let aside = layout.versions().join(format!(".previous-{}", req.version));
        let _ = fs_err::remove_dir_all(&aside);
        fs_err::rename(&dest, &aside).map_err(io("moving the running version aside"))?;
    }
    fs_err::rename(&staging, &dest).map_err(io(format!(
        "moving the new version into {}",
        dest.display()
    )))?;
    palette_host::fsx::sync_dir(&layout.versions());
    journal.step = Step::Extracted;
    journal
        .save(layout)
        .map_err(io("writing the update journal"))?;
    crate::fault::point("update:extracted");

    layout
        .set_current(&req.version)
        .map_err(io("switching versions/current"))?;
    crate::fault::point("update:current-set");
    journal.step = Step::Switched;
    journal
        .save(layout)
        .map_err(io("writing the update journal"))?;
    crate::fault::point("update:switched");
    tracing::info!(version = %req.version, "versions/current switched; the new version awaits its health check");
    Ok(())
}

/// Keeps the new version: clears the journal and prunes versions older
/// than the previous one. Refused when `versions/current` does not name the
/// journal's new version (a stale journal is never committed, and nothing
/// is pruned on it).
pub fn commit(layout: &Layout) -> Result<Version, OpError> {
    let j = Journal::load(layout)
        .map_err(io("reading the update journal"))?
        .ok_or(OpError::NoJournal)?;
    if j.step != Step::Switched {
        return Err(OpError::WrongStep(j.step));
    }
    let current = layout.current_version();
    if current != Some(j.version) || !layout.version_dir(&j.version).is_dir() {
        return Err(OpError::Mismatch {
            journal: j.version,
            current,
        });
    }
    crate::fault::point("commit:before-clear");
    Journal::clear(layout).map_err(io("clearing the update journal"))?;
    crate::fault::point("commit:cleared");
    match j.previous {
        Some(_) => prune(layout, &[Some(j.version), j.previous, current]),
        // No previous version recorded: a first install, or a pointer that
        // could not be read. Nothing is deleted on such uncertain ground.
        None => tracing::info!("no previous version recorded; no installed version is pruned"),
    }
    tracing::info!(version = %j.version, "update committed");
    Ok(j.version)
}

/// Goes back to the version before the update. Returns it (`None` when
/// there was none: a failed first install).
pub fn rollback(layout: &Layout) -> Result<Option<Version>, OpError> {
    rollback_with(layout, &[])
}

/// `rollback`; an MSI install is undone with msiexec, with these
/// properties (`agent.msi_properties`). Journaled (`RollingBack`) before
/// anything changes and safe to run again from any point: a rollback a
/// crash interrupted is finished by the next `rollback` or `recover`.
pub fn rollback_with(
    layout: &Layout,
    msi_properties: &[String],
) -> Result<Option<Version>, OpError> {
    let mut j = Journal::load(layout)
        .map_err(io("reading the update journal"))?
        .ok_or(OpError::NoJournal)?;
    if matches!(j.step, Step::Verified | Step::Extracted) {
        // Nothing was switched: undoing the update is discarding it.
        recover(layout)?;
        return Ok(j.previous);
    }
    if j.step != Step::RollingBack {
        j.step = Step::RollingBack;
        j.save(layout).map_err(io("writing the update journal"))?;
    }
    crate::fault::point("rollback:started");
    finish_rollback(layout, &j, msi_properties)
}

/// The rollback's work, from a journal at `RollingBack`; every step may be
/// done again.
fn finish_rollback(
    layout: &Layout,
    j: &Journal,
    msi_properties: &[String],
) -> Result<Option<Version>, OpError> {
    if j.msi {
        crate::msi::reinstall_previous(layout, &j.version, j.previous.as_ref(), msi_properties)
            .map_err(OpError::Msi)?;
    }
    match j.previous {
        Some(prev) => {
            let aside = layout.versions().join(format!(".previous-{prev}"));
            if aside.exists() {
                let dir = layout.version_dir(&prev);
                let _ = fs_err::remove_dir_all(&dir);
                fs_err::rename(&aside, &dir).map_err(io("restoring the previous version"))?;
            }
            layout
                .set_current(&prev)
                .map_err(io("switching versions/current back"))?;
        }
        None => {
            let _ = fs_err::remove_file(layout.current_pointer());
        }
    }
    crate::fault::point("rollback:current-restored");
    if Some(j.version) != j.previous {
        let _ = fs_err::remove_dir_all(layout.version_dir(&j.version));
    }
    crate::fault::point("rollback:removed");
    Journal::clear(layout).map_err(io("clearing the update journal"))?;
    tracing::warn!(failed = %j.version, restored = ?j.previous.map(|v| v.to_string()), "update rolled back");
    Ok(j.previous)
}

/// What `recover` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No update was in progress.
    Nothing,
    /// An update stopped before the switch; its leftovers were removed and
    /// the old version is current.
    Discarded { version: Version },
    /// `current` names a new version that has not passed its health check:
    /// the caller must check it and commit or roll back.
    NeedsHealthCheck {
        version: Version,
        previous: Option<Version>,
    },
    /// A rollback of `version` a crash interrupted was finished: `current`
    /// names `previous` again.
    RolledBack {
        version: Version,
        previous: Option<Version>,
    },
    /// The journal (for `version`) did not match the disk (`current` names
    /// `current`): it was set aside and nothing was changed or deleted.
    Stale {
        version: Version,
        current: Option<Version>,
    },
}

/// Finishes what a crash interrupted. The journal is checked against the
/// disk: a switched journal whose version `current` does not name is
/// either a rollback under way (`current` names the previous version: the
/// rollback is finished) or stale (set aside, nothing touched).
pub fn recover(layout: &Layout) -> Result<Recovery, OpError> {
    recover_with(layout, &[])
}

/// `recover`; an interrupted rollback of an MSI install is finished with
/// these properties (`agent.msi_properties`).
pub fn recover_with(layout: &Layout, msi_properties: &[String]) -> Result<Recovery, OpError> {
    let Some(j) = Journal::load_or_set_aside(layout).map_err(io("reading the update journal"))?
    else {
        // Leftovers of an update whose journal is gone or was unreadable.
        if let Ok(rd) = fs_err::read_dir(layout.versions()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".staging-") {
                    let _ = fs_err::remove_dir_all(e.path());
                }
            }
        }
        return Ok(Recovery::Nothing);
    };
    let _ = fs_err::remove_dir_all(layout.versions().join(format!(".staging-{}", j.version)));
    match j.step {
        Step::Verified | Step::Extracted => {
            if Some(j.version) != j.previous {
                let _ = fs_err::remove_dir_all(layout.version_dir(&j.version));
            } else {
                let aside = layout.versions().join(format!(".previous-{}", j.version));
                if aside.exists() {
                    let dir = layout.version_dir(&j.version);
                    let _ = fs_err::remove_dir_all(&dir);
                    fs_err::rename(&aside, &dir).map_err(io("restoring the previous version"))?;
                }
            }
            match j.previous {
                Some(prev) => layout
                    .set_current(&prev)
                    .map_err(io("restoring versions/current"))?,
                None => {
                    let _ = fs_err::remove_file(layout.current_pointer());
                }
            }
            Journal::clear(layout).map_err(io("clearing the update journal"))?;
            tracing::warn!(version = %j.version, step = ?j.step, "interrupted update discarded; the old version stays");
            Ok(Recovery::Discarded { version: j.version })
        }
        Step::RollingBack => {
            tracing::warn!(version = %j.version, "a rollback was interrupted; finishing it");
            let previous = finish_rollback(layout, &j, msi_properties)?;
            Ok(Recovery::RolledBack {
                version: j.version,
                previous,
            })
        }
        Step::Switched => {
            let pointer = layout.current_pointer_state();
            match pointer {
                palette_host::Pointer::Names(v) if v == j.version => {
                    Ok(Recovery::NeedsHealthCheck {
                        version: j.version,
                        previous: j.previous,
                    })
                }
                // Only a rollback points `current` back while the journal
                // is open: one was under way before it could journal.
                palette_host::Pointer::Names(v)
                    if Some(v) == j.previous && Some(v) != Some(j.version) =>
                {
                    tracing::warn!(version = %j.version, previous = %v, "versions/current names the previous version: a rollback was interrupted; finishing it");
                    let mut j = j;
                    j.step = Step::RollingBack;
                    j.save(layout).map_err(io("writing the update journal"))?;
                    let previous = finish_rollback(layout, &j, msi_properties)?;
                    Ok(Recovery::RolledBack {
                        version: j.version,
                        previous,
                    })
                }
                other => {
                    let current = layout.current_version();
                    let aside = layout.journal().with_extension("json.stale");
                    fs_err::rename(layout.journal(), &aside)
                        .map_err(io("setting the stale update journal aside"))?;
                    palette_host::fsx::sync_dir(&layout.state());
                    tracing::error!(journal = %j.version, previous = ?j.previous.map(|v| v.to_string()), pointer = ?other, aside = %aside.display(), "the update journal does not match the disk (versions/current names neither its new nor its previous version): set aside; nothing is changed or deleted");
                    Ok(Recovery::Stale {
                        version: j.version,
                        current,
                    })
                }
            }
        }
    }
}

/// Removes installed versions other than `keep`, and leftovers.
fn prune(layout: &Layout, keep: &[Option<Version>]) {
    let Ok(entries) = fs_err::read_dir(layout.versions()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "current" {
            continue;
        }
        let keep_it = name
            .parse::<Version>()
            .map(|v| keep.contains(&Some(v)))
            .unwrap_or(false);
        if !keep_it && e.path().is_dir() {
            let _ = fs_err::remove_dir_all(e.path());
        }
    }
}
