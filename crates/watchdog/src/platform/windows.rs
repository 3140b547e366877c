//! Windows: the watchdog as a Windows service (the `windows-service`
//! crate): the service control manager starts `palette-watchdog service
//! --base <folder>`, which reports START_PENDING → RUNNING, answers Stop and
//! Shutdown by ending the watchdog like Ctrl-C does in the foreground
//! (STOP_PENDING with a wait hint, then STOPPED), and `install` / `remove`
//! / `start` / `stop` manage the service like the legacy watchdog's
//! commands. Paths come from `--base` or the executable's folder (a
//! service starts in System32).
//!
//! Must not: be used except through `platform`'s functions; nothing
//! Windows-specific leaks out of it.

use std::ffi::OsString;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use palette_host::Layout;
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

/// The service's name in the service control manager.
pub const SERVICE_NAME: &str = "palette-watchdog";
const DISPLAY_NAME: &str = "Palette Watchdog";

/// Cancelled when the service control manager asks the service to stop.
fn scm_stop() -> &'static CancellationToken {
    static STOP: OnceLock<CancellationToken> = OnceLock::new();
    STOP.get_or_init(CancellationToken::new)
}

type Body = fn(Layout) -> anyhow::Result<()>;
static BODY: OnceLock<(Layout, Body)> = OnceLock::new();

pub fn notify_ready() {}

/// The service control manager has no watchdog timer to ping.
pub fn watchdog_ping_interval() -> Option<std::time::Duration> {
    None
}

pub fn watchdog_ping() {}

pub fn notify_stopping() {}

/// Resolves on Ctrl-C (foreground) or the service control manager's Stop
/// or Shutdown.
pub async fn shutdown_signal() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = scm_stop().cancelled() => {}
    }
}

/// When this watchdog runs as the Windows service: the self-update's
/// manager restarts it through the service control manager, by running
/// `<watchdog exe> restart` — the *new* binary's: if it cannot even do
/// that, the manager puts the old one back and restarts with the old one.
pub fn service_restart_command() -> Option<Vec<String>> {
    let (layout, _) = BODY.get()?;
    let exe = std::env::current_exe().ok()?;
    Some(vec![
        exe.display().to_string(),
        "restart".into(),
        "--base".into(),
        layout.base.display().to_string(),
    ])
}

/// Runs `body` as the Windows service: hands this thread to the service
/// control dispatcher, which calls the service's main on another thread.
pub fn run_as_service(layout: Layout, body: Body) -> anyhow::Result<()> {
    let _ = BODY.set((layout, body));
    entry::dispatch().context(
        "the service control dispatcher could not start: `service` is what the service control manager runs; in a console use `palette-watchdog run`",
    )
}

// The macro generates the service's FFI entry point, which parses the
// arguments the system passes (raw pointers) before calling
// `service_main`.
#[allow(unsafe_code)]
mod entry {
    windows_service::define_windows_service!(ffi_service_main, service_main);

    fn service_main(args: Vec<std::ffi::OsString>) {
        super::service_main(args)
    }

    pub(super) fn dispatch() -> windows_service::Result<()> {
        windows_service::service_dispatcher::start(super::SERVICE_NAME, ffi_service_main)
    }
}

fn service_main(_args: Vec<OsString>) {
    let stop = scm_stop().clone();
    let handler_stop = stop.clone();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            handler_stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(status) = service_control_handler::register(SERVICE_NAME, handler) else {
        return;
    };
    let report = move |state, accepted, wait_hint: Duration, code: u32| {
        let _ = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accepted,
            exit_code: ServiceExitCode::Win32(code),
            checkpoint: 0,
            wait_hint,
            process_id: None,
        });
    };
    report(
        ServiceState::StartPending,
        ServiceControlAccept::empty(),
        Duration::from_secs(10),
        0,
    );
    let Some((layout, body)) = BODY.get().cloned() else {
        report(
            ServiceState::Stopped,
            ServiceControlAccept::empty(),
            Duration::ZERO,
            1,
        );
        return;
    };
    report(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        Duration::ZERO,
        0,
    );
    // Once a stop is asked: STOP_PENDING, with time for the agent's stop.
    let watcher = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().build();
        if let Ok(rt) = rt {
            rt.block_on(stop.cancelled());
            report(
                ServiceState::StopPending,
                ServiceControlAccept::empty(),
                Duration::from_secs(60),
                0,
            );
        }
    });
    let result = body(layout);
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    scm_stop().cancel();
    let _ = watcher.join();
    report(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        Duration::ZERO,
        if result.is_ok() { 0 } else { 1 },
    );
}

fn manager(access: ServiceManagerAccess) -> anyhow::Result<ServiceManager> {
    ServiceManager::local_computer(None::<&str>, access)
        .context("cannot open the service control manager (run as Administrator)")
}

/// Registers the service (automatic start, restart on failure) running
/// `exe service --base <base>`; with `start`, starts it.
pub fn install_service(
    exe: &std::path::Path,
    base: &std::path::Path,
    opts: &super::InstallOptions,
) -> anyhow::Result<String> {
    let scm = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.to_path_buf(),
        launch_arguments: vec!["service".into(), "--base".into(), base.into()],
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let service = scm
        .create_service(
            &info,
            ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS,
        )
        .with_context(|| format!("cannot create the service {SERVICE_NAME}"))?;
    let _ = service.set_description("Keeps the agent running, updated and configured.");
    // Restarted by the service control manager when it fails (crash,
    // non-zero exit): 5 s, 5 s, then 30 s; the count resets after a day.
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    let mut said = format!("installed the service {SERVICE_NAME} ({})", exe.display());
    let recovery = service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(5), restart(5), restart(30)]),
        })
        .and_then(|()| service.set_failure_actions_on_non_crash_failures(true));
    if let Err(e) = recovery {
        said.push_str(&format!(
            "\nwarning: the recovery actions (restart on failure) could not be set: {e}"
        ));
    }
    if opts.start {
        service
            .start::<&str>(&[])
            .with_context(|| format!("cannot start the service {SERVICE_NAME}"))?;
        said.push_str("\nstarted");
    }
    Ok(said)
}

/// Stops the service if it runs, and deletes it.
pub fn remove_service(_opts: &super::InstallOptions) -> anyhow::Result<String> {
    let scm = manager(ServiceManagerAccess::CONNECT)?;
    let service = match scm.open_service(
        SERVICE_NAME,
        ServiceAccess::STOP | ServiceAccess::QUERY_STATUS | ServiceAccess::DELETE,
    ) {
        Ok(s) => s,
        Err(_) => return Ok(format!("no service {SERVICE_NAME}")),
    };
    if service.query_status()?.current_state != ServiceState::Stopped {
        let _ = service.stop();
        wait_for_state(&service, ServiceState::Stopped, Duration::from_secs(90))?;
    }
    service
        .delete()
        .with_context(|| format!("cannot delete the service {SERVICE_NAME}"))?;
    Ok(format!("removed the service {SERVICE_NAME}"))
}

pub fn start_service() -> anyhow::Result<()> {
    let scm = manager(ServiceManagerAccess::CONNECT)?;
    let service = scm
        .open_service(
            SERVICE_NAME,
            ServiceAccess::START | ServiceAccess::QUERY_STATUS,
        )
        .with_context(|| format!("no service {SERVICE_NAME}: run `palette-watchdog install`"))?;
    service.start::<&str>(&[])?;
    wait_for_state(&service, ServiceState::Running, Duration::from_secs(60))
}

/// Stops the service (waiting until it stopped) and starts it again.
pub fn restart_service() -> anyhow::Result<()> {
    let scm = manager(ServiceManagerAccess::CONNECT)?;
    let service = scm
        .open_service(
            SERVICE_NAME,
            ServiceAccess::STOP | ServiceAccess::START | ServiceAccess::QUERY_STATUS,
        )
        .with_context(|| format!("no service {SERVICE_NAME}"))?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        let _ = service.stop();
        wait_for_state(&service, ServiceState::Stopped, Duration::from_secs(90))?;
    }
    service.start::<&str>(&[])?;
    wait_for_state(&service, ServiceState::Running, Duration::from_secs(60))
}

pub fn stop_service() -> anyhow::Result<()> {
    let scm = manager(ServiceManagerAccess::CONNECT)?;
    let service = scm
        .open_service(
            SERVICE_NAME,
            ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
        )
        .with_context(|| format!("no service {SERVICE_NAME}"))?;
    service.stop()?;
    wait_for_state(&service, ServiceState::Stopped, Duration::from_secs(90))
}

fn wait_for_state(
    service: &windows_service::service::Service,
    want: ServiceState,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let now = service.query_status()?.current_state;
        if now == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the service is {now:?} after {} s, not {want:?}",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// MSI releases are installed with msiexec (by the manager).
pub fn installs_msi() -> bool {
    true
}
