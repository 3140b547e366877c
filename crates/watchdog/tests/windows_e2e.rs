//! End to end on Windows (under Wine in `.ci/run`): the real watchdog.exe
//! and manager.exe against a real palette-server — the Linux one, started
//! on loopback by `scripts/wine-test.sh`, which sets `PALETTE_TEST_SERVER`
//! and builds the MSI packages (`PALETTE_TEST_MSI_DIR`). An MSI release
//! published on the server is installed by the watchdog through msiexec,
//! health-checked, committed, and the host reports the new version.
#![cfg(windows)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ADMIN: &str = "wine-admin-token";
const KEY: &str = "wine-license-key";

/// A binary built beside this test's binaries.
fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it for this target first",
        p.display()
    );
    p
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Runs the installed manager (console to nowhere: a process msiexec
/// starts may hold a pipe open) and asserts it succeeded.
fn manager(base: &Path, args: &[&str]) {
    let status = Command::new(base.join("palette-manager.exe"))
        .arg("--base")
        .arg(base)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "manager {args:?}: {}",
        read(&base.join("Logs").join("manager.log"))
    );
}

struct Watchdog(std::process::Child);

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn an_msi_release_is_installed_by_the_watchdog_and_reported() {
    let (Some(server), Some(msis)) = (
        std::env::var_os("PALETTE_TEST_SERVER"),
        std::env::var_os("PALETTE_TEST_MSI_DIR").map(PathBuf::from),
    ) else {
        println!("skipped: PALETTE_TEST_SERVER / PALETTE_TEST_MSI_DIR are not set (scripts/wine-test.sh sets them)");
        return;
    };
    let server = server.to_string_lossy().into_owned();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let app = base.join("app");
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
        format!("LicenseKey: {KEY}\nWebservice:\n  Endpoint: {server}\n  UseProxy: false\n"),
    )
    .unwrap();
    let agent = app.join("palette-sample-agent.exe");
    std::fs::write(
        base.join("watchdog.yml"),
        format!(
            "hostname: wine-msi-host\nagent:\n  command: ['{}', '--base', '{{base}}']\n  health_secs: 1\n  msi_properties: ['INSTALLFOLDER={}']\nserver:\n  protocol: v2\n  checkin_wait_secs: 5\nintervals:\n  keepalive_secs: 2\n",
            agent.display(),
            app.display()
        ),
    )
    .unwrap();
    // 2.0.0 is installed first, as a host would have it.
    let msi2 = msis.join("agent-2.0.0.msi");
    let sha2 = palette_host_sha(&msi2);
    manager(
        &base,
        &[
            "install-msi",
            &msi2.display().to_string(),
            "--version",
            "2.0.0",
            "--sha256",
            &sha2,
        ],
    );
    manager(&base, &["commit"]);

    let _watchdog = Watchdog(
        Command::new(base.join("palette-watchdog.exe"))
            .args(["run", "--base"])
            .arg(&base)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let host = || async {
        http.get(format!("{server}/api/v2/hosts/wine-msi-host"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    };
    let logs = || {
        format!(
            "--- watchdog.log ---\n{}\n--- manager.log ---\n{}",
            read(&base.join("Logs").join("watchdog.log")),
            read(&base.join("Logs").join("manager.log"))
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while host()
        .await
        .and_then(|h| h["report"]["agent_version"].as_str().map(str::to_string))
        != Some("2.0.0".into())
    {
        assert!(
            Instant::now() < deadline,
            "the host never reported 2.0.0\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let body = std::fs::read(msis.join("agent-3.0.0.msi")).unwrap();
    let res = http
        .post(format!(
            "{server}/api/v2/releases?version=3.0.0&platform=windows-x86_64&kind=msi"
        ))
        .bearer_auth(ADMIN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let h = host().await.unwrap_or_default();
        let r = &h["report"];
        if r["agent_version"] == "3.0.0" && r["last_update"]["outcome"] == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the MSI release was not installed and reported: {r}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(read(&app.join("VERSION")), "3.0.0");
    assert!(base.join("Logs").join("installer.log").exists());
}

fn palette_host_sha(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}
