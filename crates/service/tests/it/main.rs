//! Real processes under both backends.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
#![cfg(unix)]

use std::sync::Arc;
use std::time::Duration;

use palette_service::{
    CommandLine, CommandService, CommandSpec, Event, ProcessService, ProcessSpec, ServiceControl,
    Status,
};

type Resolve =
    dyn Fn() -> Result<CommandLine, Box<dyn std::error::Error + Send + Sync>> + Send + Sync;

fn sh(script: &str) -> Arc<Resolve> {
    let script = script.to_string();
    Arc::new(move || {
        Ok(CommandLine {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.clone()],
            cwd: None,
        })
    })
}

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event within 10 s")
        .unwrap()
}

#[tokio::test]
async fn process_start_observe_exit_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("Logs/agent.log");
    let svc = ProcessService::new(ProcessSpec {
        resolve: sh("echo hello-out; echo hello-err >&2; exit 3"),
        log_path: log.clone(),
        pid_file: Some(dir.path().join("agent.pid")),
        stop_timeout: Duration::from_secs(2),
    });
    let mut ev = svc.events().unwrap();
    svc.start().await.unwrap();
    assert!(matches!(next_event(&mut ev).await, Event::Started { .. }));
    match next_event(&mut ev).await {
        Event::Exited { how, .. } => assert!(how.contains('3'), "{how}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(svc.status().await.unwrap(), Status::Stopped);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("hello-out") && text.contains("hello-err"),
        "{text}"
    );
    assert!(
        !dir.path().join("agent.pid").exists(),
        "pid file removed after exit"
    );
}

#[tokio::test]
async fn process_stop_escalates_to_kill_and_reaches_the_group() {
    let dir = tempfile::tempdir().unwrap();
    // Ignores SIGTERM and has a grandchild in the same group.
    let script = "trap '' TERM; sleep 300 & echo $! > grandchild; while true; do sleep 1; done";
    let cwd = dir.path().to_path_buf();
    let svc = ProcessService::new(ProcessSpec {
        resolve: Arc::new(move || {
            Ok(CommandLine {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                cwd: Some(cwd.clone()),
            })
        }),
        log_path: dir.path().join("agent.log"),
        pid_file: None,
        stop_timeout: Duration::from_millis(300),
    });
    let mut ev = svc.events().unwrap();
    svc.start().await.unwrap();
    assert!(matches!(next_event(&mut ev).await, Event::Started { .. }));
    let gc_file = dir.path().join("grandchild");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gc_file.exists() || std::fs::read_to_string(&gc_file).unwrap().trim().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "grandchild never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gc: u32 = std::fs::read_to_string(&gc_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(svc.status().await.unwrap().is_running());
    svc.stop().await.unwrap();
    assert_eq!(svc.status().await.unwrap(), Status::Stopped);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while palette_service::process_alive(gc) {
        assert!(
            std::time::Instant::now() < deadline,
            "grandchild {gc} survived the stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn process_spawn_failure_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let svc = ProcessService::new(ProcessSpec {
        resolve: Arc::new(|| {
            Ok(CommandLine {
                program: "/nonexistent/agent".into(),
                args: vec![],
                cwd: None,
            })
        }),
        log_path: dir.path().join("agent.log"),
        pid_file: None,
        stop_timeout: Duration::from_secs(1),
    });
    let err = svc.start().await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/agent"), "{err}");
    assert_eq!(svc.status().await.unwrap(), Status::Stopped);
}

fn orphan(dir: &std::path::Path) -> (std::process::Child, std::path::PathBuf) {
    let pid_file = dir.join("agent.pid");
    let mut cmd = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.arg("300").spawn().unwrap();
    (child, pid_file)
}

fn service(dir: &std::path::Path, pid_file: &std::path::Path) -> ProcessService {
    ProcessService::new(ProcessSpec {
        resolve: sh("sleep 300"),
        log_path: dir.join("agent.log"),
        pid_file: Some(pid_file.to_path_buf()),
        stop_timeout: Duration::from_secs(1),
    })
}

/// An agent an earlier watchdog left running is supervised again, not
/// restarted: a start is a no-op, its exit is seen, a stop ends it.
#[tokio::test]
async fn an_agent_left_running_is_adopted_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, pid_file) = orphan(dir.path());
    let start = palette_service::start_time(first.id()).unwrap();
    std::fs::write(&pid_file, format!("{} {start}", first.id())).unwrap();
    let svc = service(dir.path(), &pid_file);
    let mut events = svc.events().unwrap();
    assert_eq!(
        svc.adopt().await,
        palette_service::Adoption::Adopted { pid: first.id() }
    );
    assert_eq!(
        svc.status().await.unwrap(),
        Status::Running {
            pid: Some(first.id())
        }
    );
    svc.start().await.unwrap();
    assert_eq!(
        svc.status().await.unwrap(),
        Status::Running {
            pid: Some(first.id())
        },
        "a start must not replace the adopted agent"
    );
    // It dies: the exit is seen although it is not the service's child.
    first.kill().unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the exit of an adopted agent is seen")
        .unwrap();
    assert!(
        matches!(ev, Event::Exited { pid, .. } if pid == first.id()),
        "{ev:?}"
    );
    let _ = first.wait();

    // Another one, stopped through the service.
    let (mut second, pid_file) = orphan(dir.path());
    let start = palette_service::start_time(second.id()).unwrap();
    std::fs::write(&pid_file, format!("{} {start}", second.id())).unwrap();
    let svc = service(dir.path(), &pid_file);
    assert!(matches!(
        svc.adopt().await,
        palette_service::Adoption::Adopted { .. }
    ));
    let waiter = std::thread::spawn(move || second.wait().unwrap());
    svc.stop().await.unwrap();
    assert!(!waiter.join().unwrap().success());
    assert_eq!(svc.status().await.unwrap(), Status::Stopped);
}

/// A pid file naming a live process that started at another time (the
/// pid was reused) is not adopted and the process is left alone.
#[tokio::test]
async fn a_reused_pid_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut other, pid_file) = orphan(dir.path());
    std::fs::write(&pid_file, format!("{} 1", other.id())).unwrap();
    let svc = service(dir.path(), &pid_file);
    assert_eq!(
        svc.adopt().await,
        palette_service::Adoption::NotOurs { pid: other.id() }
    );
    assert_eq!(svc.status().await.unwrap(), Status::Stopped);
    assert!(
        other.try_wait().unwrap().is_none(),
        "the unrelated process was touched"
    );
    other.kill().unwrap();
    let _ = other.wait();
}

/// The command backend driving a real daemon through Debian's
/// start-stop-daemon, as an init script would.
#[tokio::test]
async fn command_backend_with_start_stop_daemon() {
    let ssd = ["/usr/sbin/start-stop-daemon", "/sbin/start-stop-daemon"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("start-stop-daemon (Debian package dpkg) is installed");
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("daemon.pid").display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let spec = CommandSpec {
        start: s(&[
            ssd,
            "--start",
            "--background",
            "--make-pidfile",
            "--pidfile",
            &pid,
            "--exec",
            "/bin/sleep",
            "--",
            "300",
        ]),
        stop: s(&[
            ssd,
            "--stop",
            "--pidfile",
            &pid,
            "--retry",
            "TERM/5/KILL/5",
            "--remove-pidfile",
        ]),
        status: s(&[ssd, "--status", "--pidfile", &pid]),
        timeout: Duration::from_secs(20),
    };
    let svc = CommandService::new(spec);
    assert!(svc.events().is_none());
    assert_eq!(svc.status().await.unwrap(), Status::Stopped);
    svc.start().await.unwrap();
    assert!(svc.status().await.unwrap().is_running());
    svc.start().await.unwrap(); // no-op while running
    svc.restart().await.unwrap();
    assert!(svc.status().await.unwrap().is_running());
    svc.stop().await.unwrap();
    assert_eq!(svc.status().await.unwrap(), Status::Stopped);
}

#[tokio::test]
async fn command_backend_failure_names_the_command() {
    let svc = CommandService::new(CommandSpec {
        start: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo boom >&2; exit 7".into(),
        ],
        stop: vec!["/bin/true".into()],
        status: vec!["/bin/false".into()],
        timeout: Duration::from_secs(5),
    });
    let err = svc.start().await.unwrap_err().to_string();
    assert!(
        err.contains("start command /bin/sh exited") && err.contains("boom"),
        "{err}"
    );
}

/// The manager is started this way: in a process group of its own, so a
/// signal to the watchdog's group (a terminal's Ctrl-C, a service stop of
/// the group) does not reach it.
#[tokio::test]
async fn detached_children_lead_their_own_process_group() {
    let mut cmd = tokio::process::Command::new("sleep");
    cmd.arg("300");
    let mut child = palette_service::spawn_detached(&mut cmd).unwrap();
    let pid = child.id().unwrap() as i32;
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    assert_eq!(pgid.as_raw(), pid);
    assert_ne!(pgid, nix::unistd::getpgrp());
    // Signalling our own group leaves it alone.
    let ours = nix::unistd::getpgrp();
    assert_ne!(ours.as_raw(), pid);
    child.kill().await.unwrap();
}
