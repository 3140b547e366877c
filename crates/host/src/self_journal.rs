//! The self-update journal (`state/self-update.json`) and the new
//! watchdog's proof (`state/self-update-proof.json`): how a watchdog
//! replaces its own binaries and those of the manager without a window in
//! which a crash leaves the host without a working watchdog.
//!
//! The manager writes the journal before each step; whichever watchdog
//! runs next reads it. The rules, for a journal found with no manager
//! alive (the manager holds `state/manager.lock` while it works):
//! - `Done` — the outcome is recorded and reported, the journal cleared;
//! - the running watchdog *is* the new version (`Swapped` or later) — it
//!   proves itself (self-check and a check-in) and commits;
//! - otherwise — the old binaries are put back from `self/old/` and the
//!   attempt is reported as a passing failure.

use std::path::PathBuf;

use palette_protocol::Version;
use serde::{Deserialize, Serialize};

use crate::{fsx, Layout};

/// How far a self-update got. Each is recorded before the next begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfStep {
    /// Verified and unpacked into `self/new/`; the old binaries are copied
    /// to `self/old/`. The live binaries are untouched.
    Staged,
    /// The live binaries are (being) replaced by the new ones.
    Swapping,
    /// Both are replaced; the new watchdog is (being) started and must
    /// prove itself before the deadline.
    Restarting,
    /// The new watchdog failed; the old binaries are (being) put back and
    /// the old watchdog started.
    Reverting,
    /// Finished; `outcome` says how.
    Done,
}

/// How a self-update ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfOutcome {
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfJournal {
    pub release_id: i64,
    /// The version being installed.
    pub version: Version,
    /// The watchdog version that started it.
    pub previous: String,
    /// The watchdog executable the service runs (replaced in place).
    pub watchdog_exe: PathBuf,
    pub step: SelfStep,
    /// Why the new watchdog was refused (set with `Reverting`).
    #[serde(default)]
    pub failure: Option<String>,
    #[serde(default)]
    pub outcome: Option<SelfOutcome>,
}

impl SelfJournal {
    pub fn load(layout: &Layout) -> std::io::Result<Option<SelfJournal>> {
        fsx::read_json(&layout.self_journal())
    }

    pub fn save(&self, layout: &Layout) -> std::io::Result<()> {
        fsx::write_json(&layout.self_journal(), self)
    }

    pub fn clear(layout: &Layout) -> std::io::Result<()> {
        for p in [layout.self_journal(), layout.self_proof()] {
            match fs_err::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fsx::sync_dir(&layout.state());
        Ok(())
    }
}

/// Written by a new watchdog once it passed its self-check and checked in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfProof {
    pub version: Version,
    pub pid: u32,
    /// Set when its self-check failed: the manager puts the old one back
    /// at once instead of waiting for the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl SelfProof {
    pub fn load(layout: &Layout) -> std::io::Result<Option<SelfProof>> {
        fsx::read_json(&layout.self_proof())
    }

    pub fn save(&self, layout: &Layout) -> std::io::Result<()> {
        fsx::write_json(&layout.self_proof(), self)
    }
}

/// The binaries a watchdog release carries, by file name.
pub fn release_binaries() -> [String; 2] {
    [
        format!("palette-watchdog{}", std::env::consts::EXE_SUFFIX),
        format!("palette-manager{}", std::env::consts::EXE_SUFFIX),
    ]
}

/// Puts the binaries kept in `self/old/` back in place (the watchdog at
/// `watchdog_exe`, the manager in the base folder), each atomically. What
/// is missing from `self/old/` is left as it is.
pub fn restore_old(layout: &Layout, watchdog_exe: &std::path::Path) -> std::io::Result<()> {
    let [w, m] = release_binaries();
    let old = layout.self_old();
    for (name, live) in [(m, layout.manager()), (w, watchdog_exe.to_path_buf())] {
        let src = old.join(&name);
        if src.is_file() {
            place(&src, &live)?;
        }
    }
    Ok(())
}

/// Copies `src` over `live` atomically (a copy beside it, synced, then
/// renamed), keeping `src`. Where the system refuses to replace a running
/// executable (Windows) but lets it be renamed, the running one is moved
/// aside first (`<name>.old-<ms>`, removed by `remove_set_aside` at a later
/// start) and put back if the new one cannot take its place.
pub fn place(src: &std::path::Path, live: &std::path::Path) -> std::io::Result<()> {
    let tmp = live.with_extension("swap");
    let _ = fs_err::remove_file(&tmp);
    let result = (|| {
        fs_err::copy(src, &tmp)?;
        sync_file(&tmp)?;
        match fs_err::rename(&tmp, live) {
            Err(e) if live.exists() => {
                let aside = set_aside_name(live);
                if fs_err::rename(live, &aside).is_err() {
                    return Err(e);
                }
                if let Err(e) = fs_err::rename(&tmp, live) {
                    let _ = fs_err::rename(&aside, live);
                    return Err(e);
                }
                tracing::info!(aside = %aside.display(), "the running executable was moved aside to be replaced");
                Ok(())
            }
            other => other,
        }
    })();
    if result.is_err() {
        let _ = fs_err::remove_file(&tmp);
    }
    if let Some(dir) = live.parent() {
        fsx::sync_dir(dir);
    }
    result
}

/// Flushes a file to disk. Opened for writing: Windows refuses to flush a
/// file opened read-only.
pub fn sync_file(path: &std::path::Path) -> std::io::Result<()> {
    fs_err::OpenOptions::new()
        .write(true)
        .open(path)?
        .sync_all()
}

fn set_aside_name(live: &std::path::Path) -> std::path::PathBuf {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    live.with_file_name(format!("{name}.old-{ms}"))
}

/// Removes executables `place` moved aside in `dir` (those still running
/// cannot be removed yet: they are tried again at the next start).
pub fn remove_set_aside(dir: &std::path::Path) {
    let Ok(entries) = fs_err::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".old-")
            && (name.starts_with("palette-watchdog") || name.starts_with("palette-manager"))
        {
            match fs_err::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = name, "removed an executable a self-update set aside")
                }
                Err(err) => {
                    tracing::debug!(file = name, error = %err, "a set-aside executable is still in use")
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn place_replaces_a_file_and_keeps_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let (src, live) = (dir.path().join("new"), dir.path().join("live"));
        std::fs::write(&src, b"new").unwrap();
        std::fs::write(&live, b"old").unwrap();
        place(&src, &live).unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"new");
        assert!(src.exists());
        assert!(!dir.path().join("live.swap").exists());
    }

    /// A running executable cannot be replaced on Windows, only renamed:
    /// `place` moves it aside, and `remove_set_aside` removes it once it
    /// no longer runs. (Under Wine in CI; on Linux the rename just works.)
    #[cfg(windows)]
    #[test]
    fn a_running_executable_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("palette-watchdog.exe");
        std::fs::copy(r"C:\windows\system32\ping.exe", &live).unwrap();
        let mut running = std::process::Command::new(&live)
            .args(["-n", "60", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let src = dir.path().join("new.exe");
        std::fs::write(&src, b"the new watchdog").unwrap();
        place(&src, &live).unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"the new watchdog");
        running.kill().unwrap();
        let _ = running.wait();
        remove_set_aside(dir.path());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".old-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
