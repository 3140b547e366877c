//! Windows Installer releases (kind `msi`): the package is kept as
//! `versions/<v>/agent.msi` and installed with
//! `msiexec /i <msi> /qn /norestart /l*v Logs\installer.log [PROPERTY=value…]`
//! under the same journal as archives (verified → kept → switched), so the
//! watchdog's health check, commit, rollback and crash recovery are the
//! same. Exit codes 0, 1641 and 3010 mean installed (the latter two: a
//! reboot is wanted, which is left to the operator); 1618 (another
//! installation is running) is a passing failure, retried later; anything
//! else fails with the installer log's last lines. Rolling back uninstalls
//! the new version's package (`msiexec /x`) and installs the previous one's
//! again: that works whether or not the product's packages allow downgrades.

use std::path::{Path, PathBuf};
use std::time::Duration;

use palette_host::journal::{Journal, Step};
use palette_host::Layout;
use palette_protocol::Version;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MsiError {
    #[error("artifact {path} has sha256 {actual}, expected {expected}; nothing was installed")]
    ChecksumFailed {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("msiexec {action} {msi} exited with {code}{meaning}; the installer log ends: {tail}")]
    Failed {
        action: &'static str,
        msi: PathBuf,
        code: i32,
        meaning: &'static str,
        tail: String,
    },
    #[error("msiexec could not be run")]
    Spawn(#[source] std::io::Error),
    #[error("msiexec did not finish within {0} s")]
    Timeout(u64),
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl MsiError {
    /// Another installation was running (1618): retried later, never held
    /// against the release.
    pub fn is_passing(&self) -> bool {
        matches!(self, MsiError::Failed { code: 1618, .. })
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MsiError {
    let what = what.into();
    move |source| MsiError::Io { what, source }
}

/// Longest an msiexec run may take.
const MSIEXEC_LIMIT: Duration = Duration::from_secs(30 * 60);

/// What to install.
#[derive(Debug, Clone)]
pub struct MsiRequest {
    pub msi: PathBuf,
    pub version: Version,
    pub sha256: String,
    pub release_id: i64,
    /// `NAME=value` properties for msiexec (e.g. `INSTALLFOLDER=…`).
    pub properties: Vec<String>,
}

/// The package kept for version `v`.
pub fn kept(layout: &Layout, v: &Version) -> PathBuf {
    layout.version_dir(v).join("agent.msi")
}

fn meaning(code: i32) -> &'static str {
    match code {
        1602 => " (cancelled)",
        1603 => " (fatal error during installation)",
        1618 => " (another installation is already in progress; retried later)",
        1619 | 1620 => " (the package could not be opened: not a valid MSI)",
        1638 => " (another version of this product is already installed)",
        _ => "",
    }
}

/// Runs msiexec; `Ok` for 0, 1641 and 3010.
fn msiexec(
    layout: &Layout,
    action: &'static str,
    msi: &Path,
    properties: &[String],
) -> Result<(), MsiError> {
    let log = layout.logs().join("installer.log");
    let _ = fs_err::create_dir_all(layout.logs());
    let mut cmd = std::process::Command::new("msiexec");
    cmd.arg(action)
        .arg(msi)
        .args(["/qn", "/norestart", "/l*v"])
        .arg(&log)
        .args(properties)
        // Its own log is the record; no handle of ours is passed on (a
        // process msiexec starts could hold our caller's pipe open).
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    tracing::info!(action, msi = %msi.display(), "running msiexec");
    let mut child = cmd.spawn().map_err(MsiError::Spawn)?;
    let deadline = std::time::Instant::now() + MSIEXEC_LIMIT;
    let status = loop {
        match child.try_wait().map_err(MsiError::Spawn)? {
            Some(st) => break st,
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                return Err(MsiError::Timeout(MSIEXEC_LIMIT.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let code = status.code().unwrap_or(-1);
    match code {
        0 | 1641 | 3010 => Ok(()),
        _ => Err(MsiError::Failed {
            action,
            msi: msi.to_path_buf(),
            code,
            meaning: meaning(code),
            tail: log_tail(&log, 8),
        }),
    }
}

/// The last `n` lines of the installer log (msiexec writes UTF-16 on
/// Windows, and may write UTF-8 elsewhere).
fn log_tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = fs_err::read(path) else {
        return "(no installer log)".into();
    };
    let text = if bytes.starts_with(&[0xff, 0xfe]) {
        let units: Vec<u16> = bytes[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Verifies the package, keeps it as `versions/<v>/agent.msi`, installs it
/// and switches `current`. On failure the journal is cleared and the kept
/// copy removed; the previous version stays installed (an MSI that fails
/// rolls itself back).
pub fn install(layout: &Layout, req: &MsiRequest) -> Result<(), MsiError> {
    layout
        .ensure_dirs()
        .map_err(io("creating the install folders"))?;
    let actual =
        crate::ops::sha256_file(&req.msi).map_err(io(format!("reading {}", req.msi.display())))?;
    if !actual.eq_ignore_ascii_case(&req.sha256) {
        return Err(MsiError::ChecksumFailed {
            path: req.msi.clone(),
            expected: req.sha256.clone(),
            actual,
        });
    }
    let previous = layout.current_version();
    let mut journal = Journal {
        release_id: req.release_id,
        version: req.version,
        previous,
        artifact: req.msi.clone(),
        sha256: actual,
        step: Step::Verified,
        msi: true,
        staged: false,
    };
    journal
        .save(layout)
        .map_err(io("writing the update journal"))?;
    let dir = layout.version_dir(&req.version);
    let keep = (|| {
        fs_err::create_dir_all(&dir)?;
        fs_err::copy(&req.msi, kept(layout, &req.version)).map(drop)
    })();
    let undo = |e: MsiError| {
        if Some(req.version) != previous {
            let _ = fs_err::remove_dir_all(&dir);
        }
        let _ = Journal::clear(layout);
        e
    };
    keep.map_err(io("keeping the package in versions/"))
        .map_err(undo)?;
    journal.step = Step::Extracted;
    journal
        .save(layout)
        .map_err(io("writing the update journal"))?;
    msiexec(layout, "/i", &kept(layout, &req.version), &req.properties).map_err(undo)?;
    layout
        .set_current(&req.version)
        .map_err(io("switching versions/current"))?;
    journal.step = Step::Switched;
    journal
        .save(layout)
        .map_err(io("writing the update journal"))?;
    tracing::info!(version = %req.version, "MSI installed; the new version awaits its health check");
    Ok(())
}

/// The MSI half of a rollback: uninstalls the new version's package and
/// installs the previous one's again.
pub fn reinstall_previous(
    layout: &Layout,
    new: &Version,
    previous: Option<&Version>,
    properties: &[String],
) -> Result<(), MsiError> {
    let new_msi = kept(layout, new);
    if new_msi.exists() {
        if let Err(e) = msiexec(layout, "/x", &new_msi, properties) {
            tracing::warn!(error = %e, "uninstalling the failed version's package failed; installing the previous one over it");
        }
    }
    if let Some(prev) = previous {
        let prev_msi = kept(layout, prev);
        if prev_msi.exists() {
            msiexec(layout, "/i", &prev_msi, properties)?;
        }
    }
    Ok(())
}
