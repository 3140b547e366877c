//! The v2 API: check-in long poll, targeted commands and acknowledgements,
//! releases, config revisions, tokens, and every bad input.

use std::time::{Duration, Instant};

use palette_protocol::v2::*;
use reqwest::header::AUTHORIZATION;

use crate::support::*;

fn report(host: &str) -> HostReport {
    HostReport {
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
    }
}

fn checkin_req(host: &str) -> CheckinRequest {
    CheckinRequest {
        host: report(host),
        store_id: None,
        results: vec![],
        seen_release: None,
        seen_config: None,
        seen_watchdog_release: None,
    }
}

async fn checkin(s: &TestServer, req: &CheckinRequest, wait: u64) -> CheckinResponse {
    let res = http()
        .post(s.u(&format!("/api/v2/checkin?wait={wait}")))
        .agent()
        .json(req)
        .go()
        .await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn command(
    s: &TestServer,
    kind: CommandKind,
    target: Target,
    ttl: Option<u64>,
) -> CommandStatus {
    let res = http()
        .post(s.u("/api/v2/commands"))
        .admin()
        .json(&NewCommand {
            kind,
            target,
            ttl_secs: ttl,
        })
        .go()
        .await;
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

#[tokio::test]
async fn checkin_delivers_targeted_commands_and_records_acks() {
    let s = TestServer::start().await;
    let c_all = command(&s, CommandKind::Restart, Target::All, None).await;
    let c_web1 = command(
        &s,
        CommandKind::Stop,
        Target::Hosts(vec!["web1".into()]),
        None,
    )
    .await;
    // Names are kept as written (the original server is case-sensitive):
    // WEB1 is another host, not web1.
    let c_upper = command(
        &s,
        CommandKind::Stop,
        Target::Hosts(vec!["WEB1".into()]),
        None,
    )
    .await;
    assert_eq!(c_upper.target, Target::Hosts(vec!["WEB1".into()]));
    let c_other = command(
        &s,
        CommandKind::Start,
        Target::Hosts(vec!["db9".into()]),
        None,
    )
    .await;
    assert_eq!(c_web1.target, Target::Hosts(vec!["web1".into()]));

    let a = checkin(&s, &checkin_req("web1"), 0).await;
    let ids: Vec<i64> = a.commands.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![c_all.command.id, c_web1.command.id]);
    assert!(!ids.contains(&c_other.command.id));
    assert!(
        !ids.contains(&c_upper.command.id),
        "WEB1's command is not web1's"
    );

    let mut req = checkin_req("web1");
    req.results = vec![
        CommandAck {
            id: c_all.command.id,
            hostname: String::new(),
            outcome: Outcome::Succeeded,
            message: "agent restarted".into(),
            at: String::new(),
        },
        CommandAck {
            id: c_web1.command.id,
            hostname: String::new(),
            outcome: Outcome::Failed,
            message: "could not stop".into(),
            at: String::new(),
        },
        CommandAck {
            id: 999_999,
            hostname: String::new(),
            outcome: Outcome::Succeeded,
            message: "bogus".into(),
            at: String::new(),
        },
    ];
    let a = checkin(&s, &req, 0).await;
    assert!(
        a.commands.is_empty(),
        "acknowledged commands are not sent again"
    );
    // A repeated ack does not overwrite the first.
    req.results[0].message = "second time".into();
    checkin(&s, &req, 0).await;

    let st: CommandStatus = http()
        .get(s.u(&format!("/api/v2/commands/{}", c_all.command.id)))
        .admin()
        .json_of()
        .await;
    assert_eq!(st.results.len(), 1);
    assert_eq!(st.results[0].hostname, "web1");
    assert_eq!(st.results[0].message, "agent restarted");
    let st: CommandStatus = http()
        .get(s.u(&format!("/api/v2/commands/{}", c_web1.command.id)))
        .admin()
        .json_of()
        .await;
    assert_eq!(st.results[0].outcome, Outcome::Failed);
    let list: Vec<CommandStatus> = http().get(s.u("/api/v2/commands")).admin().json_of().await;
    assert_eq!(list.len(), 4);

    // The host and its report are in the inventory.
    let h: HostInfo = http()
        .get(s.u("/api/v2/hosts/web1"))
        .admin()
        .json_of()
        .await;
    assert_eq!(
        h.report.unwrap().agent_version.unwrap().to_string(),
        "1.0.0"
    );
    assert_eq!(
        http()
            .get(s.u("/api/v2/hosts/nosuch"))
            .admin()
            .go()
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn expired_commands_are_not_delivered() {
    let s = TestServer::start().await;
    let c = command(&s, CommandKind::Stop, Target::All, Some(1)).await;
    let expires = palette_protocol::timefmt::parse_rfc3339(&c.command.expires_at).unwrap();
    // Wait on the condition (the expiry instant has passed), with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = checkin(&s, &checkin_req("late-host"), 0).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        if now > expires + 50 {
            assert!(a.commands.is_empty(), "an expired command was delivered");
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn long_poll_wakes_on_a_command_and_times_out_when_idle() {
    let s = TestServer::start().await;
    // Nothing to say: the answer comes after the wait.
    let t = Instant::now();
    let a = checkin(&s, &checkin_req("idle"), 1).await;
    assert!(a.commands.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "returned after {:?}",
        t.elapsed()
    );

    // A command issued while the host waits reaches it before the wait ends.
    let url = s.url.clone();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let res = http()
            .post(format!("{url}/api/v2/checkin?wait=60"))
            .header(AUTHORIZATION, format!("Token {AGENT}"))
            .json(&checkin_req("waiting"))
            .go()
            .await;
        (t.elapsed(), res.json::<CheckinResponse>().await.unwrap())
    });
    // Let the waiter reach the server (a condition: the host is in the inventory).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = http().get(s.u("/api/v2/hosts/waiting")).admin().go().await;
        if res.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = command(
        &s,
        CommandKind::Restart,
        Target::Hosts(vec!["waiting".into()]),
        None,
    )
    .await;
    let (elapsed, a) = waiter.await.unwrap();
    assert_eq!(a.commands.len(), 1);
    assert_eq!(a.commands[0].id, c.command.id);
    assert!(
        elapsed < Duration::from_secs(60),
        "the long poll was not woken"
    );
}

#[tokio::test]
async fn releases_are_offered_by_platform_and_seen_releases_do_not_wake() {
    let s = TestServer::start().await;
    let r1 = publish(&s, "1.0.0", "linux-x86_64", "archive", b"one").await;
    let r2 = publish(&s, "v1.10.0", "linux-x86_64", "archive", b"one-ten").await;
    publish(&s, "1.9.0", "linux-x86_64", "archive", b"one-nine").await;
    publish(&s, "5.0.0", "windows-x86_64", "msi", b"win").await;
    assert_ne!(r1["id"], r2["id"]);
    let a = checkin(&s, &checkin_req("web1"), 0).await;
    let rel = a.release.unwrap();
    assert_eq!(rel.version.to_string(), "1.10.0", "numeric, not lexical");
    assert_eq!(rel.kind, ReleaseKind::Archive);
    // Download by the URL given, with the agent token.
    let res = http().get(s.u(&rel.url)).agent().go().await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"one-ten");
    assert_eq!(http().get(s.u(&rel.url)).go().await.status(), 401);
    assert_eq!(
        http()
            .get(s.u("/api/v2/artifacts/..%2f..%2fetc"))
            .agent()
            .go()
            .await
            .status(),
        400
    );
    assert_eq!(
        http()
            .get(s.u(&format!("/api/v2/artifacts/{}", "0".repeat(64))))
            .agent()
            .go()
            .await
            .status(),
        404
    );

    // Having seen this release, a long poll waits (here: 1 s) instead of answering at once.
    let mut req = checkin_req("web1");
    req.seen_release = Some(rel.id);
    let t = Instant::now();
    checkin(&s, &req, 1).await;
    assert!(t.elapsed() >= Duration::from_millis(950));
}

#[tokio::test]
async fn publishing_refuses_bad_input_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |o| o.max_artifact_bytes = 1000).await;
    let post = |q: &str| http().post(s.u(&format!("/api/v2/releases?{q}")));
    let b64 = |t: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(t)
    };
    let manifest = palette_protocol::manifest::Manifest {
        product: "agent".into(),
        version: "1.0.0".parse().unwrap(),
        platform: "p".into(),
        kind: palette_protocol::v2::ReleaseKind::Archive,
        size: 1,
        sha256: "ab".repeat(32),
        created: "2026-11-28T00:00:00Z".into(),
        expires: "2027-11-28T00:00:00Z".into(),
        allow_downgrade_from: None,
    }
    .to_text();
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "no token",
            post("version=1.0.0&platform=p&kind=archive").body("x"),
            401,
        ),
        (
            "agent token",
            post("version=1.0.0&platform=p&kind=archive")
                .agent()
                .body("x"),
            403,
        ),
        (
            "bad version",
            post("version=1.x&platform=p&kind=archive")
                .admin()
                .body("x"),
            400,
        ),
        (
            "bad kind",
            post("version=1.0.0&platform=p&kind=rpm").admin().body("x"),
            400,
        ),
        (
            "bad platform",
            post("version=1.0.0&platform=../p&kind=archive")
                .admin()
                .body("x"),
            400,
        ),
        (
            "missing version",
            post("platform=p&kind=archive").admin().body("x"),
            400,
        ),
        (
            "empty",
            post("version=1.0.0&platform=p&kind=archive")
                .admin()
                .body(""),
            400,
        ),
        (
            "sha mismatch",
            post(&format!(
                "version=1.0.0&platform=p&kind=archive&sha256={}",
                "a".repeat(64)
            ))
            .admin()
            .body("x"),
            400,
        ),
        (
            "too large",
            post("version=1.0.0&platform=p&kind=archive")
                .admin()
                .body(vec![0u8; 1001]),
            413,
        ),
        (
            "manifest without signature",
            post("version=1.0.0&platform=p&kind=archive")
                .admin()
                .header("x-palette-manifest", b64(&manifest))
                .body("x"),
            400,
        ),
        (
            "manifest not base64",
            post("version=1.0.0&platform=p&kind=archive")
                .admin()
                .header("x-palette-manifest", "%%%")
                .header("x-palette-signature", b64("sig"))
                .body("x"),
            400,
        ),
        (
            "malformed manifest",
            post("version=1.0.0&platform=p&kind=archive")
                .admin()
                .header("x-palette-manifest", b64("{\"product\": 1}"))
                .header("x-palette-signature", b64("sig"))
                .body("x"),
            400,
        ),
        (
            "signature too long",
            post("version=1.0.0&platform=p&kind=archive")
                .admin()
                .header("x-palette-manifest", b64(&manifest))
                .header("x-palette-signature", b64(&"s".repeat(5000)))
                .body("x"),
            400,
        ),
    ];
    for (what, rb, want) in cases {
        let res = rb.go().await;
        assert_eq!(res.status().as_u16(), want, "{what}");
        if want != 401 {
            let body: serde_json::Value = res.json().await.unwrap();
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: one-line reason"
            );
        }
    }
    let list: Vec<Release> = http().get(s.u("/api/v2/releases")).admin().json_of().await;
    assert!(list.is_empty());
    // Nothing half-written: no artifact files, no temporaries.
    let count = walk(&tmp.path().join("artifacts"));
    assert_eq!(count, 0, "artifact files left behind");

    // A manifest and signature are stored and served as given: the server
    // holds no key and verifies nothing (hosts do).
    let res = post("version=1.0.0&platform=p&kind=archive&force=true")
        .admin()
        .header("x-palette-manifest", b64(&manifest))
        .header("x-palette-signature", b64("untrusted comment: x\nsig"))
        .body("x")
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let list: Vec<Release> = http().get(s.u("/api/v2/releases")).admin().json_of().await;
    assert_eq!(list[0].manifest.as_deref(), Some(manifest.as_str()));
    assert_eq!(
        list[0].signature.as_deref(),
        Some("untrusted comment: x\nsig")
    );

    let res = post("version=1.0.0&platform=p&kind=archive&force=true")
        .admin()
        .body("y")
        .go()
        .await;
    assert_eq!(res.status(), 409);
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn checkin_and_commands_refuse_bad_input() {
    let s = TestServer::start().await;
    let good = serde_json::to_vec(&checkin_req("web1")).unwrap();
    let post = |p: &str| http().post(s.u(p));
    let mut bad_host = checkin_req("x");
    bad_host.host.hostname = "../../etc".into();
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("no token", post("/api/v2/checkin").body(good.clone()), 401),
        (
            "wrong token",
            post("/api/v2/checkin")
                .header(AUTHORIZATION, "Token nope")
                .body(good.clone()),
            401,
        ),
        (
            "invalid json",
            post("/api/v2/checkin").agent().body("{not json"),
            400,
        ),
        (
            "bad hostname",
            post("/api/v2/checkin").agent().json(&bad_host),
            400,
        ),
        (
            "oversized",
            post("/api/v2/checkin")
                .agent()
                .body(vec![b' '; 2 * 1024 * 1024]),
            413,
        ),
        (
            "agent issuing",
            post("/api/v2/commands")
                .agent()
                .json(&serde_json::json!({"kind":"stop","target":"all"})),
            403,
        ),
        (
            "unknown kind",
            post("/api/v2/commands")
                .admin()
                .json(&serde_json::json!({"kind":"reboot","target":"all"})),
            400,
        ),
        (
            "empty hosts",
            post("/api/v2/commands")
                .admin()
                .json(&serde_json::json!({"kind":"stop","target":{"hosts":[]}})),
            400,
        ),
        (
            "bad host",
            post("/api/v2/commands")
                .admin()
                .json(&serde_json::json!({"kind":"stop","target":{"hosts":["a/b"]}})),
            400,
        ),
        (
            "zero ttl",
            post("/api/v2/commands")
                .admin()
                .json(&serde_json::json!({"kind":"stop","target":"all","ttl_secs":0})),
            400,
        ),
        (
            "short token",
            post("/api/v2/agent-tokens")
                .admin()
                .json(&serde_json::json!({"token":"abc"})),
            400,
        ),
    ];
    for (what, rb, want) in cases {
        let res = rb.go().await;
        assert_eq!(res.status().as_u16(), want, "{what}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty() && !e.contains('\n')),
            "{what}: {body}"
        );
    }
    let list: Vec<CommandStatus> = http().get(s.u("/api/v2/commands")).admin().json_of().await;
    assert!(list.is_empty(), "no refused command was stored");
    assert_eq!(
        http().get(s.u("/api/v2/hosts")).agent().go().await.status(),
        403
    );
    assert_eq!(
        http()
            .get(s.u("/api/v2/commands/abc"))
            .admin()
            .go()
            .await
            .status(),
        400
    );
    assert_eq!(
        http()
            .get(s.u("/api/v2/commands/12345"))
            .admin()
            .go()
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn config_revisions_with_history() {
    let s = TestServer::start().await;
    let res = http()
        .post(s.u("/api/v2/hosts/web1/configs"))
        .admin()
        .body("LicenseKey: a\n")
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let push: serde_json::Value = res.json().await.unwrap();
    let rev1 = push["revision"]["revision"].as_i64().unwrap();
    assert_eq!(push["command"]["kind"], "GET-CONFIG");
    let res = http()
        .post(s.u("/api/v2/hosts/web1/configs?apply=false"))
        .admin()
        .body("LicenseKey: b\n")
        .go()
        .await;
    let push2: serde_json::Value = res.json().await.unwrap();
    assert!(push2["command"].is_null());
    let rev2 = push2["revision"]["revision"].as_i64().unwrap();
    // The host reports what it has.
    let res = http()
        .post(s.u("/api/v2/hosts/web1/configs/reported"))
        .agent()
        .body("LicenseKey: a\n")
        .go()
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        http()
            .post(s.u("/api/v2/hosts/web1/configs/reported"))
            .body("x")
            .go()
            .await
            .status(),
        401
    );
    assert_eq!(
        http()
            .post(s.u("/api/v2/hosts/web1/configs"))
            .agent()
            .body("x")
            .go()
            .await
            .status(),
        403
    );
    assert_eq!(
        http()
            .post(s.u("/api/v2/hosts/web1/configs"))
            .admin()
            .body("")
            .go()
            .await
            .status(),
        400
    );
    assert_eq!(
        http()
            .post(s.u("/api/v2/hosts/web1/configs"))
            .admin()
            .body(vec![b'a'; 2 * 1024 * 1024])
            .go()
            .await
            .status(),
        413
    );

    let hist: Vec<ConfigRevision> = http()
        .get(s.u("/api/v2/hosts/web1/configs"))
        .admin()
        .json_of()
        .await;
    assert_eq!(hist.len(), 3);
    assert_eq!(hist[0].source, ConfigSource::Reported);
    assert_eq!(hist[1].revision, rev2);
    let res = http()
        .get(s.u(&format!("/api/v2/hosts/web1/configs/{rev1}")))
        .agent()
        .go()
        .await;
    assert_eq!(
        res.headers()["x-config-revision"],
        rev1.to_string().as_str()
    );
    assert_eq!(res.text().await.unwrap(), "LicenseKey: a\n");
    let res = http()
        .get(s.u("/api/v2/hosts/web1/configs/latest?source=desired"))
        .agent()
        .go()
        .await;
    assert_eq!(res.text().await.unwrap(), "LicenseKey: b\n");
    assert_eq!(
        http()
            .get(s.u("/api/v2/hosts/web1/configs/latest?source=bogus"))
            .agent()
            .go()
            .await
            .status(),
        400
    );
    assert_eq!(
        http()
            .get(s.u("/api/v2/hosts/web2/configs/latest"))
            .agent()
            .go()
            .await
            .status(),
        404
    );
    // Check-in reports the desired revision.
    let a = checkin(&s, &checkin_req("web1"), 0).await;
    assert_eq!(a.config_revision, Some(rev2));
}

#[tokio::test]
async fn tokens_registered_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    let res = http()
        .post(s.u("/api/v2/operator-tokens"))
        .admin()
        .json(&serde_json::json!({"label": "alice"}))
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let tok: serde_json::Value = res.json().await.unwrap();
    let alice = tok["token"].as_str().unwrap().to_string();
    let res = http()
        .post(s.u("/api/v2/agent-tokens"))
        .header(AUTHORIZATION, format!("Bearer {alice}"))
        .json(&serde_json::json!({"token": "New-License-42"}))
        .go()
        .await;
    assert_eq!(res.status(), 201);
    s.stop().await;
    // Both survive a restart, and nothing stores them in clear text.
    let s = TestServer::start_with(tmp.path(), |o| o.admin_token = None).await;
    assert_eq!(
        http()
            .get(s.u("/api/v2/hosts"))
            .header(AUTHORIZATION, format!("Bearer {alice}"))
            .go()
            .await
            .status(),
        200
    );
    assert_eq!(
        http()
            .get(s.u("/api/v1/license"))
            .header(AUTHORIZATION, "Token new-license-42")
            .go()
            .await
            .status(),
        200
    );
    // Only hashes are stored: look at every byte of the store.
    let hay = match postgres_for(tmp.path()).await {
        Some(url) => {
            let db = sqlx::PgPool::connect(&url).await.unwrap();
            let mut all = String::new();
            for table in ["agent_tokens", "operator_tokens", "host_tokens", "audit"] {
                let rows: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
                        .fetch_all(&db)
                        .await
                        .unwrap();
                all.push_str(&rows.join("\n"));
            }
            all
        }
        None => String::from_utf8_lossy(&std::fs::read(tmp.path().join("palette.db")).unwrap())
            .into_owned(),
    };
    assert!(!hay.is_empty(), "the tokens are stored somewhere");
    assert!(!hay.contains(&alice) && !hay.contains("New-License-42"));
}

#[tokio::test]
async fn a_withdrawn_release_is_never_offered_and_lower_versions_need_force() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    let r1 = publish(&s, "1.0.0", "linux-x86_64", "archive", b"one").await;
    let r2 = publish(&s, "2.0.0", "linux-x86_64", "archive", b"two").await;
    let offered = |host: &'static str| {
        let s = &s;
        async move {
            let mut req = checkin_req(host);
            req.host.platform = "linux-x86_64".into();
            checkin(s, &req, 0)
                .await
                .release
                .map(|r| r.version.to_string())
        }
    };
    assert_eq!(offered("h1").await.as_deref(), Some("2.0.0"));
    // Withdrawn: a new host (and every other) is offered 1.0.0; the legacy
    // platform offer follows.
    let res = http()
        .post(s.u(&format!("/api/v2/releases/{}/withdraw", r2["id"])))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 403, "operators only");
    let w: serde_json::Value = http()
        .post(s.u(&format!("/api/v2/releases/{}/withdraw", r2["id"])))
        .admin()
        .json_of()
        .await;
    assert!(w["withdrawn_at"].is_string());
    assert_eq!(offered("newcomer").await.as_deref(), Some("1.0.0"));
    let v1: serde_json::Value = http()
        .get(s.u("/api/v1/agent/version?platform=linux-x86_64"))
        .agent()
        .json_of()
        .await;
    assert_eq!(
        (v1["Major"].as_u64(), v1["Minor"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        http()
            .post(s.u("/api/v2/releases/999/withdraw"))
            .admin()
            .go()
            .await
            .status(),
        404
    );
    // Lower than the newest offered (1.0.0 now): refused, unless forced.
    let res = http()
        .post(s.u("/api/v2/releases?version=0.9.0&platform=linux-x86_64&kind=installer"))
        .admin()
        .body(b"old".to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 409);
    assert!(res.text().await.unwrap().contains("force=true"));
    let res = http()
        .post(s.u("/api/v2/releases?version=0.9.0&platform=linux-x86_64&kind=archive&force=true"))
        .admin()
        .body(b"old".to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 201);
    // A restart keeps the withdrawal.
    s.stop().await;
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    let mut req = checkin_req("after-restart");
    req.host.platform = "linux-x86_64".into();
    assert_eq!(
        checkin(&s, &req, 0).await.release.map(|r| r.id),
        r1["id"].as_i64()
    );
    s.stop().await;
}

#[tokio::test]
async fn a_retired_host_disappears_and_may_enroll_again() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    checkin(&s, &checkin_req("old-box"), 0).await;
    checkin(&s, &checkin_req("keeper"), 0).await;
    let res = http()
        .delete(s.u("/api/v2/hosts/old-box"))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 403, "operators only");
    let res = http()
        .delete(s.u("/api/v2/hosts/old-box"))
        .admin()
        .go()
        .await;
    assert_eq!(res.status(), 204);
    let res = http()
        .delete(s.u("/api/v2/hosts/old-box"))
        .admin()
        .go()
        .await;
    assert_eq!(res.status(), 404);
    let names = |s: &TestServer| {
        let u = s.u("/api/v2/hosts");
        async move {
            let v: Vec<serde_json::Value> = http().get(u).admin().json_of().await;
            v.iter()
                .map(|h| h["hostname"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names(&s).await, ["keeper"]);
    // Gone for good across a restart (the heartbeat batch does not bring
    // it back)...
    s.stop().await;
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    assert_eq!(names(&s).await, ["keeper"]);
    // ...until it checks in again.
    checkin(&s, &checkin_req("old-box"), 0).await;
    let mut n = names(&s).await;
    n.sort();
    assert_eq!(n, ["keeper", "old-box"]);
    s.stop().await;
}

#[tokio::test]
async fn every_operator_action_is_in_the_audit_log_with_its_token_label() {
    let s = TestServer::start().await;
    // A labelled operator token, made by the admin.
    let created: serde_json::Value = http()
        .post(s.u("/api/v2/operator-tokens"))
        .admin()
        .json(&serde_json::json!({"label": "alice"}))
        .json_of()
        .await;
    let alice = created["token"].as_str().unwrap().to_string();
    let as_alice = |rb: reqwest::RequestBuilder| rb.bearer_auth(&alice);

    let r = as_alice(
        http().post(s.u("/api/v2/releases?version=1.0.0&platform=linux-x86_64&kind=installer")),
    )
    .body("x")
    .go()
    .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Release>().await.unwrap().id;
    let r = as_alice(http().post(s.u("/api/v2/commands")))
        .json(&serde_json::json!({"kind": "stop", "target": {"hosts": ["web-1"]}}))
        .go()
        .await;
    assert_eq!(r.status(), 201);
    let r = as_alice(http().post(s.u("/api/v2/hosts/web-1/configs")))
        .body("LicenseKey: k\n")
        .go()
        .await;
    assert_eq!(r.status(), 201);
    let r = as_alice(http().post(s.u(&format!("/api/v2/releases/{id}/withdraw"))))
        .go()
        .await;
    assert_eq!(r.status(), 200);
    let r = http()
        .post(s.u("/api/v2/agent-tokens"))
        .admin()
        .json(&serde_json::json!({"token": "a-new-license-key"}))
        .go()
        .await;
    assert_eq!(r.status(), 201);
    // A refused request is not an action.
    let r = http()
        .post(s.u("/api/v2/commands"))
        .agent()
        .json(&serde_json::json!({"kind": "stop", "target": "all"}))
        .go()
        .await;
    assert_eq!(r.status(), 403);

    let log: Vec<serde_json::Value> = as_alice(http().get(s.u("/api/v2/audit"))).json_of().await;
    let actions: Vec<(&str, &str)> = log
        .iter()
        .rev()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("admin", "token.add-operator"),
            ("alice", "release.publish"),
            ("alice", "command.create"),
            ("alice", "config.push"),
            // The GET-CONFIG that applies it: a write of its own.
            ("alice", "command.create"),
            ("alice", "release.withdraw"),
            ("admin", "token.add-agent"),
        ]
    );
    for e in &log {
        assert_eq!(e["source"], "127.0.0.1", "{e}");
        assert!(e["at"].as_str().is_some_and(|a| a.ends_with('Z')));
    }
    assert!(log[5]["detail"].as_str().unwrap().contains("1.0.0"));
    assert!(
        !log.iter().any(|e| e.to_string().contains(&alice)),
        "a secret in the audit log"
    );
    let one: Vec<serde_json::Value> = http()
        .get(s.u("/api/v2/audit?limit=1"))
        .admin()
        .json_of()
        .await;
    assert_eq!(one.len(), 1);
    // Only operators read it.
    assert_eq!(
        http().get(s.u("/api/v2/audit")).agent().go().await.status(),
        403
    );
    assert_eq!(http().get(s.u("/api/v2/audit")).go().await.status(), 401);
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once_and_never_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    let created: serde_json::Value = http()
        .post(s.u("/api/v2/operator-tokens"))
        .admin()
        .json(&serde_json::json!({"label": "bob"}))
        .json_of()
        .await;
    let bob = created["token"].as_str().unwrap().to_string();
    let as_bob = |rb: reqwest::RequestBuilder| rb.bearer_auth(&bob);
    assert_eq!(
        as_bob(http().get(s.u("/api/v2/hosts"))).go().await.status(),
        200
    );

    let list: Vec<serde_json::Value> = http().get(s.u("/api/v2/tokens")).admin().json_of().await;
    assert!(
        !serde_json::to_string(&list).unwrap().contains(&bob),
        "a secret in the token list"
    );
    let bob_id = list.iter().find(|t| t["label"] == "bob").unwrap()["id"].clone();
    let agent_id = list
        .iter()
        .find(|t| t["kind"] == "agent" && t["label"] == "PALETTE_AGENT_TOKENS")
        .unwrap()["id"]
        .clone();

    // Revoked: refused on the very next request.
    let r = http()
        .post(s.u(&format!("/api/v2/tokens/operator/{bob_id}/revoke")))
        .admin()
        .go()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        as_bob(http().get(s.u("/api/v2/hosts"))).go().await.status(),
        401
    );
    let r = http()
        .post(s.u(&format!("/api/v2/tokens/agent/{agent_id}/revoke")))
        .admin()
        .go()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        http()
            .get(s.u("/api/v2/releases"))
            .agent()
            .go()
            .await
            .status(),
        401
    );
    // Twice, or nonsense: a clear error, nothing changed.
    let r = http()
        .post(s.u(&format!("/api/v2/tokens/agent/{agent_id}/revoke")))
        .admin()
        .go()
        .await;
    assert_eq!(r.status(), 404);
    let r = http()
        .post(s.u("/api/v2/tokens/root/1/revoke"))
        .admin()
        .go()
        .await;
    assert_eq!(r.status(), 400);
    let r = http()
        .post(s.u("/api/v2/tokens/agent/1/revoke"))
        .agent()
        .go()
        .await;
    assert_eq!(r.status(), 401);
    // The revoked license key cannot be registered again...
    let r = http()
        .post(s.u("/api/v2/agent-tokens"))
        .admin()
        .json(&serde_json::json!({"token": AGENT}))
        .go()
        .await;
    assert_eq!(r.status(), 409);
    // ...nor does PALETTE_AGENT_TOKENS bring it back at the next start.
    drop(s.stop().await);
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    assert_eq!(
        http()
            .get(s.u("/api/v2/releases"))
            .agent()
            .go()
            .await
            .status(),
        401
    );
    let list: Vec<serde_json::Value> = http().get(s.u("/api/v2/tokens")).admin().json_of().await;
    assert!(list
        .iter()
        .all(|t| t["label"] != "bob" || t["revoked_at"].is_string()));
    let audit: Vec<serde_json::Value> = http().get(s.u("/api/v2/audit")).admin().json_of().await;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "token.revoke")
            .count(),
        2
    );
}

#[tokio::test]
async fn failed_authentications_are_rate_limited_per_address() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |o| {
        o.auth_limit = palette_server::ratelimit::AuthLimit {
            failures: 5,
            window: Duration::from_secs(60),
            block: Duration::from_secs(1),
        }
    })
    .await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(Some(ip.parse().unwrap()))
            .build()
            .unwrap()
    };
    let (a, b) = (from("127.0.0.1"), from("127.0.0.2"));
    let hosts = s.u("/api/v2/hosts");
    for _ in 0..6 {
        let r = a.get(&hosts).bearer_auth("a-guess").send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    // Over the limit: this address's guesses are refused before any check
    // and told when to come back; the right token is served (what fails is
    // limited, not what succeeds).
    let r = a.get(&hosts).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = a.get(&hosts).bearer_auth("a-guess").send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry), "{retry}");
    // Another address is untouched, its guesses answered as usual.
    let r = b.get(&hosts).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = b
        .get(&hosts)
        .bearer_auth("other-guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The block ends by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = a.get(&hosts).bearer_auth(ADMIN).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(Instant::now() < deadline, "the block never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tar.gz with these (name, bytes) entries.
fn targz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        if name.contains("..") {
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        } else {
            b.append_data(&mut h, name, *data).unwrap();
        }
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Publish checks what hosts would refuse later: an archive that does not
/// unpack (or unpacks outside its folder), a VERSION file naming another
/// version, a platform no host reports — refused with 422 and the reason,
/// nothing stored; `force=true` overrides (logged).
#[tokio::test]
async fn publish_refuses_releases_no_host_could_use() {
    let s = TestServer::start().await;
    let post = |query: &str, body: Vec<u8>| {
        http()
            .post(s.u(&format!("/api/v2/releases?{query}")))
            .admin()
            .body(body)
    };
    let good = targz(&[("agent", b"#!/bin/sh\n"), ("VERSION", b"2.0.0\n")]);
    let cases: Vec<(&str, reqwest::RequestBuilder, &str)> = vec![
        (
            "VERSION differs",
            post(
                "version=2.0.1&platform=linux-x86_64&kind=archive",
                good.clone(),
            ),
            "VERSION file says",
        ),
        (
            "not an archive",
            post(
                "version=2.0.0&platform=linux-x86_64&kind=archive",
                b"just some bytes".to_vec(),
            ),
            "cannot be installed",
        ),
        (
            "an entry outside the folder",
            post(
                "version=2.0.0&platform=linux-x86_64&kind=archive",
                targz(&[("../evil", b"x")]),
            ),
            "cannot be installed",
        ),
        (
            "unknown platform",
            post(
                "version=2.0.0&platform=plan9-mips&kind=msi",
                b"msi".to_vec(),
            ),
            "none a host reports",
        ),
    ];
    for (what, rb, reason) in cases {
        let res = rb.go().await;
        assert_eq!(res.status(), 422, "{what}");
        let body: serde_json::Value = res.json().await.unwrap();
        let err = body["error"].as_str().unwrap();
        assert!(
            err.contains(reason) && err.contains("force=true"),
            "{what}: {err}"
        );
    }
    let list: Vec<Release> = http().get(s.u("/api/v2/releases")).admin().json_of().await;
    assert!(list.is_empty(), "a refused release was stored");

    let r = post(
        "version=2.0.0&platform=linux-x86_64&kind=archive",
        good.clone(),
    )
    .go()
    .await;
    assert_eq!(r.status(), 201);
    let r = post(
        "version=2.0.1&platform=linux-x86_64&kind=archive&force=true",
        good,
    )
    .go()
    .await;
    assert_eq!(r.status(), 201, "force overrides");
}

/// Commands issued in a burst keep their real issue times on the v2 API
/// (no invented seconds), while the legacy `ts` of each is a distinct
/// whole second, and both survive a restart.
#[tokio::test]
async fn a_burst_of_commands_shows_real_issue_times_and_distinct_legacy_ts() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    let started = std::time::SystemTime::now();
    let mut legacy_ts = Vec::new();
    for _ in 0..5 {
        let r = http()
            .put(s.u("/api/v1/command"))
            .admin()
            .form(&[("command", "start")])
            .go()
            .await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        legacy_ts.push(v["ts"].as_str().unwrap().to_string());
    }
    let mut distinct = legacy_ts.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "legacy ts repeat: {legacy_ts:?}");
    let elapsed_ms = started.elapsed().unwrap().as_millis() as i64;

    let check = |list: &[CommandStatus]| {
        let times: Vec<i64> = list
            .iter()
            .map(|c| palette_protocol::timefmt::parse_rfc3339(&c.command.issued_at).unwrap())
            .collect();
        let spread = times.iter().max().unwrap() - times.iter().min().unwrap();
        assert!(
            spread <= elapsed_ms,
            "issue times spread {spread} ms over a burst of {elapsed_ms} ms: {times:?}"
        );
    };
    let list: Vec<CommandStatus> = http().get(s.u("/api/v2/commands")).admin().json_of().await;
    assert_eq!(list.len(), 5);
    check(&list);
    drop(s.stop().await);
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    let list: Vec<CommandStatus> = http().get(s.u("/api/v2/commands")).admin().json_of().await;
    check(&list);
    // Legacy ts keep increasing across the restart.
    let r = http()
        .put(s.u("/api/v1/command"))
        .admin()
        .form(&[("command", "stop")])
        .go()
        .await;
    let v: serde_json::Value = r.json().await.unwrap();
    let next = v["ts"].as_str().unwrap();
    assert!(
        next > legacy_ts[4].as_str(),
        "{next} after {}",
        legacy_ts[4]
    );
}

/// A host's history: the commands it answered (kind, outcome, message) and
/// its config revisions, newest first; operators only.
#[tokio::test]
async fn a_hosts_history_lists_its_commands_and_configs() {
    let s = TestServer::start().await;
    let first = command(
        &s,
        CommandKind::Restart,
        Target::Hosts(vec!["web-1".into()]),
        None,
    )
    .await;
    let second = command(&s, CommandKind::Stop, Target::All, None).await;
    let mut req = checkin_req("web-1");
    req.results = vec![
        CommandAck {
            id: first.command.id,
            hostname: String::new(),
            outcome: Outcome::Failed,
            message: "the agent did not come back".into(),
            at: String::new(),
        },
        CommandAck {
            id: second.command.id,
            hostname: String::new(),
            outcome: Outcome::Succeeded,
            message: "agent stopped".into(),
            at: String::new(),
        },
    ];
    checkin(&s, &req, 0).await;
    let r = http()
        .post(s.u("/api/v2/hosts/web-1/configs?apply=false"))
        .admin()
        .body("a: 1\n")
        .go()
        .await;
    assert_eq!(r.status(), 201);

    let h: serde_json::Value = http()
        .get(s.u("/api/v2/hosts/web-1/history"))
        .admin()
        .json_of()
        .await;
    let cmds = h["commands"].as_array().unwrap();
    assert_eq!(cmds.len(), 2, "{h}");
    let restart = cmds.iter().find(|c| c["kind"] == "restart").unwrap();
    assert_eq!(restart["outcome"], "failed");
    assert_eq!(restart["message"], "the agent did not come back");
    assert_eq!(h["configs"][0]["source"], "desired");
    let one: serde_json::Value = http()
        .get(s.u("/api/v2/hosts/web-1/history?limit=1"))
        .admin()
        .json_of()
        .await;
    assert_eq!(one["commands"].as_array().unwrap().len(), 1);
    let r = http()
        .get(s.u("/api/v2/hosts/web-1/history"))
        .agent()
        .go()
        .await;
    assert_eq!(r.status(), 403);
    let r = http()
        .get(s.u("/api/v2/hosts/bad%20name/history"))
        .admin()
        .go()
        .await;
    assert_eq!(r.status(), 400);
}

/// Every update outcome a host reports is kept (not only the last one per
/// product), once each however often the host repeats it, across a server
/// restart.
#[tokio::test]
async fn update_outcomes_are_kept_as_the_hosts_history_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_with(&data, |_| {}).await;
    let upd = |id: i64, v: &str, outcome: Outcome, msg: &str| UpdateReport {
        release_id: id,
        version: v.parse().unwrap(),
        outcome,
        message: msg.into(),
    };
    let mut req = checkin_req("web-1");
    req.host.last_update = Some(upd(1, "2.0.0", Outcome::Failed, "health check failed"));
    checkin(&s, &req, 0).await;
    checkin(&s, &req, 0).await;
    req.host.last_update = Some(upd(2, "2.1.0", Outcome::Succeeded, "installed"));
    req.host.last_watchdog_update = Some(upd(3, "9.0.0", Outcome::Succeeded, "self-updated"));
    checkin(&s, &req, 0).await;
    s.stop().await;
    // A restarted server hears the same report again: nothing doubled.
    let s = TestServer::start_with(&data, |_| {}).await;
    checkin(&s, &req, 0).await;
    // Written with the batch of the next second.
    let history = || async {
        let h: serde_json::Value = http()
            .get(s.u("/api/v2/hosts/web-1/history"))
            .admin()
            .json_of()
            .await;
        h
    };
    // Written at the first server's shutdown; the restarted one has the
    // same report in its store, so nothing new is pending.
    let h = history().await;
    let updates: Vec<HostUpdate> = serde_json::from_value(h["updates"].clone()).unwrap();
    let seen: Vec<(&str, String, Outcome)> = updates
        .iter()
        .map(|u| (u.product.as_str(), u.version.to_string(), u.outcome))
        .collect();
    assert_eq!(
        seen,
        [
            ("watchdog", "9.0.0".to_string(), Outcome::Succeeded),
            ("agent", "2.1.0".to_string(), Outcome::Succeeded),
            ("agent", "2.0.0".to_string(), Outcome::Failed),
        ],
        "{h}"
    );
    assert_eq!(updates[2].message, "health check failed");
    // A retry of the failed release that fails again is a new entry.
    req.host.last_update = Some(upd(1, "2.0.0", Outcome::Failed, "health check failed"));
    checkin(&s, &req, 0).await;
    wait_until(
        "the retry's outcome is written",
        Duration::from_secs(10),
        || async { history().await["updates"][0]["version"] == "2.0.0" },
    )
    .await;
    let h: serde_json::Value = http()
        .get(s.u("/api/v2/hosts/web-1/history?limit=2"))
        .admin()
        .json_of()
        .await;
    assert_eq!(h["updates"].as_array().unwrap().len(), 2);
    assert_eq!(
        h["updates"][1]["product"], "watchdog",
        "nothing doubled: {h}"
    );
    s.stop().await;
}

/// A host's state is judged against its own check-in interval: the
/// long-poll wait it asks for.
#[tokio::test]
async fn a_hosts_state_and_interval_come_from_its_own_checkins() {
    let s = TestServer::start().await;
    // A command waiting for each host answers their long polls at once.
    command(
        &s,
        CommandKind::Restart,
        Target::Hosts(vec!["slow".into(), "fast".into()]),
        None,
    )
    .await;
    checkin(&s, &checkin_req("slow"), 90).await;
    checkin(&s, &checkin_req("fast"), 5).await;
    let hosts: Vec<HostInfo> = http().get(s.u("/api/v2/hosts")).admin().json_of().await;
    let get = |n: &str| hosts.iter().find(|h| h.hostname == n).unwrap().clone();
    assert_eq!(get("slow").checkin_interval_secs, Some(90));
    assert_eq!(get("fast").checkin_interval_secs, Some(5));
    assert_eq!(get("fast").state, Some(HostState::Online));
    // A legacy host polls every two minutes.
    let r = http()
        .get(s.u("/api/v1/command?hostname=old"))
        .agent()
        .go()
        .await;
    assert_eq!(r.status(), 200);
    let one: HostInfo = http().get(s.u("/api/v2/hosts/old")).admin().json_of().await;
    assert_eq!(one.checkin_interval_secs, Some(120));
    assert_eq!(one.state, Some(HostState::Online));
    s.stop().await;
}

/// A rollback: the release is withdrawn and marked, the offer of the newest
/// older release names the rolled-back version (and only it: a plain
/// withdrawal brings nobody down), across a restart; every refusal changes
/// nothing.
#[tokio::test]
async fn a_rollback_offers_the_older_release_to_the_hosts_on_the_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_with(&data, |_| {}).await;
    let v1 = publish(&s, "1.0.0", "linux-x86_64", "archive", b"one").await;
    let v2 = publish(&s, "2.0.0", "linux-x86_64", "archive", b"two").await;
    let rollback = |id: &serde_json::Value, q: &str| {
        http()
            .post(s.u(&format!("/api/v2/releases/{id}/rollback{q}")))
            .admin()
    };
    // Only an operator.
    let r = http()
        .post(s.u(&format!("/api/v2/releases/{}/rollback", v2["id"])))
        .agent()
        .go()
        .await;
    assert_eq!(r.status(), 403);
    // Nothing older than 1.0.0; 1.0.0 is not the newest; no such release.
    assert_eq!(rollback(&v1["id"], "").go().await.status(), 409);
    assert_eq!(
        rollback(&serde_json::json!(999), "").go().await.status(),
        404
    );
    // A manifest that does not describe the target: 422, nothing changed.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let wrong = serde_json::json!({
        "product": "agent", "version": "1.0.0", "platform": "linux-x86_64",
        "kind": "archive", "size": 3, "sha256": "0".repeat(64),
        "created": "2026-11-28T00:00:00Z", "expires": "2030-01-01T00:00:00Z",
        "allow_downgrade_from": "2.0.0"
    })
    .to_string();
    let r = rollback(&v2["id"], "")
        .header("x-palette-manifest", b64.encode(&wrong))
        .header("x-palette-signature", b64.encode("sig"))
        .go()
        .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("sha256"));
    let host = checkin(&s, &checkin_req("web-1"), 0).await;
    assert_eq!(host.release.as_ref().unwrap().version.to_string(), "2.0.0");

    // A dry run says what would happen and does nothing.
    let plan: serde_json::Value = rollback(&v2["id"], "?dry_run=true").json_of().await;
    assert_eq!(plan["target"]["version"], "1.0.0");
    let offer = checkin(&s, &checkin_req("web-1"), 0).await.release.unwrap();
    assert_eq!(offer.version.to_string(), "2.0.0");

    let done: serde_json::Value = rollback(&v2["id"], "").json_of().await;
    assert_eq!(done["rolled_back"]["version"], "2.0.0");
    assert!(done["rolled_back"]["withdrawn_at"].is_string());
    assert!(done["rolled_back"]["rolled_back_at"].is_string());
    assert_eq!(done["target"]["version"], "1.0.0");
    let offer = checkin(&s, &checkin_req("web-1"), 0).await.release.unwrap();
    assert_eq!(offer.version.to_string(), "1.0.0");
    assert_eq!(offer.rollback_from, vec!["2.0.0".parse().unwrap()]);

    // A 3.0.0 withdrawn plainly: hosts on it are not brought down.
    let v3 = publish(&s, "3.0.0", "linux-x86_64", "archive", b"three").await;
    let r = http()
        .post(s.u(&format!("/api/v2/releases/{}/withdraw", v3["id"])))
        .admin()
        .go()
        .await;
    assert_eq!(r.status(), 200);
    let offer = checkin(&s, &checkin_req("web-1"), 0).await.release.unwrap();
    assert_eq!(offer.rollback_from, vec!["2.0.0".parse().unwrap()]);

    // Durable, and audited.
    s.stop().await;
    let s = TestServer::start_with(&data, |_| {}).await;
    let offer = checkin(&s, &checkin_req("web-1"), 0).await.release.unwrap();
    assert_eq!(offer.version.to_string(), "1.0.0");
    assert_eq!(offer.rollback_from, vec!["2.0.0".parse().unwrap()]);
    let audit: Vec<serde_json::Value> = http().get(s.u("/api/v2/audit")).admin().json_of().await;
    assert!(
        audit.iter().any(|a| a["action"] == "release.rollback"),
        "{audit:?}"
    );
    s.stop().await;
}
