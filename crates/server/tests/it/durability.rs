//! A full disk: the data folder on a small tmpfs, filled to the last byte.
//! Every write must answer 5xx and store nothing, writes must work again
//! when space returns (no restart), and after a restart everything that was
//! acknowledged is there, with no id reused. Runs as root (CI does); where
//! mounting is not permitted the test says so and passes without running.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use palette_e2e::Tmpfs;

use crate::support::*;

/// Fills the filesystem holding `dir` until not one more byte fits.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

#[derive(Debug, Default)]
struct Acked {
    commands: BTreeMap<i64, String>,
    configs: Vec<i64>,
    releases: Vec<String>,
    operator_tokens: Vec<String>,
    agent_tokens: Vec<String>,
}

async fn post_command(s: &TestServer, kind: &str, acked: &mut Acked) -> reqwest::StatusCode {
    let res = http()
        .post(s.u("/api/v2/commands"))
        .admin()
        .json(&serde_json::json!({"kind": kind, "target": "all"}))
        .go()
        .await;
    let status = res.status();
    if status.is_success() {
        let v: serde_json::Value = res.json().await.unwrap();
        let id = v["id"].as_i64().unwrap();
        assert!(
            acked.commands.insert(id, kind.into()).is_none(),
            "command id {id} was acknowledged twice"
        );
    }
    status
}

async fn push_config(s: &TestServer, n: usize, acked: &mut Acked) -> reqwest::StatusCode {
    let body = format!("LicenseKey: k{n}\npad: {}\n", "x".repeat(64 * 1024));
    let res = http()
        .post(s.u("/api/v2/hosts/web1/configs?apply=false"))
        .admin()
        .body(body)
        .go()
        .await;
    let status = res.status();
    if status.is_success() {
        let v: serde_json::Value = res.json().await.unwrap();
        acked
            .configs
            .push(v["revision"]["revision"].as_i64().unwrap());
    }
    status
}

async fn publish(s: &TestServer, version: &str, acked: &mut Acked) -> reqwest::StatusCode {
    let res = http()
        .post(s.u(&format!(
            "/api/v2/releases?version={version}&platform=linux-x86_64&kind=installer"
        )))
        .admin()
        .body(vec![version.as_bytes()[0]; 1 << 20])
        .go()
        .await;
    let status = res.status();
    if status.is_success() {
        acked.releases.push(version.into());
    }
    status
}

async fn new_operator_token(s: &TestServer, acked: &mut Acked) -> reqwest::StatusCode {
    let res = http()
        .post(s.u("/api/v2/operator-tokens"))
        .admin()
        .json(&serde_json::json!({"label": "ci"}))
        .go()
        .await;
    let status = res.status();
    if status.is_success() {
        let v: serde_json::Value = res.json().await.unwrap();
        acked
            .operator_tokens
            .push(v["token"].as_str().unwrap().into());
    }
    status
}

async fn add_agent_token(s: &TestServer, n: usize, acked: &mut Acked) -> reqwest::StatusCode {
    let token = format!("agent-token-{n:04}");
    let res = http()
        .post(s.u("/api/v2/agent-tokens"))
        .admin()
        .json(&serde_json::json!({ "token": token }))
        .go()
        .await;
    let status = res.status();
    if status.is_success() {
        acked.agent_tokens.push(token);
    }
    status
}

#[tokio::test]
async fn a_full_disk_loses_nothing_acknowledged() {
    if on_postgres() {
        eprintln!("SKIPPED on PostgreSQL: this is about the embedded SQLite store's own file");
        return;
    }
    let fs = match Tmpfs::mount("24m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED a_full_disk_loses_nothing_acknowledged: {why} (needs root and permission to mount tmpfs)");
            return;
        }
    };
    let data = fs.path.join("data");
    let mut acked = Acked::default();
    let s = TestServer::start_with(&data, |_| {}).await;

    // Before: everything works.
    assert_eq!(post_command(&s, "restart", &mut acked).await, 201);
    assert_eq!(push_config(&s, 0, &mut acked).await, 201);
    assert_eq!(publish(&s, "1.0.0", &mut acked).await, 201);
    assert_eq!(new_operator_token(&s, &mut acked).await, 201);
    assert_eq!(add_agent_token(&s, 0, &mut acked).await, 201);

    // The disk fills up.
    let filler = fill(&fs.path);
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(("command", post_command(&s, "stop", &mut acked).await));
        statuses.push(("config", push_config(&s, i + 1, &mut acked).await));
    }
    statuses.push(("release", publish(&s, "2.0.0", &mut acked).await));
    statuses.push(("token", new_operator_token(&s, &mut acked).await));
    statuses.push(("agent token", add_agent_token(&s, 1, &mut acked).await));
    let res = http()
        .post(s.u("/api/v2/checkin"))
        .agent()
        .json(&serde_json::json!({
            "host": {"hostname": "v2host", "platform": "linux-x86_64",
                     "watchdog_version": "1.0.0", "agent_version": null,
                     "agent_state": "running", "desired_state": "running",
                     "config_revision": null}
        }))
        .go()
        .await;
    // A bare check-in needs no disk (its report is written with the
    // batched last-seen times, and the host sends it again every time)...
    assert_eq!(res.status(), 200, "a check-in keeps working on a full disk");
    // ...but one carrying an acknowledgement does: it must not be lost.
    let first_command = *acked.commands.keys().next().unwrap();
    let res = http()
        .post(s.u("/api/v2/checkin"))
        .agent()
        .json(&serde_json::json!({
            "host": {"hostname": "v2host", "platform": "linux-x86_64",
                     "watchdog_version": "1.0.0", "agent_version": null,
                     "agent_state": "running", "desired_state": "running",
                     "config_revision": null},
            "results": [{"id": first_command, "hostname": "v2host", "outcome": "succeeded",
                         "message": "done", "at": ""}]
        }))
        .go()
        .await;
    statuses.push(("check-in acknowledgement", res.status()));
    // Legacy hosts keep polling: their heartbeats are batched in memory and
    // the flushes fail for a while.
    for i in 0..10 {
        let res = http()
            .get(s.u(&format!("/api/v1/command?hostname=legacy{i}")))
            .agent()
            .go()
            .await;
        assert!(res.status().is_success(), "a poll needs no disk");
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await; // two failed flushes
                                                                      // Not ready while nothing can be stored; alive all the same.
    assert_eq!(http().get(s.u("/readyz")).go().await.status(), 503);
    assert_eq!(http().get(s.u("/healthz")).go().await.status(), 200);
    for (what, status) in &statuses {
        assert_eq!(
            *status,
            reqwest::StatusCode::INSUFFICIENT_STORAGE,
            "{what} on a full disk: every write answers 507 ({statuses:?})"
        );
    }
    assert!(
        std::fs::read_dir(data.join("artifacts/tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the refused upload left no temporary"
    );

    // Space returns: writes work at once, without a restart, ids unique.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(http().get(s.u("/readyz")).go().await.status(), 200);
    let before_max = *acked.commands.keys().last().unwrap();
    for _ in 0..10 {
        assert_eq!(post_command(&s, "start", &mut acked).await, 201);
    }
    assert!(acked.commands.keys().last().unwrap() > &before_max);
    assert_eq!(push_config(&s, 99, &mut acked).await, 201);
    assert_eq!(publish(&s, "3.0.0", &mut acked).await, 201);
    assert_eq!(new_operator_token(&s, &mut acked).await, 201);
    assert_eq!(add_agent_token(&s, 2, &mut acked).await, 201);
    // Reads are consistent: every acknowledged command, every time.
    for _ in 0..5 {
        let list: Vec<serde_json::Value> =
            http().get(s.u("/api/v2/commands")).admin().json_of().await;
        let ids: Vec<i64> = list.iter().map(|c| c["id"].as_i64().unwrap()).collect();
        for id in acked.commands.keys() {
            assert!(ids.contains(id), "command {id} missing from {ids:?}");
        }
        // ...and none that was answered 507: "nothing was stored" is true.
        for id in &ids {
            assert!(
                acked.commands.contains_key(id),
                "command {id} was answered 507 but stored: {ids:?} vs {:?}",
                acked.commands
            );
        }
    }
    // Every stored command has its audit entry.
    let audit: Vec<serde_json::Value> = http()
        .get(s.u("/api/v2/audit?limit=1000"))
        .admin()
        .json_of()
        .await;
    for id in acked.commands.keys() {
        let prefix = format!("command {id} ");
        assert!(
            audit.iter().any(|e| e["action"] == "command.create"
                && e["detail"].as_str().unwrap().starts_with(&prefix)),
            "command {id} has no audit entry"
        );
    }

    // Restart: everything acknowledged is there.
    s.stop().await;
    let s = TestServer::start_with(&data, |_| {}).await;
    for (id, kind) in &acked.commands {
        let v: serde_json::Value = http()
            .get(s.u(&format!("/api/v2/commands/{id}")))
            .admin()
            .json_of()
            .await;
        assert_eq!(v["kind"], kind.as_str(), "command {id}");
    }
    let hist: Vec<serde_json::Value> = http()
        .get(s.u("/api/v2/hosts/web1/configs"))
        .admin()
        .json_of()
        .await;
    let revs: Vec<i64> = hist
        .iter()
        .map(|r| r["revision"].as_i64().unwrap())
        .collect();
    for r in &acked.configs {
        assert!(
            revs.contains(r),
            "config revision {r} missing from {revs:?}"
        );
    }
    let releases: Vec<serde_json::Value> =
        http().get(s.u("/api/v2/releases")).agent().json_of().await;
    for v in &acked.releases {
        assert!(
            releases.iter().any(|r| r["version"] == v.as_str()),
            "release {v} missing"
        );
    }
    for t in &acked.operator_tokens {
        let res = http().get(s.u("/api/v2/hosts")).bearer_auth(t).go().await;
        assert_eq!(res.status(), 200, "operator token lost");
    }
    for t in &acked.agent_tokens {
        let res = http()
            .get(s.u("/api/v1/license"))
            .header("Authorization", format!("Token {t}"))
            .go()
            .await;
        assert_eq!(res.status(), 200, "agent token {t} lost");
    }
    let hosts: Vec<serde_json::Value> = http().get(s.u("/api/v2/hosts")).admin().json_of().await;
    for i in 0..10 {
        let name = format!("legacy{i}");
        assert!(
            hosts.iter().any(|h| h["hostname"] == name.as_str()),
            "{name}'s heartbeat batch was lost"
        );
    }
    // No id is ever reused.
    let mut next = Acked::default();
    post_command(&s, "restart", &mut next).await;
    let new_id = *next.commands.keys().next().unwrap();
    assert!(new_id > *acked.commands.keys().last().unwrap());
    s.stop().await;
}
