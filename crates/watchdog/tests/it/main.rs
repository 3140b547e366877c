//! The watchdog's client and actions against real sockets and folders.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
#![cfg(unix)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use palette_host::agent_config::AgentConfig;
use palette_host::settings::{ServerSettings, Settings};
use palette_host::Layout;
use palette_protocol::v2::CommandKind;
use palette_service::{CommandService, CommandSpec};
use palette_watchdog::actions;
use palette_watchdog::client::{Client, ClientError};
use palette_watchdog::ctx::Ctx;
use palette_watchdog::durable;
use palette_watchdog::supervisor::{Policy, Supervisor};

/// `UseProxy` / `ProxyAddress` from Config.yml are honoured: the request
/// goes to the proxy, in absolute form, with the license token.
#[tokio::test]
async fn requests_go_through_the_configured_proxy() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        let body = "{\"trial\":false,\"expiration-time\":\"9999-12-31 23:59:59.999999\",\"id\":0,\"stage\":\"Free\",\"owner\":\"none\",\"name\":\"none\",\"valid\":true}\n";
        write!(
            sock,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });
    let cfg = AgentConfig {
        license_key: "key-via-proxy".into(),
        endpoint: "http://insight.example.invalid".into(),
        proxy: Some(format!("http://127.0.0.1:{port}")),
    };
    let client = Client::new(cfg, &ServerSettings::default()).unwrap();
    client.check_license().await.unwrap();
    let head = seen.join().unwrap();
    assert!(
        head.starts_with("GET http://insight.example.invalid/api/v1/license HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.to_lowercase()
            .contains("authorization: token key-via-proxy"),
        "{head}"
    );
}

#[test]
fn a_bad_ca_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        license_key: "k".into(),
        endpoint: "https://h".into(),
        proxy: None,
    };
    let mut s = ServerSettings {
        ca_file: Some(dir.path().join("missing.pem")),
        ..Default::default()
    };
    let err = Client::new(cfg.clone(), &s).err().unwrap();
    assert!(matches!(err, ClientError::CaFile { .. }), "{err}");
    assert!(err.to_string().contains("missing.pem"));
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    s.ca_file = Some(junk);
    assert!(Client::new(cfg, &s).is_err());
}

/// A command kind this watchdog does not know (from a newer server) is
/// reported as failed, and nothing is done.
#[tokio::test]
async fn unknown_commands_fail_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    layout.ensure_dirs().unwrap();
    std::fs::write(
        layout.config_yml(),
        "LicenseKey: k\nWebservice: {Endpoint: 'http://127.0.0.1:9'}\n",
    )
    .unwrap();
    let store = durable::Store::open(layout.state().join("watchdog.json"));
    let svc = Arc::new(CommandService::new(CommandSpec {
        start: vec!["/bin/true".into()],
        stop: vec!["/bin/true".into()],
        status: vec!["/bin/false".into()],
        timeout: Duration::from_secs(5),
    }));
    let policy = Policy {
        keepalive: Duration::from_secs(300),
        restart_first: Duration::from_millis(100),
        restart_max: Duration::from_secs(1),
        stable: Duration::from_secs(1),
    };
    let sup = Supervisor::new(svc, store.clone(), policy);
    let ctx = Ctx::new(
        layout.clone(),
        Settings::default(),
        "h".into(),
        store.clone(),
        sup,
    );
    let before = std::fs::read(layout.config_yml()).unwrap();
    let err = actions::perform(&ctx, CommandKind::Unknown)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            palette_watchdog::error::ActionError::UnknownCommand { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("nothing was done"), "{err}");
    assert_eq!(std::fs::read(layout.config_yml()).unwrap(), before);
    assert_eq!(
        store.get().desired,
        palette_protocol::v2::DesiredState::Running
    );
}

#[test]
fn which_download_failures_are_retried() {
    let status = |code: u16| ClientError::Status {
        url: "u".into(),
        status: reqwest::StatusCode::from_u16(code).unwrap(),
        body: String::new(),
    };
    assert!(status(503).is_transient());
    assert!(status(429).is_transient());
    assert!(!status(404).is_transient());
    assert!(!status(401).is_transient());
    let sum = ClientError::Checksum {
        url: "u".into(),
        algo: "sha256",
        expected: "a".into(),
        actual: "b".into(),
    };
    assert!(!sum.is_transient(), "a wrong checksum will not fix itself");
    let stalled = ClientError::Stalled {
        url: "u".into(),
        secs: 60,
    };
    assert!(stalled.is_transient());
    let decode = ClientError::Decode {
        url: "u".into(),
        reason: "no data for 60 s".into(),
    };
    assert!(
        !decode.is_transient(),
        "decided on the variant, never on text"
    );
    let io = ClientError::Io {
        path: "p".into(),
        source: std::io::Error::other("disk full"),
    };
    assert!(io.is_transient());
}

/// A hostile server answering 256 MiB: with or without a Content-Length,
/// the client refuses past its cap, having read little more than the cap.
#[tokio::test]
async fn oversized_answers_are_refused_without_reading_them() {
    for announce in [true, false] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sender = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            // A client that stopped reading ends the sending, one way or
            // the other.
            sock.set_write_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut buf = vec![0u8; 65536];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            let total: u64 = 256 << 20;
            let framing = if announce {
                format!("content-length: {total}\r\n")
            } else {
                String::new()
            };
            let _ = write!(
                sock,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}connection: close\r\n\r\n"
            );
            let chunk = vec![b' '; 65536];
            let mut sent = 0u64;
            while sent < total {
                if sock.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
            sent
        });
        let cfg = AgentConfig {
            license_key: "k".into(),
            endpoint: format!("http://127.0.0.1:{port}"),
            proxy: None,
        };
        let client = Client::new(cfg, &ServerSettings::default()).unwrap();
        let err = client.v1_agent_version("linux-x86_64").await.unwrap_err();
        assert!(
            matches!(err, ClientError::TooLarge { limit, .. } if limit == palette_watchdog::client::MAX_JSON_BYTES),
            "{err:?}"
        );
        drop(client);
        let sent = tokio::task::spawn_blocking(move || sender.join().unwrap())
            .await
            .unwrap();
        assert!(
            sent < 64 << 20,
            "the client kept reading: {sent} bytes sent (announced: {announce})"
        );
    }
}

/// A crash-looping agent is restarted with growing delays: the first one
/// quick, later ones longer (exponential backoff), never a busy loop.
#[tokio::test]
async fn crash_loop_backs_off() {
    use palette_service::{CommandLine, Event, ProcessService, ProcessSpec, ServiceControl};
    let dir = tempfile::tempdir().unwrap();
    let svc = Arc::new(ProcessService::new(ProcessSpec {
        resolve: Arc::new(|| {
            Ok(CommandLine {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "exit 1".into()],
                cwd: None,
            })
        }),
        log_path: dir.path().join("agent.log"),
        pid_file: None,
        stop_timeout: Duration::from_secs(1),
    }));
    let store = durable::Store::open(dir.path().join("watchdog.json"));
    let policy = Policy {
        keepalive: Duration::from_secs(300),
        restart_first: Duration::from_millis(50),
        restart_max: Duration::from_millis(800),
        stable: Duration::from_secs(60),
    };
    let mut events = svc.events().unwrap();
    let sup = Supervisor::new(svc.clone(), store, policy);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(sup.clone().keep_alive(shutdown.clone()));
    svc.start().await.unwrap();
    let mut starts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while starts.len() < 6 {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("6 starts within 30 s");
        if let Ok(Event::Started { .. }) = ev {
            starts.push(std::time::Instant::now());
        }
    }
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Jitter is ±20 %; every delay is at least the first one.
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(40)),
        "{gaps:?}"
    );
    assert!(gaps[3] > gaps[0] * 2, "the delay grows: {gaps:?}");
    sup.set_desired(palette_protocol::v2::DesiredState::Stopped)
        .await
        .unwrap();
    shutdown.cancel();
    task.await.unwrap();
}

/// Local disk trouble in a manager step is passing (retried, never held
/// against the release); bad content is not.
#[test]
fn local_disk_trouble_is_passing() {
    use palette_watchdog::error::ManagerError;
    let failed = |local_io| ManagerError::Failed {
        op: "update".into(),
        reason: "r".into(),
        local_io,
    };
    assert!(failed(true).is_local_trouble());
    assert!(!failed(false).is_local_trouble());
    let full = ManagerError::Copy {
        path: "p".into(),
        source: std::io::Error::from_raw_os_error(28),
    };
    assert!(full.is_local_trouble());
    let denied = ManagerError::Spawn {
        path: "p".into(),
        source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    };
    assert!(!denied.is_local_trouble());
}
