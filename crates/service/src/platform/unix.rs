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
