//! The systemd unit: `palette-watchdog install` writes it, `remove`
//! deletes it. `Type=notify` with watchdog pings; `KillMode=process` so a
//! stop reaches only the watchdog (which stops its agent itself) and a
//! manager in the middle of an update finishes its work.
//!
//! Must not: run systemctl (`platform` does) or import any other module
//! of the watchdog.

use std::path::{Path, PathBuf};

pub const UNIT_NAME: &str = "palette-watchdog.service";

pub fn unit_text(exe: &Path, base: &Path) -> String {
    format!(
        "[Unit]
Description=palette-watchdog: keeps the agent running, updated and configured
Documentation=file://{base}/README
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
ExecStart={exe} run --base {base}
WorkingDirectory={base}
Restart=always
RestartSec=5
WatchdogSec=60
TimeoutStopSec=60
KillMode=process

[Install]
WantedBy=multi-user.target
",
        exe = exe.display(),
        base = base.display()
    )
}

/// Writes the unit into `unit_dir`; returns its path.
pub fn install(unit_dir: &Path, exe: &Path, base: &Path) -> std::io::Result<PathBuf> {
    let path = unit_dir.join(UNIT_NAME);
    palette_host::fsx::atomic_write(&path, unit_text(exe, base).as_bytes())?;
    Ok(path)
}

/// Removes the unit; `Ok(false)` when there was none.
pub fn remove(unit_dir: &Path) -> std::io::Result<bool> {
    match fs_err::remove_file(unit_dir.join(UNIT_NAME)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    /// The packaged unit (packaging/watchdog, for /opt/palette) is this
    /// code's unit, so `install` and the package never drift apart.
    #[test]
    fn the_packaged_unit_is_the_installed_one() {
        // Spelled out (a join would use `\` on Windows, where this runs too).
        let exe = std::path::Path::new("/opt/palette/palette-watchdog");
        let base = std::path::Path::new("/opt/palette");
        assert_eq!(
            super::unit_text(exe, base),
            include_str!("../../../packaging/watchdog/palette-watchdog.service")
        );
    }
}
