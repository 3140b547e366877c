//! End to end on Windows (under Wine in `.ci/run`): the real watchdog.exe
//! and manager.exe against a real palette-server — the Linux one, started
//! on loopback by `scripts/wine-test.sh`, which sets `PALETTE_TEST_SERVER`
//! and builds the MSI packages (`PALETTE_TEST_MSI_DIR`).
//!
//! - An MSI release is installed by the watchdog through msiexec,
//!   health-checked, committed and reported; a broken one is rolled back.
//! - The watchdog *service* supervises the agent *service*; a commanded stop
//!   holds across a restart of the watchdog service.
//! - The watchdog service updates itself through the service control
//!   manager, and the agent it supervises keeps running.
#![cfg(windows)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod windows_support;
use windows_support::*;

const ADMIN: &str = "wine-admin-token";
const KEY: &str = "wine-license-key";
const WATCHDOG_SERVICE: &str = "palette-watchdog";

fn sha256(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    diagnostics: impl Fn() -> String,
    mut cond: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}\n{}",
            diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The palette-server `scripts/wine-test.sh` started, through its v2 API.
struct Fleet {
    url: String,
    http: reqwest::Client,
}

impl Fleet {
    fn from_env() -> Option<Fleet> {
        let url = std::env::var("PALETTE_TEST_SERVER").ok()?;
        Some(Fleet {
            url,
            // Under the server's 20 s idle limit: a pooled connection the
            // server has closed is never reused for an upload.
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        })
    }

    async fn host(&self, name: &str) -> serde_json::Value {
        let res = self
            .http
            .get(format!("{}/api/v2/hosts/{name}", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }

    async fn report(&self, name: &str) -> serde_json::Value {
        self.host(name).await["report"].clone()
    }

    async fn publish(&self, file: &Path, product: &str, version: &str, kind: &str) {
        let res = self
            .http
            .post(format!(
                "{}/api/v2/releases?product={product}&version={version}&platform=windows-x86_64&kind={kind}",
                self.url
            ))
            .bearer_auth(ADMIN)
            .body(std::fs::read(file).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            201,
            "publishing {product} {version}: {}",
            res.text().await.unwrap_or_default()
        );
    }

    /// Issues a command to one host and waits for its acknowledgement;
    /// returns the outcome.
    async fn command(&self, kind: &str, host: &str, logs: impl Fn() -> String) -> String {
        let res = self
            .http
            .post(format!("{}/api/v2/commands", self.url))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"kind": kind, "target": {"hosts": [host]}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let id = res.json::<serde_json::Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status: serde_json::Value = match self
                .http
                .get(format!("{}/api/v2/commands/{id}", self.url))
                .bearer_auth(ADMIN)
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            if let Some(o) = status["results"][0]["outcome"].as_str() {
                return o.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{host} did not acknowledge {kind} within 60 s\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// An install folder: the watchdog and the manager built beside this test,
/// `Config.yml` for the test server and `watchdog.yml` as given.
struct HostDir {
    _tmp: tempfile::TempDir,
    base: PathBuf,
}

impl HostDir {
    fn new(fleet: &Fleet, watchdog_yml: &str) -> HostDir {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        std::fs::copy(
            env!("CARGO_BIN_EXE_palette-watchdog"),
            base.join("palette-watchdog.exe"),
        )
        .unwrap();
        std::fs::copy(
            built("palette-manager.exe"),
            base.join("palette-manager.exe"),
        )
        .unwrap();
        std::fs::create_dir_all(base.join("Config")).unwrap();
        std::fs::write(
            base.join("Config").join("Config.yml"),
            format!(
                "LicenseKey: {KEY}\nWebservice:\n  Endpoint: {}\n  UseProxy: false\n",
                fleet.url
            ),
        )
        .unwrap();
        let yml = watchdog_yml.replace("{base_dir}", &base.display().to_string());
        std::fs::write(base.join("watchdog.yml"), yml).unwrap();
        HostDir { _tmp: tmp, base }
    }

    /// The sample agent (and a VERSION file) in `<base>\agent`.
    fn with_agent(self, version: &str) -> HostDir {
        let dir = self.base.join("agent");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            built("palette-sample-agent.exe"),
            dir.join("palette-sample-agent.exe"),
        )
        .unwrap();
        std::fs::write(dir.join("VERSION"), version).unwrap();
        self
    }

    fn agent_exe(&self) -> PathBuf {
        self.base.join("agent").join("palette-sample-agent.exe")
    }

    fn logs(&self) -> String {
        let l = self.base.join("Logs");
        format!(
            "--- watchdog.log ---\n{}\n--- manager.log ---\n{}\n--- watchdog.console.log ---\n{}",
            read(&l.join("watchdog.log")),
            read(&l.join("manager.log")),
            read(&l.join("watchdog.console.log"))
        )
    }

    fn watchdog_log(&self) -> String {
        read(&self.base.join("Logs").join("watchdog.log"))
    }

    /// The pid in the sample agent's status file, when that process runs.
    fn agent_pid(&self) -> Option<u32> {
        live_agent_pid(&self.base)
    }

    /// Runs the installed manager (console to nowhere: a process msiexec
    /// starts may hold a pipe open) and asserts it succeeded.
    fn manager(&self, args: &[&str]) {
        let status = Command::new(self.base.join("palette-manager.exe"))
            .arg("--base")
            .arg(&self.base)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "manager {args:?}: {}", self.logs());
    }

    /// Runs `palette-watchdog.exe <args> --base <base>` to its end.
    fn watchdog(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(self.base.join("palette-watchdog.exe"))
            .args(args)
            .arg("--base")
            .arg(&self.base)
            .stdin(Stdio::null())
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

    /// The watchdog in the foreground, ended when the guard drops.
    fn run_watchdog(&self) -> Child {
        Child(
            Command::new(self.base.join("palette-watchdog.exe"))
                .args(["run", "--base"])
                .arg(&self.base)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// Installs and starts the watchdog service; removed (and the agent
    /// service deleted) when the guard drops, even when the test fails.
    fn install_service(&self, agent_service: Option<&'static str>) -> ServiceGuard {
        let guard = ServiceGuard {
            base: self.base.clone(),
            agent_service,
        };
        let _ = self.watchdog(&["remove"]); // a leftover of an earlier run
        let (ok, text) = self.watchdog(&["install", "--start"]);
        assert!(ok, "install --start: {text}\n{}", self.logs());
        guard
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct ServiceGuard {
    base: PathBuf,
    agent_service: Option<&'static str>,
}

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        let _ = Command::new(self.base.join("palette-watchdog.exe"))
            .args(["remove", "--base"])
            .arg(&self.base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(name) = self.agent_service {
            let _ = sc(&["stop", name]);
            let _ = sc(&["delete", name]);
        }
        // Whatever the watchdog left running in the folder (a failed test).
        let _ = Command::new("taskkill")
            .args(["/F", "/IM", "palette-sample-agent.exe"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn msi_releases_are_installed_by_the_watchdog_and_a_broken_one_is_rolled_back() {
    let (Some(fleet), Some(msis)) = (
        Fleet::from_env(),
        std::env::var_os("PALETTE_TEST_MSI_DIR").map(PathBuf::from),
    ) else {
        println!("skipped: PALETTE_TEST_SERVER / PALETTE_TEST_MSI_DIR are not set (scripts/wine-test.sh sets them)");
        return;
    };
    const NAME: &str = "wine-msi-host";
    let host = HostDir::new(
        &fleet,
        &format!(
            "hostname: {NAME}\nagent:\n  command: ['{{base_dir}}\\app\\palette-sample-agent.exe', '--base', '{{base}}']\n  health_secs: 2\n  msi_properties: ['INSTALLFOLDER={{base_dir}}\\app']\nserver:\n  protocol: v2\n  checkin_wait_secs: 5\nintervals:\n  keepalive_secs: 2\n"
        ),
    );
    let app = host.base.join("app");
    // 2.0.0 is installed first, as a host would have it.
    let msi2 = msis.join("agent-2.0.0.msi");
    host.manager(&[
        "install-msi",
        &msi2.display().to_string(),
        "--version",
        "2.0.0",
        "--sha256",
        &sha256(&msi2),
    ]);
    host.manager(&["commit"]);

    let _watchdog = host.run_watchdog();
    wait_until(
        "the host reports 2.0.0",
        Duration::from_secs(60),
        || host.logs(),
        || async { fleet.report(NAME).await["agent_version"] == "2.0.0" },
    )
    .await;

    fleet
        .publish(&msis.join("agent-3.0.0.msi"), "agent", "3.0.0", "msi")
        .await;
    wait_until(
        "the MSI release 3.0.0 is installed and reported",
        Duration::from_secs(120),
        || host.logs(),
        || async {
            let r = fleet.report(NAME).await;
            r["agent_version"] == "3.0.0" && r["last_update"]["outcome"] == "succeeded"
        },
    )
    .await;
    assert_eq!(read(&app.join("VERSION")), "3.0.0");
    assert!(host.base.join("Logs").join("installer.log").exists());

    // 4.0.0 installs, but its agent exits at once (the package carries a
    // FAIL file): the health check fails, the manager uninstalls it and
    // reinstalls 3.0.0, and the failure is reported.
    fleet
        .publish(
            &msis.join("agent-4.0.0-broken.msi"),
            "agent",
            "4.0.0",
            "msi",
        )
        .await;
    wait_until(
        "the broken MSI release 4.0.0 is rolled back and reported",
        Duration::from_secs(180),
        || host.logs(),
        || async {
            let r = fleet.report(NAME).await;
            r["last_update"]["version"] == "4.0.0" && r["last_update"]["outcome"] == "failed"
        },
    )
    .await;
    let r = fleet.report(NAME).await;
    let message = r["last_update"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("rolled back"), "{r}\n{}", host.logs());
    assert_eq!(read(&app.join("VERSION")), "3.0.0", "{}", host.logs());
    assert!(
        !app.join("FAIL").exists(),
        "the broken package's files were left behind"
    );
    wait_until(
        "the agent 3.0.0 runs again and is reported",
        Duration::from_secs(60),
        || host.logs(),
        || async {
            host.agent_pid().is_some() && fleet.report(NAME).await["agent_version"] == "3.0.0"
        },
    )
    .await;
}

/// The legacy set-up: the watchdog service supervising the agent service.
/// `sc stop` from outside → the agent is started again; a commanded stop
/// holds, also across a restart of the watchdog service; `start` ends it.
#[tokio::test]
async fn the_watchdog_service_supervises_the_agent_service_and_a_commanded_stop_holds() {
    let Some(fleet) = Fleet::from_env() else {
        println!("skipped: PALETTE_TEST_SERVER is not set (scripts/wine-test.sh sets it)");
        return;
    };
    const NAME: &str = "wine-svc-host";
    const AGENT: &str = "palette-sample-agent-e2e";
    let host = HostDir::new(
        &fleet,
        &format!(
            "hostname: {NAME}\n# Its own product: the agent releases the other tests publish are not for it.\nproduct: svc-agent\nagent:\n  backend: windows_service\n  service_name: {AGENT}\n  stop_timeout_secs: 5\nserver:\n  protocol: v2\n  checkin_wait_secs: 5\nintervals:\n  keepalive_secs: 2\n  restart_first_ms: 100\n"
        ),
    )
    .with_agent("1.0.0");
    let _ = sc(&["stop", AGENT]);
    let _ = sc(&["delete", AGENT]);
    let bin_path = format!(
        "{} --service {AGENT} --base {}",
        host.agent_exe().display(),
        host.base.display()
    );
    let (ok, text) = sc(&["create", AGENT, "binPath=", &bin_path]);
    assert!(ok, "sc create: {text}");
    let _service = host.install_service(Some(AGENT));

    let logs = || host.logs();
    wait_until(
        "the watchdog service starts the agent service and reports it",
        Duration::from_secs(60),
        logs,
        || async { host.agent_pid().is_some() && fleet.report(NAME).await["hostname"] == NAME },
    )
    .await;
    assert!(service_state_is(WATCHDOG_SERVICE, "RUNNING"));
    let first = host.agent_pid().unwrap();

    // Stopped from outside: started again.
    let (ok, text) = sc(&["stop", AGENT]);
    assert!(ok, "sc stop: {text}");
    wait_until(
        "the agent service stopped from outside is started again",
        Duration::from_secs(60),
        logs,
        || async { host.agent_pid().is_some_and(|p| p != first) },
    )
    .await;

    // Stopped by an operator: it stays stopped.
    assert_eq!(fleet.command("stop", NAME, logs).await, "succeeded");
    assert!(service_state_is(AGENT, "STOPPED"), "{}", logs());

    // The watchdog service restarts (a reboot, an operator): the agent
    // still stays stopped.
    let starts = host.watchdog_log().matches("starting base=").count();
    let (ok, text) = host.watchdog(&["restart"]);
    assert!(ok, "restart: {text}\n{}", logs());
    wait_until(
        "the restarted watchdog says the agent stays stopped",
        Duration::from_secs(60),
        logs,
        || async {
            let log = host.watchdog_log();
            log.matches("starting base=").count() > starts
                && log.rsplit("starting base=").next().is_some_and(|l| {
                    l.contains("the agent stays stopped: an operator commanded stop")
                })
        },
    )
    .await;
    // Past keep-alive checks (2 s here): commands performed after them
    // (PUT-CONFIG: the host uploads its Config.yml) find the agent still
    // stopped.
    assert_eq!(fleet.command("PUT-CONFIG", NAME, logs).await, "succeeded");
    assert_eq!(fleet.command("PUT-CONFIG", NAME, logs).await, "succeeded");
    assert!(
        service_state_is(AGENT, "STOPPED"),
        "the agent came back after a watchdog service restart\n{}",
        logs()
    );
    assert!(host.agent_pid().is_none());

    assert_eq!(fleet.command("start", NAME, logs).await, "succeeded");
    wait_until(
        "the agent service runs again",
        Duration::from_secs(60),
        logs,
        || async { host.agent_pid().is_some() && service_state_is(AGENT, "RUNNING") },
    )
    .await;
}

/// A watchdog release (zip) made from this build's watchdog and manager,
/// stamped as `version`.
fn watchdog_release(dir: &Path, version: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(format!("watchdog-{version}.zip"));
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, src) in [
        (
            "palette-watchdog.exe",
            PathBuf::from(env!("CARGO_BIN_EXE_palette-watchdog")),
        ),
        ("palette-manager.exe", built("palette-manager.exe")),
    ] {
        let mut bytes = std::fs::read(src).unwrap();
        palette_host::stamp::stamp_bytes(&mut bytes, &version.parse().unwrap()).unwrap();
        zip.start_file(name, opts).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.start_file("VERSION", opts).unwrap();
    zip.write_all(version.as_bytes()).unwrap();
    zip.finish().unwrap();
    path
}

/// The watchdog service updates itself: the release is verified, the
/// running .exe moved aside and replaced, the service restarted through
/// the service control manager, the new watchdog proves itself (self-check
/// and check-in), and the agent it supervises is never restarted.
#[tokio::test]
async fn the_watchdog_service_updates_itself() {
    let Some(fleet) = Fleet::from_env() else {
        println!("skipped: PALETTE_TEST_SERVER is not set (scripts/wine-test.sh sets it)");
        return;
    };
    const NAME: &str = "wine-self-host";
    const NEW: &str = "9.0.0";
    let host = HostDir::new(
        &fleet,
        &format!(
            "hostname: {NAME}\nproduct: self-agent\nagent:\n  command: ['{{base_dir}}\\agent\\palette-sample-agent.exe', '--base', '{{base}}']\n  stop_timeout_secs: 5\nserver:\n  protocol: v2\n  checkin_wait_secs: 5\nintervals:\n  keepalive_secs: 2\n  download_retry_secs: 1\nself_update:\n  prove_secs: 90\n"
        ),
    )
    .with_agent("1.0.0");
    let _service = host.install_service(None);
    let logs = || host.logs();
    let old = env!("CARGO_PKG_VERSION");
    wait_until(
        "the watchdog service runs the agent and checked in",
        Duration::from_secs(60),
        logs,
        || async {
            host.agent_pid().is_some() && fleet.report(NAME).await["watchdog_version"] == old
        },
    )
    .await;
    let agent = host.agent_pid().unwrap();

    let dir = tempfile::tempdir().unwrap();
    fleet
        .publish(
            &watchdog_release(dir.path(), NEW),
            "watchdog",
            NEW,
            "archive",
        )
        .await;
    wait_until(
        "the new watchdog runs as the service and the server shows the self-update",
        Duration::from_secs(180),
        logs,
        || async {
            let r = fleet.report(NAME).await;
            r["watchdog_version"] == NEW && r["last_watchdog_update"]["outcome"] == "succeeded"
        },
    )
    .await;
    wait_until(
        "the self-update journal is closed",
        Duration::from_secs(60),
        logs,
        || async { !host.base.join("state").join("self-update.json").exists() },
    )
    .await;
    assert!(service_state_is(WATCHDOG_SERVICE, "RUNNING"), "{}", logs());
    let (ok, version) = host.watchdog(&["--version"]);
    assert!(ok && version.contains(NEW), "{version}");
    assert!(
        logs().contains("restarting the watchdog through the service manager"),
        "the manager did not restart the service through the SCM\n{}",
        logs()
    );
    assert_eq!(
        host.agent_pid(),
        Some(agent),
        "the agent was restarted by the self-update\n{}",
        logs()
    );
}
