//! The process backend: the agent is the watchdog's own child, leading a
//! process group of its own (on Windows also in a job object). Its exit is
//! seen at once (the child is waited on), a stop is SIGTERM to the group
//! (Windows: CTRL_BREAK) then SIGKILL (Windows: the job terminated) after a
//! timeout, and its stdout/stderr go to the agent log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, watch, Mutex};

use crate::platform;
use crate::{Event, ServiceControl, ServiceError, Status};

/// The agent log is rotated when a start finds it larger than this.
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
const LOG_KEEP: u32 = 10;

/// One program invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
}

type Resolver =
    dyn Fn() -> Result<CommandLine, Box<dyn std::error::Error + Send + Sync>> + Send + Sync;

/// How to run the agent.
pub struct ProcessSpec {
    /// Worked out again at every start, so a start after an update runs
    /// the version `current` points at then.
    pub resolve: Arc<Resolver>,
    pub log_path: PathBuf,
    /// Where the running agent's pid is kept, to find an agent orphaned by
    /// a watchdog that died.
    pub pid_file: Option<PathBuf>,
    pub stop_timeout: Duration,
}

enum Ctl {
    Terminate,
    Kill,
}

struct Running {
    pid: u32,
    ctl: mpsc::Sender<Ctl>,
    exited: watch::Receiver<bool>,
}

pub struct ProcessService {
    spec: ProcessSpec,
    running: Arc<Mutex<Option<Running>>>,
    events: broadcast::Sender<Event>,
}

impl ProcessService {
    pub fn new(spec: ProcessSpec) -> Self {
        ProcessService {
            spec,
            running: Arc::new(Mutex::new(None)),
            events: broadcast::channel(64).0,
        }
    }

    /// Takes over an agent an earlier watchdog left running (it was killed,
    /// or restarted onto a new binary by a self-update): its pid file names
    /// a live process that started when recorded. The agent is not
    /// restarted; its exit is noticed by polling (it is not this process's
    /// child), and a stop signals its process group as usual.
    pub async fn adopt(&self) -> Adoption {
        let Some(path) = self.spec.pid_file.as_ref() else {
            return Adoption::Nothing;
        };
        let Ok(text) = fs_err::read_to_string(path) else {
            return Adoption::Nothing;
        };
        let mut words = text.split_whitespace();
        let pid: Option<u32> = words.next().and_then(|w| w.parse().ok());
        let recorded: Option<u64> = words.next().and_then(|w| w.parse().ok());
        let Some(pid) = pid.filter(|p| *p != std::process::id()) else {
            let _ = fs_err::remove_file(path);
            return Adoption::Nothing;
        };
        let now = platform::start_time(pid);
        match (recorded, now) {
            (Some(a), Some(b)) if a == b => {}
            (_, None) if !platform::process_alive(pid) => {
                let _ = fs_err::remove_file(path);
                return Adoption::Nothing;
            }
            _ => {
                // Alive, but not provably the agent that was recorded (the
                // pid was reused, or its start time is unknown here).
                let _ = fs_err::remove_file(path);
                return Adoption::NotOurs { pid };
            }
        }
        let started_at = recorded.unwrap_or(0);
        let (ctl_tx, mut ctl_rx) = mpsc::channel(4);
        let (exit_tx, exit_rx) = watch::channel(false);
        let exit = self.on_exit(exit_tx);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ADOPTED_POLL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if platform::start_time(pid) != Some(started_at) {
                            break;
                        }
                    }
                    Some(c) = ctl_rx.recv() => match c {
                        Ctl::Terminate => {
                            if !platform::terminate_group(pid) {
                                platform::kill_group(pid);
                            }
                        }
                        Ctl::Kill => platform::kill_group(pid),
                    },
                }
            }
            exit.report(
                pid,
                "exited (adopted from an earlier watchdog: status unknown)".into(),
            )
            .await;
        });
        *self.running.lock().await = Some(Running {
            pid,
            ctl: ctl_tx,
            exited: exit_rx,
        });
        Adoption::Adopted { pid }
    }

    fn on_exit(&self, exited: watch::Sender<bool>) -> OnExit {
        OnExit {
            pid_file: self.spec.pid_file.clone(),
            exited,
            events: self.events.clone(),
            running: self.running.clone(),
            started: Instant::now(),
        }
    }

    #[allow(clippy::disallowed_types)] // the std handle goes to the child
    fn open_log(&self) -> Result<std::fs::File, ServiceError> {
        let path = &self.spec.log_path;
        let err = |source| ServiceError::Log {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir).map_err(err)?;
        }
        if fs_err::metadata(path)
            .map(|m| m.len() > LOG_ROTATE_BYTES)
            .unwrap_or(false)
        {
            for i in (1..LOG_KEEP).rev() {
                let from = path.with_extension(format!("log.{i}"));
                let _ = fs_err::rename(&from, path.with_extension(format!("log.{}", i + 1)));
            }
            let _ = fs_err::rename(path, path.with_extension("log.1"));
        }
        // The child's stdout/stderr need the std handle.
        fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(fs_err::File::into_parts)
            .map(|(file, _path)| file)
            .map_err(err)
    }
}

/// How often an adopted agent (not this process's child) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// What `adopt` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// No agent was left running.
    Nothing,
    /// The agent left running is supervised again, not restarted.
    Adopted { pid: u32 },
    /// The pid file names a live process that is not provably the agent:
    /// left alone.
    NotOurs { pid: u32 },
}

/// What happens when a supervised agent exits: its pid file goes, the
/// waiters and subscribers hear of it, and it is no longer the running one.
struct OnExit {
    pid_file: Option<PathBuf>,
    exited: watch::Sender<bool>,
    events: broadcast::Sender<Event>,
    running: Arc<Mutex<Option<Running>>>,
    started: Instant,
}

impl OnExit {
    async fn report(self, pid: u32, how: String) {
        ended(&self.pid_file, pid);
        let _ = self.exited.send(true);
        let _ = self.events.send(Event::Exited {
            pid,
            how,
            ran_ms: self.started.elapsed().as_millis() as u64,
        });
        let mut running = self.running.lock().await;
        if running.as_ref().is_some_and(|r| r.pid == pid) {
            *running = None;
        }
    }
}

/// Removes the pid file if it still names `pid`.
fn ended(pid_file: &Option<PathBuf>, pid: u32) {
    if let Some(pf) = pid_file {
        if fs_err::read_to_string(pf)
            .map(|s| s.split_whitespace().next() == Some(pid.to_string().as_str()))
            .unwrap_or(false)
        {
            let _ = fs_err::remove_file(pf);
        }
    }
}

/// Writes the pid file (write then rename: never half a line).
fn write_pid_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs_err::write(&tmp, text)?;
    fs_err::rename(&tmp, path)
}

#[async_trait]
impl ServiceControl for ProcessService {
    async fn start(&self) -> Result<(), ServiceError> {
        let mut running = self.running.lock().await;
        if let Some(r) = running.as_ref() {
            if !*r.exited.borrow() {
                return Ok(());
            }
        }
        let line = (self.spec.resolve)().map_err(ServiceError::Resolve)?;
        let log = self.open_log()?;
        let log2 = log.try_clone().map_err(|source| ServiceError::Log {
            path: self.spec.log_path.clone(),
            source,
        })?;
        let mut cmd = tokio::process::Command::new(&line.program);
        cmd.args(&line.args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        if let Some(cwd) = &line.cwd {
            cmd.current_dir(cwd);
        }
        platform::own_group(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| ServiceError::Spawn {
            program: line.program.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let job = platform::Job::contain(pid);
        if let Some(pf) = &self.spec.pid_file {
            // The start time names this very process (a pid is reused).
            let record = match platform::start_time(pid) {
                Some(t) => format!("{pid} {t}"),
                None => pid.to_string(),
            };
            let _ = write_pid_file(pf, &record);
        }
        let (ctl_tx, mut ctl_rx) = mpsc::channel(4);
        let (exit_tx, exit_rx) = watch::channel(false);
        let exit = self.on_exit(exit_tx);
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    st = child.wait() => break st,
                    Some(c) = ctl_rx.recv() => match c {
                        Ctl::Terminate => {
                            if !platform::terminate_group(pid) {
                                let _ = child.start_kill();
                            }
                        }
                        Ctl::Kill => {
                            if let Some(job) = &job {
                                job.kill();
                            }
                            platform::kill_group(pid);
                            let _ = child.start_kill();
                        }
                    },
                }
            };
            let how = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            exit.report(pid, how).await;
        });
        *running = Some(Running {
            pid,
            ctl: ctl_tx,
            exited: exit_rx,
        });
        let _ = self.events.send(Event::Started { pid });
        Ok(())
    }

    async fn stop(&self) -> Result<(), ServiceError> {
        let mut running = self.running.lock().await;
        let Some(r) = running.take() else {
            return Ok(());
        };
        let mut exited = r.exited.clone();
        if *exited.borrow() {
            return Ok(());
        }
        let _ = r.ctl.send(Ctl::Terminate).await;
        let wait = |rx: &mut watch::Receiver<bool>, d: Duration| {
            let mut rx = rx.clone();
            async move { tokio::time::timeout(d, rx.wait_for(|e| *e)).await.is_ok() }
        };
        if wait(&mut exited, self.spec.stop_timeout).await {
            return Ok(());
        }
        tracing::warn!(
            pid = r.pid,
            secs = self.spec.stop_timeout.as_secs(),
            "the agent did not stop when asked (SIGTERM / CTRL_BREAK); killing it"
        );
        let _ = r.ctl.send(Ctl::Kill).await;
        if wait(&mut exited, Duration::from_secs(5)).await {
            return Ok(());
        }
        *running = Some(r);
        Err(ServiceError::StopTimeout {
            secs: self.spec.stop_timeout.as_secs() + 5,
        })
    }

    async fn status(&self) -> Result<Status, ServiceError> {
        let running = self.running.lock().await;
        Ok(match running.as_ref() {
            Some(r) if !*r.exited.borrow() => Status::Running { pid: Some(r.pid) },
            _ => Status::Stopped,
        })
    }

    fn events(&self) -> Option<broadcast::Receiver<Event>> {
        Some(self.events.subscribe())
    }

    fn backend(&self) -> &'static str {
        "process"
    }
}
