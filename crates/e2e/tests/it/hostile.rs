//! The real watchdog against hostile stand-in servers: release URLs that
//! point elsewhere, floods of commands, answers that come back at once.

use palette_e2e::*;
use std::sync::Arc;

use super::T;

/// Issue 22, item 5: a release whose URL names another origin (or a
/// same-origin URL that redirects to one) never receives the enrolment
/// key or the host token; the check-in origin still gets its credential.
#[tokio::test]
async fn credentials_never_go_to_another_origin_a_release_names() {
    for (how, enrolls) in [("absolute", true), ("absolute", false), ("redirect", true)] {
        let stranger = Arc::new(FakeHttp::start(|_| Answer::status(404)).await);
        let target = format!("{}/api/v2/releases/1/download", stranger.url);
        let offer_url = if how == "absolute" {
            target.clone()
        } else {
            "/api/v2/releases/1/download".to_string()
        };
        let offer = release_offer(1, "agent", "2.0.0", &offer_url, &"ab".repeat(32), 1000);
        let server = FakeHttp::start(move |r| {
            if r.path.starts_with("/api/v2/checkin") {
                Answer::json(format!(
                    r#"{{"store_id":"fake","commands":[],"release":{offer},"config_revision":null}}"#
                ))
            } else if r.path.starts_with("/api/v2/enroll") && enrolls {
                Answer::json(r#"{"host_token":"secret-host-token"}"#)
            } else if r.path.starts_with("/api/v2/releases/1/download") {
                let mut a = Answer::status(302);
                a.headers.push(("location".into(), target.clone()));
                a
            } else {
                Answer::status(404)
            }
        })
        .await;
        let mut host = Host::new(&format!("leak-{how}-{enrolls}"), &server.url, "v2", "");
        host.start();
        let s = stranger.clone();
        wait_for("the stranger is asked for the release", T, || async {
            !s.requests().is_empty()
        })
        .await
        .unwrap_or_else(|e| panic!("{how}/{enrolls}: {e:#}\n{}", host.diagnostics()));
        for r in stranger.requests() {
            assert_eq!(
                r.header("authorization"),
                None,
                "{how}/{enrolls}: a credential went to {} {}",
                r.method,
                r.path
            );
            for (n, v) in &r.headers {
                assert!(
                    !v.contains(AGENT_KEY) && !v.contains("secret-host-token"),
                    "{how}/{enrolls}: header {n} carries a secret"
                );
            }
        }
        let checkin = server
            .requests()
            .into_iter()
            .find(|r| r.path.starts_with("/api/v2/checkin"))
            .expect("a check-in");
        let want = if enrolls {
            "Bearer secret-host-token".to_string()
        } else {
            format!("Token {AGENT_KEY}")
        };
        assert_eq!(checkin.header("authorization"), Some(want.as_str()));
        if how == "redirect" {
            let asked = server
                .requests()
                .into_iter()
                .find(|r| r.path.starts_with("/api/v2/releases/1/download"))
                .expect("the same-origin download");
            assert_eq!(asked.header("authorization"), Some(want.as_str()));
        }
        host.stop();
    }
}
