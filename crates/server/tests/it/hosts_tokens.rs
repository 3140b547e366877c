//! Per-host credentials: a host enrolls once with the fleet's enrollment
//! key and gets its own host token, which acts for that host only; the
//! enrollment key may no longer act for an enrolled host (v1 or v2); a
//! stolen host token gets nothing else. Revoking or retiring frees the name.

use std::time::Duration;

use palette_protocol::v2::*;
use reqwest::StatusCode;

use crate::support::*;

fn checkin_req(host: &str) -> CheckinRequest {
    CheckinRequest {
        host: HostReport {
            hostname: host.into(),
            product: "agent".into(),
            platform: "linux-x86_64".into(),
            watchdog_version: "0.2.0".into(),
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

/// Enrolls `host` with the enrollment key: (status, body).
async fn enroll(s: &TestServer, host: &str) -> (StatusCode, serde_json::Value) {
    let res = http()
        .post(s.u("/api/v2/enroll"))
        .agent()
        .json(&serde_json::json!({ "hostname": host }))
        .go()
        .await;
    let status = res.status();
    (status, res.json().await.unwrap_or_default())
}

async fn enrolled(s: &TestServer, host: &str) -> String {
    let (status, body) = enroll(s, host).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["hostname"], host);
    body["host_token"].as_str().unwrap().to_string()
}

async fn checkin_status(s: &TestServer, auth: &str, host: &str) -> StatusCode {
    http()
        .post(s.u("/api/v2/checkin?wait=0"))
        .header(reqwest::header::AUTHORIZATION, auth)
        .json(&checkin_req(host))
        .go()
        .await
        .status()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

const ENROLLMENT: &str = concat!("Token ", "License-Key-0001");

#[tokio::test]
async fn a_host_token_acts_for_its_own_host_only() {
    assert_eq!(ENROLLMENT, format!("Token {AGENT}"));
    let s = TestServer::start().await;
    let web1 = enrolled(&s, "web-1").await;
    assert!(web1.starts_with("pht_") && web1.len() == 68, "{web1}");

    // Its own host: check-in, config report and read.
    assert_eq!(checkin_status(&s, &bearer(&web1), "web-1").await, 200);
    let r = http()
        .post(s.u("/api/v2/hosts/web-1/configs/reported"))
        .bearer_auth(&web1)
        .body("a: 1\n")
        .go()
        .await;
    assert_eq!(r.status(), 201);
    let r = http()
        .post(s.u("/api/v2/hosts/web-1/configs?apply=false"))
        .admin()
        .body("desired: 1\n")
        .go()
        .await;
    assert_eq!(r.status(), 201);
    let r = http()
        .get(s.u("/api/v2/hosts/web-1/configs/latest?source=desired"))
        .bearer_auth(&web1)
        .go()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "desired: 1\n");
    // Releases are for every host.
    let r = http()
        .get(s.u("/api/v2/releases"))
        .bearer_auth(&web1)
        .go()
        .await;
    assert_eq!(r.status(), 200);

    // Another host's data: refused, with the reason.
    enrolled(&s, "web-2").await;
    assert_eq!(checkin_status(&s, &bearer(&web1), "web-2").await, 403);
    for (method, path) in [
        ("POST", "/api/v2/hosts/web-2/configs/reported"),
        ("GET", "/api/v2/hosts/web-2/configs/latest"),
        ("GET", "/api/v2/hosts/web-2/configs/1"),
        ("POST", "/api/v2/hosts/db-9/configs/reported"),
    ] {
        let r = http()
            .request(method.parse().unwrap(), s.u(path))
            .bearer_auth(&web1)
            .body("x: 1\n")
            .go()
            .await;
        assert_eq!(r.status(), 403, "{method} {path}");
        let text = r.text().await.unwrap();
        assert!(text.contains("belongs to web-1"), "{text}");
    }

    // Every operator endpoint: refused.
    for (method, path) in [
        ("GET", "/api/v2/hosts"),
        ("GET", "/api/v2/hosts/web-1"),
        ("DELETE", "/api/v2/hosts/web-2"),
        ("GET", "/api/v2/hosts/web-1/configs"),
        ("POST", "/api/v2/hosts/web-1/configs"),
        ("GET", "/api/v2/commands"),
        ("POST", "/api/v2/commands"),
        ("GET", "/api/v2/commands/1"),
        (
            "POST",
            "/api/v2/releases?version=9.9.9&platform=linux-x86_64",
        ),
        ("POST", "/api/v2/releases/1/withdraw"),
        ("POST", "/api/v2/agent-tokens"),
        ("POST", "/api/v2/operator-tokens"),
        ("GET", "/api/v2/tokens"),
        ("POST", "/api/v2/tokens/host/1/revoke"),
        ("GET", "/api/v2/audit"),
    ] {
        let r = http()
            .request(method.parse().unwrap(), s.u(path))
            .bearer_auth(&web1)
            .body("{}")
            .go()
            .await;
        assert_eq!(r.status(), 403, "{method} {path}");
    }
    // Nor can it enroll, nor speak v1 (the license key's API).
    let r = http()
        .post(s.u("/api/v2/enroll"))
        .bearer_auth(&web1)
        .json(&serde_json::json!({"hostname": "web-7"}))
        .go()
        .await;
    assert_eq!(r.status(), 403);
    let r = http()
        .get(s.u("/api/v1/command?hostname=web-1"))
        .header(reqwest::header::AUTHORIZATION, format!("Token {web1}"))
        .go()
        .await;
    assert_eq!(r.status(), 401);

    // The enrollment key may no longer act for an enrolled host, on
    // either API, nor enroll it again; a host that has not enrolled still
    // checks in with it (watchdogs before enrollment).
    assert_eq!(checkin_status(&s, ENROLLMENT, "web-1").await, 403);
    let r = http()
        .get(s.u("/api/v2/hosts/web-1/configs/latest"))
        .agent()
        .go()
        .await;
    assert_eq!(r.status(), 403);
    for path in [
        "/api/v1/command?hostname=web-1",
        "/api/v1/config?hostname=web-1",
        "/api/v1/agent/version?hostname=web-1",
    ] {
        let r = http().get(s.u(path)).agent().go().await;
        assert_eq!(r.status(), 403, "{path}");
    }
    let (status, body) = enroll(&s, "web-1").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.to_string().contains("revoke it or retire the host"),
        "{body}"
    );
    assert_eq!(checkin_status(&s, ENROLLMENT, "legacy-1").await, 200);
    let r = http()
        .get(s.u("/api/v1/command?hostname=legacy-1"))
        .agent()
        .go()
        .await;
    assert!(r.status().is_success(), "{}", r.status());

    // Unknown tokens and bad bodies change nothing.
    assert_eq!(
        checkin_status(&s, &bearer("pht_not-a-token"), "web-1").await,
        401
    );
    for body in [
        serde_json::json!({}),
        serde_json::json!({"hostname": "bad host"}),
        serde_json::json!({"hostname": ""}),
    ] {
        let r = http()
            .post(s.u("/api/v2/enroll"))
            .agent()
            .json(&body)
            .go()
            .await;
        assert_eq!(r.status(), 400, "{body}");
    }
    let r = http()
        .post(s.u("/api/v2/enroll"))
        .json(&serde_json::json!({"hostname": "web-8"}))
        .go()
        .await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn revoking_or_retiring_frees_the_name_and_tokens_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    let web1 = enrolled(&s, "web-1").await;
    let db1 = enrolled(&s, "db-1").await;
    assert_eq!(checkin_status(&s, &bearer(&web1), "web-1").await, 200);

    // Listed (hash never shown), with the host name as label.
    let list: Vec<serde_json::Value> = http().get(s.u("/api/v2/tokens")).admin().json_of().await;
    let text = serde_json::to_string(&list).unwrap();
    assert!(!text.contains(&web1), "a secret in the token list");
    let id = list
        .iter()
        .find(|t| t["kind"] == "host" && t["label"] == "web-1")
        .unwrap()["id"]
        .clone();

    // Revoked: refused at once; the name may enroll again.
    let r = http()
        .post(s.u(&format!("/api/v2/tokens/host/{id}/revoke")))
        .admin()
        .go()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(checkin_status(&s, &bearer(&web1), "web-1").await, 401);
    let web1_again = enrolled(&s, "web-1").await;
    assert_ne!(web1, web1_again);
    let audit: Vec<serde_json::Value> = http().get(s.u("/api/v2/audit")).admin().json_of().await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "token.revoke"
                && e["detail"].as_str().unwrap().contains("web-1")),
        "{audit:?}"
    );

    // Retired: its token goes with it.
    let r = http().delete(s.u("/api/v2/hosts/db-1")).admin().go().await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(checkin_status(&s, &bearer(&db1), "db-1").await, 401);

    // A restart keeps who is enrolled and with which token.
    drop(s.stop().await);
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    assert_eq!(checkin_status(&s, &bearer(&web1_again), "web-1").await, 200);
    assert_eq!(checkin_status(&s, &bearer(&web1), "web-1").await, 401);
    assert_eq!(checkin_status(&s, ENROLLMENT, "web-1").await, 403);
    enrolled(&s, "db-1").await;
}

#[tokio::test]
async fn with_require_host_tokens_the_enrollment_key_only_enrolls() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |o| o.require_host_tokens = true).await;
    assert_eq!(checkin_status(&s, ENROLLMENT, "new-1").await, 403);
    let r = http()
        .post(s.u("/api/v2/checkin?wait=0"))
        .agent()
        .json(&checkin_req("new-1"))
        .go()
        .await;
    assert!(r.text().await.unwrap().contains("must enroll first"));
    let t = enrolled(&s, "new-1").await;
    assert_eq!(checkin_status(&s, &bearer(&t), "new-1").await, 200);
}

/// An operator may enroll a host for it (a pre-made token); that is in
/// the audit log with the operator's label.
#[tokio::test]
async fn an_operator_enrollment_is_audited() {
    let s = TestServer::start().await;
    let r = http()
        .post(s.u("/api/v2/enroll"))
        .admin()
        .json(&serde_json::json!({"hostname": "pre-1"}))
        .go()
        .await;
    assert_eq!(r.status(), 201);
    let audit: Vec<serde_json::Value> = http().get(s.u("/api/v2/audit")).admin().json_of().await;
    assert!(
        audit.iter().any(|e| e["action"] == "host.enroll"
            && e["actor"] == "admin"
            && e["detail"].as_str().unwrap().contains("pre-1")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_tokens_last_use_is_recorded() {
    let s = TestServer::start().await;
    let t = enrolled(&s, "web-1").await;
    assert_eq!(checkin_status(&s, &bearer(&t), "web-1").await, 200);
    // Written in batches (every second): wait for it, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list: Vec<serde_json::Value> =
            http().get(s.u("/api/v2/tokens")).admin().json_of().await;
        let host = list.iter().find(|t| t["kind"] == "host").unwrap();
        let agent = list.iter().find(|t| t["kind"] == "agent").unwrap();
        if host["last_used"].is_string() && agent["last_used"].is_string() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_used never recorded: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST /api/v2/tokens/operator/rotate`: one server-side action — the
/// new token works, the old ones are refused at once, one `token.rotate`
/// entry under the caller's label (issue 21.12); an unknown label is 404
/// and creates nothing.
#[tokio::test]
async fn rotating_an_operator_token_is_one_audited_action_by_the_caller() {
    let s = TestServer::start().await;
    let new_op = |label: &'static str| {
        let u = s.u("/api/v2/operator-tokens");
        async move {
            let v: serde_json::Value = http()
                .post(u)
                .admin()
                .json(&serde_json::json!({ "label": label }))
                .json_of()
                .await;
            v["token"].as_str().unwrap().to_string()
        }
    };
    let ci = new_op("ci").await;
    let rotator = new_op("rotator").await;
    let works = |t: String| {
        let u = s.u("/api/v2/tokens");
        async move {
            http()
                .get(u)
                .header(reqwest::header::AUTHORIZATION, bearer(&t))
                .go()
                .await
                .status()
        }
    };
    assert_eq!(works(ci.clone()).await, 200);

    let r = http()
        .post(s.u("/api/v2/tokens/operator/rotate"))
        .header(reqwest::header::AUTHORIZATION, bearer(&rotator))
        .json(&serde_json::json!({ "label": "ci" }))
        .go()
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["revoked"], 1, "{v}");
    assert_eq!(v["label"], "ci", "{v}");
    let fresh = v["token"].as_str().unwrap().to_string();
    assert_ne!(fresh, ci);
    assert_eq!(works(ci.clone()).await, 401, "the old token still works");
    assert_eq!(works(fresh.clone()).await, 200, "the new token is refused");
    assert_eq!(works(rotator.clone()).await, 200);

    let audit: Vec<serde_json::Value> = http().get(s.u("/api/v2/audit")).admin().json_of().await;
    let rotations: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["action"] == "token.rotate")
        .collect();
    assert_eq!(rotations.len(), 1, "{audit:?}");
    assert_eq!(rotations[0]["actor"], "rotator", "{audit:?}");
    assert!(
        rotations[0]["detail"].as_str().unwrap().contains("'ci'"),
        "{audit:?}"
    );
    assert!(
        !audit.iter().any(|e| e["action"] == "token.revoke"),
        "{audit:?}"
    );

    // A label no live operator token has: 404, nothing created.
    let before: Vec<serde_json::Value> = http().get(s.u("/api/v2/tokens")).admin().json_of().await;
    let r = http()
        .post(s.u("/api/v2/tokens/operator/rotate"))
        .admin()
        .json(&serde_json::json!({ "label": "nosuch" }))
        .go()
        .await;
    assert_eq!(r.status(), 404);
    let after: Vec<serde_json::Value> = http().get(s.u("/api/v2/tokens")).admin().json_of().await;
    assert_eq!(before.len(), after.len(), "{after:?}");
    let audit: Vec<serde_json::Value> = http().get(s.u("/api/v2/audit")).admin().json_of().await;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "token.rotate")
            .count(),
        1,
        "{audit:?}"
    );
}
