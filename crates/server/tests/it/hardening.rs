//! What the attack runs and a new operator found on the server, one test
//! each: a limiter that locked out a fleet behind a load balancer, a host
//! adding results to another host's command, a labels write that erased
//! labels, missing security headers.

use palette_protocol::v2::{CommandAck, Outcome};
use serde_json::json;

use crate::support::*;

/// A request "through the load balancer" (every test request comes from
/// 127.0.0.1) for the client `client`, with `token`.
async fn via_proxy(s: &TestServer, client: &str, path: &str, token: &str) -> reqwest::StatusCode {
    http()
        .get(s.u(path))
        .header("X-Forwarded-For", client)
        .header("Authorization", format!("Bearer {token}"))
        .go()
        .await
        .status()
}

#[tokio::test]
async fn a_flood_through_a_trusted_proxy_blocks_only_the_flooding_client() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |o| {
        o.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    // One client behind the balancer guesses tokens.
    for _ in 0..40 {
        via_proxy(&s, "198.51.100.66", "/api/v2/hosts", "wrong-token-guess").await;
    }
    assert_eq!(
        via_proxy(&s, "198.51.100.66", "/api/v2/hosts", "wrong-token-guess").await,
        429,
        "the guessing client is blocked"
    );
    // Everyone else behind the same balancer is served: an operator...
    assert_eq!(
        via_proxy(&s, "198.51.100.7", "/api/v2/hosts", ADMIN).await,
        200
    );
    // ...a host with the enrolment key, on v2 and on v1...
    let res = http()
        .post(s.u("/api/v2/checkin?wait=0"))
        .header("X-Forwarded-For", "198.51.100.8")
        .agent()
        .json(&checkin_of("web1"))
        .go()
        .await;
    assert_eq!(res.status(), 200);
    let res = http()
        .get(s.u("/api/v1/command?hostname=legacy1"))
        .header("X-Forwarded-For", "198.51.100.9")
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 200);
    // ...and the blocked client itself, the moment it presents a credential
    // that verifies: what fails is limited, not what succeeds.
    assert_eq!(
        via_proxy(&s, "198.51.100.66", "/api/v2/hosts", ADMIN).await,
        200
    );
    // The audit log names the client, not the balancer.
    let res = http()
        .post(s.u("/api/v2/commands"))
        .header("X-Forwarded-For", "198.51.100.7")
        .admin()
        .json(&json!({"kind": "restart", "target": "all"}))
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let audit: Vec<serde_json::Value> = http().get(s.u("/api/v2/audit")).admin().json_of().await;
    assert_eq!(audit[0]["source"], "198.51.100.7", "{audit:?}");
}

#[tokio::test]
async fn without_a_trusted_proxy_forwarded_headers_are_ignored_and_good_credentials_pass() {
    let s = TestServer::start().await;
    // A client cannot dodge the limit by naming another address...
    for i in 0..40 {
        via_proxy(&s, &format!("198.51.100.{i}"), "/api/v2/hosts", "guess").await;
    }
    assert_eq!(
        via_proxy(&s, "198.51.100.200", "/api/v2/hosts", "guess").await,
        429,
        "the header is not believed: the peer is blocked"
    );
    // ...and a credential that verifies is served from that address all
    // the same, on every API and the dashboard's login.
    assert_eq!(via_proxy(&s, "x", "/api/v2/hosts", ADMIN).await, 200);
    let res = http()
        .get(s.u("/api/v1/command?hostname=legacy1"))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 200);
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(s.u("/ui/login"))
        .form(&[("token", ADMIN)])
        .go()
        .await;
    assert!(
        res.status().is_redirection(),
        "an operator logs in from a blocked address: {}",
        res.status()
    );
    let res = http()
        .post(s.u("/ui/login"))
        .form(&[("token", "guess")])
        .go()
        .await;
    assert_eq!(res.status(), 429);
    assert!(
        res.headers().contains_key("retry-after"),
        "the dashboard's 429 says when to retry"
    );
}

#[tokio::test]
async fn a_host_cannot_add_results_to_another_hosts_command() {
    let s = TestServer::start().await;
    let res = http()
        .post(s.u("/api/v2/commands"))
        .admin()
        .json(&json!({"kind": "stop", "target": {"hosts": ["hostb"]}}))
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let mut req = checkin_of("hosta");
    req.results = vec![CommandAck {
        id,
        hostname: String::new(),
        outcome: Outcome::Succeeded,
        message: "not mine".into(),
        at: String::new(),
    }];
    checkin_at(&s.url, &req, 0).await;
    let st: serde_json::Value = http()
        .get(s.u(&format!("/api/v2/commands/{id}")))
        .admin()
        .json_of()
        .await;
    assert_eq!(
        st["results"],
        json!([]),
        "hosta's result for hostb's command was not recorded: {st}"
    );
}

#[tokio::test]
async fn a_labels_write_without_assigned_or_for_an_unknown_host_changes_nothing() {
    let s = TestServer::start().await;
    checkin_at(&s.url, &checkin_of("web1"), 0).await;
    let put = |host: &str, body: serde_json::Value| {
        http()
            .put(s.u(&format!("/api/v2/hosts/{host}/labels")))
            .admin()
            .json(&body)
            .send()
    };
    let res = put("web1", json!({"assigned": {"tier": "gold"}}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for body in [
        json!({}),
        json!({"asigned": {}}),
        json!({"assigned": {}, "extra": 1}),
    ] {
        let res = put("web1", body.clone()).await.unwrap();
        assert_eq!(res.status(), 400, "{body}");
    }
    let res = put("nosuchhost", json!({"assigned": {"tier": "gold"}}))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let l: serde_json::Value = http()
        .get(s.u("/api/v2/hosts/web1/labels"))
        .admin()
        .json_of()
        .await;
    assert_eq!(l["assigned"], json!({"tier": "gold"}), "{l}");
    // What a GET answers may be sent back as it is.
    let mut back = l.clone();
    back["assigned"] = json!({"tier": "silver"});
    let res = put("web1", back).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn pages_and_assets_say_nosniff() {
    let s = TestServer::start().await;
    for path in ["/ui/login", "/ui/app.js", "/ui/app.css", "/api/v1/ping"] {
        let res = http().get(s.u(path)).go().await;
        assert_eq!(
            res.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}"
        );
        assert!(
            !res.headers().contains_key("strict-transport-security"),
            "no HSTS over plain HTTP"
        );
    }
}

/// The original server keeps a host's name as written: so do we, on the
/// wire and in the inventory (matched exactly, as it does).
#[tokio::test]
async fn a_legacy_host_name_is_kept_as_the_host_wrote_it() {
    let s = TestServer::start().await;
    let res = http()
        .get(s.u("/api/v1/command?hostname=Legacy-Win-01"))
        .agent()
        .go()
        .await;
    assert!(res.status().is_success());
    let agents: serde_json::Map<String, serde_json::Value> =
        http().get(s.u("/api/v1/agents")).admin().json_of().await;
    assert!(agents.contains_key("Legacy-Win-01"), "{agents:?}");
    assert!(!agents.contains_key("legacy-win-01"), "{agents:?}");
    let hosts: Vec<serde_json::Value> = http().get(s.u("/api/v2/hosts")).admin().json_of().await;
    assert!(
        hosts.iter().any(|h| h["hostname"] == "Legacy-Win-01"),
        "{hosts:?}"
    );
}

/// A watchdog archive with `palette-watchdog` stamped `stamp`.
fn watchdog_archive(stamp: &str, version_file: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in [
        (
            "palette-watchdog",
            palette_e2e::stamped("palette-watchdog", stamp),
        ),
        (
            "palette-manager",
            palette_e2e::stamped("palette-manager", stamp),
        ),
        ("VERSION", version_file.as_bytes().to_vec()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Issue: a watchdog release whose binaries say another version hung the
/// self-update of every host for over a minute. Refused at publish, naming
/// both versions, force or not.
#[tokio::test]
async fn a_watchdog_release_whose_binaries_say_another_version_is_refused() {
    let s = TestServer::start().await;
    let publish = |body: Vec<u8>, force: bool| {
        http()
            .post(s.u(&format!(
                "/api/v2/releases?product=watchdog&version=0.9.0&platform=linux-x86_64&kind=archive{}",
                if force { "&force=true" } else { "" }
            )))
            .admin()
            .body(body)
            .send()
    };
    for force in [false, true] {
        let res = publish(watchdog_archive("0.1.0", "0.9.0"), force)
            .await
            .unwrap();
        assert_eq!(res.status(), 422);
        let text = res.text().await.unwrap();
        assert!(
            text.contains("0.9.0") && text.contains("0.1.0") && text.contains("palette-watchdog"),
            "names the file and both versions: {text}"
        );
    }
    let releases: Vec<serde_json::Value> =
        http().get(s.u("/api/v2/releases")).admin().json_of().await;
    assert!(releases.is_empty(), "nothing published: {releases:?}");
    let res = publish(watchdog_archive("0.9.0", "0.9.0"), false)
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
}

/// With `--require-host-tokens` the enrollment key may only enroll, as the
/// README says: not list releases, not download artifacts.
#[tokio::test]
async fn with_required_host_tokens_the_enrollment_key_cannot_list_or_download() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |o| o.require_host_tokens = true).await;
    let rel = publish(&s, "1.0.0", "linux-x86_64", "installer", b"one").await;
    let res = http().get(s.u("/api/v2/releases")).agent().go().await;
    assert_eq!(res.status(), 403);
    let url = rel["url"].as_str().unwrap();
    let res = http().get(s.u(url)).agent().go().await;
    assert_eq!(res.status(), 403);
    // A host token may.
    let res = http()
        .post(s.u("/api/v2/enroll"))
        .agent()
        .json(&json!({"hostname": "web1"}))
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let token = res.json::<serde_json::Value>().await.unwrap()["host_token"]
        .as_str()
        .unwrap()
        .to_string();
    let res = http().get(s.u(url)).bearer_auth(&token).go().await;
    assert_eq!(res.status(), 200);
}
