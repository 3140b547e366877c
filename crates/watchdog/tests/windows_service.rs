//! The watchdog as a real Windows service, driven through the service
//! control manager (`sc`), with the sample agent as its child: runs under
//! Wine in `.ci/run` (`scripts/wine-test.sh`), and on Windows.
#![cfg(windows)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod windows_support;
use windows_support::*;

const SERVICE: &str = "palette-watchdog";

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn watchdog(base: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(base.join("palette-watchdog.exe"))
        .args(args)
        .arg("--base")
        .arg(base)
        .output()
        .expect("palette-watchdog.exe runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Removes the service even when the test fails half-way.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = watchdog(&self.0, &["remove"]);
    }
}

#[test]
fn the_watchdog_runs_as_a_windows_service() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    std::fs::copy(
        env!("CARGO_BIN_EXE_palette-watchdog"),
        base.join("palette-watchdog.exe"),
    )
    .unwrap();
    let v1 = base.join("versions").join("1.0.0");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy(
        built("palette-sample-agent.exe"),
        v1.join("palette-sample-agent.exe"),
    )
    .unwrap();
    std::fs::write(base.join("versions").join("current"), "1.0.0\n").unwrap();
    std::fs::create_dir_all(base.join("Config")).unwrap();
    // No server answers here: the watchdog keeps the agent alive and
    // retries the server with backoff.
    std::fs::write(
        base.join("Config").join("Config.yml"),
        "LicenseKey: k\nWebservice:\n  Endpoint: http://127.0.0.1:9\n  UseProxy: false\n",
    )
    .unwrap();
    std::fs::write(
        base.join("watchdog.yml"),
        "hostname: wine-host\nagent:\n  command: ['{current}/palette-sample-agent{exe}', '--base', '{base}']\n  stop_timeout_secs: 5\n",
    )
    .unwrap();
    let _cleanup = Cleanup(base.clone());
    let _ = watchdog(&base, &["remove"]); // a leftover of an earlier run

    let (ok, text) = watchdog(&base, &["install", "--start"]);
    assert!(ok, "install --start: {text}");
    wait_for("the service runs", Duration::from_secs(60), || {
        service_state_is(SERVICE, "RUNNING")
    });
    let log = base.join("Logs").join("watchdog.log");
    let logs = |base: &Path| {
        format!(
            "--- watchdog.log ---\n{}\n--- agent.log ---\n{}",
            read(&base.join("Logs").join("watchdog.log")),
            read(&base.join("Logs").join("agent.log"))
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while live_agent_pid(&base).is_none() {
        assert!(
            Instant::now() < deadline,
            "the service's watchdog did not start the agent\n{}",
            logs(&base)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(read(&log).contains("starting"), "{}", read(&log));
    let agent = live_agent_pid(&base).unwrap();

    // Stopped through the service control manager: the stop handler ends
    // the watchdog the graceful way, which stops the agent.
    let (ok, text) = sc(&["stop", SERVICE]);
    assert!(ok, "sc stop: {text}");
    wait_for("the service stops", Duration::from_secs(60), || {
        service_state_is(SERVICE, "STOPPED")
    });
    assert!(
        read(&log).contains("palette-watchdog stopped"),
        "the stop handler did not end the watchdog gracefully: {}",
        read(&log)
    );
    wait_for("the agent stopped with it", Duration::from_secs(30), || {
        !palette_service::process_alive(agent)
    });

    // The legacy-style commands start and stop it too; `restart` (what a
    // self-update's manager runs) goes through a stop and a start.
    let before = read(&log).matches("starting base=").count();
    let (ok, text) = watchdog(&base, &["start"]);
    assert!(ok, "start: {text}");
    assert!(service_state_is(SERVICE, "RUNNING"));
    // The service reports RUNNING a moment before its log line lands.
    wait_for(
        "the started watchdog logged its start",
        Duration::from_secs(30),
        || read(&log).matches("starting base=").count() > before,
    );
    let starts = read(&log).matches("starting base=").count();
    let (ok, text) = watchdog(&base, &["restart"]);
    assert!(ok, "restart: {text}");
    assert!(service_state_is(SERVICE, "RUNNING"));
    wait_for(
        "the restarted watchdog logged its start",
        Duration::from_secs(30),
        || read(&log).matches("starting base=").count() > starts,
    );
    assert_eq!(
        read(&log).matches("starting base=").count(),
        starts + 1,
        "restart did not start the watchdog again: {}",
        read(&log)
    );
    let (ok, text) = watchdog(&base, &["stop"]);
    assert!(ok, "stop: {text}");
    assert!(service_state_is(SERVICE, "STOPPED"));

    let (ok, text) = watchdog(&base, &["remove"]);
    assert!(ok, "remove: {text}");
    assert!(text.contains("removed"), "{text}");
    let (exists, text) = sc(&["query", SERVICE]);
    assert!(!exists, "the service is still there: {text}");
}

/// Stops and deletes a Windows service, and ends a foreground watchdog,
/// even when the test fails half-way.
struct AgentService {
    name: &'static str,
    watchdog: Option<std::process::Child>,
}

impl Drop for AgentService {
    fn drop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = sc(&["stop", self.name]);
        let _ = sc(&["delete", self.name]);
    }
}

/// The agent as a Windows service, supervised by the watchdog's
/// `windows_service` backend: stopped from outside (`sc stop`), it is
/// started again through the service control manager.
#[test]
fn an_agent_service_stopped_from_outside_is_started_again() {
    const NAME: &str = "palette-sample-agent-test";
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    std::fs::copy(
        env!("CARGO_BIN_EXE_palette-watchdog"),
        base.join("palette-watchdog.exe"),
    )
    .unwrap();
    let agent = base.join("agent").join("palette-sample-agent.exe");
    std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
    std::fs::copy(built("palette-sample-agent.exe"), &agent).unwrap();
    std::fs::write(agent.parent().unwrap().join("VERSION"), "1.0.0").unwrap();
    std::fs::create_dir_all(base.join("Config")).unwrap();
    std::fs::write(
        base.join("Config").join("Config.yml"),
        "LicenseKey: k\nWebservice:\n  Endpoint: http://127.0.0.1:9\n  UseProxy: false\n",
    )
    .unwrap();
    std::fs::write(
        base.join("watchdog.yml"),
        format!("hostname: wine-host\nagent:\n  backend: windows_service\n  service_name: {NAME}\n  stop_timeout_secs: 5\nintervals:\n  keepalive_secs: 2\n  restart_first_ms: 100\n"),
    )
    .unwrap();
    let mut guard = AgentService {
        name: NAME,
        watchdog: None,
    };
    let _ = sc(&["stop", NAME]);
    let _ = sc(&["delete", NAME]);
    let bin_path = format!(
        "{} --service {NAME} --base {}",
        agent.display(),
        base.display()
    );
    let (ok, text) = sc(&["create", NAME, "binPath=", &bin_path]);
    assert!(ok, "sc create: {text}");

    guard.watchdog = Some(
        Command::new(base.join("palette-watchdog.exe"))
            .args(["run", "--base"])
            .arg(&base)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let logs = |base: &Path| read(&base.join("Logs").join("watchdog.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while live_agent_pid(&base).is_none() {
        assert!(
            Instant::now() < deadline,
            "the watchdog did not start the agent service\n{}",
            logs(&base)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        logs(&base).contains("backend=\"windows-service\""),
        "{}",
        logs(&base)
    );
    let first = live_agent_pid(&base).unwrap();

    let (ok, text) = sc(&["stop", NAME]);
    assert!(ok, "sc stop: {text}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while live_agent_pid(&base).is_none_or(|p| p == first) {
        assert!(
            Instant::now() < deadline,
            "the agent service stopped from outside was not started again\n{}",
            logs(&base)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(sc(&["query", NAME]).1.contains("RUNNING"));
    assert!(
        // Seen by the monitor (an exit event) or the keep-alive check.
        logs(&base).contains("starting it"),
        "the watchdog did not say it restarted the agent\n{}",
        logs(&base)
    );
}
