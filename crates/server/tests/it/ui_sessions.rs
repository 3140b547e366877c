//! Dashboard sessions live in the store, as hashes: they outlast a restart,
//! end with a logout or with their token's revocation, and (on PostgreSQL)
//! a session made on one replica is good on another until a logout on
//! either ends it on both.

use crate::support::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in with `token` on `url`; the session cookie's value.
async fn login(url: &str, token: &str) -> String {
    let res = client()
        .post(format!("{url}/ui/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = res
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap();
    let (kv, _) = cookie.split_once(';').unwrap();
    kv.strip_prefix("palette_session=").unwrap().to_string()
}

/// `GET /ui/` with the session: its CSRF token when the page is served,
/// `None` when sent to the login page.
async fn fleet_page(url: &str, sid: &str) -> Option<String> {
    let res = client()
        .get(format!("{url}/ui/"))
        .header(reqwest::header::COOKIE, format!("palette_session={sid}"))
        .send()
        .await
        .unwrap();
    match res.status().as_u16() {
        200 => {
            let page = res.text().await.unwrap();
            let (_, rest) = page.split_once(r#"name="csrf" value=""#).unwrap();
            Some(rest.split_once('"').unwrap().0.to_string())
        }
        303 => None,
        other => panic!("GET /ui/ answered {other}"),
    }
}

async fn logout(url: &str, sid: &str, csrf: &str) -> u16 {
    let res = client()
        .post(format!("{url}/ui/logout"))
        .header(reqwest::header::COOKIE, format!("palette_session={sid}"))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    res.status().as_u16()
}

#[tokio::test]
async fn a_dashboard_session_outlasts_a_restart_and_ends_with_logout_or_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_with(&data, |_| {}).await;
    let sid = login(&s.url, ADMIN).await;
    assert!(fleet_page(&s.url, &sid).await.is_some());
    s.stop().await;

    let s = TestServer::start_with(&data, |_| {}).await;
    let csrf = fleet_page(&s.url, &sid)
        .await
        .expect("the session outlasted the restart");
    if !on_postgres() {
        // Only its hash is stored.
        let mut db = std::fs::read(data.join("palette.db")).unwrap();
        db.extend(std::fs::read(data.join("palette.db-wal")).unwrap_or_default());
        assert!(!db.windows(sid.len()).any(|w| w == sid.as_bytes()));
    }
    // A forged CSRF token does not log out.
    assert_eq!(logout(&s.url, &sid, "forged").await, 403);
    assert!(fleet_page(&s.url, &sid).await.is_some());
    assert_eq!(logout(&s.url, &sid, &csrf).await, 303);
    assert!(fleet_page(&s.url, &sid).await.is_none(), "logged out");

    // A session of a token revoked later ends at once.
    let made: serde_json::Value = http()
        .post(s.u("/api/v2/operator-tokens"))
        .admin()
        .json(&serde_json::json!({"label": "night-shift"}))
        .json_of()
        .await;
    let sid = login(&s.url, made["token"].as_str().unwrap()).await;
    assert!(fleet_page(&s.url, &sid).await.is_some());
    let tokens: Vec<serde_json::Value> = http().get(s.u("/api/v2/tokens")).admin().json_of().await;
    let id = tokens.iter().find(|t| t["label"] == "night-shift").unwrap()["id"]
        .as_i64()
        .unwrap();
    let res = http()
        .post(s.u(&format!("/api/v2/tokens/operator/{id}/revoke")))
        .admin()
        .go()
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    assert!(fleet_page(&s.url, &sid).await.is_none(), "revoked");
    // A cookie nobody issued is no session.
    assert!(fleet_page(&s.url, &"0".repeat(64)).await.is_none());
    s.stop().await;
}

#[tokio::test]
async fn a_dashboard_session_is_good_on_every_replica_until_a_logout_on_one() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((a, b)) = replica_pair(&tmp.path().join("shared")).await else {
        return;
    };
    let sid = login(&a.url, ADMIN).await;
    let csrf = fleet_page(&b.url, &sid)
        .await
        .expect("A's session is good on B");
    assert_eq!(logout(&b.url, &sid, &csrf).await, 303);
    assert!(
        fleet_page(&a.url, &sid).await.is_none(),
        "logged out on A too"
    );
    b.stop().await;
}

/// The fleet page's version history is in the store: a restarted server
/// shows the samples taken before the restart.
#[tokio::test]
async fn the_version_history_outlasts_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_with(&data, |_| {}).await;
    checkin_at(&s.url, &checkin_of("sampled"), 0).await;
    let sid = login(&s.url, ADMIN).await;
    let page = |url: String, sid: String| async move {
        client()
            .get(format!("{url}/ui/"))
            .header(reqwest::header::COOKIE, format!("palette_session={sid}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let first = loop {
        let text = page(s.url.clone(), sid.clone()).await;
        if let Some((_, rest)) = text.split_once(" — from ") {
            break rest.split_once(' ').unwrap().0.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no version sample");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    s.stop().await;
    let s = TestServer::start_with(&data, |_| {}).await;
    let text = page(s.url.clone(), sid.clone()).await;
    assert!(
        text.contains(&format!(" — from {first} ")),
        "the sample of {first} is gone after the restart"
    );
    s.stop().await;
}
