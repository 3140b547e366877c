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
