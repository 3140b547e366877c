//! The manager's outcome (`state/manager-result.json`), written by
//! `palette-manager` at the end of every operation and read by the watchdog
//! instead of scraping the manager's console output.

use serde::{Deserialize, Serialize};

use crate::{fsx, Layout};
use palette_protocol::Version;

/// What `recover` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryKind {
    /// No update was in progress.
    Nothing,
    /// An update interrupted before its switch was undone.
    Discarded,
    /// `current` names a new version that must pass its health check.
    NeedsHealthCheck,
    /// A rollback a crash interrupted was finished: `current` names the
    /// previous version again, the failed one is removed.
    RolledBack,
    /// The journal did not match the disk (`current` names neither its new
    /// nor its previous version): set aside, nothing deleted; what is on
    /// disk decides.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerResult {
    /// The operation: update, commit, rollback, recover, start, stop, restart.
    pub op: String,
    pub ok: bool,
    /// Why it failed, one line with causes.
    #[serde(default)]
    pub reason: Option<String>,
    /// `recover` only.
    #[serde(default)]
    pub recovery: Option<RecoveryKind>,
    /// The version the operation concerned (the update's, the recovered one).
    #[serde(default)]
    pub version: Option<Version>,
    /// `rollback`: the version `current` names afterwards.
    #[serde(default)]
    pub current: Option<Version>,
    /// The failure was the local disk's (full, read-only, failing): a
    /// passing trouble, retried, never held against the release.
    #[serde(default)]
    pub local_io: bool,
    pub pid: u32,
}

impl ManagerResult {
    pub fn path(layout: &Layout) -> std::path::PathBuf {
        layout.state().join("manager-result.json")
    }

    pub fn load(layout: &Layout) -> std::io::Result<Option<ManagerResult>> {
        fsx::read_json(&Self::path(layout))
    }

    pub fn save(&self, layout: &Layout) -> std::io::Result<()> {
        fsx::write_json(&Self::path(layout), self)
    }

    pub fn clear(layout: &Layout) -> std::io::Result<()> {
        match fs_err::remove_file(Self::path(layout)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
