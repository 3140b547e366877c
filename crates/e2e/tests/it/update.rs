//! Agent updates against the real binaries: what a passing local problem
//! does to a release, and what an update leaves behind.

use std::time::Duration;

use palette_e2e::*;
use palette_protocol::v2::Outcome;

use super::T;

/// Issue 22, item 9: a release that unpacks to more than the free space
/// (a small archive, well within the 100× ratio) is a passing local
/// problem: refused with the agent never stopped (the manager unpacks
/// into staging before the agent is stopped for the switch), retried with backoff, and
/// installed once the disk has grown.
#[tokio::test]
async fn a_release_larger_than_the_free_space_is_installed_once_the_disk_grows() {
    let fs = match Tmpfs::mount("300m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED a_release_larger_than_the_free_space_is_installed_once_the_disk_grows: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut host = Host::new_in(&fs.path, "grows", &server.url, "  download_retry_secs: 1\n");
    host.start();
    let agent = host
        .wait_agent_running(T)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    // Unpacked: the free space plus 40 MiB.
    let unpacked = (fs.free() >> 20) + 40;
    let big = release_archive_expanding(tmp.path(), "2.0.0", unpacked);
    api.publish(&big, "2.0.0", "archive").await;
    wait_for(
        "the host reports the lack of space",
        Duration::from_secs(60),
        || async {
            api.host("grows")
                .await
                .and_then(|h| h.report)
                .and_then(|r| r.last_update)
                .is_some_and(|u| {
                    u.outcome == Outcome::Failed
                        && u.message.contains("free space")
                        && u.message.contains("retrying in")
                })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    // Unpacked into staging while the agent ran: it was never stopped.
    assert_eq!(
        host.running_agent().map(|a| a.pid),
        Some(agent.pid),
        "the agent was stopped for an update that could not be unpacked"
    );
    fs.resize("900m");
    wait_for(
        "2.0.0 runs after the disk grew",
        Duration::from_secs(90),
        || async { host.running_agent().is_some_and(|a| a.version == "2.0.0") },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    wait_for("the server shows 2.0.0 installed", T, || async {
        api.host("grows")
            .await
            .and_then(|h| h.report)
            .and_then(|r| r.last_update)
            .is_some_and(|u| u.outcome == Outcome::Succeeded && u.version.to_string() == "2.0.0")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
}

/// Issue 22 (also measured): a completed update leaves no download in
/// `Updates/` (it stayed there until the next download).
#[tokio::test]
async fn a_completed_update_leaves_nothing_in_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut host = Host::new("tidy", &server.url, "v2", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&a2, "2.0.0", "archive").await;
    wait_for(
        "2.0.0 is reported installed",
        Duration::from_secs(60),
        || async {
            api.host("tidy")
                .await
                .and_then(|h| h.report)
                .and_then(|r| r.last_update)
                .is_some_and(|u| u.outcome == Outcome::Succeeded)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    let updates = host.base.join("Updates");
    wait_for("Updates/ is empty", T, || async {
        std::fs::read_dir(&updates).map_or(true, |mut d| d.next().is_none())
    })
    .await
    .unwrap_or_else(|e| {
        let left: Vec<_> = std::fs::read_dir(&updates)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        panic!("{e:#}: {left:?}")
    });
}

/// Issue 21, item 8: after a refused GET-CONFIG a legacy (v1) watchdog
/// uploads the Config.yml it keeps running on, as the original does, so
/// the server shows what the host runs rather than the file it refused.
/// Against a stand-in legacy server (ours takes a host's upload only when
/// it asked for one).
#[tokio::test]
async fn a_refused_get_config_uploads_the_config_in_place_on_v1() {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ts = palette_protocol::timefmt::rfc3339_secs(now_ms);
    let server = FakeHttp::start(move |r| {
        if r.path.starts_with("/api/v1/command") {
            Answer::json(format!(r#"{{"ts":"{ts}","command":"GET-CONFIG"}}"#))
        } else if r.method == "GET" && r.path.starts_with("/api/v1/config") {
            // No Webservice section: refused by the watchdog.
            Answer {
                status: 200,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: b"LicenseKey: only-a-key\n".to_vec(),
            }
        } else if r.method == "PUT" && r.path.starts_with("/api/v1/config") {
            Answer::status(200)
        } else {
            Answer::status(404)
        }
    })
    .await;
    let mut host = Host::new("legacy-refuser", &server.url, "v1", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let kept = host.config_yml();
    host.wait_log("refused", T)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_for("the file in place is uploaded", T, || async {
        server.requests().iter().any(|r| {
            r.method == "PUT"
                && r.path.starts_with("/api/v1/config")
                && String::from_utf8_lossy(&r.body).contains("AgentOnly:")
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(host.config_yml(), kept, "the refused file was applied");
}

/// Issue 21, item 9: `enroll --agent-command` (or `--preset`) writes the
/// `agent:` section, so a host set up in one command installs and runs its
/// first release; without either, enroll says which command it assumes.
#[tokio::test]
async fn an_enrolled_host_with_an_agent_command_runs_its_first_release() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let enroll = |base: &std::path::Path, extra: &[&str]| {
        std::fs::create_dir_all(base).unwrap();
        let out = std::process::Command::new(bin("palette-watchdog"))
            .arg("--base")
            .arg(base)
            .args(["enroll", "--server", &server.url, "--key", AGENT_KEY])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // Refused before anything is asked of the server or written.
    let refused = tmp.path().join("refused");
    let (ok, out) = enroll(
        &refused,
        &["--hostname", "boot-win", "--preset", "windows_service"],
    );
    assert!(!ok && out.contains("needs --agent-service"), "{out}");
    assert!(!refused.join("watchdog.yml").exists());
    // The default is said out loud.
    let (ok, out) = enroll(&tmp.path().join("plain"), &["--hostname", "boot-plain"]);
    assert!(ok && out.contains("no --agent-command"), "{out}");
    // systemd: the unit's commands.
    let sd = tmp.path().join("sd");
    let (ok, out) = enroll(
        &sd,
        &[
            "--hostname",
            "boot-sd",
            "--preset",
            "systemd",
            "--agent-service",
            "insight.service",
        ],
    );
    assert!(ok, "{out}");
    let yml = std::fs::read_to_string(sd.join("watchdog.yml")).unwrap();
    assert!(
        yml.contains("backend: command") && yml.contains("\"insight.service\""),
        "{yml}"
    );

    let base = tmp.path().join("host");
    let (ok, out) = enroll(
        &base,
        &[
            "--hostname",
            "boot-run",
            "--agent-command",
            "{current}/palette-sample-agent --base {base}",
        ],
    );
    assert!(ok, "{out}");
    std::fs::copy(bin("palette-manager"), base.join("palette-manager")).unwrap();
    let mut watchdog = spawn_fresh_copy(
        std::process::Command::new(bin("palette-watchdog"))
            .arg("--base")
            .arg(&base)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_for("boot-run checks in", T, || async {
        api.host("boot-run")
            .await
            .is_some_and(|h| h.report.is_some())
    })
    .await
    .unwrap();
    let a1 = release_archive(tmp.path(), "1.0.0", false);
    api.publish(&a1, "1.0.0", "archive").await;
    let agent = || -> Option<serde_json::Value> {
        let t = std::fs::read_to_string(base.join("state/sample-agent.json")).ok()?;
        serde_json::from_str(&t).ok()
    };
    let running = wait_for(
        "the first release runs",
        Duration::from_secs(90),
        || async {
            agent().is_some_and(|a| {
                a["version"] == "1.0.0" && alive(a["pid"].as_u64().unwrap_or(0) as u32)
            })
        },
    )
    .await;
    let _ = watchdog.kill();
    let _ = watchdog.wait();
    if let Some(pid) = agent()
        .and_then(|a| a["pid"].as_u64())
        .filter(|p| *p > 1 && alive(*p as u32))
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    running.unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}",
            std::fs::read_to_string(base.join("Logs/watchdog.log")).unwrap_or_default()
        )
    });
}
