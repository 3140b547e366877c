//! Two palette-server replicas on one PostgreSQL database (and one
//! artifacts folder, as a shared file system would give them): a command
//! issued on one reaches a host long-polling the other long before the
//! periodic reconciliation would, acknowledgements made through one show on
//! the other, a release published on one is offered and served by the
//! other, and after one is killed (SIGKILL) the other serves everything
//! acknowledged. Runs on PostgreSQL only (PALETTE_TEST_POSTGRES).

use std::time::{Duration, Instant};

use palette_protocol::v2::*;

use crate::support::*;

fn checkin_req(host: &str) -> CheckinRequest {
    CheckinRequest {
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
    }
}

async fn checkin(url: &str, req: &CheckinRequest, wait: u64) -> CheckinResponse {
    let res = http()
        .post(format!("{url}/api/v2/checkin?wait={wait}"))
        .agent()
        .json(req)
        .go()
        .await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn two_replicas_share_commands_acks_releases_and_survive_one_killed() {
    if !on_postgres() {
        eprintln!("SKIPPED: replicas need PostgreSQL (PALETTE_TEST_POSTGRES)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shared");
    let url = postgres_for(&data).await.unwrap();
    let a = BinServer::start(&data, &["--database", &url], None).await;
    let b = TestServer::start_with(&data, |_| {}).await;
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

    // Replica A dies without a word; B has everything acknowledged.
    a.kill9();
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
