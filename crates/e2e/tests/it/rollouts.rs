//! Staged rollouts with real watchdogs, managers and sample agents on
//! loopback: waves with soak, a failing release halted after its canary,
//! pause / resume / abort, a maintenance window opened by an injected
//! clock, a pinned host, and a server restart mid-rollout.

use std::time::Duration;

use palette_e2e::*;
use serde_json::Value;

use super::{ctl_code, T};

/// Hosts named `prefix-N`, half `site: eu`, half `site: us`, running 1.0.0.
async fn fleet(server: &Server, prefix: &str, n: usize) -> Vec<Host> {
    let mut hosts = Vec::new();
    for i in 0..n {
        let site = if i % 2 == 0 { "eu" } else { "us" };
        let mut h = Host::new(
            &format!("{prefix}-{i}"),
            &server.url,
            "v2",
            &format!("labels:\n  site: {site}\n  role: web\n"),
        );
        h.start();
        hosts.push(h);
    }
    let api = server.api();
    for h in &hosts {
        h.wait_agent_running(T).await.unwrap();
        wait_for("the host reports", T, || async {
            api.host(&h.name).await.is_some_and(|i| i.report.is_some())
        })
        .await
        .unwrap();
    }
    hosts
}

async fn rollout(server: &Server, which: &str) -> Value {
    let (code, out, err) = ctl_code(server, &["-o", "json", "rollout", "show", which]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

async fn versions(server: &Server, hosts: &[Host]) -> Vec<String> {
    let api = server.api();
    let mut v = Vec::new();
    for h in hosts {
        let info = api.host(&h.name).await.unwrap();
        v.push(
            info.report
                .and_then(|r| r.agent_version)
                .map(|x| x.to_string())
                .unwrap_or_default(),
        );
    }
    v
}

fn ms(t: &Value) -> i64 {
    palette_protocol::timefmt::parse_rfc3339(t.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_rollout_goes_wave_by_wave_and_a_failing_one_halts_after_its_canary() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_args(
        &tmp.path().join("server"),
        free_port(),
        &["--default-rollout", "manual"],
        &[],
    )
    .await;
    let hosts = fleet(&server, "web", 12).await;
    let api = server.api();

    // Held by the default policy: published, offered to nobody.
    let a = release_archive(tmp.path(), "2.0.0", false);
    let (code, out, err) = ctl_code(
        &server,
        &[
            "release",
            "publish",
            &a.display().to_string(),
            "--version",
            "2.0.0",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("held: no host is offered it"), "{out}");

    // Waves: one canary, then half, then all, soaking 1 s each.
    let (code, out, err) = ctl_code(
        &server,
        &[
            "rollout",
            "create",
            "2.0.0",
            "--selector",
            "role=web",
            "--waves",
            "1,50%,100%",
            "--soak",
            "1s",
            "--halt-after",
            "1",
            "--wait",
            "240",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("done"), "{out}");
    assert_eq!(versions(&server, &hosts).await, vec!["2.0.0"; 12]);
    let r = rollout(&server, "2.0.0").await;
    assert_eq!(r["phase"], "done");
    let hs = r["hosts"].as_array().unwrap();
    assert_eq!(hs.len(), 12);
    let in_wave = |w: i64| hs.iter().filter(move |h| h["wave"] == w);
    assert_eq!(in_wave(1).count(), 1);
    assert_eq!(
        in_wave(2).count(),
        5,
        "up to 50% = 6 hosts, the canary included"
    );
    assert_eq!(in_wave(3).count(), 6);
    // Every host of a wave was admitted only after the whole wave before
    // it had finished and soaked for 1 s.
    for w in 2..=3 {
        let prev_done = in_wave(w - 1).map(|h| ms(&h["finished_at"])).max().unwrap();
        let first = in_wave(w).map(|h| ms(&h["admitted_at"])).min().unwrap();
        assert!(
            first >= prev_done + 1000,
            "wave {w} started {} ms after wave {} ended",
            first - prev_done,
            w - 1
        );
    }

    // A release that fails its health check: the canary takes it, fails,
    // rolls back; the rollout halts and nobody else is touched.
    let bad = release_archive(tmp.path(), "3.0.0", true);
    let (code, _, err) = ctl_code(
        &server,
        &[
            "release",
            "publish",
            &bad.display().to_string(),
            "--version",
            "3.0.0",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ctl_code(
        &server,
        &[
            "rollout",
            "create",
            "3.0.0",
            "--waves",
            "1,100%",
            "--halt-after",
            "1",
            "--wait",
            "240",
        ],
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("halted"), "{out}");
    let r = rollout(&server, "3.0.0").await;
    assert_eq!(r["phase"], "halted");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("1 of 1 host(s) in wave 1 failed"),
        "{reason}"
    );
    let admitted: Vec<&Value> = r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["admitted_at"].is_string())
        .collect();
    assert_eq!(admitted.len(), 1, "only the canary");
    assert_eq!(admitted[0]["outcome"], "failed");
    // Everyone still runs 2.0.0 (the canary rolled back by itself).
    wait_for("the canary is back on 2.0.0", T, || async {
        versions(&server, &hosts).await == vec!["2.0.0"; 12]
    })
    .await
    .unwrap();
    // Abort: the release is offered to nobody; a resume is refused.
    let (code, out, _) = ctl_code(&server, &["rollout", "abort", "3.0.0"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("aborted"), "{out}");
    let (code, _, err) = ctl_code(&server, &["rollout", "resume", "3.0.0"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot be resumed"), "{err}");
    let h = api.host("web-0").await.unwrap();
    assert_eq!(
        h.report.unwrap().agent_version.unwrap().to_string(),
        "2.0.0"
    );
}

#[tokio::test]
async fn pause_resume_a_pinned_host_a_maintenance_window_and_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let clock = tmp.path().join("clock");
    // A Monday noon (UTC).
    std::fs::write(&clock, "2026-11-30T12:00:00Z").unwrap();
    let clock_env = clock.display().to_string();
    let envs = [("PALETTE_TEST_CLOCK_FILE", clock_env.as_str())];
    let port = free_port();
    let mut server = Server::start_args(&data, port, &[], &envs).await;
    let hosts = fleet(&server, "db", 4).await;

    // db-3 is pinned to 1.0.0 (published, so it has something to be
    // offered); db-2 (site=eu) may update on Saturdays 01:00-05:00 only.
    let a = release_archive(tmp.path(), "1.0.0", false);
    server.api().publish(&a, "1.0.0", "archive").await;
    let (code, _, err) =
        ctl_code(&server, &["pin", "add", "1.0.0", "--selector", "host=db-3"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl_code(
        &server,
        &[
            "window",
            "add",
            "--selector",
            "host=db-2",
            "--schedule",
            "Sat 01:00-05:00",
            "--tz",
            "UTC",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");

    let b = release_archive(tmp.path(), "2.0.0", false);
    let (code, _, err) = ctl_code(
        &server,
        &[
            "release",
            "publish",
            &b.display().to_string(),
            "--version",
            "2.0.0",
            "--hold",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl_code(
        &server,
        &[
            "rollout",
            "create",
            "2.0.0",
            "--waves",
            "1,100%",
            "--soak",
            "2s",
            "--no-wait",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // The canary finishes; pause before the next wave.
    wait_for("the canary succeeded", Duration::from_secs(90), || async {
        let r = rollout(&server, "2.0.0").await;
        r["wave_progress"][0]["succeeded"] == 1
    })
    .await
    .unwrap();
    let (code, out, _) = ctl_code(&server, &["rollout", "pause", "2.0.0"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("paused"), "{out}");
    let r = rollout(&server, "2.0.0").await;
    let members: Vec<&str> = r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hostname"].as_str().unwrap())
        .collect();
    assert!(
        !members.contains(&"db-3"),
        "a pinned host is left out: {members:?}"
    );
    let canary = r["hosts"][0]["hostname"].as_str().unwrap().to_string();
    assert_ne!(canary, "db-2", "the canary is a host that can update now");

    // A restart mid-rollout: paused, in wave 1, the canary's success kept.
    server.stop();
    let server = Server::start_args(&data, port, &[], &envs).await;
    let r = rollout(&server, "2.0.0").await;
    assert_eq!(r["phase"], "paused");
    assert_eq!(r["wave"], 1);
    assert_eq!(r["wave_progress"][0]["succeeded"], 1);
    // Paused: nobody else was admitted, whatever the soak.
    let others_admitted = r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["wave"] == 2 && h["admitted_at"].is_string())
        .count();
    assert_eq!(others_admitted, 0);

    let (code, _, _) = ctl_code(&server, &["rollout", "resume", "2.0.0"]).await;
    assert_eq!(code, 0);
    // Everyone but the pinned host and the one outside its window; the
    // follow ends once only db-2 is left, saying why, and that is no
    // failure (issue 21.6).
    let (code, out, err) = ctl_code(
        &server,
        &["rollout", "show", "2.0.0", "--follow", "--wait", "90"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("db-2")
                && l.contains("not followed: outside its maintenance window")),
        "{out}"
    );
    assert!(out.contains("1 host(s) take it when they can"), "{out}");
    let expect_now: Vec<String> = ["2.0.0", "2.0.0", "1.0.0", "1.0.0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(versions(&server, &hosts).await, expect_now);
    let r = rollout(&server, "2.0.0").await;
    assert_eq!(r["phase"], "running", "db-2 still waits for its window");
    // Saturday 02:00: the window opens, db-2 updates, the rollout ends.
    std::fs::write(&clock, "2026-12-05T02:00:00Z").unwrap();
    wait_for("the rollout is done", Duration::from_secs(90), || async {
        rollout(&server, "2.0.0").await["phase"] == "done"
    })
    .await
    .unwrap();
    let v = versions(&server, &hosts).await;
    assert_eq!(v[2], "2.0.0", "db-2 updated in its window");
    assert_eq!(v[3], "1.0.0", "the pinned host stays");
}

/// Issue 21.4, as reproduced: 2.0.0 rolled out over 4 hosts in waves
/// `1,100%` with an 8 s soak; the moment all 4 run it, 3.0.0 is published
/// held and its rollout created while the first one is still soaking and
/// its last reports arrive. The new canary is offered 3.0.0 whatever it
/// reported last, and the second rollout ends (before the fix it stayed
/// "running in wave 1" for good).
#[tokio::test]
async fn a_rollout_created_while_the_last_one_ends_does_not_strand_its_canary() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_args(
        &tmp.path().join("server"),
        free_port(),
        &["--default-rollout", "manual"],
        &[],
    )
    .await;
    let hosts = fleet(&server, "ovl", 4).await;
    let publish = |v: &'static str| {
        let archive = release_archive(tmp.path(), v, false);
        let server = &server;
        async move {
            let (code, _, err) = ctl_code(
                server,
                &[
                    "release",
                    "publish",
                    &archive.display().to_string(),
                    "--version",
                    v,
                    "--hold",
                ],
            )
            .await;
            assert_eq!(code, 0, "{err}");
        }
    };
    publish("2.0.0").await;
    let (code, _, err) = ctl_code(
        &server,
        &[
            "rollout",
            "create",
            "2.0.0",
            "--waves",
            "1,100%",
            "--soak",
            "8s",
            "--no-wait",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    wait_for("all four run 2.0.0", Duration::from_secs(120), || async {
        versions(&server, &hosts).await == vec!["2.0.0"; 4]
    })
    .await
    .unwrap();
    // At once: the first rollout is still soaking its last wave.
    publish("3.0.0").await;
    let (code, out, err) = ctl_code(
        &server,
        &[
            "rollout", "create", "3.0.0", "--waves", "1,100%", "--soak", "0s", "--wait", "150",
        ],
    )
    .await;
    let diag: String = hosts.iter().map(|h| h.diagnostics()).collect();
    assert_eq!(code, 0, "{out}{err}\n{diag}");
    assert!(out.contains("done"), "{out}");
    assert_eq!(versions(&server, &hosts).await, vec!["3.0.0"; 4]);
    // The first one ends too, once its soak has passed.
    let first = wait_for("the 2.0.0 rollout is done", T, || async {
        rollout(&server, "2.0.0").await["phase"] == "done"
    })
    .await;
    if let Err(e) = first {
        panic!("{e:#}: {}", rollout(&server, "2.0.0").await);
    }
}
