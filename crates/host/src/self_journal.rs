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
/// renamed), keeping `src`.
pub fn place(src: &std::path::Path, live: &std::path::Path) -> std::io::Result<()> {
    let tmp = live.with_extension("swap");
    let _ = fs_err::remove_file(&tmp);
    let result = (|| {
        fs_err::copy(src, &tmp)?;
        fs_err::File::open(&tmp)?.sync_all()?;
        fs_err::rename(&tmp, live)
    })();
    if result.is_err() {
        let _ = fs_err::remove_file(&tmp);
    }
    if let Some(dir) = live.parent() {
        fsx::sync_dir(dir);
    }
    result
}
