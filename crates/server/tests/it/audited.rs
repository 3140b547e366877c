//! An operator write and its audit entry commit together: when the entry
//! cannot be stored the write answers an error and nothing of it is stored,
//! delivered to a host or shown; when the answer is 2xx both are there.
//!
//! The failure is injected in the database itself (a trigger that refuses
//! every audit row), so the test is the same on SQLite and PostgreSQL and
//! does not depend on how full a disk is; the full-disk test
//! (`durability`) checks the same on a real full disk.

use serde_json::{json, Value};

use crate::support::*;

/// A connection to the test server's own database, beside the server.
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    async fn open(s: &TestServer) -> Db {
        match postgres_for(&s.data).await {
            Some(url) => Db::Postgres(sqlx::PgPool::connect(&url).await.unwrap()),
            None => Db::Sqlite(
                sqlx::SqlitePool::connect(&format!(
                    "sqlite://{}",
                    s.data.join("palette.db").display()
                ))
                .await
                .unwrap(),
            ),
        }
    }

    /// From now on every audit row is refused by the database.
    async fn fail_audit(&self) {
        match self {
            Db::Sqlite(p) => {
                sqlx::query(
                    "CREATE TRIGGER audit_fails BEFORE INSERT ON audit
                     BEGIN SELECT RAISE(ABORT, 'injected: the audit row cannot be stored'); END",
                )
                .execute(p)
                .await
                .unwrap();
            }
            Db::Postgres(p) => {
                sqlx::query(
                    "CREATE OR REPLACE FUNCTION audit_fails() RETURNS trigger AS $$
                     BEGIN RAISE EXCEPTION 'injected: the audit row cannot be stored'; END
                     $$ LANGUAGE plpgsql",
                )
                .execute(p)
                .await
                .unwrap();
                sqlx::query(
                    "CREATE TRIGGER audit_fails BEFORE INSERT ON audit
                     FOR EACH ROW EXECUTE FUNCTION audit_fails()",
                )
                .execute(p)
                .await
                .unwrap();
            }
        }
    }

    async fn heal_audit(&self) {
        match self {
            Db::Sqlite(p) => {
                sqlx::query("DROP TRIGGER audit_fails")
                    .execute(p)
                    .await
                    .unwrap();
            }
            Db::Postgres(p) => {
                sqlx::query("DROP TRIGGER audit_fails ON audit")
                    .execute(p)
                    .await
                    .unwrap();
            }
        }
    }
}

async fn get(s: &TestServer, path: &str) -> Value {
    let res = http().get(s.u(path)).admin().go().await;
    assert!(res.status().is_success(), "GET {path}: {}", res.status());
    res.json().await.unwrap()
}

/// Everything an operator write could have changed, as the API shows it.
async fn snapshot(s: &TestServer) -> Value {
    let mut tokens = get(s, "/api/v2/tokens").await;
    for t in tokens.as_array_mut().unwrap() {
        // Written in batches as requests come in: not an operator write.
        t.as_object_mut().unwrap().remove("last_used");
    }
    let mut hosts: Vec<String> = get(s, "/api/v2/hosts")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hostname"].as_str().unwrap().to_string())
        .collect();
    hosts.sort();
    json!({
        "commands": get(s, "/api/v2/commands").await,
        "releases": get(s, "/api/v2/releases").await,
        "rollouts": get(s, "/api/v2/rollouts").await,
        "pins": get(s, "/api/v2/pins").await,
        "windows": get(s, "/api/v2/windows").await,
        "labels": get(s, "/api/v2/hosts/web1/labels").await,
        "configs": get(s, "/api/v2/hosts/web1/configs").await,
        "tokens": tokens,
        "hosts": hosts,
        "audit": get(s, "/api/v2/audit").await,
    })
}

/// Each operator write once: (what, method, path, JSON body or raw body).
fn writes(ids: &Ids) -> Vec<(&'static str, reqwest::RequestBuilder)> {
    let c = http();
    let u = |p: &str| format!("{}{}", ids.url, p);
    vec![
        (
            "command.create",
            c.post(u("/api/v2/commands"))
                .json(&json!({"kind": "stop", "target": {"hosts": ["web1"]}})),
        ),
        (
            "command.create (v1)",
            c.put(u("/api/v1/command")).form(&[("command", "stop")]),
        ),
        (
            "config.push",
            c.post(u("/api/v2/hosts/web1/configs?apply=false"))
                .body("LicenseKey: pushed\n"),
        ),
        (
            "config.push (applied)",
            c.post(u("/api/v2/hosts/web1/configs"))
                .body("LicenseKey: pushed-and-applied\n"),
        ),
        (
            "host.labels",
            c.put(u("/api/v2/hosts/web1/labels"))
                .json(&json!({"assigned": {"tier": "gold"}})),
        ),
        (
            "rollout.create",
            c.post(u("/api/v2/rollouts"))
                .json(&json!({"release_id": ids.release1, "selector": "tier=silver"})),
        ),
        (
            "rollout.pause",
            c.post(u(&format!("/api/v2/rollouts/{}/pause", ids.rollout))),
        ),
        (
            "release.rollback",
            c.post(u(&format!("/api/v2/releases/{}/rollback", ids.release2))),
        ),
        (
            "release.withdraw",
            c.post(u(&format!("/api/v2/releases/{}/withdraw", ids.release1))),
        ),
        (
            "pin.create",
            c.post(u("/api/v2/pins"))
                .json(&json!({"selector": "tier=gold", "version": "1.0.0"})),
        ),
        (
            "pin.delete",
            c.delete(u(&format!("/api/v2/pins/{}", ids.pin))),
        ),
        (
            "window.create",
            c.post(u("/api/v2/windows"))
                .json(&json!({"selector": "tier=gold", "schedule": "Sat 02:00-04:00"})),
        ),
        (
            "window.delete",
            c.delete(u(&format!("/api/v2/windows/{}", ids.window))),
        ),
        ("host.retire", c.delete(u("/api/v2/hosts/web2"))),
        (
            "host.enroll",
            c.post(u("/api/v2/enroll"))
                .json(&json!({"hostname": "web3"})),
        ),
        (
            "token.add-agent",
            c.post(u("/api/v2/agent-tokens"))
                .json(&json!({"token": "Another-License-Key-2", "label": "second"})),
        ),
        (
            "token.add-operator",
            c.post(u("/api/v2/operator-tokens"))
                .json(&json!({"label": "ci"})),
        ),
        (
            "token.revoke",
            c.post(u(&format!(
                "/api/v2/tokens/operator/{}/revoke",
                ids.operator_token
            ))),
        ),
        (
            "release.publish",
            c.post(u(
                "/api/v2/releases?version=3.0.0&platform=linux-x86_64&kind=archive&force=true",
            ))
            .body(b"three".to_vec()),
        ),
    ]
}

struct Ids {
    url: String,
    release1: i64,
    release2: i64,
    rollout: i64,
    pin: i64,
    window: i64,
    operator_token: i64,
}

async fn post_json(s: &TestServer, path: &str, body: Value) -> Value {
    let res = http().post(s.u(path)).admin().json(&body).go().await;
    assert_eq!(res.status(), 201, "POST {path}");
    res.json().await.unwrap()
}

#[tokio::test]
async fn an_operator_write_refused_for_its_audit_entry_stores_nothing() {
    let s = TestServer::start().await;
    // What the writes act on.
    for host in ["web1", "web2"] {
        checkin_at(&s.url, &checkin_of(host), 0).await;
    }
    let r1 = publish(&s, "1.0.0", "linux-x86_64", "archive", b"one").await;
    let r2 = publish(&s, "2.0.0", "linux-x86_64", "archive", b"two").await;
    let rollout = post_json(
        &s,
        "/api/v2/rollouts",
        json!({"release_id": r2["id"], "waves": ["1", "100%"], "soak_secs": 3600}),
    )
    .await;
    let pin = post_json(
        &s,
        "/api/v2/pins",
        json!({"selector": "tier=bronze", "version": "1.0.0"}),
    )
    .await;
    let window = post_json(
        &s,
        "/api/v2/windows",
        json!({"selector": "tier=bronze", "schedule": "Sun 01:00-02:00"}),
    )
    .await;
    let token = post_json(&s, "/api/v2/operator-tokens", json!({"label": "bob"})).await;
    let tokens = get(&s, "/api/v2/tokens").await;
    let bob = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "bob")
        .unwrap_or_else(|| panic!("bob's token in {tokens} ({token})"))["id"]
        .as_i64()
        .unwrap();
    let ids = Ids {
        url: s.url.clone(),
        release1: r1["id"].as_i64().unwrap(),
        release2: r2["id"].as_i64().unwrap(),
        rollout: rollout["id"].as_i64().unwrap(),
        pin: pin["id"].as_i64().unwrap(),
        window: window["id"].as_i64().unwrap(),
        operator_token: bob,
    };
    let before = snapshot(&s).await;

    let db = Db::open(&s).await;
    db.fail_audit().await;
    for (what, req) in writes(&ids) {
        let res = req.admin().go().await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(
            status.is_server_error(),
            "{what} whose audit entry cannot be stored answers 5xx, not {status}: {text}"
        );
        // Said of everything but a config push's follow-up command, which
        // is not reached: the revision itself was refused.
        assert!(
            text.contains("nothing was stored"),
            "{what}: the answer says nothing was stored: {text}"
        );
    }
    // Nothing a host would be given: web1 is offered no command and no
    // config.
    let answer = checkin_at(&s.url, &checkin_of("web1"), 0).await;
    assert!(
        answer.commands.is_empty(),
        "no refused command reaches the host: {:?}",
        answer.commands
    );
    assert!(
        answer.config_revision.is_none(),
        "no refused config reaches the host: {:?}",
        answer.config_revision
    );
    let after = snapshot(&s).await;
    assert_eq!(
        before, after,
        "every refused write left the server as it was"
    );

    // After a restart, the same.
    let data = s.data.clone();
    db.heal_audit().await;
    let tmp = s.stop().await;
    let s = TestServer::start_with(&data, |_| {}).await;
    assert_eq!(before, snapshot(&s).await, "and so does the store");

    // The same writes, with the audit healthy: each 2xx has its entry.
    let ids = Ids {
        url: s.url.clone(),
        ..ids
    };
    let audited_before = get(&s, "/api/v2/audit").await.as_array().unwrap().len();
    let mut done = 0;
    for (what, req) in writes(&ids) {
        let res = req.admin().go().await;
        assert!(
            res.status().is_success(),
            "{what}: {} {}",
            res.status(),
            res.text().await.unwrap()
        );
        done += 1;
    }
    let audit = get(&s, "/api/v2/audit").await;
    let entries = audit.as_array().unwrap();
    // The applied config push is two writes (the revision and the
    // command that applies it), each with its entry.
    assert_eq!(
        entries.len(),
        audited_before + done + 1,
        "one entry per write: {audit}"
    );
    for e in &entries[..done + 1] {
        let detail = e["detail"].as_str().unwrap();
        assert!(
            !detail.contains("{id}") && !detail.contains("Hosts(") && !detail.contains("Some("),
            "audit details are words, with their ids filled in: {detail}"
        );
    }
    s.stop().await;
    drop(tmp);
}
