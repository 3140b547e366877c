//! The only place in the watchdog that knows which OS it is on: service
//! manager notifications and shutdown signals, the watchdog's own service
//! (install, remove, start, stop, run under the service manager), the
//! restart command a self-update's manager is given, and whether msiexec
//! installs MSI packages. `unix` and `windows` give the same functions.
//!
//! Must not: be reached except through these functions (and `os_service`,
//! the facade for the service commands), or import any module above the
//! systemd unit file's.

use std::path::PathBuf;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// What `palette-watchdog install` was asked.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Linux: where the systemd unit is written.
    pub unit_dir: PathBuf,
    /// Linux: check the unit with `systemd-analyze verify`.
    pub verify: bool,
    /// Start the service once installed.
    pub start: bool,
}
