//! Rollouts, pins, windows and labels over the v2 API: every bad input is
//! refused with its reason and changes nothing; only operators may act;
//! labels reach selectors; held releases are offered to nobody.

use palette_protocol::v2::*;

use crate::support::*;

fn report(host: &str, labels: &[(&str, &str)]) -> CheckinRequest {
    CheckinRequest {
        host: HostReport {
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
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        store_id: None,
        results: vec![],
        seen_release: None,
        seen_config: None,
        seen_watchdog_release: None,
    }
}

async fn checkin(s: &TestServer, req: &CheckinRequest) -> CheckinResponse {
    let res = http()
        .post(s.u("/api/v2/checkin?wait=0"))
        .agent()
        .json(req)
        .go()
        .await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn post(s: &TestServer, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let res = http().post(s.u(path)).admin().json(&body).go().await;
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn bad_rollouts_pins_windows_and_labels_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let rel = publish(&s, "2.0.0", "linux-x86_64", "archive", b"two").await;
    let id = rel["id"].clone();
    for (body, why) in [
        (serde_json::json!({"release_id": 999}), "no release 999"),
        (
            serde_json::json!({"release_id": id, "waves": ["0"]}),
            "not a wave size",
        ),
        (
            serde_json::json!({"release_id": id, "waves": ["abc"]}),
            "not a wave size",
        ),
        (
            serde_json::json!({"release_id": id, "selector": "role==web"}),
            "label value",
        ),
        (
            serde_json::json!({"release_id": id, "halt_after": "0"}),
            "halt_after",
        ),
        (
            serde_json::json!({"release_id": id, "soak_secs": 99_999_999}),
            "30 days",
        ),
    ] {
        let (status, v) = post(&s, "/api/v2/rollouts", body.clone()).await;
        assert!(status == 400 || status == 404, "{body}: {status}");
        assert!(v["error"].as_str().unwrap().contains(why), "{body}: {v}");
    }
    let list: Vec<serde_json::Value> = http().get(s.u("/api/v2/rollouts")).admin().json_of().await;
    assert!(list.is_empty());
    // Only operators.
    let r = http()
        .post(s.u("/api/v2/rollouts"))
        .agent()
        .json(&serde_json::json!({"release_id": id}))
        .go()
        .await;
    assert_eq!(r.status(), 403);
    let r = http().get(s.u("/api/v2/rollouts")).go().await;
    assert_eq!(r.status(), 401);
    // A second active rollout of the same release: 409.
    let (status, _) = post(
        &s,
        "/api/v2/rollouts",
        serde_json::json!({"release_id": id, "waves": ["1", "100%"], "soak_secs": 3600}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, v) = post(
        &s,
        "/api/v2/rollouts",
        serde_json::json!({"release_id": id}),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    let r = http()
        .post(s.u("/api/v2/rollouts/1/explode"))
        .admin()
        .go()
        .await;
    assert_eq!(r.status(), 404);

    for (body, why) in [
        (
            serde_json::json!({"selector": "", "version": "1.0.0"}),
            "needs a selector",
        ),
        (
            serde_json::json!({"selector": "a=b", "version": "one"}),
            "MAJOR.MINOR.PATCH",
        ),
    ] {
        let (status, v) = post(&s, "/api/v2/pins", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(v["error"].as_str().unwrap().contains(why), "{v}");
    }
    for (body, why) in [
        (
            serde_json::json!({"selector": "a=b", "schedule": "Sat 01:00-05:00", "tz": "Mars/Base"}),
            "time zone",
        ),
        (
            serde_json::json!({"selector": "a=b", "schedule": "Caturday 01:00-05:00"}),
            "not a day",
        ),
        (
            serde_json::json!({"selector": "a=b", "schedule": "Sat 26:00-05:00"}),
            "time of day",
        ),
    ] {
        let (status, v) = post(&s, "/api/v2/windows", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(v["error"].as_str().unwrap().contains(why), "{v}");
    }
    let pins: Vec<serde_json::Value> = http().get(s.u("/api/v2/pins")).admin().json_of().await;
    let windows: Vec<serde_json::Value> =
        http().get(s.u("/api/v2/windows")).admin().json_of().await;
    assert!(pins.is_empty() && windows.is_empty());
    let r = http()
        .put(s.u("/api/v2/hosts/web-1/labels"))
        .admin()
        .json(&serde_json::json!({"assigned": {"bad key": "x"}}))
        .go()
        .await;
    assert_eq!(r.status(), 400);
    let r = http()
        .get(s.u("/api/v2/hosts?selector=a==b"))
        .admin()
        .go()
        .await;
    assert_eq!(r.status(), 400);
    s.stop().await;
}

#[tokio::test]
async fn labels_select_hosts_and_a_held_release_is_offered_to_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_with(&data, |_| {}).await;
    checkin(&s, &report("web-1", &[("site", "eu")])).await;
    checkin(&s, &report("web-2", &[("site", "us")])).await;
    // An operator label on top of the host's own; it wins on conflicts.
    let r = http()
        .put(s.u("/api/v2/hosts/web-2/labels"))
        .admin()
        .json(&serde_json::json!({"assigned": {"tier": "gold", "site": "ap"}}))
        .go()
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["labels"]["site"], "ap");
    assert_eq!(v["own"]["site"], "us");
    let sel = |q: &'static str| {
        let s = &s;
        async move {
            let list: Vec<HostInfo> = http()
                .get(s.u("/api/v2/hosts"))
                .query(&[("selector", q)])
                .admin()
                .json_of()
                .await;
            list.into_iter().map(|h| h.hostname).collect::<Vec<_>>()
        }
    };
    assert_eq!(sel("tier=gold").await, ["web-2"]);
    assert_eq!(sel("site=eu").await, ["web-1"]);
    assert_eq!(sel("site!=eu").await, ["web-2"]);

    // Held: offered to nobody until its rollout admits them.
    let res = http()
        .post(s.u("/api/v2/releases?version=2.0.0&platform=linux-x86_64&kind=archive&force=true&hold=true"))
        .admin()
        .body(b"two".to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let rel: Release = res.json().await.unwrap();
    assert!(rel.held);
    assert!(checkin(&s, &report("web-1", &[("site", "eu")]))
        .await
        .release
        .is_none());
    let (status, r) = post(
        &s,
        "/api/v2/rollouts",
        serde_json::json!({"release_id": rel.id, "selector": "tier=gold"}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let members: Vec<&str> = r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["web-2"]);
    assert_eq!(
        checkin(&s, &report("web-2", &[("site", "us")]))
            .await
            .release
            .map(|r| r.id),
        Some(rel.id)
    );
    assert!(checkin(&s, &report("web-1", &[("site", "eu")]))
        .await
        .release
        .is_none());
    // Durable: the labels and the rollout survive a restart.
    s.stop().await;
    let s = TestServer::start_with(&data, |_| {}).await;
    let list: Vec<HostInfo> = http()
        .get(s.u("/api/v2/hosts"))
        .query(&[("selector", "tier=gold")])
        .admin()
        .json_of()
        .await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        checkin(&s, &report("web-2", &[("site", "us")]))
            .await
            .release
            .map(|r| r.id),
        Some(rel.id)
    );
    let audit: Vec<serde_json::Value> = http().get(s.u("/api/v2/audit")).admin().json_of().await;
    for action in ["host.labels", "rollout.create"] {
        assert!(audit.iter().any(|a| a["action"] == action), "{action}");
    }
    s.stop().await;
}

/// Issue: a rollout created while the previous rollout's last hosts were
/// still reporting stranded its canary ("running in wave 1" for good). The
/// canary admitted to the new rollout is offered its release whatever its
/// (late) report says about the previous one; and a host that never takes
/// it counts as failed after the host deadline, halting the rollout.
#[tokio::test]
async fn an_overlapping_rollout_offers_its_canary_and_never_waits_forever() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(tmp.path(), |o| {
        o.rollout_host_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let hosts = ["h1", "h2", "h3", "h4"];
    for h in hosts {
        checkin(&s, &report(h, &[])).await;
    }
    let hold = |v: &str| {
        format!(
            "/api/v2/releases?version={v}&platform=linux-x86_64&kind=archive&hold=true&force=true"
        )
    };
    let res = http()
        .post(s.u(&hold("2.0.0")))
        .admin()
        .body(b"two".to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let r2: Release = res.json().await.unwrap();
    let (st, _) = post(
        &s,
        "/api/v2/rollouts",
        serde_json::json!({"release_id": r2.id, "waves": ["1", "100%"], "soak_secs": 1}),
    )
    .await;
    assert_eq!(st, 201);
    // Every host takes 2.0.0 as it is offered, and reports it.
    let running_2 = |h: &str| {
        let mut r = report(h, &[]);
        r.host.agent_version = Some("2.0.0".parse().unwrap());
        r.host.last_update = Some(UpdateReport {
            release_id: r2.id,
            version: "2.0.0".parse().unwrap(),
            outcome: Outcome::Succeeded,
            message: "installed and healthy".into(),
        });
        r
    };
    wait_until(
        "rollout 1 is done",
        std::time::Duration::from_secs(30),
        || async {
            for h in hosts {
                let a = checkin(&s, &report(h, &[])).await;
                if a.release.as_ref().is_some_and(|r| r.id == r2.id) {
                    checkin(&s, &running_2(h)).await;
                }
            }
            let r: serde_json::Value = http()
                .get(s.u("/api/v2/rollouts/1"))
                .admin()
                .json_of()
                .await;
            r["phase"] == "done"
        },
    )
    .await;

    // 3.0.0, held, rolled out at once; the canary's next report is a late
    // one about 2.0.0.
    let res = http()
        .post(s.u(&hold("3.0.0")))
        .admin()
        .body(b"three".to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let r3: Release = res.json().await.unwrap();
    let (st, v) = post(
        &s,
        "/api/v2/rollouts",
        serde_json::json!({"release_id": r3.id, "waves": ["1", "100%"], "soak_secs": 1}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let canary = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| !m["admitted_at"].is_null())
        .unwrap_or_else(|| panic!("a canary admitted: {v}"))["hostname"]
        .as_str()
        .unwrap()
        .to_string();
    let a = checkin(&s, &running_2(&canary)).await;
    assert_eq!(
        a.release.as_ref().map(|r| r.id),
        Some(r3.id),
        "the admitted canary is offered 3.0.0 whatever its report says"
    );
    // It never takes it: after the host deadline it counts as failed and
    // the rollout halts, saying why.
    wait_until(
        "rollout 2 halts",
        std::time::Duration::from_secs(30),
        || async {
            checkin(&s, &running_2(&canary)).await;
            let r: serde_json::Value = http()
                .get(s.u("/api/v2/rollouts/2"))
                .admin()
                .json_of()
                .await;
            r["phase"] == "halted"
        },
    )
    .await;
    let r: serde_json::Value = http()
        .get(s.u("/api/v2/rollouts/2"))
        .admin()
        .json_of()
        .await;
    let m = r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["hostname"] == canary.as_str())
        .unwrap();
    assert_eq!(m["outcome"], "failed", "{r}");
    assert!(
        m["message"]
            .as_str()
            .unwrap()
            .contains("no sign of it taking 3.0.0"),
        "{r}"
    );
}

/// Issue: `release publish` waited the full `--wait` on a pinned host. The
/// server says which hosts can take a release now and why the others
/// cannot, for palettectl to follow only the first.
#[tokio::test]
async fn a_release_says_which_hosts_can_take_it_now_and_why_not_the_others() {
    let s = TestServer::start().await;
    checkin(&s, &report("pinned1", &[("tier", "gold")])).await;
    checkin(&s, &report("plain1", &[])).await;
    let mut arm = report("arm1", &[]);
    arm.host.platform = "linux-aarch64".into();
    checkin(&s, &arm).await;
    let mut ahead = report("ahead1", &[]);
    ahead.host.agent_version = Some("2.0.0".parse().unwrap());
    checkin(&s, &ahead).await;
    let (st, _) = post(
        &s,
        "/api/v2/pins",
        serde_json::json!({"selector": "tier=gold", "version": "1.0.0"}),
    )
    .await;
    assert_eq!(st, 201);
    let r2 = publish(&s, "2.0.0", "linux-x86_64", "archive", b"two").await;
    let reach: Reach = http()
        .get(s.u(&format!("/api/v2/releases/{}/reach", r2["id"])))
        .admin()
        .json_of()
        .await;
    assert_eq!(reach.now, vec!["plain1".to_string()]);
    let why = |h: &str| {
        reach
            .later
            .iter()
            .find(|l| l.hostname == h)
            .map(|l| l.reason.clone())
            .unwrap_or_default()
    };
    assert!(why("pinned1").contains("pinned"), "{reach:?}");
    assert!(why("arm1").contains("another platform"), "{reach:?}");
    assert!(why("ahead1").contains("already on 2.0.0"), "{reach:?}");
    // A held release: nobody now.
    let res = http()
        .post(s.u("/api/v2/releases?version=3.0.0&platform=linux-x86_64&kind=archive&hold=true&force=true"))
        .admin()
        .body(b"three".to_vec())
        .go()
        .await;
    assert_eq!(res.status(), 201);
    let r3: Release = res.json().await.unwrap();
    let reach: Reach = http()
        .get(s.u(&format!("/api/v2/releases/{}/reach", r3.id)))
        .admin()
        .json_of()
        .await;
    assert!(reach.now.is_empty(), "{reach:?}");
    assert!(
        reach
            .later
            .iter()
            .any(|l| l.hostname == "plain1" && l.reason.contains("held")),
        "{reach:?}"
    );
    // Only operators may ask.
    let res = http()
        .get(s.u(&format!("/api/v2/releases/{}/reach", r3.id)))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 403);
}
