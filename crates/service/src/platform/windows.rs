//! Windows: the child gets a new process group and breaks away from the
//! watchdog's job, so stopping the watchdog service does not end it.

const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
const CREATE_BREAKAWAY_FROM_JOB: u32 = 0x0100_0000;
const DETACHED_PROCESS: u32 = 0x0000_0008;

pub fn own_group(cmd: &mut tokio::process::Command) {
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP);
}

/// Windows has no SIGTERM for console-less children: the process backend
/// falls back to killing the child handle it owns.
pub fn terminate_group(_pid: u32) -> bool {
    false
}

pub fn kill_group(_pid: u32) {}

/// Whether a process with this id runs (Win32: it can be opened and has
/// not exited).
#[allow(unsafe_code)]
pub fn process_alive(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    // SAFETY: plain Win32 calls; the handle is checked, used once and closed.
    unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            return false;
        }
        let mut code = 0u32;
        let ok = GetExitCodeProcess(handle, &mut code) != 0;
        CloseHandle(handle);
        ok && code == STILL_ACTIVE as u32
    }
}

pub fn spawn_detached(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_BREAKAWAY_FROM_JOB | DETACHED_PROCESS)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    cmd.spawn()
}

/// Asks one process to stop: `taskkill` without `/F` (a window-less
/// process may ignore it; `kill_process` follows).
pub fn terminate_process(pid: u32) -> bool {
    std::process::Command::new("taskkill")
        .args(["/PID", &pid.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn kill_process(pid: u32) {
    let _ = std::process::Command::new("taskkill")
        .args(["/F", "/PID", &pid.to_string()])
        .output();
}

/// Not known on Windows yet: an agent left by an earlier watchdog is not
/// adopted there.
pub fn start_time(_pid: u32) -> Option<u64> {
    None
}
