//! The watchdog as the operating system's service: installing, removing,
//! starting and stopping it, and running under the service manager — a
//! systemd unit on Linux, a Windows service under the service control
//! manager. The OS-specific parts are in `platform`.
//!
//! Must not: say `cfg` — each function is the same on every OS and hands
//! over to `platform`.

use std::path::Path;

use palette_host::Layout;

pub use crate::platform::InstallOptions;

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
