//! Operating the server: /healthz, /readyz, /metrics (parsed as Prometheus
//! text, counters moving with real traffic).

use palette_protocol::v2::{
    AgentState, CheckinRequest, CommandAck, DesiredState, HostReport, Outcome, UpdateReport,
};

use crate::support::*;

fn report(host: &str, last_update: Option<UpdateReport>) -> HostReport {
    HostReport {
        hostname: host.into(),
        product: "agent".into(),
        platform: "linux-x86_64".into(),
        watchdog_version: "1.0.0".into(),
        agent_version: Some("1.0.0".parse().unwrap()),
        agent_state: AgentState::Running,
        desired_state: DesiredState::Running,
        config_revision: None,
        last_update,
        last_watchdog_update: None,
        local_trouble: None,
        update_progress: None,
        labels: Default::default(),
    }
}

async fn scrape(s: &TestServer) -> prometheus_parse::Scrape {
    let res = http().get(s.u("/metrics")).admin().go().await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

/// The value of `name` (with `label=value` when given); a histogram gives
/// its total count.
fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn health_readiness_and_metrics_that_move_with_traffic() {
    let s = TestServer::start().await;
    assert_eq!(http().get(s.u("/healthz")).go().await.status(), 200);
    let index = http().get(s.u("/")).go().await;
    assert_eq!(index.status(), 200);
    assert!(index.text().await.unwrap().contains("/api/v2"));
    assert_eq!(http().get(s.u("/readyz")).go().await.status(), 200);
    // Metrics need an operator credential.
    assert_eq!(http().get(s.u("/metrics")).go().await.status(), 401);
    assert_eq!(http().get(s.u("/metrics")).agent().go().await.status(), 401);
    let before = scrape(&s).await;
    assert_eq!(value(&before, "palette_checkins_total", None), 0.0);

    // Traffic: an artifact published and downloaded, a command issued and
    // acknowledged, a host reporting an update outcome, a bad credential.
    let body = vec![5u8; 4096];
    let rel = publish(&s, "2.0.0", "linux-x86_64", "archive", &body).await;
    let res = http()
        .get(s.u(rel["url"].as_str().unwrap()))
        .agent()
        .go()
        .await;
    assert_eq!(res.bytes().await.unwrap().len(), 4096);
    let cmd: serde_json::Value = http()
        .post(s.u("/api/v2/commands"))
        .admin()
        .json(&serde_json::json!({"kind": "restart", "target": "all"}))
        .json_of()
        .await;
    let id = cmd["id"].as_i64().unwrap();
    let update = UpdateReport {
        release_id: rel["id"].as_i64().unwrap(),
        version: "2.0.0".parse().unwrap(),
        outcome: Outcome::Succeeded,
        message: "ok".into(),
    };
    let req = CheckinRequest {
        host: report("web1", Some(update)),
        store_id: None,
        results: vec![CommandAck {
            id,
            hostname: "web1".into(),
            outcome: Outcome::Succeeded,
            message: "done".into(),
            at: String::new(),
        }],
        seen_release: None,
        seen_config: None,
        seen_watchdog_release: None,
    };
    for _ in 0..2 {
        let res = http()
            .post(s.u("/api/v2/checkin"))
            .agent()
            .json(&req)
            .go()
            .await;
        assert_eq!(res.status(), 200);
    }
    let res = http()
        .get(s.u("/api/v2/hosts"))
        .bearer_auth("wrong-token")
        .go()
        .await;
    assert_eq!(res.status(), 401);

    let after = scrape(&s).await;
    assert_eq!(value(&after, "palette_checkins_total", None), 2.0);
    assert!(value(&after, "palette_auth_failures_total", None) >= 3.0);
    assert_eq!(
        value(&after, "palette_artifact_bytes_served_total", None),
        4096.0
    );
    assert_eq!(
        value(&after, "palette_command_ack_latency_seconds", None),
        1.0,
        "one first acknowledgement (the second is a duplicate)"
    );
    assert_eq!(
        value(
            &after,
            "palette_update_outcomes_total",
            Some(("outcome", "succeeded"))
        ),
        1.0,
        "an outcome reported twice counts once"
    );
    assert_eq!(
        value(&after, "palette_hosts", Some(("state", "online"))),
        1.0
    );
    for state in ["stale", "offline"] {
        assert_eq!(
            value(&after, "palette_hosts", Some(("state", state))),
            0.0,
            "{state}"
        );
    }
    assert_eq!(
        value(
            &after,
            "palette_hosts_by_agent_version",
            Some(("version", "1.0.0"))
        ),
        1.0
    );
    assert_eq!(value(&after, "palette_releases", None), 1.0);
    assert_eq!(value(&after, "palette_long_polls_in_flight", None), 0.0);
    s.stop().await;
}
