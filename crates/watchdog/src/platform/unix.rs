//! Unix: systemd notifications (`Type=notify`, `READY=1`, watchdog pings),
//! SIGTERM / SIGINT as the shutdown request, and installing the watchdog as
//! a systemd unit.
//!
//! Must not: be used except through `platform`'s functions; nothing
//! Unix-specific leaks out of it.

use std::time::Duration;

/// Tells systemd the watchdog is up.
pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// How often to ping systemd's watchdog timer (half of `WatchdogSec`), when
/// the unit sets one.
pub fn watchdog_ping_interval() -> Option<Duration> {
    let mut usec = 0u64;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
        .then(|| Duration::from_micros(usec / 2))
}

/// One ping of systemd's watchdog timer.
pub fn watchdog_ping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// Resolves when the service is asked to stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The restart command for this watchdog's service manager: when it runs
/// as a systemd service (`INVOCATION_ID` is set and its cgroup names a
/// `.service`), `systemctl restart --no-block <unit>`. `--no-block`: the
/// manager does not wait inside a job that stops the process it came from.
pub fn service_restart_command() -> Option<Vec<String>> {
    std::env::var_os("INVOCATION_ID")?;
    let cgroup = fs_err::read_to_string("/proc/self/cgroup").ok()?;
    let unit = unit_of_cgroup(&cgroup)?;
    Some(vec![
        "systemctl".into(),
        "restart".into(),
        "--no-block".into(),
        unit,
    ])
}

/// The `.service` a `/proc/self/cgroup` text places this process in.
fn unit_of_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .find(|u| u.ends_with(".service"))
        .map(str::to_string)
}

/// Writes the systemd unit (and with `start`, enables and starts it).
pub fn install_service(
    exe: &std::path::Path,
    base: &std::path::Path,
    opts: &super::InstallOptions,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = crate::systemd::install(&opts.unit_dir, exe, base)
        .with_context(|| format!("while writing the unit into {}", opts.unit_dir.display()))?;
    let mut said = format!("wrote {}", path.display());
    if opts.verify {
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .context("while running systemd-analyze verify")?;
        let text = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            anyhow::bail!(
                "systemd-analyze verify refused {}: {}",
                path.display(),
                text.trim()
            );
        }
        said.push_str("\nsystemd-analyze verify: ok");
    }
    if opts.start {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", crate::systemd::UNIT_NAME])?;
        said.push_str(&format!(
            "\nenabled and started {}",
            crate::systemd::UNIT_NAME
        ));
    } else {
        said.push_str(&format!(
            "\nthen: systemctl daemon-reload && systemctl enable --now {}",
            crate::systemd::UNIT_NAME
        ));
    }
    Ok(said)
}

/// Removes the systemd unit.
pub fn remove_service(opts: &super::InstallOptions) -> anyhow::Result<String> {
    Ok(if crate::systemd::remove(&opts.unit_dir)? {
        format!(
            "removed {}",
            opts.unit_dir.join(crate::systemd::UNIT_NAME).display()
        )
    } else {
        format!("no unit in {}", opts.unit_dir.display())
    })
}

pub fn start_service() -> anyhow::Result<()> {
    systemctl(&["start", crate::systemd::UNIT_NAME])
}

pub fn restart_service() -> anyhow::Result<()> {
    systemctl(&["restart", crate::systemd::UNIT_NAME])
}

pub fn stop_service() -> anyhow::Result<()> {
    systemctl(&["stop", crate::systemd::UNIT_NAME])
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run systemctl {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        anyhow::bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// systemd runs `palette-watchdog run` itself: the body runs as is.
pub fn run_as_service(
    layout: palette_host::Layout,
    body: fn(palette_host::Layout) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    body(layout)
}

/// No Windows Installer here: MSI releases are refused before anything
/// is stopped.
pub fn installs_msi() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unit_comes_from_the_cgroup() {
        assert_eq!(
            super::unit_of_cgroup("0::/system.slice/palette-watchdog.service\n").as_deref(),
            Some("palette-watchdog.service")
        );
        assert_eq!(
            super::unit_of_cgroup("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
    }
}
