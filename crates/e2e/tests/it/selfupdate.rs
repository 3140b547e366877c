//! The watchdog's self-update, end to end: releases of product `watchdog`
//! made from the real binaries stamped with a newer version (or with a
//! broken part), installed by the real manager, proved by a real check-in.
//! No service manager runs here: the manager restarts the watchdog itself,
//! and the tests restart a killed watchdog as systemd would.

use std::time::{Duration, Instant};

use palette_e2e::*;
use palette_protocol::v2::{HostInfo, Outcome, UpdateReport};

use super::T;

const OLD: &str = env!("CARGO_PKG_VERSION");
const NEW: &str = "9.0.0";

fn settings(prove_secs: u64) -> String {
    // The first line continues the `intervals:` block Host writes last.
    format!("  download_retry_secs: 1\nself_update:\n  prove_secs: {prove_secs}\n")
}

async fn start_host(server: &Server, name: &str, prove_secs: u64, env: &[(&str, &str)]) -> Host {
    let mut host = Host::new(name, &server.url, "v2", &settings(prove_secs));
    host.start_with_env(env);
    host.wait_agent_running(T).await.unwrap();
    wait_for("the host checked in", T, || async {
        server.api().host(name).await.is_some()
    })
    .await
    .unwrap();
    host
}

fn last_self_update(info: &Option<HostInfo>) -> Option<UpdateReport> {
    info.as_ref()?.report.as_ref()?.last_watchdog_update.clone()
}

fn reported_watchdog(info: &Option<HostInfo>) -> Option<String> {
    Some(info.as_ref()?.report.as_ref()?.watchdog_version.clone())
}

/// Agents running on this host's folder.
fn agents(host: &Host) -> Vec<u32> {
    let base = host.base.display().to_string();
    find_processes(&["palette-sample-agent", &base])
        .into_iter()
        .filter(|p| alive(*p))
        .collect()
}

/// Watchdogs running on this host's folder.
fn watchdogs(host: &Host) -> Vec<u32> {
    let base = host.base.display().to_string();
    find_processes(&["palette-watchdog", "run", &base])
        .into_iter()
        .filter(|p| alive(*p))
        .collect()
}

/// The end state every self-update must reach: the installed binaries are
/// `want`'s, the server shows that version running and the outcome, the
/// journal is closed, one watchdog and one agent run — the agent `agent`,
/// never restarted.
async fn settled_on(
    server: &Server,
    host: &Host,
    want: &str,
    outcome: Outcome,
    agent: u32,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match check_settled(server, host, want, outcome, agent).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("not settled on {want}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One look at the end state (see `settled_on`).
async fn check_settled(
    server: &Server,
    host: &Host,
    want: &str,
    outcome: Outcome,
    agent: u32,
) -> Result<(), String> {
    let info = server.api().host(&host.name).await;
    let installed = host.installed_watchdog_version();
    if installed.as_deref() != Some(want) {
        return Err(format!("the installed watchdog is {installed:?}"));
    }
    let manager = host.installed_manager_version();
    if manager.as_deref() != Some(want) {
        return Err(format!("the installed manager is {manager:?}"));
    }
    if reported_watchdog(&info).as_deref() != Some(want) {
        return Err(format!(
            "the server shows watchdog {:?}",
            reported_watchdog(&info)
        ));
    }
    match last_self_update(&info) {
        Some(u) if u.outcome == outcome => {}
        other => return Err(format!("the last self-update is {other:?}")),
    }
    if host.base.join("state/self-update.json").exists() {
        return Err("the self-update journal is open".into());
    }
    let w = watchdogs(host);
    if w.len() != 1 {
        return Err(format!("{} watchdogs run: {w:?}", w.len()));
    }
    let a = agents(host);
    if a != [agent] {
        return Err(format!("agents {a:?}, want exactly the untouched {agent}"));
    }
    Ok(())
}

#[tokio::test]
async fn the_watchdog_updates_itself_and_the_agent_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let host = start_host(&server, "selfie", 30, &[]).await;
    let agent = host.running_agent().unwrap().pid;
    let old_watchdog = host.watchdog_pid().unwrap();
    assert_eq!(host.installed_watchdog_version().as_deref(), Some(OLD));

    let archive = watchdog_release_archive(tmp.path(), NEW, WatchdogBuild::Good);
    api.publish_product(&archive, "watchdog", NEW, "archive")
        .await;
    settled_on(&server, &host, NEW, Outcome::Succeeded, agent)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", host.diagnostics()));
    assert_ne!(host.watchdog_pid(), Some(old_watchdog));
    let u = last_self_update(&api.host("selfie").await).unwrap();
    assert!(u.message.contains("checked in"), "{}", u.message);
    // The old binaries are kept for the way back.
    assert_eq!(
        version_of(
            &host.base.join("self/old/palette-watchdog"),
            "palette-watchdog"
        )
        .as_deref(),
        Some(OLD)
    );
    // The new watchdog works: a command reaches it and is carried out.
    let id = api
        .command(palette_protocol::v2::CommandKind::PutConfig, "selfie")
        .await;
    let (outcome, msg) = api.ack(id, T).await;
    assert_eq!(outcome, Outcome::Succeeded, "{msg}");
    let log = std::fs::read_to_string(host.base.join("Logs/watchdog.log")).unwrap();
    assert!(
        log.contains("supervising it, not restarting it"),
        "the new watchdog did not adopt the agent"
    );
}

/// A new watchdog that exits at once, one that never checks in, and one
/// whose manager cannot run are each refused: the old binaries are put
/// back, the old watchdog runs again, the agent was never touched, the
/// server says why — and the release is not tried again.
#[tokio::test]
async fn a_broken_watchdog_release_is_replaced_by_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = tokio::join!(
        broken_case(
            tmp.path(),
            0,
            WatchdogBuild::ExitsAtOnce,
            "exited at once",
            "simulated broken build"
        ),
        broken_case(
            tmp.path(),
            1,
            WatchdogBuild::NeverChecksIn,
            "did not pass its self-check and check in within 8 s",
            "never checks in"
        ),
        broken_case(
            tmp.path(),
            2,
            WatchdogBuild::BrokenManager,
            "self-check failed",
            "broken manager"
        ),
    );
    for (build, took) in [a, b, c] {
        println!("{build:?}: the old watchdog was back {took:?} after the release was published");
    }
}

/// Issue 22, item 7: a new watchdog that never checks in and ignores
/// SIGTERM is killed when it is refused: the old one runs alone afterwards.
#[tokio::test]
async fn a_broken_watchdog_that_ignores_sigterm_does_not_survive_the_revert() {
    let tmp = tempfile::tempdir().unwrap();
    broken_case(
        tmp.path(),
        3,
        WatchdogBuild::IgnoresSigterm,
        "did not pass its self-check and check in within 8 s",
        "ignores SIGTERM",
    )
    .await;
}

async fn broken_case(
    tmp: &std::path::Path,
    i: usize,
    build: WatchdogBuild,
    why: &str,
    quoted: &str,
) -> (WatchdogBuild, Duration) {
    let dir = tmp.join(format!("case{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start(&dir.join("server")).await;
    let api = server.api();
    let name = format!("broken-{i}");
    let host = start_host(&server, &name, 8, &[]).await;
    let agent = host.running_agent().unwrap().pid;
    let archive = watchdog_release_archive(&dir, NEW, build);
    let started = Instant::now();
    let release = api
        .publish_product(&archive, "watchdog", NEW, "archive")
        .await;
    settled_on(&server, &host, OLD, Outcome::Failed, agent)
        .await
        .unwrap_or_else(|e| panic!("{build:?}: {e}\n{}", host.diagnostics()));
    let took = started.elapsed();
    let u = last_self_update(&api.host(&name).await).unwrap();
    assert!(u.message.contains(why), "{build:?}: {}", u.message);
    assert!(u.message.contains(quoted), "{build:?}: {}", u.message);
    assert!(u.message.contains("put back"), "{build:?}: {}", u.message);
    // Not tried again: held as failed, one attempt in the log.
    let state = std::fs::read_to_string(host.base.join("state/watchdog.json")).unwrap();
    let durable: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert!(
        durable["failed_releases"]
            .as_array()
            .unwrap()
            .contains(&release["id"]),
        "{build:?}: {state}"
    );
    let log = std::fs::read_to_string(host.base.join("Logs/manager.log")).unwrap();
    assert_eq!(
        log.matches("watchdog self-update requested").count(),
        1,
        "{build:?}"
    );
    (build, took)
}

/// Starts a watchdog again (without fault injection) when none runs, as
/// systemd's `Restart=always` would.
fn restart_like_systemd(host: &mut Host) {
    if host.watchdog_pid().is_none() {
        host.kill9(); // reaps the one this test started, if it died
        host.start();
    }
}

/// A stand-in for `systemctl restart --no-block palette-watchdog.service`
/// (no systemd here): stops the watchdog holding the lock and starts the
/// installed binary in the background. Written into the host's folder.
fn restart_script(host: &Host) -> String {
    let path = host.base.join("restart-watchdog.sh");
    std::fs::write(
        &path,
        r#"#!/bin/sh
base="$1"
pid=$(cat "$base/state/watchdog.lock" 2>/dev/null)
# Only a watchdog of this folder (a pid in a lock file may be stale).
if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "palette-watchdog run --base $base"; then
  kill "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i+1)); done
fi
setsid "$base/palette-watchdog" run --base "$base" >>"$base/Logs/watchdog.console.log" 2>&1 </dev/null &
"#,
    )
    .unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path.display().to_string()
}

/// For each step of a self-update, the manager dies there (a crash point,
/// like `kill -9`); the watchdog settles what it finds, and after a restart
/// without the crash point every host ends on the new watchdog with the
/// agent never restarted.
#[tokio::test]
async fn the_manager_killed_at_every_step_of_a_self_update() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let archive = watchdog_release_archive(tmp.path(), NEW, WatchdogBuild::Good);
    api.publish_product(&archive, "watchdog", NEW, "archive")
        .await;
    for point in palette_manager::fault::SELF_POINTS {
        let name = format!("selfcrash-{}", point.replace(':', "-"));
        let mut host = start_host(
            &server,
            &name,
            20,
            &[(palette_protocol::env::CRASH_AT, point)],
        )
        .await;
        let agent = host.running_agent().unwrap().pid;
        // The manager dies at `point` and the watchdog reports something.
        wait_for(
            "an outcome is reported",
            Duration::from_secs(60),
            || async { last_self_update(&api.host(&name).await).is_some() },
        )
        .await
        .unwrap_or_else(|e| panic!("{point}: {e}\n{}", host.diagnostics()));
        let first = last_self_update(&api.host(&name).await).unwrap();
        println!(
            "{point}: first outcome {:?}: {}",
            first.outcome, first.message
        );
        // Killed and started again without the crash point, as systemd
        // restarts a watchdog (the agent is left running and adopted).
        host.kill9();
        host.start();
        settled_on(&server, &host, NEW, Outcome::Succeeded, agent)
            .await
            .unwrap_or_else(|e| panic!("{point}: {e}\n{}", host.diagnostics()));
        host.stop();
    }
}

/// For each step of a self-update, the watchdog is SIGKILLed there (the
/// manager carries on) and started again as systemd would; the manager
/// restarts the watchdog through a service-manager command here (a script
/// standing in for `systemctl restart`). Every host ends on the new
/// watchdog, the agent never restarted.
#[tokio::test]
async fn the_watchdog_killed_at_every_step_of_a_self_update() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let archive = watchdog_release_archive(tmp.path(), NEW, WatchdogBuild::Good);
    api.publish_product(&archive, "watchdog", NEW, "archive")
        .await;
    for point in palette_manager::fault::SELF_POINTS {
        let name = format!("selfkill-{}", point.replace(':', "-"));
        let mut host = Host::new(&name, &server.url, "v2", &settings(20));
        let script = restart_script(&host);
        let text = std::fs::read_to_string(host.base.join("watchdog.yml")).unwrap();
        std::fs::write(
            host.base.join("watchdog.yml"),
            format!("{text}  restart: ['{script}', '{}']\n", host.base.display()),
        )
        .unwrap();
        host.start_with_env(&[(palette_protocol::env::KILL_WATCHDOG_AT, point)]);
        host.wait_agent_running(T).await.unwrap();
        let agent = host.running_agent().unwrap().pid;
        let deadline = Instant::now() + Duration::from_secs(120);
        let result = loop {
            restart_like_systemd(&mut host);
            match check_settled(&server, &host, NEW, Outcome::Succeeded, agent).await {
                Ok(()) => break Ok(()),
                Err(e) if Instant::now() > deadline => break Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        result.unwrap_or_else(|e| panic!("{point}: {e}\n{}", host.diagnostics()));
        assert!(
            std::fs::read_to_string(host.base.join("Logs/manager.log"))
                .unwrap()
                .contains(&format!("killing the watchdog at {point}")),
            "{point}: the crash point was never reached"
        );
        host.stop();
    }
}

/// The watchdog's half of the agent-update suite: the watchdog is
/// SIGKILLed at each step of an agent update (the manager carries on) and
/// started again: every host ends consistent on the new agent, and the
/// server shows it succeeded.
#[tokio::test]
async fn the_watchdog_killed_at_every_step_of_an_agent_update() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let a2 = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&a2, "2.0.0", "archive").await;
    for point in palette_manager::fault::POINTS {
        let name = format!("agentkill-{}", point.replace(':', "-"));
        let mut host = Host::new(&name, &server.url, "v2", "");
        host.start_with_env(&[(palette_protocol::env::KILL_WATCHDOG_AT, point)]);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            restart_like_systemd(&mut host);
            let state = super::consistent(&host);
            let shown = api
                .host(&name)
                .await
                .and_then(|h| h.report)
                .and_then(|r| r.last_update)
                .is_some_and(|u| {
                    u.outcome == Outcome::Succeeded && u.version.to_string() == "2.0.0"
                });
            let killed = std::fs::read_to_string(host.base.join("Logs/manager.log"))
                .unwrap_or_default()
                .contains(&format!("killing the watchdog at {point}"));
            if killed && shown && state.as_deref() == Ok("2.0.0") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{point}: not settled (killed: {killed}, shown: {shown}, {state:?})\n{}",
                host.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        host.stop();
    }
}

/// Issue 22, item 8: the manager killed (once) early in a self-update,
/// before it journaled anything (`self:verified`, where 100–260 ms in
/// landed): an interruption, not a refusal — reported as such, tried again
/// without a watchdog restart, and installed.
#[tokio::test]
async fn a_self_update_interrupted_before_staging_is_tried_again() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let archive = watchdog_release_archive(tmp.path(), NEW, WatchdogBuild::Good);
    api.publish_product(&archive, "watchdog", NEW, "archive")
        .await;
    let host = start_host(
        &server,
        "selfretry",
        20,
        &[
            (palette_protocol::env::CRASH_AT, "self:verified"),
            (palette_protocol::env::CRASH_ONCE, "1"),
        ],
    )
    .await;
    let agent = host.running_agent().unwrap().pid;
    host.wait_log(
        "interrupted before anything was changed",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    settled_on(&server, &host, NEW, Outcome::Succeeded, agent)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", host.diagnostics()));
    assert!(
        !host.log().contains("refused the watchdog release"),
        "an interruption was taken for a refusal"
    );
}

/// Issue 21, item 5 (host side): a watchdog release whose binaries report
/// another version than the release says is refused before anything is
/// swapped, with both versions named; the old watchdog runs on, alone.
/// Served by a stand-in server (ours may refuse such a release at publish).
#[tokio::test]
async fn a_watchdog_release_whose_binaries_report_another_version_is_refused() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let archive = watchdog_release_archive(tmp.path(), NEW, WatchdogBuild::WrongVersion);
    let bytes = std::fs::read(&archive).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let offer = release_offer(
        77,
        "watchdog",
        NEW,
        "/api/v2/releases/77/download",
        &sha,
        bytes.len() as u64,
    );
    let server = FakeHttp::start(move |r| {
        if r.path.starts_with("/api/v2/checkin") {
            Answer::json(format!(
                r#"{{"store_id":"wrongver","commands":[],"release":null,"watchdog_release":{offer},"config_revision":null}}"#
            ))
        } else if r.path.starts_with("/api/v2/releases/77/download") {
            Answer {
                status: 200,
                headers: Vec::new(),
                body: bytes.clone(),
            }
        } else {
            Answer::status(404)
        }
    })
    .await;
    let mut host = Host::new("wrongver", &server.url, "v2", &settings(20));
    host.start();
    let agent = host.wait_agent_running(T).await.unwrap().pid;
    let refused = |r: &Recorded| {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let u = &body["host"]["last_watchdog_update"];
        u["outcome"] == "failed"
            && u["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("reports version {OLD}")) && m.contains(NEW))
    };
    wait_for(
        "the refusal is reported",
        Duration::from_secs(60),
        || async { server.requests().iter().any(refused) },
    )
    .await
    .unwrap_or_else(|e| {
        let log = host.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("could not report Config.yml"))
            .collect();
        panic!(
            "{e:#}\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    });
    assert_eq!(host.installed_watchdog_version().as_deref(), Some(OLD));
    assert_eq!(host.installed_manager_version().as_deref(), Some(OLD));
    assert_eq!(watchdogs(&host).len(), 1);
    assert_eq!(agents(&host), [agent]);
    assert!(!host.base.join("state/self-update.json").exists());
    let log = std::fs::read_to_string(host.base.join("Logs/manager.log")).unwrap_or_default();
    assert!(
        !log.contains("swapping the binaries"),
        "binaries were swapped"
    );
}
