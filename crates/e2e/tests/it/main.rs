//! End to end: the real palette-server, palette-watchdog, palette-manager
//! and sample agent as separate processes on loopback. Every wait is a
//! condition with a deadline.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
#![cfg(unix)]

use std::time::Duration;

use palette_e2e::*;
use palette_protocol::v2::{AgentState, CommandKind, DesiredState, Outcome};

const T: Duration = Duration::from_secs(30);

mod dashboard;
mod hostile;
mod replicas;
mod rollback;
mod rollouts;
mod selfupdate;
mod trust;
mod update;

async fn setup(name: &str) -> (tempfile::TempDir, Server, Host) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let mut host = Host::new(name, &server.url, "auto", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    (tmp, server, host)
}

fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[tokio::test]
async fn killed_agent_runs_again() {
    let (_t, _s, host) = setup("crashy").await;
    let first = host.running_agent().unwrap();
    assert_eq!(first.version, "1.0.0");
    kill9(first.pid);
    wait_for("a new agent process", Duration::from_secs(10), || async {
        host.running_agent().is_some_and(|a| a.pid != first.pid)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    host.wait_log("agent exited unexpectedly; restarting it", T)
        .await
        .unwrap();
}

#[tokio::test]
async fn stop_survives_a_watchdog_restart_and_start_undoes_it() {
    let (_t, server, mut host) = setup("stopper").await;
    let api = server.api();
    let id = api.command(CommandKind::Stop, "stopper").await;
    let (outcome, msg) = api.ack(id, T).await;
    assert_eq!(outcome, Outcome::Succeeded, "{msg}");
    wait_for("the agent stops", T, || async {
        host.running_agent().is_none()
    })
    .await
    .unwrap();
    wait_for("the server shows it stopped", T, || async {
        api.host("stopper")
            .await
            .and_then(|h| h.report)
            .is_some_and(|r| {
                r.agent_state == AgentState::Stopped && r.desired_state == DesiredState::Stopped
            })
    })
    .await
    .unwrap();

    host.stop();
    host.start();
    host.wait_log("the agent stays stopped: an operator commanded stop", T)
        .await
        .unwrap();
    // Past a keep-alive check (2 s here), it is still stopped.
    let marker = "performing command";
    let before = host.log().matches(marker).count();
    let id = api.command(CommandKind::PutConfig, "stopper").await;
    api.ack(id, T).await;
    assert!(host.log().matches(marker).count() > before);
    assert!(
        host.running_agent().is_none(),
        "the agent came back after a watchdog restart"
    );

    let id = api.command(CommandKind::Start, "stopper").await;
    assert_eq!(api.ack(id, T).await.0, Outcome::Succeeded);
    host.wait_agent_running(T).await.unwrap();
}

#[tokio::test]
async fn restart_command_and_duplicate_delivery_is_performed_once() {
    let (_t, mut server, host) = setup("dup").await;
    let api = server.api();
    let before = host.running_agent().unwrap();
    let id = api.command(CommandKind::Restart, "dup").await;
    assert_eq!(api.ack(id, T).await.0, Outcome::Succeeded);
    let after = host.wait_agent_running(T).await.unwrap();
    assert_ne!(before.pid, after.pid, "restart gives a new process");

    // The server forgets the acknowledgement (as after restoring an old
    // backup) and delivers the same command again.
    let data = server.data.clone();
    let port = server.port;
    server.stop();
    {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}",
            data.join("palette.db").display()
        ))
        .await
        .unwrap();
        sqlx::query("DELETE FROM command_acks")
            .execute(&mut db)
            .await
            .unwrap();
    }
    let server = Server::start_on(&data, port).await;
    let api = server.api();
    let (outcome, msg) = api.ack(id, T).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(msg, "already performed");
    assert_eq!(
        host.running_agent().unwrap().pid,
        after.pid,
        "performed only once"
    );
}

#[tokio::test]
async fn a_new_server_store_never_makes_the_watchdog_skip_a_command() {
    let (t, mut server, host) = setup("restored").await;
    let api = server.api();
    let before = host.running_agent().unwrap();
    let id = api.command(CommandKind::Restart, "restored").await;
    assert_eq!(api.ack(id, T).await.0, Outcome::Succeeded);
    let after = host.wait_agent_running(T).await.unwrap();
    assert_ne!(before.pid, after.pid);

    // The server is replaced by one with a new store (a rebuilt server, or
    // a backup from before any command) at the same address: its ids start
    // afresh, so its first command has the id the host already performed.
    let port = server.port;
    server.stop();
    let server = Server::start_on(&t.path().join("server-new"), port).await;
    let api = server.api();
    let id2 = api.command(CommandKind::Stop, "restored").await;
    assert_eq!(id2, id, "the new store reuses the id");
    let (outcome, msg) = api.ack(id2, T).await;
    assert_eq!(outcome, Outcome::Succeeded, "{msg}");
    assert_ne!(msg, "already performed");
    wait_for("the agent stops", T, || async {
        host.running_agent().is_none()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    host.wait_log("the server's store changed", T)
        .await
        .unwrap();
}

#[tokio::test]
async fn publish_v2_then_a_failing_v3_rolls_back() {
    let (t, server, host) = setup("updater").await;
    let api = server.api();
    let a2 = release_archive(t.path(), "2.0.0", false);
    api.publish(&a2, "2.0.0", "archive").await;
    wait_for(
        "the host runs 2.0.0 and the server shows it",
        Duration::from_secs(60),
        || async {
            let shown = api
                .host("updater")
                .await
                .and_then(|h| h.report)
                .is_some_and(|r| {
                    r.agent_version.map(|v| v.to_string()) == Some("2.0.0".into())
                        && r.agent_state == AgentState::Running
                        && r.last_update
                            .is_some_and(|u| u.outcome == Outcome::Succeeded)
                });
            shown && host.running_agent().is_some_and(|a| a.version == "2.0.0")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert!(
        std::fs::read_to_string(host.base.join("Logs/installer.log"))
            .unwrap()
            .contains("palette-sample-agent")
    );
    assert!(host.base.join("manager_in_action").exists());

    let a3 = release_archive(t.path(), "3.0.0", true);
    api.publish(&a3, "3.0.0", "archive").await;
    wait_for(
        "3.0.0 fails its health check and is rolled back",
        Duration::from_secs(60),
        || async {
            api.host("updater")
                .await
                .and_then(|h| h.report)
                .and_then(|r| r.last_update)
                .is_some_and(|u| {
                    u.outcome == Outcome::Failed
                        && u.version.to_string() == "3.0.0"
                        && u.message.contains("rolled back to 2.0.0")
                })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    let a = host.wait_agent_running(T).await.unwrap();
    assert_eq!(a.version, "2.0.0");
    assert_eq!(
        std::fs::read_to_string(host.base.join("versions/current"))
            .unwrap()
            .trim(),
        "2.0.0"
    );
    assert!(!host.base.join("versions/3.0.0").exists());
    assert!(!host.base.join("state/update-journal.json").exists());
}

#[tokio::test]
async fn a_download_with_a_wrong_hash_is_not_installed() {
    let (t, server, mut host) = setup("tampered").await;
    let api = server.api();
    // Publish while the watchdog is down, then tamper with the stored
    // artifact behind the server's back.
    host.stop();
    let archive = release_archive(t.path(), "2.0.0", false);
    let rel = api.publish(&archive, "2.0.0", "archive").await;
    let sha = rel["sha256"].as_str().unwrap();
    let stored = server.data.join("artifacts").join(&sha[..2]).join(sha);
    let mut bytes = std::fs::read(&stored).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    host.start();
    wait_for(
        "the failure is reported",
        Duration::from_secs(60),
        || async {
            api.host("tampered")
                .await
                .and_then(|h| h.report)
                .and_then(|r| r.last_update)
                .is_some_and(|u| {
                    u.outcome == Outcome::Failed
                        && u.message.contains("download refused")
                        && u.message.contains("sha256")
                })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(host.running_agent().unwrap().version, "1.0.0");
    assert!(!host.base.join("versions/2.0.0").exists());
    assert_eq!(
        std::fs::read_dir(host.base.join("Updates"))
            .unwrap()
            .count(),
        0,
        "nothing left in Updates/"
    );
}

#[tokio::test]
async fn get_config_applies_uploads_and_restarts() {
    let (_t, server, host) = setup("configured").await;
    let api = server.api();
    let before = host.running_agent().unwrap();
    let new = agent_config(
        &server.url,
        AGENT_KEY,
        "# pushed by the operator\nAgentOnly:\n  keep: changed\n",
    );
    let push = api.push_config("configured", &new).await;
    let id = push["command"]["id"].as_i64().unwrap();
    let (outcome, msg) = api.ack(id, T).await;
    assert_eq!(outcome, Outcome::Succeeded, "{msg}");
    assert!(msg.contains("agent restarted"), "{msg}");
    assert_eq!(
        host.config_yml(),
        new,
        "the file is the pushed bytes, comments included"
    );
    let after = host.wait_agent_running(T).await.unwrap();
    assert_ne!(after.pid, before.pid, "the agent was restarted");
    wait_for("the server holds the applied copy", T, || async {
        api.latest_config("configured", "reported").await.as_deref() == Some(new.as_str())
    })
    .await
    .unwrap();
    let rev = push["revision"]["revision"].as_i64();
    wait_for("the host reports the applied revision", T, || async {
        api.host("configured")
            .await
            .and_then(|h| h.report)
            .is_some_and(|r| r.config_revision == rev)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn invalid_configs_are_refused_and_the_old_file_stays() {
    let (_t, server, host) = setup("careful").await;
    let api = server.api();
    let original = host.config_yml();
    let cases = [
        ("LicenseKey: [broken\n".to_string(), "not valid YAML"),
        (
            "Webservice:\n  Endpoint: http://127.0.0.1:1\n".to_string(),
            "no LicenseKey",
        ),
        (
            agent_config(&server.url, "a-key-the-server-does-not-know", ""),
            "does not accept its license key",
        ),
        (
            agent_config("http://127.0.0.1:9", AGENT_KEY, ""),
            "does not accept its license key",
        ),
    ];
    for (body, want) in cases {
        let push = api.push_config("careful", &body).await;
        let id = push["command"]["id"].as_i64().unwrap();
        let (outcome, msg) = api.ack(id, T).await;
        assert_eq!(outcome, Outcome::Failed, "{want}: {msg}");
        assert!(msg.contains(want), "{want}: {msg}");
        assert_eq!(
            host.config_yml(),
            original,
            "{want}: the old file was touched"
        );
    }
    assert!(host.running_agent().is_some());
}

#[tokio::test]
async fn put_config_uploads_the_current_file() {
    let (_t, server, host) = setup("uploader").await;
    let api = server.api();
    wait_for("the first automatic report", T, || async {
        !api.configs("uploader").await.is_empty()
    })
    .await
    .unwrap();
    let n = api.configs("uploader").await.len();
    let id = api.command(CommandKind::PutConfig, "uploader").await;
    assert_eq!(api.ack(id, T).await.0, Outcome::Succeeded);
    let list = api.configs("uploader").await;
    assert_eq!(list.len(), n + 1);
    assert_eq!(
        api.latest_config("uploader", "reported").await.unwrap(),
        host.config_yml()
    );
}

#[tokio::test]
async fn server_down_leaves_the_agent_alone_and_the_watchdog_reconnects() {
    let (_t, mut server, host) = setup("resilient").await;
    let agent = host.running_agent().unwrap();
    let (data, port) = (server.data.clone(), server.port);
    server.stop();
    host.wait_log("check-in failed; the agent keeps running", T)
        .await
        .unwrap();
    assert_eq!(host.running_agent().unwrap().pid, agent.pid);
    let server = Server::start_on(&data, port).await;
    host.wait_log("server reachable again", Duration::from_secs(90))
        .await
        .unwrap();
    let api = server.api();
    let id = api.command(CommandKind::Restart, "resilient").await;
    assert_eq!(api.ack(id, T).await.0, Outcome::Succeeded);
    assert_eq!(
        host.wait_agent_running(T).await.unwrap().endpoint,
        server.url
    );
}

#[tokio::test]
async fn legacy_v1_mode_against_the_v1_api() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    // The host name is upper case, as Windows names usually are: it stays
    // so on the wire and in the inventory (a legacy server compares names
    // case-sensitively, and so do we).
    let wire = Proxy::start(server.port, None).await;
    let mut host = Host::new(
        "Legacy-Host",
        &wire.url,
        "v1",
        "trust:\n  allow_legacy_md5: true\n",
    );
    host.start();
    host.wait_agent_running(T).await.unwrap();
    // A new host is asked for its config: it uploads it (PUT-CONFIG).
    wait_for("the host's config reaches the server", T, || async {
        api.latest_config("Legacy-Host", "reported").await.is_some()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    let sent = wire.wire();
    assert!(sent.contains("hostname=Legacy-Host"), "{sent}");
    assert!(!sent.contains("hostname=legacy-host"), "{sent}");

    api.v1_command("stop").await;
    wait_for("stop", T, || async { host.running_agent().is_none() })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    api.v1_command("start").await;
    host.wait_agent_running(T).await.unwrap();

    let new = agent_config(&wire.url, AGENT_KEY, "Legacy: pushed\n");
    api.v1_put_config("Legacy-Host", &new).await;
    api.v1_command("GET-CONFIG").await;
    wait_for("GET-CONFIG applied", T, || async {
        host.config_yml() == new
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    wait_for("the applied copy uploaded", T, || async {
        api.latest_config("Legacy-Host", "reported")
            .await
            .as_deref()
            == Some(new.as_str())
    })
    .await
    .unwrap();

    // A GET-CONFIG whose file is refused (no Webservice section): the file
    // in place stays, and it is uploaded again as what the host runs, as
    // the original watchdog does (issue 21.8) -- and our server takes it.
    let reported = |cs: Vec<palette_protocol::v2::ConfigRevision>| {
        cs.into_iter()
            .filter(|c| c.source == palette_protocol::v2::ConfigSource::Reported)
            .count()
    };
    let before = reported(api.configs("Legacy-Host").await);
    api.v1_put_config("Legacy-Host", "LicenseKey: only-a-key\n")
        .await;
    api.v1_command("GET-CONFIG").await;
    host.wait_log("refused", T)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    wait_for(
        "the file in place uploaded after the refusal",
        T,
        || async { reported(api.configs("Legacy-Host").await) > before },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(host.config_yml(), new, "the refused file was applied");
    assert_eq!(
        api.latest_config("Legacy-Host", "reported")
            .await
            .as_deref(),
        Some(new.as_str())
    );

    // Our v1 watchdog updates from our server: the v1 offer follows the
    // host's platform (an archive here), MD5 only, installed on opt-in.
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&a2, "2.0.0", "archive").await;
    let running = wait_for("the host runs 2.0.0", Duration::from_secs(60), || async {
        host.running_agent().is_some_and(|a| a.version == "2.0.0")
    })
    .await;
    running.unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    let agent = host.running_agent().unwrap();

    // An MSI offered to a Linux host is recognised by its content and
    // refused before anything is stopped.
    let msi = tmp.path().join("agent-3.0.0.msi");
    let mut body = vec![0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1];
    body.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&msi, body).unwrap();
    api.publish(&msi, "3.0.0", "msi").await;
    host.wait_log(
        "Windows Installer (MSI) package, which cannot be installed",
        T,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(
        host.running_agent().unwrap().pid,
        agent.pid,
        "the agent was never stopped for the MSI"
    );
}

#[tokio::test]
async fn a_stop_during_a_slow_download_cancels_it_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    // 1 MiB/s: the 48 MiB release below takes most of a minute to arrive.
    let slow = Proxy::start(server.port, Some(1 << 20)).await;
    let mut host = Host::new("slowlink", &slow.url, "v2", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let big = release_archive_with(tmp.path(), "2.0.0", false, 48);
    api.publish(&big, "2.0.0", "archive").await;
    host.wait_log("downloading update", T)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    // The server shows the download in progress, and palettectl says so.
    wait_for("the download's progress reaches the server", T, || async {
        let h = api.host("slowlink").await;
        h.and_then(|h| h.report)
            .and_then(|r| r.update_progress)
            .is_some_and(|p| {
                p.phase == palette_protocol::v2::UpdatePhase::Downloading
                    && p.bytes > 0
                    && p.total.is_some_and(|t| t > p.bytes)
            })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    let (ok, out, err) = ctl(&server, ADMIN, &["hosts", "slowlink"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("updating:      agent 2.0.0 Downloading"),
        "{out}"
    );

    let asked = std::time::Instant::now();
    let id = api.command(CommandKind::Stop, "slowlink").await;
    // Well within the download's remaining time: the stop does not wait.
    let (outcome, msg) = api.ack(id, Duration::from_secs(20)).await;
    println!(
        "stop during a download acknowledged in {:?}",
        asked.elapsed()
    );
    assert_eq!(outcome, Outcome::Succeeded, "{msg}");
    assert!(host.running_agent().is_none(), "the agent is stopped");
    host.wait_log("cancelling the download", T).await.unwrap();
    host.wait_log("download cancelled; nothing installed", T)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(host.base.join("versions/current"))
            .unwrap()
            .trim(),
        "1.0.0"
    );
    let leftovers: Vec<_> = std::fs::read_dir(host.base.join("Updates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "Updates/ holds {leftovers:?}");
}

#[tokio::test]
async fn a_newer_release_published_during_a_download_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let slow = Proxy::start(server.port, Some(1 << 20)).await;
    let mut host = Host::new("superseded", &slow.url, "v2", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let big = release_archive_with(tmp.path(), "2.0.0", false, 48);
    api.publish(&big, "2.0.0", "archive").await;
    host.wait_log("downloading update", T)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    let small = release_archive(tmp.path(), "3.0.0", false);
    api.publish(&small, "3.0.0", "archive").await;
    wait_for("the host runs 3.0.0", Duration::from_secs(40), || async {
        host.running_agent().is_some_and(|a| a.version == "3.0.0")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert!(host
        .log()
        .contains("a newer release supersedes the one downloading"));
    assert!(
        !host.base.join("versions/2.0.0").exists(),
        "the superseded release was never installed"
    );
}

#[tokio::test]
async fn an_unchanged_get_config_does_not_restart_the_agent() {
    let (_t, server, host) = setup("steady").await;
    let api = server.api();
    let agent = host.running_agent().unwrap();
    let pushed = api.push_config("steady", &host.config_yml()).await;
    let id = pushed["command"]["id"]
        .as_i64()
        .expect("the push sent a GET-CONFIG");
    let (outcome, msg) = api.ack(id, T).await;
    assert_eq!(outcome, Outcome::Succeeded, "{msg}");
    assert!(msg.contains("unchanged"), "{msg}");
    assert_eq!(
        host.running_agent().unwrap().pid,
        agent.pid,
        "not restarted"
    );
}

#[tokio::test]
async fn legacy_release_without_opt_in_is_not_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let mut host = Host::new("cautious", &server.url, "v1", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    server.api().publish(&a2, "2.0.0", "msi").await;
    host.wait_log("not installed (set trust.allow_legacy_md5", T)
        .await
        .unwrap();
    assert_eq!(host.running_agent().unwrap().version, "1.0.0");
}

#[test]
fn systemd_unit_install_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    let mut cmd = std::process::Command::new(bin("palette-watchdog"));
    cmd.args([
        "install",
        "--base",
        &base.display().to_string(),
        "--unit-dir",
        &dir.path().display().to_string(),
    ]);
    if verify {
        cmd.arg("--verify");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(dir.path().join("palette-watchdog.service")).unwrap();
    assert!(
        unit.contains("Type=notify")
            && unit.contains("WatchdogSec=")
            && unit.contains(" run --base ")
    );
    if verify {
        assert!(String::from_utf8_lossy(&out.stdout).contains("systemd-analyze verify: ok"));
    }
    let out = std::process::Command::new(bin("palette-watchdog"))
        .args(["remove", "--unit-dir", &dir.path().display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!dir.path().join("palette-watchdog.service").exists());
}

fn ctl(server: &Server, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin("palettectl"))
        .args(["--server", &server.url, "--token", token])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn palettectl_drives_the_fleet() {
    let (t, server, host) = setup("ctl-host").await;
    let archive = release_archive(t.path(), "2.0.0", false);
    let path = archive.display().to_string();

    let (ok, _, err) = ctl(&server, "not-a-token", &["hosts"]);
    assert!(!ok && err.contains("refused the token"), "{err}");
    let (ok, _, err) = ctl(
        &server,
        ADMIN,
        &["release", "publish", "/no/such/file", "--version", "2.0.0"],
    );
    assert!(!ok && err.contains("/no/such/file"), "{err}");
    let (ok, _, err) = ctl(
        &server,
        ADMIN,
        &["release", "publish", &path, "--version", "two"],
    );
    assert!(!ok && err.contains("\"two\""), "{err}");

    let (ok, out, err) = ctl(
        &server,
        ADMIN,
        &["release", "publish", &path, "--version", "2.0.0"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("published release") && out.contains("2.0.0"),
        "{out}"
    );
    let (_, out, _) = ctl(&server, ADMIN, &["release", "list"]);
    assert!(out.contains("2.0.0") && out.contains("archive"), "{out}");
    wait_for("the host runs 2.0.0", Duration::from_secs(60), || async {
        host.running_agent().is_some_and(|a| a.version == "2.0.0")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    wait_for("palettectl hosts shows 2.0.0 running", T, || {
        let server = &server;
        async move {
            let (_, out, _) = ctl(server, ADMIN, &["hosts"]);
            out.lines().any(|l| {
                l.starts_with("ctl-host")
                    && l.contains("2.0.0")
                    && l.contains("running")
                    && l.contains("Succeeded")
            })
        }
    })
    .await
    .unwrap();

    let (ok, out, err) = ctl(
        &server,
        ADMIN,
        &[
            "command", "send", "restart", "--host", "ctl-host", "--watch", "30",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("ctl-host") && out.contains("Succeeded: agent restarted"),
        "{out}"
    );

    let file = t.path().join("new.yml");
    let new = agent_config(&server.url, AGENT_KEY, "FromCtl: yes\n");
    std::fs::write(&file, &new).unwrap();
    let (ok, out, err) = ctl(
        &server,
        ADMIN,
        &["config", "push", "ctl-host", &file.display().to_string()],
    );
    assert!(
        ok && out.contains("stored revision") && out.contains("apply-config command"),
        "{out}{err}"
    );
    wait_for("applied", T, || async { host.config_yml() == new })
        .await
        .unwrap();
    let (_, out, _) = ctl(
        &server,
        ADMIN,
        &["config", "pull", "ctl-host", "--source", "desired"],
    );
    assert_eq!(out, new);
    let cfg_host = host.name.clone();
    wait_for("the reported config matches the desired one", T, || {
        let server = &server;
        let cfg_host = cfg_host.clone();
        async move {
            ctl(server, ADMIN, &["config", "diff", &cfg_host])
                .1
                .contains("matches the desired one")
        }
    })
    .await
    .unwrap();
    let (_, out, _) = ctl(&server, ADMIN, &["config", "history", "ctl-host"]);
    assert!(out.contains("desired") && out.contains("reported"), "{out}");
    // For scripts: the same answer as JSON; a wrong token is an error, not
    // an empty config.
    let (ok, out, err) = ctl(
        &server,
        ADMIN,
        &["-o", "json", "config", "diff", "ctl-host"],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["same"], true, "{v}");
    let (ok, _, err) = ctl(&server, "not-a-token", &["config", "diff", "ctl-host"]);
    assert!(!ok && err.contains("refused the token"), "{err}");
}

/// A crash after the manager switched versions but before the health check:
/// the next watchdog start checks the new version, and commits it or rolls
/// it back. Simulated by running the manager's update step by hand.
#[tokio::test]
async fn interrupted_update_is_finished_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    for (name, fail, want_version, want_outcome) in [
        ("recover-good", false, "2.0.0", Outcome::Succeeded),
        ("recover-bad", true, "1.0.0", Outcome::Failed),
    ] {
        let mut host = Host::new(name, &server.url, "v2", "");
        let archive = release_archive(tmp.path(), "2.0.0", fail);
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(&archive).unwrap()))
        };
        let out = std::process::Command::new(bin("palette-manager"))
            .args([
                "--base",
                &host.base.display().to_string(),
                "update",
                &archive.display().to_string(),
                "--version=2.0.0",
            ])
            .arg(format!("--sha256={sha}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            host.base.join("state/update-journal.json").exists(),
            "the journal records the switch"
        );

        host.start();
        wait_for(
            "the update is finished and reported",
            Duration::from_secs(60),
            || async {
                api.host(name)
                    .await
                    .and_then(|h| h.report)
                    .and_then(|r| r.last_update)
                    .is_some_and(|u| u.outcome == want_outcome)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
        assert!(!host.base.join("state/update-journal.json").exists());
        assert_eq!(
            host.wait_agent_running(T).await.unwrap().version,
            want_version,
            "{name}"
        );
        host.stop();
    }
}

/// Verified TLS: a watchdog trusting the server's CA (`server.ca_file`)
/// checks in over HTTPS; one that does not trust it is refused, logs why,
/// and leaves the agent running.
#[tokio::test]
async fn https_with_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (cert_path, key_path, ca_path) = (
        tmp.path().join("cert.pem"),
        tmp.path().join("key.pem"),
        tmp.path().join("ca.pem"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let server =
        Server::start_tls(&tmp.path().join("server"), &cert_path, &key_path, &ca.pem()).await;
    assert!(server.url.starts_with("https://localhost:"));
    let api = server.api();
    // palettectl says what to do about a certificate it cannot verify, and
    // works with the CA that issued it.
    let ctl_tls = |extra: &[&str]| {
        std::process::Command::new(bin("palettectl"))
            .args(["--server", &server.url, "--token", ADMIN])
            .args(extra)
            .arg("hosts")
            .output()
            .unwrap()
    };
    let out = ctl_tls(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("pass --ca-file"),
        "{err}"
    );
    let out = ctl_tls(&["--ca-file", ca_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // So does `palette-watchdog enroll` (issue 21.15), writing nothing;
    // with the CA it enrolls and keeps the CA in watchdog.yml.
    let enroll = |base: &std::path::Path, extra: &[&str]| {
        std::fs::create_dir_all(base).unwrap();
        std::process::Command::new(bin("palette-watchdog"))
            .arg("--base")
            .arg(base)
            .args(["enroll", "--server", &server.url, "--key", AGENT_KEY])
            .args(["--hostname", "tls-enrolled"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = tmp.path().join("enroll-refused");
    let out = enroll(&refused, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("pass --ca-file"),
        "{err}"
    );
    assert!(!refused.join("watchdog.yml").exists());
    let enrolled = tmp.path().join("enrolled");
    let out = enroll(&enrolled, &["--ca-file", ca_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(enrolled.join("watchdog.yml"))
        .unwrap()
        .contains("ca_file:"));

    let mut trusting = Host::new("tls-trusting", &server.url, "v2", "");
    std::fs::write(
        trusting.base.join("watchdog.yml"),
        std::fs::read_to_string(trusting.base.join("watchdog.yml"))
            .unwrap()
            .replace(
                "server:\n",
                &format!("server:\n  ca_file: {}\n", ca_path.display()),
            ),
    )
    .unwrap();
    trusting.start();
    let mut untrusting = Host::new("tls-untrusting", &server.url, "v2", "");
    untrusting.start();

    wait_for("the trusting host checks in over HTTPS", T, || async {
        api.host("tls-trusting").await.is_some()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", trusting.diagnostics()));
    untrusting
        .wait_log("check-in failed; the agent keeps running", T)
        .await
        .unwrap();
    assert!(
        untrusting.log().contains("certificate is not trusted"),
        "{}",
        untrusting.log()
    );
    assert!(api.host("tls-untrusting").await.is_none());
    assert!(untrusting.running_agent().is_some());
}

/// Mutual TLS: the server (`--client-ca`) serves only clients presenting
/// a certificate its CA issued; a watchdog with `server.client_cert` and
/// `client_key` checks in, one without is refused at the handshake (and
/// keeps its agent running), as is one whose certificate another CA issued.
#[tokio::test]
async fn mutual_tls_admits_only_hosts_with_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        (p.self_signed(&key).unwrap(), key)
    };
    let (server_ca, server_ca_key) = ca("server CA");
    let (client_ca, client_ca_key) = ca("client CA");
    let (rogue_ca, rogue_ca_key) = ca("rogue CA");
    let leaf = |names: Vec<String>, issuer: &rcgen::Certificate, issuer_key: &rcgen::KeyPair| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, issuer, issuer_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (scert, skey) = leaf(vec!["localhost".into()], &server_ca, &server_ca_key);
    let (scert, skey) = (write("server.pem", &scert), write("server.key", &skey));
    let server_ca_path = write("server-ca.pem", &server_ca.pem());
    let client_ca_path = write("client-ca.pem", &client_ca.pem());
    let (ops_cert, ops_key) = leaf(vec!["operator".into()], &client_ca, &client_ca_key);
    let server = Server::start_mtls(
        &tmp.path().join("server"),
        (&scert, &skey, &server_ca.pem()),
        &client_ca_path,
        &format!("{ops_cert}\n{ops_key}"),
    )
    .await;
    let api = server.api();

    let host_with = |name: &str, cert: Option<(String, String)>| {
        let mut extra = format!("  ca_file: {}\n", server_ca_path.display());
        if let Some((c, k)) = cert {
            let (c, k) = (
                write(&format!("{name}.pem"), &c),
                write(&format!("{name}.key"), &k),
            );
            extra.push_str(&format!(
                "  client_cert: {}\n  client_key: {}\n",
                c.display(),
                k.display()
            ));
        }
        let h = Host::new(name, &server.url, "v2", "");
        let yml = h.base.join("watchdog.yml");
        let text = std::fs::read_to_string(&yml)
            .unwrap()
            .replace("server:\n", &format!("server:\n{extra}"));
        std::fs::write(&yml, text).unwrap();
        h
    };
    let mut good = host_with(
        "mtls-good",
        Some(leaf(vec!["mtls-good".into()], &client_ca, &client_ca_key)),
    );
    let mut none = host_with("mtls-none", None);
    let mut rogue = host_with(
        "mtls-rogue",
        Some(leaf(vec!["mtls-rogue".into()], &rogue_ca, &rogue_ca_key)),
    );
    good.start();
    none.start();
    rogue.start();
    wait_for(
        "the host with a client certificate checks in",
        T,
        || async { api.host("mtls-good").await.is_some() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", good.diagnostics()));
    for h in [&none, &rogue] {
        h.wait_log("check-in failed; the agent keeps running", T)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", h.diagnostics()));
        assert!(api.host(&h.name).await.is_none(), "{} got in", h.name);
        assert!(h.running_agent().is_some());
    }
}

/// A real HTTP proxy (Debian's tinyproxy) with BasicAuth: a watchdog whose
/// `Config.yml` names it with the right credentials checks in through it
/// (the proxy logs the check-ins); wrong credentials are refused and
/// the agent keeps running.
#[tokio::test]
async fn check_ins_go_through_an_authenticated_proxy() {
    let Some(tinyproxy) = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("PALETTE_REQUIRE_TINYPROXY").is_none(),
            "tinyproxy is required here (.ci/run installs it)"
        );
        println!("skipped: tinyproxy is not installed (apt-get install tinyproxy)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let port = free_port();
    let log = tmp.path().join("tinyproxy.log");
    let conf = tmp.path().join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 120\nLogLevel Info\nLogFile \"{}\"\nMaxClients 20\nAllow 127.0.0.1\nBasicAuth palette s3cret\n",
            log.display()
        ),
    )
    .unwrap();
    let mut proxy = std::process::Command::new(tinyproxy)
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _proxy = Kill(&mut proxy);
    wait_for("tinyproxy listens", T, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
    .unwrap();

    let with_proxy = |name: &str, creds: &str| {
        let h = Host::new(name, &server.url, "v2", "");
        let cfg = h.base.join("Config/Config.yml");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "UseProxy: false",
            &format!("UseProxy: true\n  ProxyAddress: http://{creds}@127.0.0.1:{port}"),
        );
        std::fs::write(&cfg, text).unwrap();
        h
    };
    let mut good = with_proxy("via-proxy", "palette:s3cret");
    let mut bad = with_proxy("bad-proxy-creds", "palette:wrong");
    good.start();
    bad.start();
    let api = server.api();
    // Its report arrives with a check-in (enrolling alone makes it known).
    wait_for("the host checks in through the proxy", T, || async {
        api.host("via-proxy")
            .await
            .is_some_and(|h| h.report.is_some())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", good.diagnostics()));
    let proxied = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        proxied.contains("/api/v2/checkin"),
        "the check-in did not go through the proxy:\n{proxied}"
    );
    bad.wait_log("check-in failed; the agent keeps running", T)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", bad.diagnostics()));
    // tinyproxy answers wrong credentials with 401 and a page saying so.
    let log = bad.log();
    assert!(
        (log.contains("401") || log.contains("407")) && log.contains("proxy"),
        "{log}"
    );
    assert!(api.host("bad-proxy-creds").await.is_none());
    assert!(bad.running_agent().is_some());
}

/// The manager outlives a watchdog that dies mid-update: it finishes its
/// step (the long one: unpacking into staging while the agent runs, the
/// journal at "verified", staged), and the next watchdog discards that and
/// installs the release again.
#[tokio::test]
async fn manager_outlives_a_watchdog_killed_mid_update() {
    let (t, server, mut host) = setup("outlive").await;
    let api = server.api();
    let archive = release_archive_with(t.path(), "2.0.0", false, 96);
    api.publish(&archive, "2.0.0", "archive").await;
    let base = host.base.display().to_string();
    let mut manager = 0;
    wait_for("manager_in_action runs", Duration::from_secs(120), || {
        let found = find_processes(&["manager_in_action", &base, "update"]);
        manager = found.first().copied().unwrap_or(0);
        async move { !found.is_empty() }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    host.kill9();
    assert!(
        alive(manager),
        "the manager died with the watchdog (or finished before it could be observed)"
    );
    wait_for(
        "the manager finishes on its own",
        Duration::from_secs(120),
        || async { !alive(manager) },
    )
    .await
    .unwrap();
    let journal = std::fs::read_to_string(host.base.join("state/update-journal.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&journal).unwrap();
    assert!(j["step"] == "verified" && j["staged"] == true, "{journal}");

    host.start();
    wait_for(
        "the new watchdog commits 2.0.0",
        Duration::from_secs(60),
        || async {
            api.host("outlive")
                .await
                .and_then(|h| h.report)
                .and_then(|r| r.last_update)
                .is_some_and(|u| u.outcome == Outcome::Succeeded)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(host.wait_agent_running(T).await.unwrap().version, "2.0.0");
    assert!(!host.base.join("state/update-journal.json").exists());
}

#[tokio::test]
async fn a_watchdog_restarted_during_a_live_manager_waits_for_it() {
    // The race fault injection found: `systemctl restart` leaves the
    // detached manager unpacking while a new watchdog starts and recovers.
    // Repeated: each round restarts the watchdog at once while the manager
    // still works; every round must end committed, never with `current`
    // naming a version without its binary.
    let (t, server, mut host) = setup("racer").await;
    let api = server.api();
    let base = host.base.display().to_string();
    for (round, version) in ["2.0.0", "3.0.0", "4.0.0"].iter().enumerate() {
        let archive = release_archive_with(t.path(), version, false, 48);
        api.publish(&archive, version, "archive").await;
        let mut manager = 0;
        wait_for("manager_in_action runs", Duration::from_secs(120), || {
            let found = find_processes(&["manager_in_action", &base, "update"]);
            manager = found.first().copied().unwrap_or(0);
            async move { !found.is_empty() }
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", host.diagnostics()));
        host.kill9();
        host.start();
        let still_running = alive(manager);
        wait_for(
            "the update is committed",
            Duration::from_secs(120),
            || async {
                api.host("racer")
                    .await
                    .and_then(|h| h.report)
                    .and_then(|r| r.last_update)
                    .is_some_and(|u| {
                        u.version.to_string() == *version && u.outcome == Outcome::Succeeded
                    })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", host.diagnostics()));
        let current = std::fs::read_to_string(host.base.join("versions/current")).unwrap();
        assert_eq!(current.trim(), *version, "round {round}");
        assert!(
            host.base
                .join("versions")
                .join(version)
                .join("palette-sample-agent")
                .exists(),
            "round {round}: versions/current names a version without its binary"
        );
        assert_eq!(host.wait_agent_running(T).await.unwrap().version, *version);
        if still_running {
            assert!(
                host.log().contains("still running; waiting for it"),
                "round {round}: the new watchdog did not wait for the live manager"
            );
        }
    }
}

#[tokio::test]
async fn a_second_watchdog_on_the_same_folder_refuses_and_touches_nothing() {
    let (_t, _s, host) = setup("single").await;
    let agent = host.running_agent().unwrap();
    let first = host.watchdog_pid().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(bin("palette-watchdog"))
            .args(["run", "--base", &host.base.display().to_string()])
            .output(),
    )
    .await
    .expect("the second watchdog exits at once")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already running") && stderr.contains(&first.to_string()),
        "{stderr}"
    );
    assert_eq!(
        host.running_agent().unwrap().pid,
        agent.pid,
        "the agent kept its pid"
    );
    assert_eq!(
        host.log().matches(" starting").count(),
        1,
        "the second watchdog wrote to the log"
    );
}

#[tokio::test]
async fn damaged_local_state_ends_in_the_safest_state() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();

    // A garbage update journal is set aside; later updates still work.
    let mut journal = Host::new("dmg-journal", &server.url, "v2", "");
    std::fs::create_dir_all(journal.base.join("state")).unwrap();
    std::fs::write(journal.base.join("state/update-journal.json"), b"{garbage").unwrap();
    journal.start();
    journal.wait_agent_running(T).await.unwrap();
    assert!(journal
        .base
        .join("state/update-journal.json.corrupt")
        .exists());
    assert!(!journal.base.join("state/update-journal.json").exists());

    // `versions/current` names a version that is not installed: the newest
    // installed one runs instead.
    let mut missing = Host::new("dmg-missing", &server.url, "v2", "");
    std::fs::write(missing.base.join("versions/current"), "9.9.9\n").unwrap();
    missing.start();
    assert_eq!(
        missing.wait_agent_running(T).await.unwrap().version,
        "1.0.0"
    );
    assert!(missing.log().contains("versions/current was unusable"));

    // Garbage in `versions/current`: repaired, and nothing is deleted.
    let mut garbage = Host::new("dmg-garbage", &server.url, "v2", "");
    let old = garbage.base.join("versions/0.9.0");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(
        garbage.base.join("versions/1.0.0/palette-sample-agent"),
        old.join("palette-sample-agent"),
    )
    .unwrap();
    std::fs::write(old.join("VERSION"), "0.9.0").unwrap();
    std::fs::write(garbage.base.join("versions/current"), "\u{0}garbage").unwrap();
    garbage.start();
    assert_eq!(
        garbage.wait_agent_running(T).await.unwrap().version,
        "1.0.0"
    );
    assert!(old.exists(), "an installed version was deleted");

    // A truncated watchdog.json does not forget an operator's stop.
    let id = api.command(CommandKind::Stop, "dmg-missing").await;
    assert_eq!(api.ack(id, T).await.0, Outcome::Succeeded);
    wait_for("stopped", T, || async { missing.running_agent().is_none() })
        .await
        .unwrap();
    missing.stop();
    let state = missing.base.join("state/watchdog.json");
    let full = std::fs::read(&state).unwrap();
    std::fs::write(&state, &full[..full.len() / 2]).unwrap();
    missing.start();
    missing
        .wait_log("restored from its second copy", T)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", missing.diagnostics()));
    missing
        .wait_log("the agent stays stopped: an operator commanded stop", T)
        .await
        .unwrap();
    assert!(missing.running_agent().is_none());

    // And the host whose journal was garbage updates normally.
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&a2, "2.0.0", "archive").await;
    wait_for(
        "dmg-journal runs 2.0.0",
        Duration::from_secs(60),
        || async {
            journal
                .running_agent()
                .is_some_and(|a| a.version == "2.0.0")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", journal.diagnostics()));
    wait_for(
        "dmg-garbage runs 2.0.0",
        Duration::from_secs(60),
        || async {
            garbage
                .running_agent()
                .is_some_and(|a| a.version == "2.0.0")
        },
    )
    .await
    .unwrap();
    assert!(
        garbage.base.join("versions/1.0.0").exists(),
        "the previous version is kept"
    );
}

#[tokio::test]
async fn a_fixed_legacy_release_republished_under_the_same_version_is_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut host = Host::new(
        "republish",
        &server.url,
        "v1",
        "trust:\n  allow_legacy_md5: true\n",
    );
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let bad = release_archive(tmp.path(), "2.0.0", true);
    api.publish(&bad, "2.0.0", "archive").await;
    host.wait_log("failed its health check", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    host.wait_log("failed here before; skipped", T)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(host.wait_agent_running(T).await.unwrap().version, "1.0.0");
    // The fixed file, same version (our server needs another kind to hold
    // both; a legacy server simply replaces the file): a new release.
    let good = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&good, "2.0.0", "installer").await;
    wait_for(
        "the host runs the fixed 2.0.0",
        Duration::from_secs(60),
        || async { host.running_agent().is_some_and(|a| a.version == "2.0.0") },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
}

/// A hostile v2 server: its check-in answer carries a command whose expiry
/// cannot be read. The watchdog must refuse it (acknowledged as failed),
/// never perform it. Returns the check-in bodies it received.
async fn fake_v2_server(
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                let (head_end, len) = loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..i]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while data.len() < head_end + len {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
                let body = String::from_utf8_lossy(&data[head_end..]).into_owned();
                let answer = if head.starts_with("POST /api/v2/checkin") {
                    bodies.lock().unwrap().push(body);
                    r#"{"store_id":"fake","commands":[{"id":7,"kind":"stop","issued_at":"2026-01-01T00:00:00Z","expires_at":"not a time"}],"release":null,"config_revision":null}"#
                } else {
                    "{}"
                };
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                            answer.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_command_with_an_unreadable_expiry_is_refused() {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (url, server) = fake_v2_server(bodies.clone()).await;
    let mut host = Host::new("hostile", &url, "v2", "");
    host.start();
    let agent = host.wait_agent_running(T).await.unwrap();
    wait_for("the refusal is acknowledged", T, || async {
        bodies
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.contains("\"id\":7") && b.contains("failed") && b.contains("cannot be read"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(
        host.running_agent().map(|a| a.pid),
        Some(agent.pid),
        "the stop was not performed"
    );
    server.abort();
}

#[tokio::test]
async fn a_config_that_makes_the_agent_exit_is_rolled_back() {
    let (_t, server, host) = setup("cfgroll").await;
    let api = server.api();
    let before = host.config_yml();
    let bad = agent_config(&server.url, AGENT_KEY, "SampleAgent:\n  Fail: true\n");
    let pushed = api.push_config("cfgroll", &bad).await;
    let id = pushed["command"]["id"]
        .as_i64()
        .expect("a GET-CONFIG was sent");
    let (outcome, msg) = api.ack(id, T).await;
    assert_eq!(outcome, Outcome::Failed, "{msg}");
    assert!(msg.contains("previous file was restored"), "{msg}");
    assert!(
        msg.contains("SampleAgent.Fail"),
        "the agent's last log lines are in the report: {msg}"
    );
    assert_eq!(host.config_yml(), before, "the previous file is back");
    wait_for("the agent runs on the previous file", T, || async {
        host.running_agent().is_some()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
}

#[tokio::test]
async fn a_failing_health_probe_rolls_the_release_back() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    // The probe passes only for version 1.0.0.
    let mut host = Host::with_agent_settings(
        "probed",
        &server.url,
        "v2",
        "  health_command: ['grep', '-q', '1.0.0', '{current}/VERSION']\n",
        "",
    );
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&a2, "2.0.0", "archive").await;
    wait_for(
        "the failed update is reported",
        Duration::from_secs(60),
        || async {
            api.host("probed")
                .await
                .and_then(|h| h.report)
                .and_then(|r| r.last_update)
                .is_some_and(|u| {
                    u.outcome == Outcome::Failed && u.message.contains("health probe failed")
                })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(host.wait_agent_running(T).await.unwrap().version, "1.0.0");
}

#[tokio::test]
async fn a_download_cut_off_halfway_resumes_from_the_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let proxy = Proxy::start_with(server.port, None, Some(8 << 20)).await;
    let mut host = Host::new("resumer", &proxy.url, "v2", "  download_retry_secs: 1\n");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let big = release_archive_with(tmp.path(), "2.0.0", false, 24);
    api.publish(&big, "2.0.0", "archive").await;
    wait_for("the host runs 2.0.0", Duration::from_secs(90), || async {
        host.running_agent().is_some_and(|a| a.version == "2.0.0")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert!(
        host.log()
            .contains("resuming the download where it stopped"),
        "{}",
        host.diagnostics()
    );
    let wire = proxy.wire().to_lowercase();
    assert!(wire.contains("range: bytes="), "no Range request was sent");
}

#[tokio::test]
async fn too_little_disk_fails_the_update_cleanly_and_says_why() {
    // Room for the install folder (debug binaries) but not for the release.
    let fs = match Tmpfs::mount("400m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED too_little_disk_fails_the_update_cleanly_and_says_why: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut host = Host::new_in(&fs.path, "cramped", &server.url, "");
    host.start();
    let agent = host
        .wait_agent_running(T)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    let big = release_archive_with(tmp.path(), "2.0.0", false, 100);
    api.publish(&big, "2.0.0", "archive").await;
    wait_for("the host reports why", Duration::from_secs(60), || async {
        api.host("cramped")
            .await
            .and_then(|h| h.report)
            .and_then(|r| r.last_update)
            .is_some_and(|u| {
                u.outcome == Outcome::Failed && u.message.contains("not enough free disk space")
            })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(
        host.running_agent().unwrap().pid,
        agent.pid,
        "nothing was stopped"
    );
    let leftovers: Vec<_> = std::fs::read_dir(host.base.join("Updates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "Updates/ holds {leftovers:?}");
}

/// The host is consistent: no open journal, `versions/current` names an
/// installed version with its program, and exactly one agent runs, on it.
fn consistent(host: &Host) -> Result<String, String> {
    if host.base.join("state/update-journal.json").exists() {
        return Err("the journal is still open".into());
    }
    let current = std::fs::read_to_string(host.base.join("versions/current"))
        .map_err(|e| format!("versions/current: {e}"))?;
    let current = current.trim().to_string();
    if !host
        .base
        .join("versions")
        .join(&current)
        .join("palette-sample-agent")
        .exists()
    {
        return Err(format!(
            "versions/current names {current}, which lacks its program"
        ));
    }
    let base = host.base.display().to_string();
    let agents: Vec<u32> = find_processes(&["palette-sample-agent", &base])
        .into_iter()
        .filter(|p| alive(*p))
        .collect();
    if agents.len() != 1 {
        return Err(format!("{} agents run: {agents:?}", agents.len()));
    }
    match host.running_agent() {
        Some(a) if a.version == current => Ok(current),
        Some(a) => Err(format!(
            "the agent runs {}, current is {current}",
            a.version
        )),
        None => Err("no agent runs".into()),
    }
}

/// Waits (60 s at most) until the host is consistent on a version `want`
/// accepts; the last inconsistency otherwise.
async fn settle(host: &Host, want: impl Fn(&str) -> bool) -> Result<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = consistent(host);
        match &state {
            Ok(v) if want(v) => return state,
            _ if std::time::Instant::now() > deadline => {
                return Err(format!("not settled: {state:?}"))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn the_manager_killed_at_every_step_of_an_update() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&a2, "2.0.0", "archive").await;
    for point in palette_manager::fault::POINTS {
        let name = format!("crash-{}", point.replace(':', "-"));
        let mut host = Host::new(&name, &server.url, "v2", "");
        host.start_with_env(&[(palette_protocol::env::CRASH_AT, point)]);
        // The manager dies at `point`; the watchdog recovers at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let outcome = loop {
            let last = api
                .host(&name)
                .await
                .and_then(|h| h.report)
                .and_then(|r| r.last_update);
            if let Some(u) = last {
                break u;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{point}: no outcome reported\n{}",
                host.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Dying before the journal is cleared: the commit is retried at once
        // and dies again at the same point.
        let committing = *point == "commit:before-clear";
        if committing {
            // The commit is retried at once and dies again at the same
            // point (a crash point is not a passing fault): the new version
            // runs, its journal stays open until the next start.
            let agent = host.wait_agent_running(T).await.unwrap();
            assert_eq!(agent.version, "2.0.0", "{point}");
        }
        let version = if committing {
            "2.0.0".to_string()
        } else {
            settle(&host, |_| true)
                .await
                .unwrap_or_else(|e| panic!("{point}: {e}\n{}", host.diagnostics()))
        };
        // Past the switch (or with the journal already cleared, which
        // recovery reads as committed): the new version is kept.
        let after_switch = *point == "update:switched" || *point == "commit:cleared";
        if committing {
            assert!(
                outcome.message.contains("could not be committed"),
                "{point}: {}",
                outcome.message
            );
        } else if after_switch {
            assert_eq!(version, "2.0.0", "{point}");
            assert_eq!(
                outcome.outcome,
                Outcome::Succeeded,
                "{point}: {}",
                outcome.message
            );
        } else {
            assert_eq!(version, "1.0.0", "{point}");
            assert_eq!(outcome.outcome, Outcome::Failed, "{point}");
            assert!(
                outcome
                    .message
                    .contains("the manager died before switching"),
                "{point}: {}",
                outcome.message
            );
        }
        // Restarted as systemd would, without the crash point: every host
        // ends on the new version, consistent.
        host.stop();
        let settings = host.base.join("watchdog.yml");
        let text = std::fs::read_to_string(&settings).unwrap();
        std::fs::write(
            &settings,
            text.replace(
                "  restart_first_ms: 100\n",
                "  restart_first_ms: 100\n  download_retry_secs: 1\n",
            ),
        )
        .unwrap();
        host.start();
        settle(&host, |v| v == "2.0.0")
            .await
            .unwrap_or_else(|e| panic!("{point}: after a restart: {e}\n{}", host.diagnostics()));
        wait_for("the server shows 2.0.0 succeeded", T, || async {
            api.host(&name)
                .await
                .and_then(|h| h.report)
                .and_then(|r| r.last_update)
                .is_some_and(|u| {
                    u.outcome == Outcome::Succeeded && u.version.to_string() == "2.0.0"
                })
        })
        .await
        .unwrap_or_else(|e| panic!("{point}: {e:#}\n{}", host.diagnostics()));
        host.stop();
    }
}

/// palettectl as a process: (exit code, stdout, stderr).
async fn ctl_code(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin("palettectl"))
        .args(["--server", &server.url, "--token", ADMIN])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn palettectl_exit_codes_json_and_early_return() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut fast1 = Host::new("fast1", &server.url, "v2", "");
    let mut fast2 = Host::new("fast2", &server.url, "v2", "");
    fast1.start();
    fast2.start();
    for h in [&fast1, &fast2] {
        h.wait_agent_running(T).await.unwrap();
        wait_for("the host is known", T, || async {
            api.host(&h.name).await.is_some()
        })
        .await
        .unwrap();
    }

    // --all waits for every online host, and no longer.
    let t = std::time::Instant::now();
    let (code, out, err) = ctl_code(
        &server,
        &["command", "send", "restart", "--all", "--watch", "120"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("fast1") && out.contains("fast2"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "--all waited {:?} although both hosts answered",
        t.elapsed()
    );

    // JSON for scripts: the API's shapes.
    let (code, out, err) = ctl_code(&server, &["-o", "json", "hosts"]).await;
    assert_eq!(code, 0, "{err}");
    let hosts: Vec<palette_protocol::v2::HostInfo> = serde_json::from_str(&out).unwrap();
    assert_eq!(hosts.len(), 2);
    let (code, out, err) = ctl_code(
        &server,
        &[
            "-o", "json", "command", "send", "restart", "--host", "fast1",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let st: palette_protocol::v2::CommandStatus = serde_json::from_str(&out).unwrap();
    assert_eq!(st.results.len(), 1);
    assert_eq!(st.results[0].outcome, Outcome::Succeeded);
    let (code, out, _) = ctl_code(&server, &["-o", "json", "release", "list"]).await;
    assert_eq!(code, 0);
    let _: Vec<palette_protocol::v2::Release> = serde_json::from_str(&out).unwrap();

    // A host that fails the command: exit 3 (no config stored for fast1, so
    // its GET-CONFIG fails).
    let (code, out, err) = ctl_code(
        &server,
        &["command", "send", "get-config", "--host", "fast1"],
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("Failed"), "{out}");

    // A host the server does not know: refused at once (exit 2), nothing
    // sent, unless --allow-unknown-host (issue 21.11).
    let t = std::time::Instant::now();
    let (code, _, err) = ctl_code(
        &server,
        &[
            "command",
            "send",
            "stop",
            "--host",
            "no-such-host",
            "--watch",
            "120",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("knows no host") && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(60));

    // A host that is down: exit 3 when the wait runs out.
    fast2.stop();
    let (code, _, err) = ctl_code(
        &server,
        &[
            "command", "send", "restart", "--host", "fast2", "--watch", "2",
        ],
    )
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("did not answer in time"), "{err}");

    // A usage error: exit 2.
    let (code, _, _) = ctl_code(&server, &["command", "send", "reboot", "--all"]).await;
    assert_eq!(code, 2);

    // Filters and retiring (fast2's watchdog is stopped: it stays retired).
    let (_, out, _) = ctl_code(&server, &["-o", "json", "hosts", "--name", "fast*"]).await;
    let v: Vec<palette_protocol::v2::HostInfo> = serde_json::from_str(&out).unwrap();
    assert_eq!(v.len(), 2);
    let (_, out, _) = ctl_code(&server, &["hosts", "--state", "online"]).await;
    assert!(out.contains("fast1") && out.contains("online"), "{out}");
    let (_, out, _) = ctl_code(&server, &["-o", "json", "hosts", "--online"]).await;
    let v: Vec<palette_protocol::v2::HostInfo> = serde_json::from_str(&out).unwrap();
    assert_eq!(v.len(), 2, "both were seen within 5 minutes");
    let (code, out, _) = ctl_code(&server, &["-o", "json", "hosts", "--offline"]).await;
    assert_eq!(code, 0);
    let v: Vec<palette_protocol::v2::HostInfo> = serde_json::from_str(&out).unwrap();
    assert!(v.is_empty(), "{v:?}");
    // YAML: the same shapes.
    let (code, out, err) = ctl_code(&server, &["-o", "yaml", "hosts", "--name", "fast1"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Vec<palette_protocol::v2::HostInfo> = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(v.len(), 1, "{out}");
    assert_eq!(v[0].hostname, "fast1");
    assert_eq!(v[0].state, Some(palette_protocol::v2::HostState::Online));
    // `hosts show HOST` = `hosts HOST`: the state, the interval, the history.
    let (code, out, err) = ctl_code(&server, &["hosts", "show", "fast1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state:         online"), "{out}");
    assert!(out.contains("checks in:     every"), "{out}");
    assert!(
        out.contains("recent commands:") && out.contains("restart"),
        "{out}"
    );
    let (code, out, err) = ctl_code(&server, &["hosts", "retire", "fast2"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("retired fast2"), "{out}");
    let (_, out, _) = ctl_code(&server, &["-o", "json", "hosts"]).await;
    let v: Vec<palette_protocol::v2::HostInfo> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v.iter().map(|h| h.hostname.as_str()).collect::<Vec<_>>(),
        ["fast1"]
    );

    // Withdrawing a release.
    let a = release_archive(tmp.path(), "5.0.0", false);
    api.publish(&a, "5.0.0", "archive").await;
    let (code, out, err) = ctl_code(&server, &["release", "withdraw", "5.0.0"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no host is offered it"), "{out}");
    let (_, out, _) = ctl_code(&server, &["release", "list"]).await;
    assert!(out.contains("withdrawn"), "{out}");
    let (code, _, err) = ctl_code(&server, &["release", "withdraw", "6.6.6"]).await;
    assert_eq!(code, 1, "{err}");
}

#[tokio::test]
async fn the_watchdog_can_log_json() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let mut host = Host::new("jsonlog", &server.url, "v2", "");
    // The flag (PALETTE_LOG_FORMAT=json does the same).
    host.start_with(&[], &["--log-format", "json"]);
    host.wait_agent_running(T).await.unwrap();
    wait_for("a few log lines", T, || async {
        host.log().lines().count() >= 2
    })
    .await
    .unwrap();
    for l in host.log().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("fields").is_some(), "{l}");
    }
}

#[test]
fn the_sample_agent_help_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("palette-sample-agent"))
        .arg("--help")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--base DIR"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "--help wrote into the current folder"
    );
}

/// `release publish` and `config push` follow the fleet by default: each
/// targeted host's progress and result, returning as soon as all answered,
/// exit code 3 when one failed; `config collect` brings a host's file back;
/// readable errors for a URL without a scheme and TLS to a plain server.
#[tokio::test]
async fn palettectl_follows_publishes_and_config_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut host = Host::new("follow-1", &server.url, "v2", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    wait_for("the host reports", T, || async {
        api.host("follow-1")
            .await
            .is_some_and(|h| h.report.is_some())
    })
    .await
    .unwrap();

    // A config push waits for the host to apply it.
    let file = tmp.path().join("pushed.yml");
    std::fs::write(
        &file,
        agent_config(&server.url, AGENT_KEY, "AgentOnly:\n  keep: pushed\n"),
    )
    .unwrap();
    let path = file.display().to_string();
    let (code, out, err) = ctl_code(&server, &["config", "push", "follow-1", &path]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("follow-1") && out.contains("Succeeded"),
        "{out}"
    );
    assert!(host.config_yml().contains("keep: pushed"));
    // The host's page shows what it answered.
    let (code, out, err) = ctl_code(&server, &["hosts", "follow-1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("recent commands:") && out.contains("GET-CONFIG") && out.contains("succeeded"),
        "{out}"
    );
    // ... and collect brings the host's file back.
    let (code, out, err) = ctl_code(&server, &["config", "collect", "follow-1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("keep: pushed"), "{out}");
    // A push to a name no host has is stored with a warning, not waited for.
    let (code, _, err) = ctl_code(&server, &["config", "push", "nobody-1", &path]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("knows no host"), "{err}");

    // A publish follows the host to the end: installed, then the exit code.
    let good = release_archive(tmp.path(), "2.0.0", false);
    let (code, out, err) = ctl_code(
        &server,
        &[
            "release",
            "publish",
            &good.display().to_string(),
            "--version",
            "2.0.0",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 online host(s) to update"), "{out}");
    assert!(
        out.contains("follow-1") && out.contains("Succeeded"),
        "{out}"
    );
    assert_eq!(host.running_agent().unwrap().version, "2.0.0");
    // A release that fails its health check: rolled back, exit code 3.
    let bad = release_archive(tmp.path(), "3.0.0", true);
    let (code, out, err) = ctl_code(
        &server,
        &[
            "-o",
            "json",
            "release",
            "publish",
            &bad.display().to_string(),
            "--version",
            "3.0.0",
        ],
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["release"]["version"], "3.0.0");
    assert_eq!(v["hosts"][0]["hostname"], "follow-1");
    assert_eq!(v["hosts"][0]["outcome"], "failed", "{v}");

    // Readable errors.
    let bare = server.url.trim_start_matches("http://").to_string();
    let out = std::process::Command::new(bin("palettectl"))
        .args(["--server", &bare, "hosts"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a scheme"));
    let tls = server.url.replace("http://", "https://");
    let out = std::process::Command::new(bin("palettectl"))
        .args(["--server", &tls, "--token", ADMIN, "hosts"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not speak TLS"), "{err}");
}

/// A release that failed for a passing reason is not retried by itself;
/// `palettectl release retry` clears the host's mark and it installs.
#[tokio::test]
async fn release_retry_lets_a_host_install_a_release_that_failed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    // Healthy unless a marker file exists (the "passing reason").
    let mut host = Host::with_agent_settings(
        "retry-1",
        &server.url,
        "v2",
        "  health_command: ['sh', '-c', 'test ! -e {base}/unhealthy']\n",
        "",
    );
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let marker = host.base.join("unhealthy");
    std::fs::write(&marker, "").unwrap();
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    let (code, out, err) = ctl_code(
        &server,
        &[
            "release",
            "publish",
            &a2.display().to_string(),
            "--version",
            "2.0.0",
        ],
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("Failed"), "{out}");
    assert_eq!(host.running_agent().unwrap().version, "1.0.0");

    // Nothing retries it by itself; the cause gone, the operator asks.
    std::fs::remove_file(&marker).unwrap();
    let (code, out, err) = ctl_code(&server, &["release", "retry", "2.0.0"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("retry-1") && out.contains("cleared"), "{out}");
    wait_for(
        "the host installs 2.0.0 on the retry",
        Duration::from_secs(60),
        || async { host.running_agent().is_some_and(|a| a.version == "2.0.0") },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    wait_for("the server hears of the success", T, || async {
        api.host("retry-1")
            .await
            .and_then(|h| h.report?.last_update)
            .is_some_and(|u| u.outcome == Outcome::Succeeded)
    })
    .await
    .unwrap();
    let (code, out, _) = ctl_code(&server, &["release", "retry", "2.0.0"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("no host reports a failed update"), "{out}");
}

/// `palettectl release rollback`: the bad release is withdrawn and the host
/// running it comes down to the newest older one, with the real watchdog
/// and manager; a host enrolled later is offered the older one too.
#[tokio::test]
async fn a_rolled_back_release_brings_its_hosts_down_to_the_older_one() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut host = Host::new("rollme", &server.url, "v2", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let runs = |v: &'static str| {
        let api = &api;
        move || async move {
            api.host("rollme").await.is_some_and(|h| {
                h.report
                    .is_some_and(|r| r.agent_version.map(|x| x.to_string()).as_deref() == Some(v))
            })
        }
    };
    let a = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&a, "2.0.0", "archive").await;
    wait_for(
        "the host runs 2.0.0",
        Duration::from_secs(60),
        runs("2.0.0"),
    )
    .await
    .unwrap();
    let b = release_archive(tmp.path(), "3.0.0", false);
    api.publish(&b, "3.0.0", "archive").await;
    wait_for(
        "the host runs 3.0.0",
        Duration::from_secs(60),
        runs("3.0.0"),
    )
    .await
    .unwrap();

    // Nothing older than 2.0.0: refused, nothing changed.
    let (code, _, err) = ctl_code(&server, &["release", "rollback", "2.0.0", "--no-wait"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("3.0.0 is offered and newer"), "{err}");

    let (code, out, err) =
        ctl_code(&server, &["release", "rollback", "3.0.0", "--wait", "120"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("come down to 2.0.0"), "{out}");
    assert!(out.contains("rollme") && out.contains("Succeeded"), "{out}");
    let status = host.wait_agent_running(T).await.unwrap();
    assert_eq!(status.version, "2.0.0", "the agent itself says 2.0.0");
    let (_, out, _) = ctl_code(&server, &["release", "list"]).await;
    assert!(out.contains("rolled back"), "{out}");
    // It stays there: the check-ins go on without another install.
    // (The report that runs 2.0.0 may come a check-in before the one with
    // the downgrade's outcome.)
    wait_for("the host reports the downgrade's outcome", T, || async {
        let (code, out, _) = ctl_code(&server, &["-o", "json", "hosts", "rollme"]).await;
        assert_eq!(code, 0);
        let h: palette_protocol::v2::HostInfo = serde_json::from_str(&out).unwrap();
        h.report
            .and_then(|r| r.last_update)
            .is_some_and(|u| u.version.to_string() == "2.0.0" && u.outcome == Outcome::Succeeded)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert_eq!(
        host.running_agent().unwrap().version,
        "2.0.0",
        "and runs it"
    );
    // The history shows both ways (written in batches every second).
    wait_for("the history shows both updates", T, || async {
        let (_, out, _) = ctl_code(&server, &["hosts", "show", "rollme"]).await;
        out.split("recent updates:")
            .nth(1)
            .is_some_and(|ups| ups.contains("3.0.0") && ups.contains("2.0.0"))
    })
    .await
    .unwrap();
}

/// Issue: with one host pinned, every `release publish` waited its whole
/// `--wait` and exited 3 "1 did not answer in time". It follows only the
/// hosts that can take the release now, lists the others with the reason,
/// and counts them as no failure.
#[tokio::test]
async fn a_publish_with_a_pinned_host_follows_only_the_hosts_that_can_take_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut free = Host::new("free-1", &server.url, "v2", "");
    let mut pinned = Host::new("pinned-1", &server.url, "v2", "");
    free.start();
    pinned.start();
    for h in [&free, &pinned] {
        h.wait_agent_running(T).await.unwrap();
        wait_for("the host is known", T, || async {
            api.host(&h.name).await.is_some()
        })
        .await
        .unwrap();
    }
    let (code, out, err) = ctl_code(
        &server,
        &["pin", "add", "1.0.0", "--selector", "host=pinned-1"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    let (code, out, err) = ctl_code(
        &server,
        &[
            "release",
            "publish",
            &a2.display().to_string(),
            "--version",
            "2.0.0",
            "--wait",
            "600",
        ],
    )
    .await;
    assert_eq!(code, 0, "the pinned host is no failure: {out}{err}");
    assert!(out.contains("1 online host(s) to update"), "{out}");
    assert!(
        out.contains("pinned-1") && out.contains("not followed: pinned"),
        "the pinned host is listed with its reason: {out}"
    );
    assert!(out.contains("free-1") && out.contains("Succeeded"), "{out}");
    assert_eq!(pinned.running_agent().unwrap().version, "1.0.0");
    free.stop();
    pinned.stop();
}
