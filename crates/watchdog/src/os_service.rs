//! The watchdog as the operating system's service: installing, removing,
//! starting and stopping it, and running under the service manager — a
//! systemd unit on Linux, a Windows service under the service control
//! manager. The OS-specific parts are in `platform`.

use std::path::{Path, PathBuf};

use palette_host::Layout;

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

/// Installs the service running `exe` on `base`; returns what was done.
pub fn install(exe: &Path, base: &Path, opts: &InstallOptions) -> anyhow::Result<String> {
    crate::platform::install_service(exe, base, opts)
}

/// Removes the service (stopping it first on Windows).
pub fn remove(opts: &InstallOptions) -> anyhow::Result<String> {
    crate::platform::remove_service(opts)
}

/// Starts the installed service and waits until it runs.
pub fn start() -> anyhow::Result<()> {
    crate::platform::start_service()
}

/// Stops the installed service and starts it again (what a self-update's
/// manager runs on Windows).
pub fn restart() -> anyhow::Result<()> {
    crate::platform::restart_service()
}

/// Stops the installed service and waits until it stopped.
pub fn stop() -> anyhow::Result<()> {
    crate::platform::stop_service()
}

/// Runs `body` the way the service manager runs the service: on Windows
/// under the service control dispatcher (Stop and Shutdown end it like
/// Ctrl-C); on Linux systemd runs the process directly, so as is.
pub fn run_as_service(
    layout: Layout,
    body: fn(Layout) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    crate::platform::run_as_service(layout, body)
}
