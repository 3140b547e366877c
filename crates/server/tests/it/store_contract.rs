//! The store's contract, below HTTP: the same calls on either database give
//! the same answers. `every_call_answers_as_the_contract_says` runs on the
//! suite's backend (SQLite, or PostgreSQL with `PALETTE_TEST_POSTGRES`);
//! `sqlite_and_postgres_answer_alike` runs the same script on both and
//! compares every answer (with PostgreSQL only).

use std::fmt::Debug;

use palette_protocol::v2::{CommandAck, CommandKind, ConfigSource, Outcome, Target, UpdateReport};
use palette_protocol::v2::{Pin, WindowInfo};
use palette_server::store::{
    AuditEntry, MemberRecord, NewRelease, RolloutRecord, SqlStore, Store, StoreError, TokenKind,
    UiSessionRow,
};

use crate::support::{on_postgres, postgres_for};

/// A store on a fresh database of the suite's backend.
async fn fresh(on_pg: bool) -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = if on_pg {
        let url = postgres_for(dir.path())
            .await
            .expect("PALETTE_TEST_POSTGRES");
        SqlStore::open_postgres(&url).await.unwrap()
    } else {
        SqlStore::open_sqlite(&dir.path().join("palette.db"))
            .await
            .unwrap()
    };
    (store, dir)
}

fn audit(at: i64, action: &str, detail: &str) -> AuditEntry {
    AuditEntry {
        at,
        actor: "ops".into(),
        source: Some("10.0.0.1".into()),
        action: action.into(),
        detail: detail.into(),
    }
}

fn ack(id: i64, host: &str, outcome: Outcome, message: &str) -> CommandAck {
    CommandAck {
        id,
        hostname: host.into(),
        outcome,
        message: message.into(),
        at: String::new(),
    }
}

fn release(version: &str, sha: &str) -> NewRelease {
    NewRelease {
        product: "agent".into(),
        version: version.parse().unwrap(),
        platform: "linux-x86_64".into(),
        kind: palette_protocol::v2::ReleaseKind::Archive,
        sha256: sha.into(),
        md5: "md5".into(),
        size: 1234,
        signature: Some("sig".into()),
        manifest: Some("manifest".into()),
        created_at: 5_000,
        withdrawn_at: None,
        rolled_back_at: None,
        held: false,
    }
}

fn member(host: &str, position: i64, wave: i64, outcome: Option<&str>) -> MemberRecord {
    MemberRecord {
        hostname: host.into(),
        position,
        wave,
        admitted_at: outcome.map(|_| 7_000),
        outcome: outcome.map(str::to_string),
        finished_at: outcome.map(|_| 7_500),
        message: String::new(),
    }
}

/// Every answer of the script, in order, as text (what the two backends
/// must agree on).
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn note(&mut self, what: &str, answer: impl Debug) {
        self.0.push(format!("{what}: {answer:?}"));
    }
}

/// Calls every method of the store with fixed inputs, checks what the
/// contract promises, and returns every answer.
async fn script(s: &dyn Store) -> Transcript {
    let mut t = Transcript::default();
    assert!(!s.store_id().is_empty());
    s.ping().await.unwrap();

    // Hosts: a last-seen time never moves backwards; a report replaces.
    s.upsert_heartbeats(&[
        ("web-1".into(), 1_000, None),
        ("web-2".into(), 2_000, Some("{\"r\":1}".into())),
    ])
    .await
    .unwrap();
    s.upsert_heartbeats(&[
        ("web-1".into(), 500, None),
        ("web-2".into(), 3_000, Some("{\"r\":2}".into())),
        ("web-2".into(), 2_500, Some("{\"r\":3}".into())),
    ])
    .await
    .unwrap();
    let mut hosts = s.load_hosts().await.unwrap();
    hosts.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    let seen: Vec<_> = hosts
        .iter()
        .map(|h| {
            (
                h.hostname.as_str(),
                h.first_seen,
                h.last_seen,
                h.report.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("web-1", 1_000, 1_000, None),
            ("web-2", 2_000, 3_000, Some("{\"r\":3}"))
        ]
    );
    t.note("hosts", seen);

    // Commands and their acknowledgements.
    let target = Target::Hosts(vec!["web-1".into(), "web-2".into()]);
    let entry = audit(10_000, "command.create", "command {id}");
    let c1 = s
        .insert_command(
            CommandKind::Stop,
            &target,
            10_000,
            10_000,
            20_000,
            Some(&entry),
        )
        .await
        .unwrap();
    let c2 = s
        .insert_command(
            CommandKind::Start,
            &Target::All,
            11_000,
            12_000,
            21_000,
            None,
        )
        .await
        .unwrap();
    assert_eq!(s.command(c1.id).await.unwrap().as_ref(), Some(&c1));
    assert_eq!(s.command(c2.id + 100).await.unwrap(), None);
    let recent = s.recent_commands(10).await.unwrap();
    assert_eq!(recent, [c2.clone(), c1.clone()]);
    t.note("commands", &recent);
    let a1 = ack(c1.id, "web-1", Outcome::Succeeded, "stopped");
    assert!(s.record_ack(&a1, 13_000).await.unwrap());
    assert!(!s.record_ack(&a1, 13_500).await.unwrap());
    let batch = [
        (ack(c1.id, "web-1", Outcome::Failed, "again"), 14_000),
        (ack(c1.id, "web-2", Outcome::Failed, "no agent"), 14_000),
        (ack(c2.id, "web-2", Outcome::Succeeded, "started"), 15_000),
        (
            ack(c2.id, "web-2", Outcome::Failed, "twice in one batch"),
            15_000,
        ),
    ];
    let new = s.record_acks(&batch).await.unwrap();
    assert_eq!(new, [false, true, true, false]);
    t.note("acks new", new);
    assert_eq!(s.record_acks(&[]).await.unwrap(), Vec::<bool>::new());
    let acks = s.acks_for_command(c1.id).await.unwrap();
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0].message, "stopped");
    t.note("acks of c1", &acks);
    // Every ack from c1 on, by command then time: c1's two, then c2's one.
    let from = s.acks_from_command(c1.id).await.unwrap();
    assert_eq!(
        from.iter()
            .map(|a| (a.id, a.message.as_str()))
            .collect::<Vec<_>>(),
        [(c1.id, "stopped"), (c1.id, "no agent"), (c2.id, "started")]
    );
    assert_eq!(s.acks_from_command(c2.id + 1).await.unwrap(), Vec::new());
    t.note("acks from c1", &from);
    let host_acks = s.host_acks("web-2", 10).await.unwrap();
    assert_eq!(
        host_acks
            .iter()
            .map(|(k, a)| (*k, a.id))
            .collect::<Vec<_>>(),
        [(CommandKind::Start, c2.id), (CommandKind::Stop, c1.id)]
    );
    t.note("host acks", &host_acks);
    let acked = s.acked_by_host("web-1", &[c1.id, c2.id]).await.unwrap();
    assert_eq!(acked, [c1.id]);
    assert!(s.acked_by_host("web-1", &[]).await.unwrap().is_empty());

    // Update outcomes: the same one reported again is one row.
    let report = |outcome, message: &str| UpdateReport {
        release_id: 1,
        version: "2.0.0".parse().unwrap(),
        outcome,
        message: message.into(),
    };
    let ok = report(Outcome::Succeeded, "healthy");
    let failed = report(Outcome::Failed, "health check failed");
    s.record_updates(&[
        ("web-1".into(), "agent".into(), failed.clone(), 16_000),
        ("web-1".into(), "agent".into(), failed, 16_500),
        ("web-1".into(), "agent".into(), ok.clone(), 17_000),
    ])
    .await
    .unwrap();
    s.record_updates(&[("web-1".into(), "agent".into(), ok, 18_000)])
        .await
        .unwrap();
    s.record_updates(&[]).await.unwrap();
    let history = s.update_history("web-1", 10).await.unwrap();
    assert_eq!(
        history.iter().map(|u| u.outcome).collect::<Vec<_>>(),
        [Outcome::Succeeded, Outcome::Failed]
    );
    t.note("update history", &history);

    // Releases (the conflicting one last: a failed insert may use up an
    // id on PostgreSQL).
    let publish = audit(20_000, "release.publish", "release {id}");
    let r1 = s
        .insert_release(&release("1.0.0", "aa"), Some(&publish))
        .await
        .unwrap();
    let r2 = s
        .insert_release(&release("2.0.0", "bb"), None)
        .await
        .unwrap();
    s.set_release_held(r2, true).await.unwrap();
    assert!(s.withdraw_release(r1, 21_000, None).await.unwrap());
    assert!(!s.withdraw_release(r2 + 100, 21_000, None).await.unwrap());
    s.roll_back_release(r2, r1, Some(("manifest-2", "sig-2")), 22_000, None)
        .await
        .unwrap();
    assert!(s.artifact_in_use("aa").await.unwrap());
    assert!(!s.artifact_in_use("cc").await.unwrap());
    let again = s.insert_release(&release("1.0.0", "aa"), None).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let releases = s.releases().await.unwrap();
    assert_eq!(releases.len(), 2);
    assert_eq!(releases[0].1.manifest.as_deref(), Some("manifest-2"));
    assert_eq!(releases[1].1.rolled_back_at, Some(22_000));
    assert!(releases[1].1.held);
    t.note("releases", &releases);

    // A rollout and its members.
    let mut rollout = RolloutRecord {
        id: 0,
        release_id: r2,
        selector: "role=web".into(),
        waves: "[1,100]".into(),
        soak_ms: 60_000,
        halt_after: "1".into(),
        max_concurrent: 2,
        phase: "running".into(),
        wave: 0,
        wave_started_at: 23_000,
        reason: None,
        created_at: 23_000,
    };
    let start = audit(23_000, "rollout.start", "rollout {id}");
    let members = [member("web-2", 1, 0, None), member("web-1", 0, 0, None)];
    rollout.id = s
        .insert_rollout(&rollout, &members, Some(&start))
        .await
        .unwrap();
    s.save_members(
        rollout.id,
        &[
            member("web-1", 0, 0, Some("succeeded")),
            member("web-3", 2, 1, None),
        ],
    )
    .await
    .unwrap();
    s.save_members(rollout.id, &[]).await.unwrap();
    rollout.phase = "paused".into();
    rollout.reason = Some("operator".into());
    s.update_rollout(&rollout, None).await.unwrap();
    let rollouts = s.load_rollouts().await.unwrap();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(rollouts[0].0.phase, "paused");
    assert_eq!(
        rollouts[0]
            .1
            .iter()
            .map(|m| (m.hostname.as_str(), m.outcome.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("web-1", Some("succeeded")),
            ("web-2", None),
            ("web-3", None)
        ]
    );
    t.note("rollouts", &rollouts);

    // Labels, pins, windows.
    s.set_host_labels("web-1", "{\"role\":\"db\"}", None)
        .await
        .unwrap();
    s.set_host_labels("web-1", "{\"role\":\"web\"}", None)
        .await
        .unwrap();
    let labels = s.load_host_labels().await.unwrap();
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0].1.get("role").map(String::as_str), Some("web"));
    t.note("labels", &labels);
    let pin = Pin {
        id: 0,
        selector: "role=web".into(),
        product: "agent".into(),
        version: "1.0.0".parse().unwrap(),
        created_at: String::new(),
    };
    let pin_id = s.insert_pin(&pin, 24_000, None).await.unwrap();
    t.note("pins", s.load_pins().await.unwrap());
    assert!(s.delete_pin(pin_id, None).await.unwrap());
    assert!(!s.delete_pin(pin_id, None).await.unwrap());
    let window = WindowInfo {
        id: 0,
        selector: "role=web".into(),
        schedule: "Sat 02:00-04:00".into(),
        tz: "UTC".into(),
        created_at: String::new(),
    };
    let window_id = s.insert_window(&window, 25_000, None).await.unwrap();
    t.note("windows", s.load_windows().await.unwrap());
    assert!(s.delete_window(window_id, None).await.unwrap());
    assert!(!s.delete_window(window_id, None).await.unwrap());
    assert!(s.load_windows().await.unwrap().is_empty());

    // Dashboard sessions and version samples.
    let session = |id: &str, expires_at| UiSessionRow {
        id_hash: id.into(),
        token_hash: "token".into(),
        csrf: "csrf".into(),
        expires_at,
    };
    s.insert_ui_session(&session("old", 26_000), 25_000)
        .await
        .unwrap();
    s.insert_ui_session(&session("new", 40_000), 26_000)
        .await
        .unwrap();
    assert!(s.ui_session("old").await.unwrap().is_none());
    let got = s.ui_session("new").await.unwrap().unwrap();
    assert_eq!((got.csrf.as_str(), got.expires_at), ("csrf", 40_000));
    s.delete_ui_session("new").await.unwrap();
    assert!(s.ui_session("new").await.unwrap().is_none());
    for at in [1_000, 2_000, 3_000] {
        s.insert_version_sample(at, &format!("{{\"at\":{at}}}"), 1_500)
            .await
            .unwrap();
    }
    s.insert_version_sample(3_000, "{\"again\":1}", 1_500)
        .await
        .unwrap();
    let samples = s.version_samples(0).await.unwrap();
    assert_eq!(
        samples,
        [
            (2_000, "{\"at\":2000}".to_string()),
            (3_000, "{\"at\":3000}".to_string())
        ]
    );

    // Configs: the newest `keep` of a host and source are kept.
    let mut revisions = Vec::new();
    for (i, body) in ["a: 1\n", "a: 2\n", "a: 3\n"].iter().enumerate() {
        let r = s
            .insert_config(
                "web-1",
                ConfigSource::Desired,
                body.as_bytes(),
                30_000 + i as i64,
                2,
                None,
            )
            .await
            .unwrap();
        revisions.push(r);
    }
    let reported = s
        .insert_config("web-1", ConfigSource::Reported, b"a: 0\n", 31_000, 2, None)
        .await
        .unwrap();
    let history = s.config_history("web-1").await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.revision).collect::<Vec<_>>(),
        [
            reported.revision,
            revisions[2].revision,
            revisions[1].revision
        ]
    );
    t.note("config history", &history);
    assert!(s
        .config_revision("web-1", revisions[0].revision)
        .await
        .unwrap()
        .is_none());
    let (rev, body) = s
        .config_revision("web-1", revisions[1].revision)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rev, body), (revisions[1].clone(), b"a: 2\n".to_vec()));
    let latest = s.latest_config("web-1", None).await.unwrap().unwrap();
    assert_eq!(latest.0, reported);
    let desired = s
        .latest_config("web-1", Some(ConfigSource::Desired))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(desired.1, b"a: 3\n");
    assert!(s.latest_config("web-9", None).await.unwrap().is_none());
    assert_eq!(s.hosts_with_config().await.unwrap(), ["web-1"]);

    // Credentials (the conflicting writes last: they may use up ids on
    // PostgreSQL).
    s.add_agent_token("lk-hash", "fleet key", 40_000, None)
        .await
        .unwrap();
    s.add_operator_token("op-1", "alice", 40_100, None)
        .await
        .unwrap();
    assert_eq!(
        s.rotate_operator_tokens("alice", "op-2", 41_000, None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.rotate_operator_tokens("nobody", "op-3", 41_000, None)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.operator_tokens().await.unwrap(),
        [("op-2".to_string(), "alice".to_string())]
    );
    let enroll = audit(42_000, "host.enroll", "host token {id}");
    let host_id = s
        .enroll_host("web-1", "ht-1", 42_000, Some(&enroll))
        .await
        .unwrap();
    assert!(host_id.is_some());
    let tokens = s.tokens().await.unwrap();
    s.touch_tokens(&[
        (TokenKind::Host, host_id.unwrap(), 43_000),
        (TokenKind::Agent, tokens[0].id, 43_000),
    ])
    .await
    .unwrap();
    s.touch_tokens(&[(TokenKind::Agent, tokens[0].id, 42_500)])
        .await
        .unwrap();
    let tokens = s.tokens().await.unwrap();
    t.note("tokens", &tokens);
    assert_eq!(
        tokens
            .iter()
            .map(|t| (t.kind, t.label.as_str(), t.revoked_at, t.last_used))
            .collect::<Vec<_>>(),
        [
            (TokenKind::Agent, "fleet key", None, Some(43_000)),
            (TokenKind::Operator, "alice", Some(41_000), None),
            (TokenKind::Operator, "alice", None, None),
            (TokenKind::Host, "web-1", None, Some(43_000)),
        ]
    );
    assert!(s
        .revoke_token(TokenKind::Agent, tokens[0].id, 44_000, None)
        .await
        .unwrap());
    assert!(!s
        .revoke_token(TokenKind::Agent, tokens[0].id, 44_000, None)
        .await
        .unwrap());
    assert!(s.agent_tokens().await.unwrap().is_empty());
    s.add_agent_token("lk-hash", "again", 45_000, None)
        .await
        .unwrap();
    assert!(
        s.agent_tokens().await.unwrap().is_empty(),
        "a revoked key is not resurrected"
    );
    assert_eq!(
        s.enroll_host("web-1", "ht-2", 46_000, None).await.unwrap(),
        None
    );
    assert!(s
        .revoke_token(TokenKind::Host, host_id.unwrap(), 47_000, None)
        .await
        .unwrap());
    let second = s.enroll_host("web-1", "ht-3", 48_000, None).await.unwrap();
    assert!(second.is_some() && second != host_id);

    // The audit log: each operator write's entry, ids in place, newest
    // first; one on its own.
    let alone = s
        .insert_audit(&audit(50_000, "ui.login", "dashboard"))
        .await
        .unwrap();
    let log = s.audit(10).await.unwrap();
    assert_eq!(log[0].0, alone);
    assert_eq!(
        log.iter()
            .map(|(_, e)| e.detail.clone())
            .collect::<Vec<_>>(),
        [
            "dashboard".to_string(),
            format!("host token {}", host_id.unwrap()),
            format!("rollout {}", rollout.id),
            format!("release {r1}"),
            format!("command {}", c1.id),
        ]
    );
    t.note("audit", &log);
    assert_eq!(s.audit(2).await.unwrap().len(), 2);

    // Retiring a host.
    let retire = audit(51_000, "host.retire", "web-2");
    assert!(s.retire_host("web-2", Some(&retire)).await.unwrap());
    assert!(!s.retire_host("web-2", Some(&retire)).await.unwrap());
    assert_eq!(s.audit(1).await.unwrap()[0].1, retire);
    t.note("hosts at the end", s.load_hosts().await.unwrap().len());
    t
}

#[tokio::test]
async fn every_call_answers_as_the_contract_says() {
    let (store, _dir) = fresh(on_postgres()).await;
    assert_eq!(store.shared(), on_postgres());
    script(&store).await;
}

#[tokio::test]
async fn sqlite_and_postgres_answer_alike() {
    if !on_postgres() {
        eprintln!("skipped: set PALETTE_TEST_POSTGRES to compare SQLite with PostgreSQL");
        return;
    }
    let (sqlite, _a) = fresh(false).await;
    let (postgres, _b) = fresh(true).await;
    let on_sqlite = script(&sqlite).await;
    let on_postgres = script(&postgres).await;
    for (a, b) in on_sqlite.0.iter().zip(&on_postgres.0) {
        assert_eq!(a, b, "SQLite and PostgreSQL answered differently");
    }
    assert_eq!(on_sqlite.0.len(), on_postgres.0.len());
}
