//! The watchdog's self-update, as `manager_in_action` carries it out (a
//! copy of the *old* manager, so `palette-manager` itself can be replaced):
//!
//! 1. verify the artifact, unpack it into `self/new/` (it must hold
//!    `palette-watchdog` and `palette-manager`), copy the live binaries to
//!    `self/old/` — journal `Staged`;
//! 2. journal `Swapping`; replace the manager, then the watchdog, each by an
//!    atomic rename of a synced copy;
//! 3. journal `Restarting`; restart the watchdog — through the service
//!    manager's command, or by stopping the old process and starting the
//!    new binary itself;
//! 4. wait until the new watchdog proves itself (its self-check passed and
//!    it checked in: `state/self-update-proof.json`) before the deadline;
//! 5. journal `Done` (ok) — or, when it did not prove itself: journal
//!    `Reverting` with the reason and its last log lines, stop it, put the
//!    old binaries back, start the old watchdog, journal `Done` (failed).
//!
//! The watchdog that runs next reports the outcome (see
//! `palette_host::self_journal` for what it does with an unfinished one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palette_host::self_journal::{self, SelfJournal, SelfOutcome, SelfProof, SelfStep};
use palette_host::Layout;
use palette_protocol::Version;
use thiserror::Error;

use crate::extract::{self, ExtractError, Limits};

#[derive(Debug, Error)]
pub enum SelfUpdateError {
    #[error("artifact {path} has sha256 {actual}, expected {expected}; nothing was changed")]
    ChecksumFailed {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("could not unpack {path}; nothing was changed")]
    Extract {
        path: PathBuf,
        #[source]
        source: ExtractError,
    },
    #[error("the release lacks {name}; a watchdog release carries palette-watchdog and palette-manager; nothing was changed")]
    Missing { name: String },
    #[error("another self-update is unfinished (step {0:?}); the watchdog settles it first")]
    Unfinished(SelfStep),
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The new watchdog did not prove itself; the old one was put back.
    #[error("{0}")]
    Refused(String),
    #[error("the release is watchdog {release}, but its {binary} reports version {reports}; nothing was changed")]
    WrongVersion {
        binary: String,
        reports: Version,
        release: Version,
    },
}

/// Why the new watchdog did not prove itself, or a watchdog could not be
/// (re)started. The text goes into the report the operator reads.
#[derive(Debug, Error)]
enum NotProven {
    #[error("the restart command is empty")]
    EmptyRestartCommand,
    #[error("could not run {program}: {error}")]
    RunRestart {
        program: String,
        error: std::io::Error,
    },
    #[error("{command} exited with {status}: {stderr}")]
    RestartFailed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{command} did not finish within 60 s")]
    RestartTimeout { command: String },
    #[error("waiting for {program}: {error}")]
    RestartWait {
        program: String,
        error: std::io::Error,
    },
    #[error("could not start {exe}: {error}")]
    Start { exe: String, error: std::io::Error },
    #[error("its self-check failed: {problem}")]
    SelfCheck { problem: String },
    #[error("it exited at once ({status})")]
    ExitedAtOnce { status: std::process::ExitStatus },
    #[error("it did not pass its self-check and check in within {secs} s")]
    Deadline { secs: u64 },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SelfUpdateError {
    let what = what.into();
    move |source| SelfUpdateError::Io { what, source }
}

/// How the watchdog is restarted onto the new binary.
#[derive(Debug, Clone)]
pub enum Restart {
    /// The service manager's command (e.g. `systemctl restart --no-block
    /// palette-watchdog.service`).
    Command(Vec<String>),
    /// No service manager: stop the old process, start the new binary.
    Itself,
}

#[derive(Debug, Clone)]
pub struct SelfUpdateRequest {
    pub artifact: PathBuf,
    pub version: Version,
    pub sha256: String,
    pub release_id: i64,
    /// The watchdog executable the service runs.
    pub watchdog_exe: PathBuf,
    /// The version of the watchdog that asked.
    pub previous: String,
    pub restart: Restart,
    pub prove_within: Duration,
}

/// Runs the whole self-update. `Ok` when the new watchdog proved itself.
pub fn self_update(layout: &Layout, req: &SelfUpdateRequest) -> Result<(), SelfUpdateError> {
    if let Some(j) = SelfJournal::load(layout).map_err(io("reading the self-update journal"))? {
        return Err(SelfUpdateError::Unfinished(j.step));
    }
    let _ = fs_err::remove_file(layout.self_proof());
    let actual = crate::ops::sha256_file(&req.artifact)
        .map_err(io(format!("reading {}", req.artifact.display())))?;
    if !actual.eq_ignore_ascii_case(&req.sha256) {
        return Err(SelfUpdateError::ChecksumFailed {
            path: req.artifact.clone(),
            expected: req.sha256.clone(),
            actual,
        });
    }
    crate::fault::point("self:verified");
    stage(layout, req)?;
    if let Err(e) = check_versions(layout, req) {
        let _ = fs_err::remove_dir_all(layout.self_new());
        return Err(e);
    }
    let mut journal = SelfJournal {
        release_id: req.release_id,
        version: req.version,
        previous: req.previous.clone(),
        watchdog_exe: req.watchdog_exe.clone(),
        step: SelfStep::Staged,
        failure: None,
        outcome: None,
    };
    save(layout, &journal)?;
    crate::fault::point("self:staged");
    tracing::info!(version = %req.version, "watchdog release verified and staged; swapping the binaries");

    journal.step = SelfStep::Swapping;
    save(layout, &journal)?;
    let [w, m] = self_journal::release_binaries();
    let new = layout.self_new();
    if let Err(e) = self_journal::place(&new.join(&m), &layout.manager()) {
        return Err(undo_swap(layout, &req.watchdog_exe, e));
    }
    crate::fault::point("self:manager-swapped");
    if let Err(e) = self_journal::place(&new.join(&w), &req.watchdog_exe) {
        return Err(undo_swap(layout, &req.watchdog_exe, e));
    }
    crate::fault::point("self:swapped");

    journal.step = SelfStep::Restarting;
    save(layout, &journal)?;
    crate::fault::point("self:restarting");
    let started = restart(layout, req);
    crate::fault::point("self:restarted");
    let (verdict, watch_from) = match started {
        Ok((child, marks)) => (await_proof(layout, req, child), marks),
        Err(why) => (Err(why), LogMarks::now(layout)),
    };
    match verdict {
        Ok(()) => {
            crate::fault::point("self:proven");
            journal.step = SelfStep::Done;
            journal.outcome = Some(SelfOutcome {
                ok: true,
                message: format!(
                    "watchdog {} installed; it passed its self-check and checked in (was {})",
                    req.version, req.previous
                ),
            });
            save(layout, &journal)?;
            let _ = fs_err::remove_dir_all(layout.self_new());
            tracing::info!(version = %req.version, "the new watchdog proved itself; self-update done");
            Ok(())
        }
        Err(why) => {
            let tail = watch_from.new_lines(layout, 5);
            let message = if tail.is_empty() {
                format!(
                    "watchdog {} refused: {why}; the old watchdog {} was put back",
                    req.version, req.previous
                )
            } else {
                format!(
                    "watchdog {} refused: {why}; the old watchdog {} was put back. Its last log lines: {}",
                    req.version,
                    req.previous,
                    tail.join(" | ")
                )
            };
            tracing::error!(version = %req.version, why = %why, "the new watchdog did not prove itself; putting the old one back");
            journal.step = SelfStep::Reverting;
            journal.failure = Some(message.clone());
            save(layout, &journal)?;
            crate::fault::point("self:reverting");
            revert(layout, req)?;
            journal.step = SelfStep::Done;
            journal.outcome = Some(SelfOutcome {
                ok: false,
                message: message.clone(),
            });
            save(layout, &journal)?;
            start_old(layout, req);
            Err(SelfUpdateError::Refused(message))
        }
    }
}

fn save(layout: &Layout, j: &SelfJournal) -> Result<(), SelfUpdateError> {
    j.save(layout)
        .map_err(io("writing the self-update journal"))
}

/// Unpacks the release into `self/new/` and copies the live binaries to
/// `self/old/`. On error nothing live was touched and `self/new/` is gone.
fn stage(layout: &Layout, req: &SelfUpdateRequest) -> Result<(), SelfUpdateError> {
    let root = layout.base.join("self");
    let staging = root.join(".staging");
    let new = layout.self_new();
    let _ = fs_err::remove_dir_all(&staging);
    let _ = fs_err::remove_dir_all(&new);
    fs_err::create_dir_all(&root).map_err(io("creating the self/ folder"))?;
    let limits = Limits::for_archive(
        fs_err::metadata(&req.artifact)
            .map(|m| m.len())
            .unwrap_or(0),
        palette_host::disk::available_space(&root),
    );
    let cleanup = |e: SelfUpdateError| {
        let _ = fs_err::remove_dir_all(&staging);
        e
    };
    extract::extract(&req.artifact, &staging, limits).map_err(|source| {
        cleanup(SelfUpdateError::Extract {
            path: req.artifact.clone(),
            source,
        })
    })?;
    for name in self_journal::release_binaries() {
        if !staging.join(&name).is_file() {
            return Err(cleanup(SelfUpdateError::Missing { name }));
        }
    }
    fs_err::rename(&staging, &new)
        .map_err(io("moving the new binaries into self/new"))
        .map_err(cleanup)?;
    // The binaries being replaced, kept for the way back.
    let old = layout.self_old();
    let old_staging = root.join(".old-staging");
    let _ = fs_err::remove_dir_all(&old_staging);
    let copied = (|| {
        fs_err::create_dir_all(&old_staging)?;
        let [w, m] = self_journal::release_binaries();
        for (src, name) in [(&req.watchdog_exe, w), (&layout.manager(), m)] {
            fs_err::copy(src, old_staging.join(&name))?;
            self_journal::sync_file(&old_staging.join(&name))?;
        }
        let _ = fs_err::remove_dir_all(&old);
        fs_err::rename(&old_staging, &old)
    })();
    if let Err(e) = copied {
        let _ = fs_err::remove_dir_all(&old_staging);
        let _ = fs_err::remove_dir_all(&new);
        return Err(SelfUpdateError::Io {
            what: "keeping a copy of the running binaries in self/old".into(),
            source: e,
        });
    }
    palette_host::fsx::sync_dir(&root);
    Ok(())
}

/// How long a staged binary has to answer `--version`.
const VERSION_PATIENCE: Duration = Duration::from_secs(5);

/// Each staged binary that answers `--version` must report the release's
/// version: one that reports another would take itself for the old watchdog
/// and never prove itself. A binary that does not answer is left to the
/// proof (it is refused there, with its own reason).
fn check_versions(layout: &Layout, req: &SelfUpdateRequest) -> Result<(), SelfUpdateError> {
    for name in self_journal::release_binaries() {
        let exe = layout.self_new().join(&name);
        match reported_version(&exe) {
            Some(v) if v != req.version => {
                return Err(SelfUpdateError::WrongVersion {
                    binary: name,
                    reports: v,
                    release: req.version,
                })
            }
            Some(_) => {}
            None => {
                tracing::warn!(exe = %exe.display(), "the staged binary does not tell its version; its proof decides")
            }
        }
    }
    Ok(())
}

/// The version `exe --version` prints last on its first line, if it
/// answers within `VERSION_PATIENCE`.
fn reported_version(exe: &Path) -> Option<Version> {
    let mut child = std::process::Command::new(exe)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + VERSION_PATIENCE;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    use std::io::Read;
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    out.lines().next()?.split_whitespace().last()?.parse().ok()
}

/// A swap failed half-way (a full disk): the old binaries go back and the
/// journal is cleared; the old watchdog still runs.
fn undo_swap(layout: &Layout, watchdog_exe: &Path, e: std::io::Error) -> SelfUpdateError {
    let _ = self_journal::restore_old(layout, watchdog_exe);
    let _ = fs_err::remove_dir_all(layout.self_new());
    let _ = SelfJournal::clear(layout);
    SelfUpdateError::Io {
        what: "replacing the binaries (the old ones were put back)".into(),
        source: e,
    }
}

/// Stops whoever holds the watchdog lock (SIGTERM, then SIGKILL) and waits
/// until the lock is free.
fn stop_running_watchdog(layout: &Layout, patience: Duration) {
    let lock = layout.watchdog_lock();
    let Some(holder) = palette_host::lock::holder(&lock) else {
        return;
    };
    if let Some(pid) = holder {
        tracing::info!(pid, "stopping the running watchdog");
        palette_service::terminate_process(pid);
    }
    let deadline = Instant::now() + patience;
    while palette_host::lock::is_held(&lock) {
        if Instant::now() > deadline {
            if let Some(Some(pid)) = palette_host::lock::holder(&lock) {
                tracing::warn!(pid, "the watchdog did not stop in time; killing it");
                palette_service::kill_process(pid);
            }
            let hard = Instant::now() + Duration::from_secs(10);
            while palette_host::lock::is_held(&lock) && Instant::now() < hard {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the watchdog binary at `exe` detached, its console output
/// appended to `Logs/watchdog.console.log`.
fn spawn_watchdog(layout: &Layout, exe: &Path) -> std::io::Result<std::process::Child> {
    let log_path = layout.logs().join("watchdog.console.log");
    let (out, _) = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?
        .into_parts();
    let err = out.try_clone()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("run")
        .arg("--base")
        .arg(&layout.base)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    crate::platform::detach(&mut cmd);
    cmd.spawn()
}

/// Runs the service manager's restart command (60 s at most).
fn run_restart_command(words: &[String]) -> Result<(), NotProven> {
    let Some((program, args)) = words.split_first() else {
        return Err(NotProven::EmptyRestartCommand);
    };
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| NotProven::RunRestart {
            program: program.clone(),
            error,
        })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(NotProven::RestartFailed {
                    command: words.join(" "),
                    status,
                    stderr: err.trim().to_string(),
                });
            }
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                return Err(NotProven::RestartTimeout {
                    command: words.join(" "),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => {
                return Err(NotProven::RestartWait {
                    program: program.clone(),
                    error,
                })
            }
        }
    }
}

/// Gets the new binary running. `Itself` returns the new process. The
/// marks are where the logs stood when it was started.
fn restart(
    layout: &Layout,
    req: &SelfUpdateRequest,
) -> Result<(Option<std::process::Child>, LogMarks), NotProven> {
    match &req.restart {
        Restart::Command(words) => {
            tracing::info!(
                command = words.join(" "),
                "restarting the watchdog through the service manager"
            );
            let marks = LogMarks::now(layout);
            run_restart_command(words).map(|()| (None, marks))
        }
        Restart::Itself => {
            stop_running_watchdog(layout, Duration::from_secs(60));
            tracing::info!(exe = %req.watchdog_exe.display(), "starting the new watchdog");
            let marks = LogMarks::now(layout);
            spawn_watchdog(layout, &req.watchdog_exe)
                .map(|c| (Some(c), marks))
                .map_err(|error| NotProven::Start {
                    exe: req.watchdog_exe.display().to_string(),
                    error,
                })
        }
    }
}

/// Waits for the new watchdog's proof, its exit (when this manager started
/// it), or the deadline.
fn await_proof(
    layout: &Layout,
    req: &SelfUpdateRequest,
    mut child: Option<std::process::Child>,
) -> Result<(), NotProven> {
    let deadline = Instant::now() + req.prove_within;
    loop {
        if let Ok(Some(p)) = SelfProof::load(layout) {
            if p.version == req.version && palette_service::process_alive(p.pid) {
                match p.problem {
                    None => return Ok(()),
                    Some(problem) => {
                        stop_new(layout, child.as_mut());
                        return Err(NotProven::SelfCheck { problem });
                    }
                }
            }
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                // Unless another watchdog runs (a service manager started
                // one, which took the lock first): then that one must prove
                // itself, before the deadline.
                if !palette_host::lock::is_held(&layout.watchdog_lock()) {
                    return Err(NotProven::ExitedAtOnce { status });
                }
                child = None;
            }
        }
        if Instant::now() > deadline {
            stop_new(layout, child.as_mut());
            return Err(NotProven::Deadline {
                secs: req.prove_within.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the new watchdog (the process this manager started, and whoever
/// holds the watchdog lock). The process this manager started is waited
/// for, and killed when it ignores SIGTERM: a broken build that does not
/// hold the lock must not survive the revert beside the old watchdog.
fn stop_new(layout: &Layout, child: Option<&mut std::process::Child>) {
    if let Some(c) = child {
        end_child(c, STOP_PATIENCE);
    }
    stop_running_watchdog(layout, Duration::from_secs(20));
}

/// How long a stopped watchdog has to exit before it is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// SIGTERM, then SIGKILL after `patience`; returns once `c` has exited.
fn end_child(c: &mut std::process::Child, patience: Duration) {
    palette_service::terminate_process(c.id());
    let deadline = Instant::now() + patience;
    loop {
        match c.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                tracing::warn!(
                    pid = c.id(),
                    "the new watchdog did not stop within {} s of SIGTERM; killing it",
                    patience.as_secs()
                );
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Puts the old binaries back (the new watchdog is stopped first when this
/// manager runs it itself; a service manager's restart replaces it).
fn revert(layout: &Layout, req: &SelfUpdateRequest) -> Result<(), SelfUpdateError> {
    if matches!(req.restart, Restart::Itself) {
        stop_running_watchdog(layout, Duration::from_secs(20));
    }
    self_journal::restore_old(layout, &req.watchdog_exe)
        .map_err(io("putting the old binaries back"))?;
    let _ = fs_err::remove_dir_all(layout.self_new());
    Ok(())
}

fn start_old(layout: &Layout, req: &SelfUpdateRequest) {
    // One watchdog at a time: whatever still holds the lock is ended first.
    if palette_host::lock::is_held(&layout.watchdog_lock()) {
        tracing::warn!("a watchdog still runs before the old one is started again; stopping it");
        stop_running_watchdog(layout, STOP_PATIENCE);
    }
    let started = match &req.restart {
        Restart::Command(words) => run_restart_command(words),
        Restart::Itself => spawn_watchdog(layout, &req.watchdog_exe)
            .map(drop)
            .map_err(|error| NotProven::Start {
                exe: req.watchdog_exe.display().to_string(),
                error,
            }),
    };
    match started {
        Ok(()) => tracing::info!("the old watchdog was started again"),
        Err(e) => tracing::error!(error = %e, "could not start the old watchdog again"),
    }
}

/// Where the watchdog's logs stood when the new one was started, to quote
/// what it wrote if it is refused.
struct LogMarks(Vec<(PathBuf, u64)>);

impl LogMarks {
    fn now(layout: &Layout) -> Self {
        LogMarks(
            ["watchdog.console.log", "watchdog.log"]
                .iter()
                .map(|n| {
                    let p = layout.logs().join(n);
                    let len = fs_err::metadata(&p).map(|m| m.len()).unwrap_or(0);
                    (p, len)
                })
                .collect(),
        )
    }

    /// The last `n` lines written since: the console output (what a
    /// watchdog that could not even start its log printed), else its log.
    fn new_lines(&self, _layout: &Layout, n: usize) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};

        for (path, from) in &self.0 {
            let mut lines = Vec::new();
            let Ok(mut f) = fs_err::File::open(path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            // A rotated log starts again from 0; at most 64 KiB is read.
            let start = if len < *from { 0 } else { *from }.max(len.saturating_sub(64 * 1024));
            if f.seek(SeekFrom::Start(start)).is_err() {
                continue;
            }
            let mut bytes = Vec::new();
            let _ = f.take(64 * 1024).read_to_end(&mut bytes);
            let text = String::from_utf8_lossy(&bytes);
            lines.extend(
                text.lines()
                    .map(|l| l.trim().chars().take(300).collect::<String>())
                    .filter(|l| !l.is_empty()),
            );
            if !lines.is_empty() {
                let skip = lines.len().saturating_sub(n);
                return lines.split_off(skip);
            }
        }
        Vec::new()
    }
}
