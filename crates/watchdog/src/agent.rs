//! The agent as this host runs it: the service-control backend the
//! settings ask for (the process backend adopting an agent an earlier
//! watchdog left running), the agent's command words with `{base}`,
//! `{current}` and `{exe}` expanded, and the repair of a `versions/current`
//! that names nothing usable.
//!
//! Must not: start, stop or restart the agent (the supervisor does), or
//! change `versions/current` while an update's journal owns it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palette_host::settings::{Backend, Settings};
use palette_host::Layout;
use palette_service::{
    Adoption, CommandLine, CommandService, CommandSpec, ProcessService, ProcessSpec, ScmService,
    ScmSpec, ServiceControl,
};

use crate::error::ResolveError;

/// Replaces `{base}`, `{current}` and `{exe}` in a command word.
pub(crate) fn expand(word: &str, layout: &Layout) -> Result<String, ResolveError> {
    let mut w = word
        .replace("{base}", &layout.base.display().to_string())
        .replace("{exe}", std::env::consts::EXE_SUFFIX);
    if w.contains("{current}") {
        let v = layout
            .current_version()
            .ok_or_else(|| ResolveError::NoCurrent {
                pointer: layout.current_pointer(),
            })?;
        w = w.replace("{current}", &layout.version_dir(&v).display().to_string());
    }
    Ok(w)
}

/// Builds the service-control backend the settings ask for.
/// With the process backend an agent an earlier watchdog left running
/// (killed, or replaced by a self-update) is adopted, not restarted.
pub async fn service_for(
    layout: &Layout,
    settings: &Settings,
) -> anyhow::Result<Arc<dyn ServiceControl>> {
    Ok(match settings.agent.backend {
        Backend::Process => {
            let words = settings.agent.command.clone();
            let l = layout.clone();
            let s = settings.clone();
            let svc = ProcessService::new(ProcessSpec {
                // Before each start: a `current` whose folder or program
                // went away under a running watchdog falls back to the
                // newest installed version that has its program (which
                // the next report then names). Not while an update is open:
                // its journal owns `current` (a new version without its
                // program fails its health check and is rolled back).
                resolve: Arc::new(move || {
                    if !l.journal().exists() {
                        repair_current(&l, &s);
                    }
                    let mut expanded = words
                        .iter()
                        .map(|w| expand(w, &l))
                        .collect::<Result<Vec<_>, _>>()?;
                    if expanded.is_empty() {
                        return Err(ResolveError::EmptyCommand.into());
                    }
                    let program = expanded.remove(0).into();
                    Ok(CommandLine {
                        program,
                        args: expanded,
                        cwd: Some(l.base.clone()),
                    })
                }),
                log_path: layout.logs().join("agent.log"),
                pid_file: Some(layout.state().join("agent.pid")),
                stop_timeout: Duration::from_secs(settings.agent.stop_timeout_secs),
            });
            match svc.adopt().await {
                Adoption::Nothing => {}
                Adoption::Adopted { pid } => tracing::info!(
                    pid,
                    "the agent an earlier watchdog started is still running: supervising it, not restarting it"
                ),
                Adoption::NotOurs { pid } => tracing::warn!(
                    pid,
                    "the agent pid file names a running process that is not provably the agent; it is left alone"
                ),
            }
            Arc::new(svc)
        }
        Backend::Command => Arc::new(CommandService::new(CommandSpec {
            start: settings.agent.start.clone(),
            stop: settings.agent.stop.clone(),
            status: settings.agent.status.clone(),
            timeout: Duration::from_secs(settings.agent.stop_timeout_secs + 30),
        })),
        Backend::WindowsService => {
            let name = settings.agent.service_name.clone().unwrap_or_default();
            Arc::new(
                ScmService::new(ScmSpec {
                    name: name.clone(),
                    timeout: Duration::from_secs(settings.agent.stop_timeout_secs + 30),
                })
                .with_context(|| format!("the agent's Windows service {name:?} cannot be used"))?,
            )
        }
    })
}

/// Whether version `v` is usable: its folder exists and, when the agent
/// command runs a program from it, that program is there.
fn usable(layout: &Layout, settings: &Settings, v: &palette_protocol::Version) -> bool {
    let dir = layout.version_dir(v);
    if !dir.is_dir() {
        return false;
    }
    match settings.agent.command.first() {
        Some(program)
            if settings.agent.backend == Backend::Process && program.contains("{current}") =>
        {
            let path = program
                .replace("{current}", &dir.display().to_string())
                .replace("{base}", &layout.base.display().to_string())
                .replace("{exe}", std::env::consts::EXE_SUFFIX);
            std::path::Path::new(&path).is_file()
        }
        _ => true,
    }
}

/// A `versions/current` that is unreadable, or names a version that is
/// missing or lacks its program, would leave the agent down: point it at the
/// newest installed version that is usable instead, and say so. Nothing is
/// deleted here.
pub fn repair_current(layout: &Layout, settings: &Settings) {
    let state = layout.current_pointer_state();
    let why = match &state {
        palette_host::Pointer::Names(v) if usable(layout, settings, v) => return,
        palette_host::Pointer::Names(v) => format!("it names {v}, whose program is missing"),
        palette_host::Pointer::NamesMissing(v) => format!("it names {v}, which is not installed"),
        palette_host::Pointer::Unreadable(e) => format!("it cannot be read: {e}"),
        palette_host::Pointer::Missing if layout.installed_versions().is_empty() => return,
        palette_host::Pointer::Missing => "it is missing".into(),
    };
    match layout
        .installed_versions()
        .into_iter()
        .find(|v| usable(layout, settings, v))
    {
        Some(v) => match layout.set_current(&v) {
            Ok(()) => tracing::error!(
                pointer = %layout.current_pointer().display(),
                now = %v,
                "versions/current was unusable ({why}); it now names the newest installed version that has its program"
            ),
            Err(e) => tracing::error!(error = %e, "versions/current is unusable ({why}) and could not be repaired"),
        },
        None => tracing::error!("versions/current is unusable ({why}) and no installed version has its program: the agent cannot start until a release is installed"),
    }
}
