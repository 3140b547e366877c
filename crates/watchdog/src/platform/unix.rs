//! Unix: systemd notifications (`Type=notify`, `READY=1`, watchdog pings)
//! and SIGTERM / SIGINT as the shutdown request.

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

/// Bytes free for this user on the filesystem holding `path`.
pub fn available_space(path: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
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
