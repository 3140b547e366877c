//! Rollbacks and recovery against the real binaries: a manager killed
//! during a rollback, journals that do not match the disk, a running
//! version removed under the watchdog. Each ends with one agent running on
//! an installed version, and with the server told what runs.

use std::path::Path;
use std::time::Duration;

use palette_e2e::*;
use palette_protocol::v2::Outcome;

use super::{consistent, settle, T};

/// Installs a copy of the sample agent as `version` in `base/versions`.
fn install_copy(base: &Path, version: &str, fail: bool) {
    let dir = base.join("versions").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        bin("palette-sample-agent"),
        dir.join("palette-sample-agent"),
    )
    .unwrap();
    std::fs::write(dir.join("VERSION"), version).unwrap();
    if fail {
        std::fs::write(dir.join("FAIL"), "fail the health check").unwrap();
    }
}

/// An update journal as the manager writes it.
fn write_journal(base: &Path, version: &str, previous: &str, step: &str) {
    std::fs::create_dir_all(base.join("state")).unwrap();
    std::fs::write(
        base.join("state/update-journal.json"),
        format!(
            r#"{{"release_id":4242,"version":"{version}","previous":"{previous}","artifact":"/nonexistent","sha256":"00","step":"{step}"}}"#
        ),
    )
    .unwrap();
}

async fn last_update(api: &Api, host: &str) -> Option<palette_protocol::v2::UpdateReport> {
    api.host(host)
        .await
        .and_then(|h| h.report)
        .and_then(|r| r.last_update)
}

/// Issue 22, item 1: the manager killed (once) at each step of the
/// rollback of a release that fails its health check. The watchdog, still
/// running, finishes the rollback at once: 1.0.0 runs, 2.0.0 is gone, and
/// the server is told it was rolled back.
#[tokio::test]
async fn the_manager_killed_at_every_step_of_a_rollback_is_recovered_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let bad = release_archive(tmp.path(), "2.0.0", true);
    api.publish(&bad, "2.0.0", "archive").await;
    for point in palette_manager::fault::ROLLBACK_POINTS {
        let name = format!("rb-{}", point.replace(':', "-"));
        let mut host = Host::new(&name, &server.url, "v2", "");
        host.start_with_env(&[
            (palette_protocol::env::CRASH_AT, point),
            (palette_protocol::env::CRASH_ONCE, "1"),
        ]);
        let marker = host
            .base
            .join(format!("state/fault-crashed-{}", point.replace(':', "-")));
        wait_for(
            &format!("the manager dies at {point}"),
            Duration::from_secs(60),
            || async { marker.exists() },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
        wait_for("the rollback is reported", T, || async {
            last_update(&api, &name).await.is_some_and(|u| {
                u.outcome == Outcome::Failed && u.message.contains("rolled back to 1.0.0")
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{point}: {e:#}\n{}", host.diagnostics()));
        let v = settle(&host, |v| v == "1.0.0")
            .await
            .unwrap_or_else(|e| panic!("{point}: {e}\n{}", host.diagnostics()));
        assert_eq!(v, "1.0.0");
        assert!(
            !host.base.join("versions/2.0.0").exists(),
            "{point}: the failed version is left"
        );
        host.stop();
    }
}

/// Issue 22, item 2: a rollback interrupted after it pointed `current`
/// back (journal still `switched`, or `rolling_back`), then a watchdog
/// start: the rollback is finished and reported as such — never "2.0.0
/// installed and healthy" while 1.0.0 runs.
#[tokio::test]
async fn an_interrupted_rollback_found_at_start_is_finished_and_never_reported_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    for step in ["switched", "rolling_back"] {
        let name = format!("rb-start-{}", step.replace('_', "-"));
        let mut host = Host::new(&name, &server.url, "v2", "");
        install_copy(&host.base, "2.0.0", true);
        write_journal(&host.base, "2.0.0", "1.0.0", step);
        host.start();
        wait_for("an outcome is reported", T, || async {
            last_update(&api, &name).await.is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("{step}: {e:#}\n{}", host.diagnostics()));
        let u = last_update(&api, &name).await.unwrap();
        assert_eq!(u.outcome, Outcome::Failed, "{step}: {}", u.message);
        assert!(u.message.contains("1.0.0 runs"), "{step}: {}", u.message);
        settle(&host, |v| v == "1.0.0")
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}\n{}", host.diagnostics()));
        assert!(!host.base.join("versions/2.0.0").exists(), "{step}");
        host.stop();
    }
}

/// Issue 22, item 3: a stale journal ("switched" to 3.0.0, not installed,
/// while `current` names 2.0.0). Recovery sets it aside: nothing is
/// reported as installed, no installed version is deleted, and the agent
/// starts again after it exits.
#[tokio::test]
async fn a_stale_journal_is_set_aside_and_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    for previous in ["1.0.0", "0.5.0"] {
        let name = format!("stale-{}", previous.replace('.', "-"));
        let mut host = Host::new(&name, &server.url, "v2", "");
        install_copy(&host.base, "2.0.0", false);
        std::fs::write(host.base.join("versions/current"), "2.0.0\n").unwrap();
        write_journal(&host.base, "3.0.0", previous, "switched");
        host.start();
        let first = host.wait_agent_running(T).await.unwrap();
        assert_eq!(first.version, "2.0.0");
        wait_for("the server sees 2.0.0", T, || async {
            api.host(&name)
                .await
                .and_then(|h| h.report)
                .is_some_and(|r| r.agent_version.map(|v| v.to_string()).as_deref() == Some("2.0.0"))
        })
        .await
        .unwrap_or_else(|e| panic!("{previous}: {e:#}\n{}", host.diagnostics()));
        assert!(
            last_update(&api, &name)
                .await
                .is_none_or(|u| u.outcome != Outcome::Succeeded),
            "{previous}: a version that does not run is reported installed"
        );
        assert!(
            consistent(&host).is_ok(),
            "{previous}: {:?}",
            consistent(&host)
        );
        for v in ["1.0.0", "2.0.0"] {
            assert!(
                host.base
                    .join("versions")
                    .join(v)
                    .join("palette-sample-agent")
                    .exists(),
                "{previous}: versions/{v} was deleted"
            );
        }
        // The agent exits: it starts again, on 2.0.0.
        super::kill9(first.pid);
        wait_for("the agent runs again", T, || async {
            host.running_agent().is_some_and(|a| a.pid != first.pid)
        })
        .await
        .unwrap_or_else(|e| panic!("{previous}: {e:#}\n{}", host.diagnostics()));
        assert_eq!(host.running_agent().unwrap().version, "2.0.0");
        host.stop();
    }
}

/// Issue 22, item 4: `versions/<running>` removed under a running watchdog,
/// then the agent exits: it falls back to the newest installed version
/// that has its program (skipping one without), and reports it.
#[tokio::test]
async fn a_removed_running_version_falls_back_to_the_newest_usable_one() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let api = server.api();
    let mut host = Host::new("removed", &server.url, "v2", "");
    install_copy(&host.base, "2.0.0", false);
    // A newer folder without its program: not a candidate.
    std::fs::create_dir_all(host.base.join("versions/1.5.0")).unwrap();
    std::fs::write(host.base.join("versions/current"), "2.0.0\n").unwrap();
    host.start();
    let first = host.wait_agent_running(T).await.unwrap();
    assert_eq!(first.version, "2.0.0");
    std::fs::remove_dir_all(host.base.join("versions/2.0.0")).unwrap();
    super::kill9(first.pid);
    wait_for("the agent runs 1.0.0", T, || async {
        host.running_agent().is_some_and(|a| a.version == "1.0.0")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    wait_for("the server is told 1.0.0 runs", T, || async {
        api.host("removed")
            .await
            .and_then(|h| h.report)
            .is_some_and(|r| r.agent_version.map(|v| v.to_string()).as_deref() == Some("1.0.0"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    assert!(host.log().contains("versions/current was unusable"));
}
