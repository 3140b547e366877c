//! Two palette-server replicas on one PostgreSQL database (and one
//! artifacts folder, as a shared file system would give them): a command
//! issued on one reaches a host long-polling the other long before the
//! periodic reconciliation would, acknowledgements made through one show on
//! the other, a release published on one is offered and served by the
//! other, and after one is killed (SIGKILL) the other serves everything
//! acknowledged: commands and their results, configs, releases. Runs on PostgreSQL only (PALETTE_TEST_POSTGRES).

use std::time::{Duration, Instant};

use palette_protocol::v2::*;

use crate::support::*;

fn checkin_req(host: &str) -> CheckinRequest {
    checkin_of(host)
}

async fn checkin(url: &str, req: &CheckinRequest, wait: u64) -> CheckinResponse {
    checkin_at(url, req, wait).await
}

#[tokio::test]
async fn two_replicas_share_commands_acks_releases_and_survive_one_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((a, b)) = replica_pair(&tmp.path().join("shared")).await else {
        return;
    };
    assert_eq!(
        b.store_id().await,
        {
            let r = checkin(&a.url, &checkin_req("probe-a"), 0).await;
            r.store_id.unwrap()
        },
        "one store"
    );

    // A host long-polls replica B; the command is issued on replica A.
    let mut req = checkin_req("r1");
    checkin(&b.url, &req, 0).await;
    let b_url = b.url.clone();
    let poll_req = req.clone();
    let poll = tokio::spawn(async move {
        let t = Instant::now();
        let r = checkin(&b_url, &poll_req, 30).await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // the poll is held
    let cmd: CommandStatus = http()
        .post(a.u("/api/v2/commands"))
        .admin()
        .json(&serde_json::json!({"kind": "restart", "target": {"hosts": ["r1"]}}))
        .json_of()
        .await;
    let (answer, waited) = poll.await.unwrap();
    assert_eq!(
        answer.commands.iter().map(|c| c.id).collect::<Vec<_>>(),
        [cmd.command.id]
    );
    // Announced, not found by the 5-second reconciliation.
    assert!(
        waited < Duration::from_millis(200 + 4000),
        "the command took {waited:?} to reach the other replica"
    );
    eprintln!("command on A reached a long poll on B after {waited:?} (poll start to answer)");

    // The acknowledgement, through B, is seen on A.
    req.results = vec![CommandAck {
        id: cmd.command.id,
        hostname: String::new(),
        outcome: Outcome::Succeeded,
        message: "restarted".into(),
        at: String::new(),
    }];
    checkin(&b.url, &req, 0).await;
    req.results.clear();
    let st: CommandStatus = http()
        .get(a.u(&format!("/api/v2/commands/{}", cmd.command.id)))
        .admin()
        .json_of()
        .await;
    assert_eq!(st.results.len(), 1);

    // A release published on A: offered by B, and served by B.
    let res = http()
        .post(a.u("/api/v2/releases?version=2.0.0&platform=linux-x86_64&kind=archive&force=true"))
        .admin()
        .body(b"release two".to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let rel: Release = res.json().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let offered = loop {
        let r = checkin(&b.url, &req, 0).await;
        if let Some(o) = r.release {
            break o;
        }
        assert!(Instant::now() < deadline, "B never offered A's release");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(offered.id, rel.id);
    let bytes = http()
        .get(b.u(&offered.url))
        .agent()
        .go()
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"release two");

    // A config pushed through A and one the host reports through B.
    let res = http()
        .post(a.u("/api/v2/hosts/r1/configs?apply=false"))
        .admin()
        .body("LicenseKey: pushed-on-a\n")
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let pushed: serde_json::Value = res.json().await.unwrap();
    let revision = pushed["revision"]["revision"].as_i64().unwrap();
    // B tells its host of the new desired config.
    let deadline = Instant::now() + Duration::from_secs(10);
    while checkin(&b.url, &req, 0).await.config_revision != Some(revision) {
        assert!(
            Instant::now() < deadline,
            "B never offered the config pushed on A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = http()
        .post(b.u("/api/v2/hosts/r1/configs/reported"))
        .agent()
        .body("LicenseKey: reported-on-b\n")
        .go()
        .await;
    assert!(res.status().is_success(), "{}", res.status());

    // Replica A dies without a word; B has everything acknowledged.
    a.kill9();
    let configs: Vec<ConfigRevision> = http()
        .get(b.u("/api/v2/hosts/r1/configs"))
        .admin()
        .json_of()
        .await;
    assert_eq!(
        configs.iter().map(|c| c.source).collect::<Vec<_>>(),
        [ConfigSource::Reported, ConfigSource::Desired],
        "both configs survived A"
    );
    let cmds: Vec<CommandStatus> = http().get(b.u("/api/v2/commands")).admin().json_of().await;
    let c = cmds
        .iter()
        .find(|c| c.command.id == cmd.command.id)
        .unwrap();
    assert_eq!(c.results.len(), 1);
    let rels: Vec<Release> = http().get(b.u("/api/v2/releases")).agent().json_of().await;
    assert!(rels.iter().any(|r| r.id == rel.id));
    let r = checkin(&b.url, &req, 0).await;
    assert_eq!(r.release.map(|r| r.id), Some(rel.id));
    // B can issue commands and lead the rollouts now.
    let res = http()
        .post(b.u("/api/v2/commands"))
        .admin()
        .json(&serde_json::json!({"kind": "stop", "target": "all"}))
        .go()
        .await;
    assert_eq!(res.status(), 201);
    b.stop().await;
}

/// Two replicas, both running their rollout drivers, hosts checking in at
/// either: exactly one replica leads (steps) the rollout; every wave is
/// admitted once, in order, and the rollout ends with every host updated.
#[tokio::test]
async fn two_replicas_step_a_rollout_once() {
    if !on_postgres() {
        eprintln!("SKIPPED: replicas need PostgreSQL (PALETTE_TEST_POSTGRES)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shared");
    let url = postgres_for(&data).await.unwrap();
    let a = BinServer::start(&data, &["--database", &url], None).await;
    let b = BinServer::start(&data, &["--database", &url], None).await;
    let urls = [a.url.clone(), b.url.clone()];
    let hosts: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    for (i, h) in hosts.iter().enumerate() {
        checkin(&urls[i % 2], &checkin_req(h), 0).await;
    }
    let res = http()
        .post(a.u("/api/v2/releases?version=2.0.0&platform=linux-x86_64&kind=archive&force=true&hold=true"))
        .admin()
        .body(b"two".to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let rel: Release = res.json().await.unwrap();
    let res = http()
        .post(b.u("/api/v2/rollouts"))
        .admin()
        .json(
            &serde_json::json!({"release_id": rel.id, "waves": ["1", "3", "100%"], "soak_secs": 0}),
        )
        .go()
        .await;
    assert_eq!(res.status(), 201);
    // The hosts: each checks in at "its" replica, installs what it is
    // offered, reports it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = vec![false; hosts.len()];
    while done.iter().any(|d| !d) {
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish: {done:?}"
        );
        for (i, h) in hosts.iter().enumerate() {
            let mut req = checkin_req(h);
            if done[i] {
                req.host.agent_version = Some(rel.version);
                req.host.last_update = Some(UpdateReport {
                    release_id: rel.id,
                    version: rel.version,
                    outcome: Outcome::Succeeded,
                    message: "installed".into(),
                });
                req.seen_release = Some(rel.id);
            }
            let r = checkin(&urls[i % 2], &req, 0).await;
            if r.release.as_ref().map(|o| o.id) == Some(rel.id) {
                done[i] = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let v: serde_json::Value = http()
            .get(a.u("/api/v2/rollouts/1"))
            .admin()
            .json_of()
            .await;
        if v["phase"] == "done" {
            break v;
        }
        assert!(Instant::now() < deadline, "not done: {v}");
        // The last reports, again.
        for (i, h) in hosts.iter().enumerate() {
            let mut req = checkin_req(h);
            req.host.agent_version = Some(rel.version);
            req.seen_release = Some(rel.id);
            checkin(&urls[i % 2], &req, 0).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let members = status["hosts"].as_array().unwrap();
    assert_eq!(members.len(), 6, "every host once: {status}");
    let in_wave = |w: i64| members.iter().filter(|m| m["wave"] == w).count();
    assert_eq!((in_wave(1), in_wave(2), in_wave(3)), (1, 2, 3), "{status}");
    // Each wave admitted only after the one before finished.
    let at = |m: &serde_json::Value, k: &str| {
        palette_protocol::timefmt::parse_rfc3339(m[k].as_str().unwrap()).unwrap()
    };
    for w in 2..=3 {
        let prev_end = members
            .iter()
            .filter(|m| m["wave"] == w - 1)
            .map(|m| at(m, "finished_at"))
            .max()
            .unwrap();
        let start = members
            .iter()
            .filter(|m| m["wave"] == w)
            .map(|m| at(m, "admitted_at"))
            .min()
            .unwrap();
        assert!(
            start >= prev_end,
            "wave {w} admitted before wave {} ended: {status}",
            w - 1
        );
    }
    // One leader in the shared log (both replicas write to it).
    let leads = a
        .log()
        .matches("this replica leads the once-only work")
        .count();
    assert_eq!(leads, 1, "{}", a.log());
    // Every host admitted once, by one replica (no wave advanced twice).
    assert_eq!(
        a.log().matches("host admitted to the rollout").count(),
        6,
        "{}",
        a.log()
    );
}

/// PostgreSQL over TLS: with `sslmode=require` every connection of the
/// server is encrypted (PostgreSQL's own view, `pg_stat_ssl`); with
/// `sslmode=verify-full` and a CA that did not issue the database's
/// certificate the server refuses to start and says why.
#[tokio::test]
async fn postgres_connections_are_encrypted_and_verified_when_asked() {
    if !on_postgres() {
        eprintln!("SKIPPED: needs PostgreSQL (PALETTE_TEST_POSTGRES)");
        return;
    }
    let base = std::env::var("PALETTE_TEST_POSTGRES").unwrap();
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&admin)
        .await
        .unwrap();
    if ssl != "on" {
        eprintln!("SKIPPED: the test PostgreSQL has no TLS (ssl = {ssl})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tls");
    let url = postgres_for(&data).await.unwrap();
    let db = url.rsplit('/').next().unwrap().to_string();
    let s = BinServer::start(
        &data,
        &["--database", &format!("{url}?sslmode=require")],
        None,
    )
    .await;
    checkin_at(&s.url, &checkin_of("over-tls"), 0).await;
    let count = |encrypted: bool| {
        let (admin, db) = (admin.clone(), db.clone());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = $1 AND s.ssl = $2",
            )
            .bind(db)
            .bind(encrypted)
            .fetch_one(&admin)
            .await
            .unwrap()
        }
    };
    assert!(count(true).await > 0, "no encrypted connection");
    assert_eq!(count(false).await, 0, "a plain-text connection");
    s.kill9();

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = tmp.path().join("other-ca.pem");
    std::fs::write(&ca_path, other_ca.pem()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palette-server"))
        .arg("--data-dir")
        .arg(tmp.path().join("refused"))
        .args(["--listen", "127.0.0.1:0", "--database"])
        .arg(format!(
            "{url}?sslmode=verify-full&sslrootcert={}",
            ca_path.display()
        ))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "started against an unverified database"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("while opening the PostgreSQL database") && err.contains("certificate"),
        "{err}"
    );
    admin.close().await;
}
