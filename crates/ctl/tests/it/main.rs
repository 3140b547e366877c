//! palettectl as an operator meets it: the real binary against a real
//! palette-server (and, where a host must act, a real watchdog) on
//! loopback, through the harness of `palette-e2e`. Every wait is a
//! condition with a deadline. Build the binaries first (`cargo build
//! --workspace`, part of `./scripts/test.sh`).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
#![cfg(unix)]

use std::process::Stdio;
use std::time::Duration;

use palette_e2e::*;
use palette_protocol::v2::*;

const T: Duration = Duration::from_secs(30);

/// Runs palettectl against `server` as the admin: (exit code, stdout, stderr).
async fn ctl(server: &Server, args: &[&str]) -> (i32, String, String) {
    ctl_as(server, ADMIN, args).await
}

async fn ctl_as(server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin("palettectl"))
        .args(["--server", &server.url, "--token", token])
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

/// One v2 check-in as `host` (with the enrollment key): the server knows
/// it afterwards, its agent "running".
async fn check_in(server: &Server, host: &str) {
    let req = CheckinRequest {
        host: HostReport {
            hostname: host.into(),
            product: "agent".into(),
            platform: "linux-x86_64".into(),
            watchdog_version: "0.1.0".into(),
            agent_version: Some("1.0.0".parse().unwrap()),
            agent_state: AgentState::Running,
            desired_state: DesiredState::Running,
            config_revision: None,
            last_update: None,
            last_watchdog_update: None,
            local_trouble: None,
            update_progress: None,
            labels: Default::default(),
        },
        store_id: None,
        results: vec![],
        seen_release: None,
        seen_config: None,
        seen_watchdog_release: None,
    };
    let res = reqwest::Client::new()
        .post(format!("{}/api/v2/checkin?wait=0", server.url))
        .header("authorization", format!("Token {AGENT_KEY}"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
}

/// `palettectl … | head -1`: a reader that goes away must not make it
/// panic ("Broken pipe", exit code 101); it ends quietly (issue 21.10).
#[tokio::test]
async fn a_closed_stdout_ends_palettectl_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    check_in(&server, "pipe-1").await;
    for args in [
        &["hosts"][..],
        &["release", "list"],
        &["audit"],
        &["--help"],
    ] {
        // The reading end is closed before palettectl writes a byte.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = tokio::process::Command::new(bin("palettectl"))
            .args(["--server", &server.url, "--token", ADMIN])
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            // (Not `output()`: it would make stdout a pipe of its own.)
            .spawn()
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

/// `command send --host TYPO` stores nothing and says so, unless asked
/// with --allow-unknown-host; a name that differs only in case is named
/// (host names are matched exactly) (issue 21.11).
#[tokio::test]
async fn command_send_refuses_a_host_the_server_does_not_know() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    check_in(&server, "Web-01").await;

    let (code, out, err) = ctl(&server, &["command", "send", "restart", "--host", "web-0l"]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("knows no host \"web-0l\"") && err.contains("--allow-unknown-host"),
        "{err}"
    );
    assert!(!err.contains("did not answer"), "{err}");
    let (code, _, err) = ctl(&server, &["command", "send", "restart", "--host", "web-01"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("did you mean \"Web-01\""), "{err}");
    assert!(api.commands().await.is_empty(), "a command was stored");

    // Asked for: stored for the name, not waited for, no failure.
    let (code, out, err) = ctl(
        &server,
        &[
            "command",
            "send",
            "restart",
            "--host",
            "later-1",
            "--allow-unknown-host",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("issued"), "{out}");
    assert!(err.contains("knows no host \"later-1\""), "{err}");
    assert_eq!(api.commands().await.len(), 1);
}

/// `config pull` says on stderr which config it printed (issue 21.11).
#[tokio::test]
async fn config_pull_says_which_config_it_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    check_in(&server, "cfg-1").await;
    let file = tmp.path().join("desired.yml");
    std::fs::write(&file, "Desired: yes\n").unwrap();
    let (code, _, err) = ctl(
        &server,
        &[
            "config",
            "push",
            "cfg-1",
            &file.display().to_string(),
            "--no-apply",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ctl(&server, &["config", "pull", "cfg-1"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "Desired: yes\n", "stdout is the file only");
    assert!(
        err.contains("the desired config, revision 1") && err.contains("--source reported"),
        "{err}"
    );
    let (code, _, err) = ctl(&server, &["config", "pull", "cfg-1", "--source", "desired"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the desired config, revision 1"), "{err}");
}

/// A host not heard from for hours: its agent's state is shown as last
/// reported, marked with the host's state (issue 21.11).
#[tokio::test]
async fn a_stale_hosts_agent_is_shown_as_last_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let mut server = Server::start(&data).await;
    check_in(&server, "quiet-1").await;
    let port = server.port;
    server.stop();
    {
        // Last heard from 3 hours ago.
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}",
            data.join("palette.db").display()
        ))
        .await
        .unwrap();
        let n = sqlx::query("UPDATE hosts SET last_seen = last_seen - 3 * 3600 * 1000")
            .execute(&mut db)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 1, "the check-in was written");
    }
    let server = Server::start_on(&data, port).await;
    let (code, out, err) = ctl(&server, &["hosts"]).await;
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("quiet-1")).unwrap();
    assert!(line.contains("running (last seen 3h ago, stale)"), "{out}");
    let (code, out, err) = ctl(&server, &["hosts", "quiet-1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("as last reported 3h ago; the host is stale"),
        "{out}"
    );
}

/// `release retry` follows the hosts installing it: a retried install
/// that fails again exits 3, not 0 (issue 21.11).
#[tokio::test]
async fn release_retry_exits_3_when_the_install_fails_again() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut host = Host::with_agent_settings(
        "retry-again",
        &server.url,
        "v2",
        "  health_command: ['sh', '-c', 'test ! -e {base}/unhealthy']\n",
        "",
    );
    host.start();
    host.wait_agent_running(T).await.unwrap();
    wait_for("the host reports", T, || async {
        api.host("retry-again")
            .await
            .is_some_and(|h| h.report.is_some())
    })
    .await
    .unwrap();
    std::fs::write(host.base.join("unhealthy"), "").unwrap();
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    let (code, out, err) = ctl(
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

    // The cause is still there: the retry fails again.
    let (code, out, err) = ctl(&server, &["release", "retry", "2.0.0", "--wait", "20"]).await;
    assert_eq!(code, 3, "{out}{err}\n{}", host.diagnostics());
    assert!(out.contains("cleared"), "{out}");
    assert_eq!(host.running_agent().unwrap().version, "1.0.0");
}

/// `release publish` of a file that is not there names it (issue 21.15).
#[tokio::test]
async fn publishing_a_missing_file_says_it_does_not_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let missing = tmp.path().join("nonexistent/agent-2.0.0.tar.gz");
    let path = missing.display().to_string();
    let (code, _, err) = ctl(
        &server,
        &["release", "publish", &path, "--version", "2.0.0"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{path} does not exist")), "{err}");
    assert!(!err.contains("metadata"), "{err}");
}

/// `token rotate` is one server-side action: the caller's own token
/// rotated, the old one refused, the new one works, one `token.rotate`
/// audit entry under the caller's label (issue 21.12).
#[tokio::test]
async fn token_rotate_is_one_audited_server_action() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let (code, old, err) = ctl(&server, &["token", "new-operator", "deploy-bot"]).await;
    assert_eq!(code, 0, "{err}");
    let old = old.trim().to_string();

    let (code, new, err) = ctl_as(&server, &old, &["token", "rotate", "deploy-bot"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1 old one(s) revoked"), "{err}");
    let new = new.trim().to_string();
    assert!(new.starts_with("pop_") && new != old, "{new}");
    let (code, _, err) = ctl_as(&server, &old, &["hosts"]).await;
    assert_eq!(code, 1, "the old token still works: {err}");
    assert!(err.contains("refused the token"), "{err}");
    let (code, _, err) = ctl_as(&server, &new, &["hosts"]).await;
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = ctl(&server, &["-o", "json", "audit"]).await;
    assert_eq!(code, 0, "{err}");
    let audit: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let rotations: Vec<_> = audit
        .iter()
        .filter(|e| e["action"] == "token.rotate")
        .collect();
    assert_eq!(rotations.len(), 1, "{audit:?}");
    assert_eq!(rotations[0]["actor"], "deploy-bot", "{audit:?}");
    assert!(
        !audit.iter().any(|e| e["action"] == "token.revoke"),
        "{audit:?}"
    );

    // A label no live token has: an error, nothing created.
    let (code, _, err) = ctl(&server, &["token", "rotate", "nobody"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no live operator token is labelled"), "{err}");
}
