//! `palette-sample-agent`: a small agent for tests and the demo. It reads
//! `Config/Config.yml`, reports its version (the `VERSION` file beside it,
//! else the folder it runs from), writes `state/sample-agent.json` (pid,
//! version, endpoint) and runs until SIGTERM / Ctrl-C. A `FAIL` file beside
//! it makes it exit with code 3 after a moment: a release that fails its
//! health check; `SampleAgent: {Fail: true}` in Config.yml makes it exit
//! with 4 (a config the agent cannot live with). `--help` prints this and
//! touches nothing. On Windows `--service NAME` runs it as the Windows
//! service NAME (the tests of the watchdog's Windows-service backend).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct Webservice {
    #[serde(rename = "Endpoint", default)]
    endpoint: Option<String>,
}

#[derive(Deserialize, Default)]
struct SampleAgent {
    /// Exit with 4 shortly after starting: a config the agent cannot live
    /// with (used to test config rollback).
    #[serde(rename = "Fail", default)]
    fail: bool,
}

#[derive(Deserialize, Default)]
struct Config {
    #[serde(rename = "Webservice", default)]
    webservice: Option<Webservice>,
    #[serde(rename = "SampleAgent", default)]
    sample_agent: Option<SampleAgent>,
}

fn arg_base() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--base" {
            return args.next().map(PathBuf::from);
        }
    }
    None
}

const USAGE: &str = "palette-sample-agent --base DIR [--service NAME]

A small agent for palette-updater's tests and demo: reads DIR/Config/Config.yml,
writes DIR/state/sample-agent.json (pid, version, endpoint) and runs until
SIGTERM or Ctrl-C. Its version is the VERSION file beside it. It exits with 3
when a FAIL file lies beside it, and with 4 when Config.yml says
`SampleAgent: {Fail: true}`. On Windows, --service NAME runs it as the
Windows service NAME.";

fn arg_service() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--service" {
            return args.next();
        }
    }
    None
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    if arg_base().is_none() && !args.is_empty() {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let base = arg_base().unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    if let Some(name) = arg_service() {
        return service::run(name, base);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            // The handlers are in place before the agent says it started,
            // so a stop sent right after that is never missed.
            let stop = shutdown()?;
            agent(base, stop).await
        })
}

/// The agent, until `stop` resolves.
async fn agent(base: PathBuf, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .context("executable has no folder")?
        .to_path_buf();
    let version = fs_err::read_to_string(dir.join("VERSION"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let cfg_path = base.join("Config").join("Config.yml");
    let config = fs_err::read_to_string(&cfg_path)
        .ok()
        .and_then(|t| serde_saphyr::from_str::<Config>(&t).ok())
        .unwrap_or_default();
    let fail_by_config = config.sample_agent.as_ref().is_some_and(|s| s.fail);
    let endpoint = config
        .webservice
        .and_then(|w| w.endpoint)
        .unwrap_or_default();
    println!(
        "sample agent {version} started (pid {}), endpoint {endpoint:?}",
        std::process::id()
    );
    let status =
        serde_json::json!({"pid": std::process::id(), "version": version, "endpoint": endpoint})
            .to_string();
    let state = base.join("state");
    fs_err::create_dir_all(&state)?;
    let tmp = state.join("sample-agent.json.tmp");
    fs_err::write(&tmp, status)?;
    fs_err::rename(&tmp, state.join("sample-agent.json"))?;

    if fail_by_config {
        tokio::time::sleep(Duration::from_millis(300)).await;
        eprintln!("sample agent {version}: Config.yml says SampleAgent.Fail; exiting with 4");
        std::process::exit(4);
    }
    if dir.join("FAIL").exists() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        eprintln!("sample agent {version}: FAIL file present; exiting with 3");
        std::process::exit(3);
    }
    stop.await;
    println!("sample agent {version} stopping");
    Ok(())
}

/// Registers the stop signals (SIGTERM, Ctrl-C) now; the future resolves
/// when one arrives.
#[cfg(unix)]
fn shutdown() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Registers the stop events (Ctrl-C, and CTRL_BREAK: the process
/// backend's stop) now; the future resolves when one arrives.
#[cfg(windows)]
fn shutdown() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::windows::{ctrl_break, ctrl_c};
    let mut c = ctrl_c().context("Ctrl-C handler")?;
    let mut brk = ctrl_break().context("CTRL_BREAK handler")?;
    Ok(async move {
        tokio::select! {
            _ = c.recv() => {}
            _ = brk.recv() => {}
        }
    })
}

#[cfg(windows)]
mod service {
    //! The agent as a Windows service: the service control manager's Stop
    //! or Shutdown ends it like Ctrl-C.
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Duration;

    use windows_service::service::{
        ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus,
        ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};

    static ARGS: OnceLock<(String, PathBuf)> = OnceLock::new();

    pub fn run(name: String, base: PathBuf) -> anyhow::Result<()> {
        let _ = ARGS.set((name, base));
        entry::dispatch()?;
        Ok(())
    }

    // The macro generates the FFI entry point (raw argument pointers).
    #[allow(unsafe_code)]
    mod entry {
        windows_service::define_windows_service!(ffi_service_main, service_main);

        fn service_main(_args: Vec<std::ffi::OsString>) {
            super::service_main()
        }

        pub(super) fn dispatch() -> windows_service::Result<()> {
            let name = &super::ARGS.get().expect("set before dispatching").0;
            windows_service::service_dispatcher::start(name, ffi_service_main)
        }
    }

    fn service_main() {
        let Some((name, base)) = ARGS.get().cloned() else {
            return;
        };
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let on_stop = stop.clone();
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                on_stop.notify_one();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let Ok(status) = service_control_handler::register(&name, handler) else {
            return;
        };
        let report = |state, accepted| {
            let _ = status.set_service_status(ServiceStatus {
                service_type: ServiceType::OWN_PROCESS,
                current_state: state,
                controls_accepted: accepted,
                exit_code: ServiceExitCode::Win32(0),
                checkpoint: 0,
                wait_hint: Duration::from_secs(5),
                process_id: None,
            });
        };
        report(
            ServiceState::Running,
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        );
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            let _ = rt.block_on(super::agent(base, async move { stop.notified().await }));
        }
        report(ServiceState::Stopped, ServiceControlAccept::empty());
    }
}

#[cfg(not(windows))]
mod service {
    pub fn run(name: String, _base: std::path::PathBuf) -> anyhow::Result<()> {
        anyhow::bail!("--service {name}: running as a Windows service is for Windows")
    }
}
