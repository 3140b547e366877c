//! Every row of the legacy v1 reference table, and every legacy defect fix.

use std::collections::HashSet;
use std::time::Duration;

use md5::Digest;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;

use crate::support::*;

fn assert_no_cache(res: &reqwest::Response) {
    let h = res.headers();
    assert_eq!(h["cache-control"], "no-cache, no-store, must-revalidate");
    assert_eq!(h["pragma"], "no-cache");
    assert_eq!(h["expires"], "0");
}

#[tokio::test]
async fn ping_license_and_caching_headers() {
    let s = TestServer::start().await;
    let res = http().get(s.u("/api/v1/ping")).go().await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_no_cache(&res);
    assert_eq!(res.text().await.unwrap(), "PONG\n");

    for auth in [None, Some("Token wrong-key"), Some("Basic abc")] {
        let mut rb = http().get(s.u("/api/v1/license"));
        if let Some(a) = auth {
            rb = rb.header(AUTHORIZATION, a);
        }
        let res = rb.go().await;
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(res.text().await.unwrap(), "Not authorized\n");
    }
    // License keys compare case-insensitively.
    let res = http()
        .get(s.u("/api/v1/license"))
        .header(AUTHORIZATION, format!("Token {}", AGENT.to_uppercase()))
        .go()
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(
        res.text().await.unwrap(),
        "{\"trial\":false,\"expiration-time\":\"9999-12-31 23:59:59.999999\",\"id\":0,\"stage\":\"Free\",\"owner\":\"none\",\"name\":\"none\",\"valid\":true}\n"
    );
}

#[tokio::test]
async fn unknown_path_and_wrong_method() {
    let s = TestServer::start().await;
    let res = http().get(s.u("/no/such/path")).go().await;
    assert_eq!(res.status(), 404);
    assert_no_cache(&res);
    assert_eq!(res.text().await.unwrap(), "404 page not found\n");
    let res = http().delete(s.u("/api/v1/ping")).go().await;
    assert_eq!(res.status(), 405);
    assert_eq!(res.text().await.unwrap(), "");
}

#[tokio::test]
async fn agent_version_and_download_with_ranges() {
    let s = TestServer::start().await;
    let res = http().get(s.u("/api/v1/agent/version")).agent().go().await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.text().await.unwrap(), "No latest version found yet\n");
    assert_eq!(
        http().get(s.u("/api/v1/agent/version")).go().await.status(),
        401
    );

    let msi: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    publish(&s, "2.3.4", "windows-x86_64", "msi", &msi).await;
    publish(&s, "2.3.3", "windows-x86_64", "msi", b"older").await;
    publish(&s, "9.0.0", "linux-x86_64", "archive", b"not an msi").await;
    let md5 = hex::encode(md5::Md5::digest(&msi));
    let res = http().get(s.u("/api/v1/agent/version")).agent().go().await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(
        res.text().await.unwrap(),
        format!("{{\"Major\":2,\"Minor\":3,\"Patch\":4,\"Product\":\"Agent\",\"Md5\":\"{md5}\",\"Url\":\"/api/v1/agent\"}}\n")
    );

    let res = http().get(s.u("/api/v1/agent")).agent().go().await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/octet-stream");
    assert_eq!(res.headers()["accept-ranges"], "bytes");
    assert!(res.headers().contains_key("last-modified"));
    assert_eq!(res.headers()["content-length"], "10000");
    assert_eq!(res.bytes().await.unwrap().to_vec(), msi);

    let res = http()
        .get(s.u("/api/v1/agent"))
        .agent()
        .header("range", "bytes=10-19")
        .go()
        .await;
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap().to_vec(), msi[10..20].to_vec());
    let res = http()
        .get(s.u("/api/v1/agent"))
        .agent()
        .header("range", "bytes=20000-")
        .go()
        .await;
    assert_eq!(res.status(), 416);
    let res = http().head(s.u("/api/v1/agent")).agent().go().await;
    assert_eq!(res.status(), 200);
    assert_eq!(http().get(s.u("/api/v1/agent")).go().await.status(), 401);

    let res = http()
        .get(s.u("/updates/products/agent/2.3.3/agent.msi"))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"older");
    let res = http()
        .get(s.u("/updates/products/agent/7.7.7/agent.msi"))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn commands_need_an_operator_and_are_exact() {
    let s = TestServer::start().await;
    let res = http().get(s.u("/api/v1/command")).agent().go().await;
    assert_eq!(res.status(), 204);
    assert_eq!(res.text().await.unwrap(), "");

    // The legacy defect: anyone could stop the fleet. Not any more.
    let res = http()
        .put(s.u("/api/v1/command"))
        .form(&[("command", "stop")])
        .go()
        .await;
    assert_eq!(res.status(), 401);
    let res = http()
        .put(s.u("/api/v1/command"))
        .agent()
        .form(&[("command", "stop")])
        .go()
        .await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        http()
            .get(s.u("/api/v1/command"))
            .agent()
            .go()
            .await
            .status(),
        204,
        "nothing was stored"
    );

    let res = http()
        .put(s.u("/api/v1/command"))
        .admin()
        .form(&[("other", "x")])
        .go()
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.text().await.unwrap(), "No 'command' parameter given\n");
    let res = http()
        .put(s.u("/api/v1/command"))
        .admin()
        .form(&[("command", "reboot")])
        .go()
        .await;
    assert_eq!(res.status(), 400);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Unknown command \"reboot\""));
    let res = http()
        .put(s.u("/api/v1/command"))
        .admin()
        .form(&[("command", "STOP")])
        .go()
        .await;
    assert_eq!(res.status(), 400, "command words are case-sensitive");

    let res = http()
        .put(s.u("/api/v1/command"))
        .admin()
        .form(&[("command", "stop")])
        .go()
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    let put = res.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&put).unwrap();
    assert_eq!(v["command"], "stop");
    let ts = v["ts"].as_str().unwrap();
    assert!(
        ts.len() == 20 && ts.ends_with('Z'),
        "whole-second RFC 3339: {ts}"
    );
    assert_eq!(put, format!("{{\"ts\":\"{ts}\",\"command\":\"stop\"}}\n"));
    let res = http().get(s.u("/api/v1/command")).agent().go().await;
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    assert_eq!(res.text().await.unwrap(), put);

    // Multipart works too, and two commands in one second get distinct ts.
    let form = reqwest::multipart::Form::new().text("command", "start");
    let res = http()
        .put(s.u("/api/v1/command"))
        .admin()
        .multipart(form)
        .go()
        .await;
    assert_eq!(res.status(), 200);
    let v2: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v2["command"], "start");
    assert_ne!(v2["ts"], v["ts"]);
    // The legacy aliases.
    let res = http()
        .post(s.u("/commands/new"))
        .admin()
        .form(&[("command", "GET-CONFIG")])
        .go()
        .await;
    assert_eq!(res.status(), 200);
    let res = http().post(s.u("/commands/recent")).agent().go().await;
    let v3: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v3["command"], "GET-CONFIG");
}

#[tokio::test]
async fn hostnames_are_validated_everywhere() {
    let s = TestServer::start().await;
    for bad in [
        "../x",
        "%2e%2e%2f",
        "..%2F..%2Fetc",
        "a%zz",
        "a/b",
        "-x",
        "",
    ] {
        for path in ["/api/v1/command", "/api/v1/config", "/api/v1/ping"] {
            let res = http()
                .get(s.u(&format!("{path}?hostname={bad}")))
                .agent()
                .go()
                .await;
            assert_eq!(res.status(), 400, "{path}?hostname={bad}");
            assert!(res.text().await.unwrap().contains("hostname"));
        }
    }
    let form = reqwest::multipart::Form::new()
        .text("hostname", "../../etc")
        .part(
            "uploadfile",
            reqwest::multipart::Part::bytes(b"x: 1\n".to_vec()),
        );
    let res = http()
        .put(s.u("/api/v1/config"))
        .admin()
        .multipart(form)
        .go()
        .await;
    assert_eq!(res.status(), 400);
    assert!(!s.data.join("etc").exists());
}

fn upload(host: Option<&str>, body: &[u8]) -> reqwest::multipart::Form {
    let mut f = reqwest::multipart::Form::new();
    if let Some(h) = host {
        f = f.text("hostname", h.to_string());
    }
    f.part(
        "uploadfile",
        reqwest::multipart::Part::bytes(body.to_vec()).file_name("Config.yml"),
    )
}

#[tokio::test]
async fn config_store_and_serve() {
    let s = TestServer::start().await;
    let res = http().get(s.u("/api/v1/config")).agent().go().await;
    assert_eq!(res.status(), 400);
    let res = http()
        .get(s.u("/api/v1/config?hostname=web1"))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 404);

    let body = b"# keep this comment\nLicenseKey: k\nWebservice:\n  Endpoint: http://x\nAgentOnly: {a: 1}\n";
    let res = http()
        .put(s.u("/api/v1/config?hostname=web1"))
        .admin()
        .multipart(upload(None, body))
        .go()
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.text().await.unwrap(),
        format!(
            "Successfully stored Config.yml for web1. Written bytes: {}\n",
            body.len()
        )
    );
    let res = http()
        .get(s.u("/api/v1/config?hostname=WEB1"))
        .agent()
        .go()
        .await;
    assert_eq!(
        res.status(),
        404,
        "names are case-sensitive, as on the original server"
    );
    let res = http()
        .get(s.u("/api/v1/config?hostname=web1"))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        body,
        "bytes pass through untouched"
    );

    // hostname as a form field
    let res = http()
        .put(s.u("/api/v1/config"))
        .admin()
        .multipart(upload(Some("web2"), b"a: 1\n"))
        .go()
        .await;
    assert_eq!(res.status(), 200);
    // Missing hostname, missing file part, malformed multipart, oversized.
    let res = http()
        .put(s.u("/api/v1/config"))
        .admin()
        .multipart(upload(None, b"a: 1\n"))
        .go()
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.text().await.unwrap(), "No 'hostname' parameter given\n");
    let form = reqwest::multipart::Form::new().text("other", "x");
    let res = http()
        .put(s.u("/api/v1/config?hostname=web1"))
        .admin()
        .multipart(form)
        .go()
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.text().await.unwrap(),
        "No 'uploadfile' file part given\n"
    );
    let res = http()
        .put(s.u("/api/v1/config?hostname=web1"))
        .admin()
        .header(CONTENT_TYPE, "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"uploadfile\"\r\n\r\nunterminated")
        .go()
        .await;
    assert_eq!(res.status(), 400);
    let huge = vec![b'a'; 2 * 1024 * 1024];
    let res = http()
        .put(s.u("/api/v1/config?hostname=web1"))
        .admin()
        .multipart(upload(None, &huge))
        .go()
        .await;
    assert_eq!(res.status(), 413);
    let res = http()
        .get(s.u("/api/v1/config?hostname=web1"))
        .agent()
        .go()
        .await;
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        body,
        "a refused upload changes nothing"
    );
}

#[tokio::test]
async fn tokenless_upload_only_when_asked_and_no_operator_command_is_lost() {
    let s = TestServer::start().await;
    // An operator stores web2's config and issues a fleet command.
    let res = http()
        .put(s.u("/api/v1/config?hostname=web2"))
        .admin()
        .multipart(upload(None, b"a: 2\n"))
        .go()
        .await;
    assert_eq!(res.status(), 200);
    let res = http()
        .put(s.u("/api/v1/command"))
        .admin()
        .form(&[("command", "stop")])
        .go()
        .await;
    let op: serde_json::Value = res.json().await.unwrap();

    // A token-less upload for a host nobody asked: refused.
    let res = http()
        .put(s.u("/api/v1/config?hostname=web2"))
        .multipart(upload(None, b"evil: 1\n"))
        .go()
        .await;
    assert_eq!(res.status(), 401);

    // web1 is new and has no config: only web1 is asked for PUT-CONFIG...
    let _ = http()
        .get(s.u("/api/v1/ping?hostname=web1"))
        .agent()
        .go()
        .await;
    let v: serde_json::Value = http()
        .get(s.u("/api/v1/command?hostname=web1"))
        .agent()
        .json_of()
        .await;
    assert_eq!(v["command"], "PUT-CONFIG");
    // ...web2 still sees the operator's command.
    let v2: serde_json::Value = http()
        .get(s.u("/api/v1/command?hostname=web2"))
        .agent()
        .json_of()
        .await;
    assert_eq!(v2, op);
    // The legacy watchdog uploads without a credential: accepted as REPORTED.
    let res = http()
        .put(s.u("/api/v1/config?hostname=web1"))
        .multipart(upload(None, b"mine: 1\n"))
        .go()
        .await;
    assert_eq!(res.status(), 200);
    let res = http()
        .get(s.u("/api/v2/hosts/web1/configs"))
        .admin()
        .go()
        .await;
    let hist: serde_json::Value = res.json().await.unwrap();
    assert_eq!(hist[0]["source"], "reported");
    // Now web1 gets the operator's command too.
    let v: serde_json::Value = http()
        .get(s.u("/api/v1/command?hostname=web1"))
        .agent()
        .json_of()
        .await;
    assert_eq!(v, op);
    // And a second token-less upload is refused again.
    let res = http()
        .put(s.u("/api/v1/config?hostname=web1"))
        .multipart(upload(None, b"again: 1\n"))
        .go()
        .await;
    assert_eq!(res.status(), 401);

    // An operator GET-CONFIG for all is not enough by itself...
    http()
        .put(s.u("/api/v1/command"))
        .admin()
        .form(&[("command", "GET-CONFIG")])
        .go()
        .await;
    let res = http()
        .put(s.u("/api/v1/config?hostname=web2"))
        .multipart(upload(None, b"a: 2\n"))
        .go()
        .await;
    assert_eq!(res.status(), 401, "web2 has not been told GET-CONFIG yet");
    // ...web2's own poll, answered GET-CONFIG, opens the door once.
    let v: serde_json::Value = http()
        .get(s.u("/api/v1/command?hostname=web2"))
        .agent()
        .json_of()
        .await;
    assert_eq!(v["command"], "GET-CONFIG");
    let res = http()
        .put(s.u("/api/v1/config?hostname=web2"))
        .multipart(upload(None, b"a: 2\n"))
        .go()
        .await;
    assert_eq!(res.status(), 200);
    // The same command redelivered does not open it again.
    let v: serde_json::Value = http()
        .get(s.u("/api/v1/command?hostname=web2"))
        .agent()
        .json_of()
        .await;
    assert_eq!(v["command"], "GET-CONFIG");
    let res = http()
        .put(s.u("/api/v1/config?hostname=web2"))
        .multipart(upload(None, b"evil: 2\n"))
        .go()
        .await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn agents_list_is_operator_only_and_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    for h in ["alpha", "beta.example.com"] {
        http()
            .get(s.u(&format!("/api/v1/command?hostname={h}")))
            .agent()
            .go()
            .await;
    }
    // Without a known token, a hostname is no heartbeat.
    http().get(s.u("/api/v1/ping?hostname=intruder")).go().await;
    assert_eq!(
        http()
            .get(s.u("/api/v1/agents"))
            .agent()
            .go()
            .await
            .status(),
        403
    );
    assert_eq!(http().get(s.u("/api/v1/agents")).go().await.status(), 401);
    let res = http().get(s.u("/api/v1/agents")).admin().go().await;
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    let map: serde_json::Map<String, serde_json::Value> = res.json().await.unwrap();
    let names: HashSet<&str> = map.keys().map(String::as_str).collect();
    assert_eq!(names, HashSet::from(["alpha", "beta.example.com"]));
    palette_protocol::timefmt::parse_rfc3339(map["alpha"].as_str().unwrap()).unwrap();

    // Restart on the same data dir: the inventory is still there.
    s.stop().await;
    let s = TestServer::start_with(tmp.path(), |_| {}).await;
    let map: serde_json::Map<String, serde_json::Value> =
        http().get(s.u("/api/v1/agents")).admin().json_of().await;
    assert!(
        map.contains_key("alpha") && map.contains_key("beta.example.com"),
        "{map:?}"
    );
}

/// The legacy server died with two concurrent heartbeating clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_heartbeats_from_256_clients() {
    let s = TestServer::start().await;
    http()
        .put(s.u("/api/v1/command"))
        .admin()
        .form(&[("command", "start")])
        .go()
        .await;
    let mut tasks = Vec::new();
    for i in 0..256 {
        let url = s.url.clone();
        tasks.push(tokio::spawn(async move {
            let c = http();
            for round in 0..5 {
                let res = c
                    .get(format!("{url}/api/v1/command?hostname=host-{i:03}"))
                    .header(AUTHORIZATION, format!("Token {AGENT}"))
                    .go()
                    .await;
                assert_eq!(res.status(), StatusCode::OK, "host-{i:03} round {round}");
                let _ = res.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(http().get(s.u("/api/v1/ping")).go().await.status(), 200);
    let map: serde_json::Map<String, serde_json::Value> =
        http().get(s.u("/api/v1/agents")).admin().json_of().await;
    for i in 0..256 {
        assert!(
            map.contains_key(&format!("host-{i:03}")),
            "host-{i:03} missing"
        );
    }
    // And it is all on disk after a graceful stop.
    let data = s.data.clone();
    let keep = s.stop().await;
    let s = TestServer::start_with(&data, |_| {}).await;
    let map: serde_json::Map<String, serde_json::Value> =
        http().get(s.u("/api/v1/agents")).admin().json_of().await;
    assert_eq!(map.len(), 256);
    drop(keep);
}

/// Guessing license keys on the v1 API is limited per address as on v2:
/// the address goes 429 (with Retry-After), another address's correct key
/// is untouched, and the block ends by itself.
#[tokio::test]
async fn failed_authentications_are_rate_limited_per_address_on_v1_too() {
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
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let (a, b) = (from("127.0.0.1"), from("127.0.0.3"));
    let url = s.u("/api/v1/command?hostname=web-1");
    let guess = |c: &reqwest::Client| {
        c.get(&url)
            .header(reqwest::header::AUTHORIZATION, "Token a-guess")
            .send()
    };
    for _ in 0..6 {
        assert_eq!(guess(&a).await.unwrap().status(), 401);
    }
    // Over the limit: the next guess is refused before any check and told
    // when to come back; the right key is served (what fails is limited,
    // not what succeeds: behind a load balancer a fleet shares one
    // address).
    let r = guess(&a).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let r = a.get(&url).agent().send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Another address: its right key works, its guesses get the usual 401.
    assert!(b
        .get(&url)
        .agent()
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    assert_eq!(guess(&b).await.unwrap().status(), 401);
    // Requests without a credential are not counted nor blocked.
    assert_eq!(
        a.get(s.u("/api/v1/ping")).send().await.unwrap().status(),
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = a.get(&url).agent().send().await.unwrap();
        if r.status().is_success() {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the block never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
