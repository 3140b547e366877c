//! The planted-config takeover of a legacy host, refused at each step, and
//! the limits on what an agent credential can make the server keep.

use palette_protocol::v2::{AgentState, CheckinRequest, DesiredState, HostReport};

use crate::support::*;

fn upload(body: &[u8]) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part(
        "uploadfile",
        reqwest::multipart::Part::bytes(body.to_vec()).file_name("Config.yml"),
    )
}

const PLANTED: &[u8] =
    b"LicenseKey: stolen\nWebservice:\n  Endpoint: https://attacker.example/\n  UseProxy: false\n";

async fn hosts(s: &TestServer) -> Vec<String> {
    let v: Vec<serde_json::Value> = http().get(s.u("/api/v2/hosts")).admin().json_of().await;
    v.iter()
        .map(|h| h["hostname"].as_str().unwrap().to_string())
        .collect()
}

async fn history_len(s: &TestServer, host: &str) -> usize {
    let v: Vec<serde_json::Value> = http()
        .get(s.u(&format!("/api/v2/hosts/{host}/configs")))
        .admin()
        .json_of()
        .await;
    v.len()
}

#[tokio::test]
async fn a_planted_config_never_reaches_a_legacy_host() {
    let s = TestServer::start().await;

    // 1. An anonymous upload for a name never seen: refused, nothing kept.
    let res = http()
        .put(s.u("/api/v1/config?hostname=victim"))
        .multipart(upload(PLANTED))
        .go()
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(history_len(&s, "victim").await, 0);
    assert!(hosts(&s).await.is_empty(), "no host was created");

    // 30 anonymous uploads under made-up names: all refused, no host added.
    for i in 0..30 {
        let res = http()
            .put(s.u(&format!("/api/v1/config?hostname=fake{i}")))
            .multipart(upload(&vec![b'x'; 1024 * 1024]))
            .go()
            .await;
        assert_eq!(res.status(), 401, "fake{i}");
    }
    assert!(hosts(&s).await.is_empty());

    // 2. The victim is a real legacy host: it polls with the license key.
    let _ = http()
        .get(s.u("/api/v1/ping?hostname=victim"))
        .agent()
        .go()
        .await;
    // Known, but not asked yet: anonymous upload still refused; an agent
    // credential alone is not enough either.
    let res = http()
        .put(s.u("/api/v1/config?hostname=victim"))
        .multipart(upload(PLANTED))
        .go()
        .await;
    assert_eq!(res.status(), 401);
    let res = http()
        .put(s.u("/api/v1/config?hostname=victim"))
        .agent()
        .multipart(upload(PLANTED))
        .go()
        .await;
    assert_eq!(res.status(), 403);
    assert_eq!(history_len(&s, "victim").await, 0);

    // 3. The victim's poll is answered PUT-CONFIG; the attacker wins the
    //    race and uploads first. It is stored only as what the host
    //    REPORTED...
    let v: serde_json::Value = http()
        .get(s.u("/api/v1/command?hostname=victim"))
        .agent()
        .json_of()
        .await;
    assert_eq!(v["command"], "PUT-CONFIG");
    let res = http()
        .put(s.u("/api/v1/config?hostname=victim"))
        .multipart(upload(PLANTED))
        .go()
        .await;
    assert_eq!(res.status(), 200);

    // 4. ...and a GET-CONFIG never delivers a reported config: the legacy
    //    GET /config serves only what an operator set.
    http()
        .put(s.u("/api/v1/command"))
        .admin()
        .form(&[("command", "GET-CONFIG")])
        .go()
        .await;
    let res = http()
        .get(s.u("/api/v1/config?hostname=victim"))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 404);
    assert!(!res
        .bytes()
        .await
        .unwrap()
        .windows(8)
        .any(|w| w == b"attacker"));

    // Once an operator sets the config, that is what the host gets.
    let res = http()
        .put(s.u("/api/v1/config?hostname=victim"))
        .admin()
        .multipart(upload(b"LicenseKey: real\n"))
        .go()
        .await;
    assert_eq!(res.status(), 200);
    let body = http()
        .get(s.u("/api/v1/config?hostname=victim"))
        .agent()
        .go()
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"LicenseKey: real\n");
    s.stop().await;
}

fn report(host: &str, padding: usize) -> CheckinRequest {
    CheckinRequest {
        host: HostReport {
            hostname: host.into(),
            product: "agent".into(),
            platform: "x".repeat(padding.max(1)),
            watchdog_version: "1.0.0".into(),
            agent_version: None,
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

#[tokio::test]
async fn oversized_reports_and_floods_of_new_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |o| {
        o.new_hosts_burst = 5;
        o.new_hosts_per_minute = 1;
    })
    .await;
    // A report over the limit (16 KiB): 413, nothing recorded.
    let res = http()
        .post(s.u("/api/v2/checkin"))
        .agent()
        .json(&report("big", 64 * 1024))
        .go()
        .await;
    assert_eq!(res.status(), 413);
    assert!(hosts(&s).await.is_empty());

    // Five new names pass, the sixth is refused with Retry-After...
    for i in 0..5 {
        let res = http()
            .post(s.u("/api/v2/checkin"))
            .agent()
            .json(&report(&format!("h{i}"), 1))
            .go()
            .await;
        assert_eq!(res.status(), 200, "h{i}");
    }
    let res = http()
        .post(s.u("/api/v2/checkin"))
        .agent()
        .json(&report("h5", 1))
        .go()
        .await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    // ...on the legacy API too...
    let res = http()
        .get(s.u("/api/v1/command?hostname=h6"))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 429);
    // ...while known hosts keep checking in.
    let res = http()
        .post(s.u("/api/v2/checkin"))
        .agent()
        .json(&report("h0", 1))
        .go()
        .await;
    assert_eq!(res.status(), 200);
    let mut known = hosts(&s).await;
    known.sort();
    assert_eq!(known, ["h0", "h1", "h2", "h3", "h4"]);
    s.stop().await;
}

#[tokio::test]
async fn config_history_keeps_the_newest_revisions() {
    let s = TestServer::start().await;
    let mut last = 0;
    for i in 0..60 {
        let v: serde_json::Value = http()
            .post(s.u("/api/v2/hosts/web1/configs?apply=false"))
            .admin()
            .body(format!("rev: {i}\n"))
            .json_of()
            .await;
        last = v["revision"]["revision"].as_i64().unwrap();
    }
    let hist: Vec<serde_json::Value> = http()
        .get(s.u("/api/v2/hosts/web1/configs"))
        .admin()
        .json_of()
        .await;
    assert_eq!(hist.len(), 50);
    assert_eq!(hist[0]["revision"], last);
    s.stop().await;
}
