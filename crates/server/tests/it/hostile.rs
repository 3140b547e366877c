//! Hostile and unlucky clients against the real binary: idle and
//! slow-header floods under a small file limit, slow bodies, and a server
//! killed in the middle of an upload.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The test process itself holds hundreds of sockets.
fn raise_own_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// Reads until the server closes the connection (EOF or reset) or `until`.
async fn closed_by(stream: &mut TcpStream, until: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_floods_under_a_256_file_limit() {
    raise_own_file_limit();
    let tmp = tempfile::tempdir().unwrap();
    let header_timeout = 3;
    let s = BinServer::start(
        tmp.path(),
        &["--header-timeout-secs", &header_timeout.to_string()],
        Some(256),
    )
    .await;
    assert!(
        s.log().contains("max_connections=96"),
        "the cap follows the file limit: {}",
        s.log()
    );

    // A long poll, longer than the header timeout, open through the flood.
    let poll_url = s.u("/api/v2/checkin?wait=8");
    let long_poll = tokio::spawn(async move {
        let started = Instant::now();
        let res = http()
            .post(poll_url)
            .agent()
            .json(&serde_json::json!({
                "host": {"hostname": "poller", "platform": "linux-x86_64",
                         "watchdog_version": "1.0.0", "agent_version": null,
                         "agent_state": "running", "desired_state": "running",
                         "config_revision": null}
            }))
            .send()
            .await;
        (res.map(|r| r.status()), started.elapsed())
    });
    wait_until(
        "the long poll is in flight",
        Duration::from_secs(10),
        || async {
            let hosts: Vec<serde_json::Value> =
                http().get(s.u("/api/v2/hosts")).admin().json_of().await;
            hosts.iter().any(|h| h["hostname"] == "poller")
        },
    )
    .await;

    // 300 idle connections and 300 that send a header byte every 500 ms.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(s.addr).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let _ = c.write_all(b"GET /api/v1/ping HTTP/1.1\r\nX-Slow: ").await;
        slow.push(c);
    }
    let dribble = tokio::spawn(async move {
        let mut alive = slow.len();
        let mut closed = vec![false; slow.len()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(header_timeout + 10);
        while alive > 0 && tokio::time::Instant::now() < deadline {
            for (i, c) in slow.iter_mut().enumerate() {
                if !closed[i] && c.write_all(b"a").await.is_err() {
                    closed[i] = true;
                    alive -= 1;
                }
            }
            // Also notice closes the writes do not report yet.
            for (i, c) in slow.iter_mut().enumerate() {
                if !closed[i] {
                    let mut b = [0u8; 256];
                    if let Ok(Ok(0) | Err(_)) =
                        tokio::time::timeout(Duration::from_millis(1), c.read(&mut b)).await
                    {
                        closed[i] = true;
                        alive -= 1;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        alive
    });

    // The server still answers a normal client at once.
    let started = Instant::now();
    let res = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(s.u("/api/v1/ping"))
        .send()
        .await
        .expect("ping answered during the flood");
    assert_eq!(res.status(), 200);
    println!("ping during the flood answered in {:?}", started.elapsed());

    // Every idle connection is closed by the header timeout at the latest.
    let until = tokio::time::Instant::now() + Duration::from_secs(header_timeout + 5);
    for (i, c) in idle.iter_mut().enumerate() {
        assert!(closed_by(c, until).await, "idle connection {i} still open");
    }
    let still_open = dribble.await.unwrap();
    assert_eq!(still_open, 0, "slow-header connections still open");

    // The long poll ran its full wait and answered.
    let (status, took) = long_poll.await.unwrap();
    assert_eq!(status.expect("long poll answered"), 200);
    assert!(
        took >= Duration::from_secs(7),
        "long poll cut short: {took:?}"
    );
    assert_eq!(http().get(s.u("/api/v1/ping")).go().await.status(), 200);
    assert!(s.log().contains("connection limit reached"), "{}", s.log());
}

/// Sends a request head and part of its body, then stalls; returns the
/// server's answer.
async fn stall_after(s: &BinServer, head: &str, part: &[u8]) -> String {
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(part).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_bodies_are_cut_off_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = BinServer::start(
        tmp.path(),
        &["--body-timeout-secs", "2", "--upload-stall-secs", "2"],
        None,
    )
    .await;
    let head = format!(
        "POST /api/v2/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    let answer = stall_after(&s, &head, b"{\"kind\":").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let list: Vec<serde_json::Value> = http().get(s.u("/api/v2/commands")).admin().json_of().await;
    assert!(list.is_empty(), "nothing was issued");

    let head = format!(
        "POST /api/v2/releases?version=1.0.0&platform=linux-x86_64&kind=installer HTTP/1.1\r\n\
         Host: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 1000000\r\n\r\n"
    );
    let answer = stall_after(&s, &head, &[7u8; 10_000]).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("stalled"), "{answer}");
    let tmp_dir = s.data.join("artifacts/tmp");
    wait_until(
        "the stalled upload's temporary is gone",
        Duration::from_secs(10),
        || {
            let tmp_dir = tmp_dir.clone();
            async move { std::fs::read_dir(&tmp_dir).unwrap().next().is_none() }
        },
    )
    .await;
}

#[tokio::test]
async fn a_server_killed_mid_upload_leaves_nothing_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = BinServer::start(&data, &[], None).await;
    // One real release, whose artifact must survive the collection.
    let kept = b"kept artifact".to_vec();
    let kept_sha = hex::encode(Sha256::digest(&kept));
    let res = http()
        .post(s.u("/api/v2/releases?version=1.0.0&platform=linux-x86_64&kind=installer"))
        .admin()
        .body(kept)
        .go()
        .await;
    assert_eq!(res.status(), 201);

    // A large upload that keeps sending...
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let url = s.u("/api/v2/releases?version=2.0.0&platform=linux-x86_64&kind=installer");
    let upload = tokio::spawn(async move {
        let body = reqwest::Body::wrap_stream(tokio_stream_of(rx));
        http().post(url).admin().body(body).send().await
    });
    for _ in 0..16 {
        tx.send(Ok(vec![1u8; 64 * 1024])).await.unwrap();
    }
    let tmp_dir = data.join("artifacts/tmp");
    wait_until(
        "the upload's temporary has data",
        Duration::from_secs(10),
        || {
            let tmp_dir = tmp_dir.clone();
            async move {
                std::fs::read_dir(&tmp_dir)
                    .unwrap()
                    .flatten()
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            }
        },
    )
    .await;
    // ...is cut by kill -9. A crash between storing an artifact and
    // recording its release leaves a file no release names: plant one.
    s.kill9();
    let _ = upload.await;
    drop(tx);
    let orphan = "ab".to_string() + &"c".repeat(62);
    std::fs::create_dir_all(data.join("artifacts/ab")).unwrap();
    std::fs::write(data.join("artifacts/ab").join(&orphan), b"orphan").unwrap();
    assert!(std::fs::read_dir(&tmp_dir).unwrap().next().is_some());

    let s = BinServer::start(&data, &[], None).await;
    assert!(
        std::fs::read_dir(&tmp_dir).unwrap().next().is_none(),
        "temporaries of the interrupted upload were deleted"
    );
    assert!(
        !data.join("artifacts/ab").join(&orphan).exists(),
        "the orphan artifact was collected"
    );
    let res = http()
        .get(s.u(&format!("/api/v2/artifacts/{kept_sha}")))
        .agent()
        .go()
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(&res.bytes().await.unwrap()[..], b"kept artifact");
    let releases: Vec<serde_json::Value> =
        http().get(s.u("/api/v2/releases")).agent().json_of().await;
    assert_eq!(releases.len(), 1, "the cut upload published nothing");
    let log = s.log();
    assert!(log.contains("interrupted by a crash"), "{log}");
    assert!(log.contains("no release names"), "{log}");
}

/// A stream of the chunks sent on `rx`.
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let tmp = tempfile::tempdir().unwrap();
    let s = BinServer::start(tmp.path(), &["--log-format", "json"], None).await;
    let log = s.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    assert!(log.contains("palette-server listening"));
}

/// Issue: sockets that never send a byte stayed open (hyper's header timer
/// starts with the first byte), anonymous slow bodies (`/ui/login`, one
/// byte now and then) held connection slots until the cap answered 503 to
/// everyone, the legacy config upload read a stranger's body before
/// refusing it, and the "server busy" answer said one byte more than it
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_and_anonymous_slow_bodies_cannot_hold_the_server() {
    raise_own_file_limit();
    let tmp = tempfile::tempdir().unwrap();
    let s = BinServer::start(
        tmp.path(),
        &["--header-timeout-secs", "3", "--body-timeout-secs", "4"],
        Some(256),
    )
    .await;
    assert!(s.log().contains("max_connections=96"), "{}", s.log());

    // 150 sockets that send nothing, 150 anonymous logins that send one
    // byte of a 100-byte form: 300 against a cap of 96.
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(TcpStream::connect(s.addr).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..150 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(
            b"POST /ui/login HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nt",
        )
        .await
        .unwrap();
        slow.push(c);
    }
    // A client with a credential is served all the same.
    let res = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(s.u("/api/v2/hosts"))
        .admin()
        .send()
        .await
        .expect("answered during the flood");
    assert_eq!(res.status(), 200, "served while slow anonymous bodies wait");

    // Every silent socket is closed by the header timeout (counted from
    // accept), every slow body by the body timeout.
    let until = tokio::time::Instant::now() + Duration::from_secs(3 + 5);
    for (i, c) in silent.iter_mut().enumerate() {
        assert!(
            closed_by(c, until).await,
            "silent connection {i} still open"
        );
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(4 + 5);
    for (i, c) in slow.iter_mut().enumerate() {
        assert!(closed_by(c, until).await, "slow login body {i} still open");
    }

    // The legacy config upload refuses a caller with no credential before
    // reading a byte of its body (no host's upload is expected).
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        b"PUT /api/v1/config?hostname=web1 HTTP/1.1\r\nHost: x\r\n\
          Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut answer))
        .await
        .expect("answered before the body (well within the body timeout)")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// The answer at a full cap is a well-formed 503 a real client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_busy_answer_is_well_formed_for_real_clients() {
    raise_own_file_limit();
    let tmp = tempfile::tempdir().unwrap();
    let s = BinServer::start(tmp.path(), &["--max-connections", "4"], None).await;
    // Four long polls with a credential: every slot busy. Three first, one
    // by one (a connection still sending its head may be evicted by the
    // next), each seen in the inventory; then the fourth, until a ping is
    // answered 503 (the fourth is started again if a ping took its slot).
    let poll = |i: usize| {
        let url = s.u("/api/v2/checkin?wait=30");
        tokio::spawn(async move {
            http()
                .post(url)
                .agent()
                .json(&checkin_of(&format!("poller{i}")))
                .send()
                .await
        })
    };
    let mut polls = Vec::new();
    for i in 0..3 {
        polls.push(poll(i));
        let name = format!("poller{i}");
        wait_until(
            "the long poll is in flight",
            Duration::from_secs(10),
            || {
                let (url, name) = (s.u("/api/v2/hosts"), name.clone());
                async move {
                    // A client of its own: its connection closes with it.
                    let Ok(res) = reqwest::Client::new().get(url).admin().send().await else {
                        return false;
                    };
                    let hosts: Vec<serde_json::Value> = res.json().await.unwrap_or_default();
                    hosts.iter().any(|h| h["hostname"] == name.as_str())
                }
            },
        )
        .await;
    }
    let mut fourth = poll(3);
    let mut busy = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while busy.is_none() && tokio::time::Instant::now() < deadline {
        if fourth.is_finished() {
            fourth = poll(3);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // (A ping may lose its slot to the fourth poll's new connection.)
        let Ok(res) = reqwest::Client::new().get(s.u("/api/v1/ping")).send().await else {
            continue;
        };
        if res.status() == 503 {
            assert_eq!(res.headers()["retry-after"], "5");
            busy = Some(res.text().await.expect("the whole body, as long as said"));
        }
    }
    let body = busy.expect("the cap was reached");
    assert_eq!(body, "Server busy: too many connections; retry shortly\n");
    if let Ok(out) = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &s.u("/api/v1/ping"),
        ])
        .output()
    {
        assert!(
            out.status.success(),
            "curl reads the busy answer without error: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "503");
    }
    drop((polls, fourth));
}
