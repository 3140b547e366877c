//! Unix: the agent and the manager lead process groups of their own, so a
//! signal reaches the whole tree and the watchdog's own group is untouched.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Puts the child in a new process group, led by itself.
pub fn own_group(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
}

/// Asks the group led by `pid` to stop (SIGTERM). True when a signal could
/// be sent.
pub fn terminate_group(pid: u32) -> bool {
    killpg(Pid::from_raw(pid as i32), Signal::SIGTERM).is_ok()
}

/// Kills the group led by `pid` (SIGKILL).
pub fn kill_group(pid: u32) {
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Unix needs no job: the agent's process group is its tree.
pub struct Job;

impl Job {
    pub fn contain(_pid: u32) -> Option<Job> {
        None
    }

    pub fn kill(&self) {}
}

/// Whether a process with this id exists.
pub fn process_alive(pid: u32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Starts a program that must outlive the caller: new session, no
/// controlling terminal, stdin from /dev/null.
pub fn spawn_detached(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    cmd.spawn()
}

/// Asks one process to stop (SIGTERM). True when a signal could be sent.
pub fn terminate_process(pid: u32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM).is_ok()
}

/// Kills one process (SIGKILL).
pub fn kill_process(pid: u32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// When the process started, in clock ticks since boot (Linux's
/// `/proc/<pid>/stat`, field 22): with the pid, it names one process, so a
/// pid reused by another program is told apart. `None` where unknown.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); field 22 is the 20th from there.
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None; // a zombie is not a live process
    }
    fields.nth(18)?.parse().ok()
}

/// There is no Windows service control manager here: the `windows_service`
/// agent backend is refused.
pub mod scm {
    use std::time::Duration;

    use crate::ServiceError;

    const WHY: &str = "the windows_service agent backend (Windows only)";

    pub fn check(_name: &str) -> Result<(), ServiceError> {
        Err(ServiceError::Unsupported(WHY))
    }

    pub fn running_pid(_name: &str) -> Option<u32> {
        None
    }

    pub fn start(_name: &str, _timeout: Duration) -> Result<(), ServiceError> {
        Err(ServiceError::Unsupported(WHY))
    }

    pub fn stop(_name: &str, _timeout: Duration) -> Result<(), ServiceError> {
        Err(ServiceError::Unsupported(WHY))
    }
}
