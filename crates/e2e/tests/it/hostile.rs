//! The real watchdog against hostile stand-in servers: release URLs that
//! point elsewhere, floods of commands, answers that come back at once.

use palette_e2e::*;
use std::sync::Arc;
use std::time::Duration;

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

/// The check-ins a stand-in server received, in order.
fn checkins(server: &FakeHttp) -> Vec<Recorded> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/v2/checkin"))
        .collect()
}

/// Bytes the process has written (write calls, any file).
fn written_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Issue 22, item 10: every check-in answer carries 30,000 valid
/// commands (and the server never takes an acknowledgement). The watchdog
/// keeps checking in, takes a bounded batch per answer with one state write
/// per batch, and holds a bounded number of acknowledgements.
#[tokio::test]
async fn thirty_thousand_commands_in_one_answer_are_taken_in_bounded_batches() {
    let commands: Vec<String> = (1..=30_000)
        .map(|id| {
            format!(
                r#"{{"id":{id},"kind":"start","issued_at":"2026-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z"}}"#
            )
        })
        .collect();
    let answer = format!(
        r#"{{"store_id":"flood","commands":[{}],"release":null,"config_revision":null}}"#,
        commands.join(",")
    );
    let server = FakeHttp::start(move |r| {
        if r.path.starts_with("/api/v2/checkin") {
            Answer::json(answer.clone())
        } else {
            Answer::status(404)
        }
    })
    .await;
    let mut host = Host::new("flooded", &server.url, "v2", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let pid = host.watchdog_pid().unwrap();
    wait_for("six check-ins", Duration::from_secs(60), || async {
        checkins(&server).len() >= 6
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    for c in checkins(&server) {
        let body: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
        let acks = body["results"].as_array().map_or(0, Vec::len);
        assert!(acks <= 256, "a check-in carries {acks} acknowledgements");
    }
    let state = std::fs::metadata(host.base.join("state/watchdog.json"))
        .unwrap()
        .len();
    assert!(state < 1 << 20, "state/watchdog.json is {state} bytes");
    // Before: the whole state rewritten per command (gigabytes).
    let written = written_bytes(pid);
    assert!(
        written < 64 << 20,
        "the watchdog wrote {} MiB",
        written >> 20
    );
    host.stop();
}

/// Issue 22, item 11: a server that answers every check-in at once (no
/// long poll) cannot make the host spin: check-ins start at least a second
/// apart.
#[tokio::test]
async fn a_server_answering_at_once_gets_at_most_one_check_in_a_second() {
    let server = FakeHttp::start(|r| {
        if r.path.starts_with("/api/v2/checkin") {
            Answer::json(
                r#"{"store_id":"eager","commands":[],"release":null,"config_revision":null}"#,
            )
        } else {
            Answer::status(404)
        }
    })
    .await;
    let mut host = Host::new("eager", &server.url, "v2", "");
    host.start();
    wait_for("six check-ins", Duration::from_secs(60), || async {
        checkins(&server).len() >= 6
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", host.diagnostics()));
    let c = checkins(&server);
    // The floor is 1 s between starts. What the server sees is when each
    // arrived, and on a loaded machine one may arrive late, so a single gap
    // proves nothing: over any run of check-ins, all but one second of the
    // floor must show (a watchdog that spins sends six in milliseconds).
    for i in 0..c.len() {
        for j in i + 2..c.len() {
            let span = c[j].at.duration_since(c[i].at);
            let floor = Duration::from_secs((j - i - 1) as u64);
            assert!(
                span >= floor,
                "check-ins {i} and {j} only {span:?} apart (the floor allows no less than {floor:?})"
            );
        }
    }
    host.stop();
}
