//! The update journal (`state/update-journal.json`): written before each
//! step of an update, so that after a crash or power loss recovery knows
//! where the update stood and ends in either the old or the new version
//! running, never in neither.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{fsx, Layout};

/// How far an update got. Each step is recorded before the next begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The artifact's hash matched; nothing installed yet.
    Verified,
    /// Unpacked into `versions/<v>`; `current` still names the old one.
    Extracted,
    /// `current` names the new version; it has not proven healthy yet.
    Switched,
    /// The new version failed: a rollback to `previous` has begun (and is
    /// finished by whoever finds this step: the rollback, or `recover`).
    RollingBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub release_id: i64,
    pub version: palette_protocol::Version,
    /// The version `current` named before; `None` on a first install.
    pub previous: Option<palette_protocol::Version>,
    pub artifact: PathBuf,
    pub sha256: String,
    pub step: Step,
    /// An MSI install (`versions/<v>/agent.msi`, installed by msiexec):
    /// rolling back reinstalls the previous version's MSI.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub msi: bool,
    /// Step `Verified`: the release is unpacked into
    /// `versions/.staging-<v>` (while the agent kept running); the switch
    /// takes it from there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub staged: bool,
}

impl Journal {
    pub fn load(layout: &Layout) -> std::io::Result<Option<Journal>> {
        fsx::read_json(&layout.journal())
    }

    /// Loads the journal; one that cannot be read (damaged, truncated) is
    /// set aside as `update-journal.json.corrupt` with an error logged, and
    /// treated as none: what is on disk (`versions/`) decides from there.
    pub fn load_or_set_aside(layout: &Layout) -> std::io::Result<Option<Journal>> {
        match Self::load(layout) {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let aside = layout.journal().with_extension("json.corrupt");
                fs_err::rename(layout.journal(), &aside)?;
                tracing::error!(error = %e, aside = %aside.display(), "the update journal is unreadable: set aside; the installed versions on disk decide what runs");
                Ok(None)
            }
            other => other,
        }
    }

    pub fn save(&self, layout: &Layout) -> std::io::Result<()> {
        fsx::write_json(&layout.journal(), self)
    }

    pub fn clear(layout: &Layout) -> std::io::Result<()> {
        match fs_err::remove_file(layout.journal()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => {
                fsx::sync_dir(&layout.state());
                Ok(())
            }
        }
    }
}
