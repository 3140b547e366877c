//! Two palette-server replicas on one PostgreSQL database, each with a
//! data folder of its own and the artifacts in one S3-compatible bucket
//! (moto), a real watchdog on each: a release published on replica A is
//! installed by the host of replica B (its artifact fetched from the
//! bucket), and a command issued on A is performed by B's host. Needs
//! PALETTE_POSTGRES_URL and PALETTE_TEST_S3 (`.ci/run` starts both).

use std::time::{Duration, Instant};

use palette_e2e::*;
use palette_protocol::v2::{CommandKind, Outcome};

use super::T;

fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{prefix}{:016x}", h.finish())
}

#[tokio::test]
async fn a_release_and_a_command_from_one_replica_reach_the_host_of_the_other() {
    let pg = std::env::var("PALETTE_POSTGRES_URL").unwrap_or_default();
    let s3 = std::env::var("PALETTE_TEST_S3").unwrap_or_default();
    if pg.is_empty() || s3.is_empty() {
        eprintln!("SKIPPED: needs PostgreSQL (PALETTE_POSTGRES_URL) and S3-compatible storage (PALETTE_TEST_S3)");
        return;
    }
    // A database and a bucket of this test's own.
    let db_name = unique("palette_e2e_");
    let admin = sqlx::PgPool::connect(&pg).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let db = format!("{}/{db_name}", pg.rsplit_once('/').unwrap().0);
    let bucket = unique("palette-e2e-");
    let made = reqwest::Client::new()
        .put(format!("{s3}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success());
    let artifacts = format!("s3://{bucket}/releases");
    let envs = [
        ("AWS_ENDPOINT_URL", s3.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--database", db.as_str(), "--artifacts", artifacts.as_str()];
    let a = Server::start_args(&tmp.path().join("a"), free_port(), &args, &envs).await;
    let b = Server::start_args(&tmp.path().join("b"), free_port(), &args, &envs).await;

    let mut host_a = Host::new("rep-a", &a.url, "v2", "");
    let mut host_b = Host::new("rep-b", &b.url, "v2", "");
    host_a.start();
    host_b.start();
    for h in [&host_a, &host_b] {
        h.wait_agent_running(T).await.unwrap();
    }

    // Published on A; B's host installs it, the artifact fetched from the
    // bucket into B's cache.
    let archive = release_archive(tmp.path(), "2.0.0", false);
    a.api().publish(&archive, "2.0.0", "archive").await;
    for h in [&host_a, &host_b] {
        wait_for("the host runs 2.0.0", Duration::from_secs(60), || async {
            h.running_agent().is_some_and(|r| r.version == "2.0.0")
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", h.diagnostics()));
    }
    let b_log = std::fs::read_to_string(b.data.join("server.log")).unwrap();
    assert!(
        b_log.contains("artifact fetched from object storage into the cache"),
        "{b_log}"
    );

    // A command issued on A, performed by the host long-polling B.
    let before = host_b.running_agent().unwrap().pid;
    let t = Instant::now();
    let id = a.api().command(CommandKind::Restart, "rep-b").await;
    let (outcome, msg) = b.api().ack(id, T).await;
    assert_eq!(outcome, Outcome::Succeeded, "{msg}");
    eprintln!(
        "restart issued on A acknowledged through B after {:?}",
        t.elapsed()
    );
    let after = host_b.wait_agent_running(T).await.unwrap();
    assert_ne!(after.pid, before, "the agent was restarted");
    // A knows the outcome too (one store).
    let (outcome, _) = a.api().ack(id, T).await;
    assert_eq!(outcome, Outcome::Succeeded);
}
