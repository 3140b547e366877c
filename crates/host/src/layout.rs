//! The install folder, like the original's:
//!
//! ```text
//! <base>/
//!   Config/Config.yml      shared with the agent (may be replaced remotely)
//!   watchdog.yml           the watchdog's local settings (never remote)
//!   Logs/                  watchdog.log, manager.log, installer.log, agent.log
//!   Updates/               downloads in progress; cleaned before each check
//!   state/                 durable state: desired agent state, commands, update journal
//!   versions/<x.y.z>/      installed agent versions; versions/current names one
//!   self/new/, self/old/   a self-update's new binaries, and the ones it replaced
//!   palette-watchdog, palette-manager, manager_in_action
//! ```
//!
//! Paths come from `--base` or the executable's folder, never from the
//! working directory (a Windows service starts in System32).

use std::path::{Path, PathBuf};

use palette_protocol::Version;

#[derive(Debug, Clone)]
pub struct Layout {
    pub base: PathBuf,
}

impl Layout {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Layout { base: base.into() }
    }

    /// `--base` when given, else the folder of the running executable.
    pub fn from_arg_or_exe(arg: Option<PathBuf>) -> std::io::Result<Self> {
        let base = match arg {
            Some(b) => b,
            None => std::env::current_exe()?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| std::io::Error::other("the executable has no folder"))?,
        };
        let base = if base.is_absolute() {
            base
        } else {
            std::env::current_dir()?.join(base)
        };
        Ok(Layout { base })
    }

    pub fn config_dir(&self) -> PathBuf {
        self.base.join("Config")
    }
    pub fn config_yml(&self) -> PathBuf {
        self.config_dir().join("Config.yml")
    }
    pub fn settings_file(&self) -> PathBuf {
        self.base.join("watchdog.yml")
    }
    pub fn logs(&self) -> PathBuf {
        self.base.join("Logs")
    }
    pub fn updates(&self) -> PathBuf {
        self.base.join("Updates")
    }
    pub fn state(&self) -> PathBuf {
        self.base.join("state")
    }
    /// This host's own token from enrollment (owner-only).
    pub fn host_token(&self) -> PathBuf {
        self.state().join("host-token")
    }
    /// Held by the one watchdog running on this folder.
    pub fn watchdog_lock(&self) -> PathBuf {
        self.state().join("watchdog.lock")
    }
    /// Held by a manager for its whole run.
    pub fn manager_lock(&self) -> PathBuf {
        self.state().join("manager.lock")
    }
    pub fn journal(&self) -> PathBuf {
        self.state().join("update-journal.json")
    }
    /// The self-update journal.
    pub fn self_journal(&self) -> PathBuf {
        self.state().join("self-update.json")
    }
    /// Written by a new watchdog that proved itself.
    pub fn self_proof(&self) -> PathBuf {
        self.state().join("self-update-proof.json")
    }
    /// `self/new/`: the binaries of a self-update being installed.
    pub fn self_new(&self) -> PathBuf {
        self.base.join("self").join("new")
    }
    /// `self/old/`: the binaries a self-update replaced (kept).
    pub fn self_old(&self) -> PathBuf {
        self.base.join("self").join("old")
    }
    pub fn versions(&self) -> PathBuf {
        self.base.join("versions")
    }
    pub fn version_dir(&self, v: &Version) -> PathBuf {
        self.versions().join(v.to_string())
    }
    pub fn current_pointer(&self) -> PathBuf {
        self.versions().join("current")
    }
    pub fn manager(&self) -> PathBuf {
        self.base
            .join(format!("palette-manager{}", std::env::consts::EXE_SUFFIX))
    }
    pub fn manager_in_action(&self) -> PathBuf {
        self.base
            .join(format!("manager_in_action{}", std::env::consts::EXE_SUFFIX))
    }

    /// The installed agent version `versions/current` names, if any.
    pub fn current_version(&self) -> Option<Version> {
        let text = fs_err::read_to_string(self.current_pointer()).ok()?;
        text.trim().parse().ok()
    }

    /// What `versions/current` holds.
    pub fn current_pointer_state(&self) -> Pointer {
        match fs_err::read_to_string(self.current_pointer()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pointer::Missing,
            Err(e) => Pointer::Unreadable(e.to_string()),
            Ok(text) => match text.trim().parse::<Version>() {
                Ok(v) if self.version_dir(&v).is_dir() => Pointer::Names(v),
                Ok(v) => Pointer::NamesMissing(v),
                Err(_) => Pointer::Unreadable(format!("{:?} is not a version", text.trim())),
            },
        }
    }

    /// Installed versions (folders under `versions/` named as versions),
    /// newest first.
    pub fn installed_versions(&self) -> Vec<Version> {
        let mut out: Vec<Version> = fs_err::read_dir(self.versions())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| b.cmp(a));
        out
    }

    /// Points `versions/current` at `v`, atomically.
    pub fn set_current(&self, v: &Version) -> std::io::Result<()> {
        crate::fsx::atomic_write(&self.current_pointer(), format!("{v}\n").as_bytes())
    }

    /// Creates the folders the watchdog writes to.
    pub fn ensure_dirs(&self) -> std::io::Result<()> {
        for d in [
            self.config_dir(),
            self.logs(),
            self.updates(),
            self.state(),
            self.versions(),
        ] {
            fs_err::create_dir_all(d)?;
        }
        Ok(())
    }
}

/// The state of `versions/current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointer {
    /// No pointer: nothing installed yet (or it was deleted).
    Missing,
    /// It names an installed version.
    Names(Version),
    /// It names a version whose folder does not exist.
    NamesMissing(Version),
    /// It cannot be read or does not hold a version.
    Unreadable(String),
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn current_pointer_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        assert_eq!(l.current_version(), None);
        l.set_current(&"1.2.3".parse().unwrap()).unwrap();
        assert_eq!(l.current_version(), Some(Version::new(1, 2, 3)));
        assert_eq!(
            l.version_dir(&Version::new(1, 2, 3)),
            dir.path().join("versions/1.2.3")
        );
    }
}
