//! Windows: the agent leads a process group of its own (so a CTRL_BREAK
//! reaches it and its children, not the watchdog) inside a job object (so a
//! hard stop ends every process it started); helpers the watchdog starts
//! detached (the manager) break away from the watchdog's job, so stopping
//! the watchdog service does not end them.
#![allow(unsafe_code)]

use windows_sys::Win32::Foundation::{CloseHandle, FILETIME, HANDLE, STILL_ACTIVE};
use windows_sys::Win32::System::Console::{GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, TerminateProcess,
    PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SET_QUOTA, PROCESS_TERMINATE,
};

const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
const CREATE_BREAKAWAY_FROM_JOB: u32 = 0x0100_0000;
const DETACHED_PROCESS: u32 = 0x0000_0008;

/// Starts the child as the leader of a new process group, on this
/// process's console (see [`ensure_console`]).
pub fn own_group(cmd: &mut tokio::process::Command) {
    ensure_console();
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP);
}

/// CTRL_BREAK reaches only processes on the sender's console, and a
/// Windows service (or a program started detached) has none: such a process
/// allocates a console of its own, once, before its first agent starts, so
/// the agent shares it. Its window is hidden, and this process ignores the
/// console's events (a user's logoff must not end a service; only the
/// service control manager stops it). A process that has a console keeps
/// it, and its Ctrl-C.
fn ensure_console() {
    use windows_sys::Win32::System::Console::{
        AllocConsole, GetConsoleWindow, SetConsoleCtrlHandler,
    };
    use windows_sys::Win32::UI::WindowsAndMessaging::{ShowWindow, SW_HIDE};
    unsafe extern "system" fn ignore(_event: u32) -> windows_sys::core::BOOL {
        1
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain Win32 calls; the handler is a static function.
        unsafe {
            if AllocConsole() != 0 {
                let window = GetConsoleWindow();
                if !window.is_null() {
                    ShowWindow(window, SW_HIDE);
                }
                SetConsoleCtrlHandler(Some(ignore), 1);
                tracing::debug!("allocated a hidden console for the agent's stop events");
            }
        }
    });
}

/// Asks the group led by `pid` to stop: CTRL_BREAK_EVENT, which reaches it
/// when it shares this process's console (the foreground watchdog's, or the
/// hidden one the watchdog service allocates at start). False when it
/// could not be sent (no shared console): the caller kills instead.
pub fn terminate_group(pid: u32) -> bool {
    // SAFETY: a plain Win32 call with integer arguments.
    unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) != 0 }
}

/// Kills the process `pid` (the job, when there is one, is killed by
/// [`Job::kill`]).
pub fn kill_group(pid: u32) {
    kill_process(pid);
}

/// A job object holding the agent and every process it starts: a hard
/// stop ends them all. It is not "kill on close": an agent outlives a
/// watchdog that is restarted (a self-update), and the next watchdog adopts
/// it by pid and start time.
pub struct Job(HANDLE);

// SAFETY: a job handle may be used from any thread.
unsafe impl Send for Job {}

impl Job {
    /// Puts the process `pid` in a new job. `None` when that fails (the
    /// agent then runs without one; a hard stop kills the process only).
    pub fn contain(pid: u32) -> Option<Job> {
        // SAFETY: Win32 calls on handles that are checked and closed.
        unsafe {
            let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
            if job.is_null() {
                return None;
            }
            let process = OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, 0, pid);
            let ok = !process.is_null() && AssignProcessToJobObject(job, process) != 0;
            if !process.is_null() {
                CloseHandle(process);
            }
            if ok {
                Some(Job(job))
            } else {
                tracing::warn!(pid, "the agent could not be put in a job object; a hard stop ends only its own process");
                CloseHandle(job);
                None
            }
        }
    }

    /// Ends every process in the job.
    pub fn kill(&self) {
        // SAFETY: the handle is owned and open.
        unsafe {
            TerminateJobObject(self.0, 1);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: the handle is owned and closed once.
        unsafe {
            CloseHandle(self.0);
        }
    }
}

/// Whether a process with this id runs (Win32: it can be opened and has
/// not exited).
pub fn process_alive(pid: u32) -> bool {
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
    // SAFETY: Win32 calls on a handle that is checked and closed.
    unsafe {
        let handle = OpenProcess(PROCESS_TERMINATE, 0, pid);
        if !handle.is_null() {
            TerminateProcess(handle, 1);
            CloseHandle(handle);
        }
    }
}

/// When the process was created (a FILETIME: 100 ns since 1601): with the
/// pid, it names one process, so a reused pid is told apart. `None` when
/// the process is gone or cannot be queried.
pub fn start_time(pid: u32) -> Option<u64> {
    if !process_alive(pid) {
        return None;
    }
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: Win32 calls on a handle that is checked and closed; the
    // out-pointers are to live locals.
    let ok = unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            return None;
        }
        let ok = GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user) != 0;
        CloseHandle(handle);
        ok
    };
    ok.then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
}

/// The Windows service control manager, for the `windows_service` agent
/// backend (`crate::scm`). Blocking calls: the backend runs them off the
/// async workers.
pub mod scm {
    use std::time::{Duration, Instant};

    use windows_service::service::{ServiceAccess, ServiceState};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

    use crate::ServiceError;

    fn err(service: &str, what: &'static str, e: impl std::fmt::Display) -> ServiceError {
        ServiceError::Scm {
            service: service.to_string(),
            what,
            message: e.to_string(),
        }
    }

    fn open(
        name: &str,
        access: ServiceAccess,
    ) -> Result<windows_service::service::Service, ServiceError> {
        let scm = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .map_err(|e| err(name, "opening the service control manager", e))?;
        scm.open_service(name, access)
            .map_err(|e| err(name, "opening the service", e))
    }

    /// The service exists and can be queried.
    pub fn check(name: &str) -> Result<(), ServiceError> {
        open(name, ServiceAccess::QUERY_STATUS).map(drop)
    }

    /// The pid of the service's process while it runs (and that process
    /// is alive: a killed service may still be reported RUNNING).
    pub fn running_pid(name: &str) -> Option<u32> {
        let st = open(name, ServiceAccess::QUERY_STATUS)
            .ok()?
            .query_status()
            .ok()?;
        match (st.current_state, st.process_id) {
            (ServiceState::Running | ServiceState::StartPending, Some(pid))
                if super::process_alive(pid) =>
            {
                Some(pid)
            }
            _ => None,
        }
    }

    fn wait(
        service: &windows_service::service::Service,
        name: &str,
        want: ServiceState,
        limit: Duration,
    ) -> Result<(), ServiceError> {
        let deadline = Instant::now() + limit;
        loop {
            let st = service
                .query_status()
                .map_err(|e| err(name, "querying the service", e))?;
            if st.current_state == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Scm {
                    service: name.to_string(),
                    what: "waiting for the service",
                    message: format!(
                        "it is {:?} after {} s, not {want:?}",
                        st.current_state,
                        limit.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn start(name: &str, timeout: Duration) -> Result<(), ServiceError> {
        if running_pid(name).is_some() {
            return Ok(());
        }
        let service = open(name, ServiceAccess::START | ServiceAccess::QUERY_STATUS)?;
        service
            .start::<&str>(&[])
            .map_err(|e| err(name, "starting the service", e))?;
        wait(&service, name, ServiceState::Running, timeout)
    }

    /// Stops the service; a process that outlives the timeout is killed.
    pub fn stop(name: &str, timeout: Duration) -> Result<(), ServiceError> {
        let service = open(name, ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)?;
        let st = service
            .query_status()
            .map_err(|e| err(name, "querying the service", e))?;
        if st.current_state == ServiceState::Stopped {
            return Ok(());
        }
        let pid = st.process_id;
        let _ = service.stop();
        match wait(&service, name, ServiceState::Stopped, timeout) {
            Ok(()) => Ok(()),
            Err(e) => match pid {
                Some(pid) if super::process_alive(pid) => {
                    super::kill_process(pid);
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while super::process_alive(pid) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    if super::process_alive(pid) {
                        Err(e)
                    } else {
                        Ok(())
                    }
                }
                // Its process is gone: stopped, whatever the SCM says.
                _ => Ok(()),
            },
        }
    }
}
