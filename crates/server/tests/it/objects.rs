//! Artifacts in S3-compatible object storage (`--artifacts s3://…`), against
//! a real S3-compatible server (moto, `PALETTE_TEST_S3`): a publish stores
//! the artifact in the bucket before recording the release; a download the
//! local cache lacks is fetched once, verified against its sha256 and
//! cached; a corrupt or missing object is refused, never cached; storage
//! that cannot be reached refuses the publish and keeps nothing; two
//! replicas with folders of their own serve each other's releases.

use std::time::Duration;

use palette_protocol::v2::{CheckinResponse, Release};

use crate::support::*;

/// The real binary with its artifacts in `s3` under `prefix`, on the test
/// database (PostgreSQL when the suite runs on it).
async fn server_on(data: &std::path::Path, s3: &S3, prefix: &str, more: &[&str]) -> BinServer {
    let url = s3.url(prefix);
    let mut args = vec!["--artifacts".to_string(), url];
    args.extend(more.iter().map(|a| a.to_string()));
    if let Some(db) = postgres_for(data).await {
        args.extend(["--database".to_string(), db]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BinServer::start_env(data, &args, &s3.env(), None).await
}

async fn publish_on(url: &str, version: &str, body: &[u8]) -> reqwest::Response {
    http()
        .post(format!(
            "{url}/api/v2/releases?version={version}&platform=linux-x86_64&kind=archive&force=true"
        ))
        .admin()
        .body(body.to_vec())
        .go()
        .await
}

fn key(prefix: &str, sha: &str) -> String {
    format!("{prefix}/{}/{sha}", &sha[..2])
}

fn cached(data: &std::path::Path, sha: &str) -> std::path::PathBuf {
    data.join("artifacts").join(&sha[..2]).join(sha)
}

async fn download(s: &BinServer, sha: &str) -> reqwest::Response {
    http()
        .get(s.u(&format!("/api/v2/artifacts/{sha}")))
        .agent()
        .go()
        .await
}

#[tokio::test]
async fn artifacts_in_object_storage_are_fetched_once_verified_and_cached() {
    let Some(s3) = s3_bucket().await else {
        eprintln!("SKIPPED: needs an S3-compatible server (PALETTE_TEST_S3)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let s = server_on(&data, &s3, "fleet/artifacts", &[]).await;
    // Over 8 MiB: stored in parts (multipart upload).
    let body: Vec<u8> = (0..9 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let res = publish_on(&s.url, "2.0.0", &body).await;
    assert_eq!(res.status(), 201);
    let rel: Release = res.json().await.unwrap();

    // In the bucket, under its sha256, before the 201; and in the cache.
    let k = key("fleet/artifacts", &rel.sha256);
    assert!(
        s3.get(&k).await.as_deref() == Some(&body[..]),
        "the bucket does not hold the release's artifact"
    );
    assert!(cached(&data, &rel.sha256).is_file());

    // The cache lost it: ten hosts ask at once, one fetch serves them all.
    std::fs::remove_file(cached(&data, &rel.sha256)).unwrap();
    let gets = (0..10).map(|_| download(&s, &rel.sha256));
    for res in futures_util::future::join_all(gets).await {
        assert_eq!(res.status(), 200);
        assert_eq!(res.bytes().await.unwrap().len(), body.len());
    }
    assert!(cached(&data, &rel.sha256).is_file());
    assert_eq!(
        s.log()
            .matches("artifact fetched from object storage into the cache")
            .count(),
        1,
        "{}",
        s.log()
    );

    // A corrupt object is refused (502) and not cached; the cause is logged.
    std::fs::remove_file(cached(&data, &rel.sha256)).unwrap();
    s3.put(&k, b"not the release").await;
    let res = download(&s, &rel.sha256).await;
    assert_eq!(res.status(), 502);
    let text = res.text().await.unwrap();
    assert!(text.contains("is corrupt"), "{text}");
    assert!(!cached(&data, &rel.sha256).exists());
    assert!(s.log().contains("is corrupt"));

    // A missing one likewise.
    s3.delete(&k).await;
    let res = download(&s, &rel.sha256).await;
    assert_eq!(res.status(), 502);
    assert!(res.text().await.unwrap().contains("no artifact"));
    assert!(!cached(&data, &rel.sha256).exists());

    // Put right again, it is served again.
    s3.put(&k, &body).await;
    let res = download(&s, &rel.sha256).await;
    assert_eq!(res.status(), 200);
    assert!(
        res.bytes().await.unwrap()[..] == body[..],
        "other bytes served"
    );

    // An object no release names yet (another replica's publish in
    // flight) survives a restart's collection; the named one too.
    let stray = "ab".to_string() + &"0".repeat(62);
    s3.put(&key("fleet/artifacts", &stray), b"in flight").await;
    s.kill9();
    let s = server_on(&data, &s3, "fleet/artifacts", &[]).await;
    assert!(s3.get(&key("fleet/artifacts", &stray)).await.is_some());
    assert!(s3.get(&k).await.is_some());
    assert_eq!(download(&s, &rel.sha256).await.status(), 200);

    // An object larger than this server accepts is not fetched.
    s.kill9();
    std::fs::remove_file(cached(&data, &rel.sha256)).unwrap();
    let s = server_on(
        &data,
        &s3,
        "fleet/artifacts",
        &["--max-artifact-bytes", "1048576"],
    )
    .await;
    let res = download(&s, &rel.sha256).await;
    assert_eq!(res.status(), 502);
    assert!(res.text().await.unwrap().contains("larger than the limit"));
    assert!(!cached(&data, &rel.sha256).exists());
}

#[tokio::test]
async fn unreachable_object_storage_refuses_the_publish_and_keeps_nothing() {
    // Nothing listens on this port: every request is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s3 = S3 {
        endpoint: format!("http://127.0.0.1:{port}"),
        bucket: "nowhere".into(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let s = server_on(&data, &s3, "", &[]).await;
    let res = publish_on(&s.url, "2.0.0", b"release two").await;
    assert_eq!(res.status(), 503);
    let text = res.text().await.unwrap();
    assert!(text.contains("s3://nowhere"), "{text}");
    assert!(text.contains("nothing was published"), "{text}");
    let rels: Vec<Release> = http().get(s.u("/api/v2/releases")).agent().json_of().await;
    assert!(rels.is_empty());
    // Nothing cached, no temporary left.
    let files: Vec<_> = walk(&data.join("artifacts"));
    assert!(files.is_empty(), "{files:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_malformed_artifacts_setting_stops_the_server_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        "s3:/bucket",
        "file:///srv/artifacts",
        "s3://Bad_Bucket/x",
        "s3://b/../x",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_palette-server"))
            .arg("--data-dir")
            .arg(tmp.path())
            .args(["--listen", "127.0.0.1:0", "--artifacts", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--artifacts must be s3://BUCKET[/PREFIX]"),
            "{bad}: {err}"
        );
    }
}

/// Two replicas on one PostgreSQL database, each with a folder of its own
/// and the artifacts in one bucket: a release published on A is offered by
/// B and served by B from the bucket.
#[tokio::test]
async fn a_release_published_on_one_replica_is_served_by_the_other_from_object_storage() {
    if !on_postgres() {
        eprintln!("SKIPPED: replicas need PostgreSQL (PALETTE_TEST_POSTGRES)");
        return;
    }
    let Some(s3) = s3_bucket().await else {
        eprintln!("SKIPPED: needs an S3-compatible server (PALETTE_TEST_S3)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = postgres_for(&tmp.path().join("db")).await.unwrap();
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let args = ["--database", &db, "--artifacts", &s3.url("shared")];
        replicas.push(BinServer::start_env(&tmp.path().join(name), &args, &s3.env(), None).await);
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    let body = b"release two, through the bucket".to_vec();
    let res = publish_on(&a.url, "2.0.0", &body).await;
    assert_eq!(res.status(), 201);
    let rel: Release = res.json().await.unwrap();
    assert!(!cached(&b.data, &rel.sha256).exists());

    let req = checkin_of("r1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let offered = loop {
        let r: CheckinResponse = checkin_at(&b.url, &req, 0).await;
        if let Some(o) = r.release {
            break o;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never offered A's release"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(offered.id, rel.id);
    let res = http().get(b.u(&offered.url)).agent().go().await;
    assert_eq!(res.status(), 200);
    assert!(
        res.bytes().await.unwrap()[..] == body[..],
        "other bytes served"
    );
    assert!(cached(&b.data, &rel.sha256).is_file());
    assert!(b.log().contains("artifact fetched from object storage"));
}
