//! `palette-watchdog run`: sets everything up and runs the tasks until the
//! service is asked to stop — settle a self-update and recover an
//! interrupted agent update, start the keep-alive, the controller, the
//! transport (v2, or v1 when pinned or when `auto` finds a legacy-only
//! server), the liveness pinger and, for a new watchdog, its probation;
//! then, on the shutdown signal, stop them in order.
//!
//! Must not: be imported by any other module (it is the top); carry out
//! anything the tasks own — it only wires them and stops them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palette_host::settings::{Backend, Protocol, Settings};
use palette_host::Layout;
use palette_protocol::v2::DesiredState;
use tokio_util::sync::CancellationToken;

use crate::agent::{repair_current, service_for};
use crate::controller::{Controller, Handle};
use crate::ctx::Ctx;
use crate::error::chain;
use crate::supervisor::{Policy, Supervisor};
use crate::{durable, platform, selfupdate, update, v1loop, v2loop};

/// The host name to report: the setting, else the system's, validated but
/// kept exactly as written (a legacy server compares names
/// case-sensitively, and Windows names are usually upper case; our server
/// compares them case-insensitively).
pub fn hostname(settings: &Settings) -> anyhow::Result<String> {
    let raw = match &settings.hostname {
        Some(h) => h.clone(),
        None => gethostname::gethostname().to_string_lossy().into_owned(),
    };
    palette_protocol::validate_hostname(&raw).with_context(|| {
        format!("host name {raw:?} cannot be reported; set `hostname` in watchdog.yml")
    })?;
    Ok(raw)
}

pub async fn run(layout: Layout) -> anyhow::Result<()> {
    layout
        .ensure_dirs()
        .with_context(|| format!("while creating the folders under {}", layout.base.display()))?;
    let settings = Settings::load(&layout.settings_file())?;
    let hostname = hostname(&settings)?;
    let durable = durable::Store::open(layout.state().join("watchdog.json"));
    let svc = service_for(&layout, &settings).await?;
    let policy = Policy {
        keepalive: Duration::from_secs(settings.intervals.keepalive_secs),
        restart_first: Duration::from_millis(settings.intervals.restart_first_ms),
        restart_max: Duration::from_secs(settings.intervals.restart_max_secs),
        stable: Duration::from_secs(settings.intervals.restart_stable_secs),
    };
    let supervisor = Supervisor::new(svc.clone(), durable.clone(), policy);
    tracing::info!(
        base = %layout.base.display(), hostname, backend = svc.backend(),
        protocol = ?settings.server.protocol, desired = ?durable.get().desired,
        agent_version = ?layout.current_version().map(|v| v.to_string()),
        "palette-watchdog {} starting", palette_host::stamp::version()
    );
    let ctx = Arc::new(Ctx::new(
        layout,
        settings,
        hostname,
        durable,
        supervisor.clone(),
    ));
    match &ctx.trust {
        Some(keys) => tracing::info!(
            keys = keys.len(),
            "only releases signed by a trusted key (trust.keys) are installed"
        ),
        None => tracing::warn!(
            "trust.keys is empty: releases are installed on the server's word (its sha256); set trust.keys to install only releases signed by your publisher key"
        ),
    }

    // Settle a self-update, then finish an agent update a crash
    // interrupted, before anything else runs.
    let startup = selfupdate::on_start(&ctx).await;
    // Executables a self-update moved aside (Windows) once they stopped.
    palette_host::self_journal::remove_set_aside(&ctx.layout.base);
    if let Some(dir) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(std::path::Path::parent)
    {
        palette_host::self_journal::remove_set_aside(dir);
    }
    if matches!(startup, selfupdate::Startup::Normal) {
        update::recover(&ctx).await;
    }
    // (On probation the manager lock is the self-update's, and no agent
    // update can be open: a self-update starts only without one.)
    repair_current(&ctx.layout, &ctx.settings);
    let shutdown = CancellationToken::new();
    // Subscribed before the agent starts: an immediate crash is seen.
    let keepalive_loop = supervisor.clone().keep_alive(shutdown.clone());
    if supervisor.desired() == DesiredState::Running {
        if let Err(e) = svc.start().await {
            tracing::error!(error = %chain(&e), "could not start the agent; the keep-alive will retry");
        }
    } else {
        tracing::info!("the agent stays stopped: an operator commanded stop");
    }
    let keepalive = tokio::spawn(keepalive_loop);
    let (controller, handle) = Controller::new(ctx.clone(), shutdown.clone());
    let controller = tokio::spawn(controller.run());
    platform::notify_ready();
    let probation = match startup {
        selfupdate::Startup::Probation(j) => Some(tokio::spawn(selfupdate::prove(
            ctx.clone(),
            j,
            handle.news.clone(),
            shutdown.clone(),
        ))),
        selfupdate::Startup::Normal => None,
    };
    let pinger = tokio::spawn(liveness_pinger(
        ctx.clone(),
        handle.clone(),
        shutdown.clone(),
    ));

    let (loop_ctx, loop_shutdown) = (ctx.clone(), shutdown.clone());
    let server_loop = tokio::spawn(async move {
        match loop_ctx.settings.server.protocol {
            Protocol::V1 => v1loop::run(&loop_ctx, &handle, &loop_shutdown).await,
            Protocol::V2 | Protocol::Auto => {
                // `true` only when `auto` finds a legacy-only server.
                if v2loop::run(&loop_ctx, &handle, &loop_shutdown).await {
                    loop_ctx.transport.use_legacy_protocol();
                    v1loop::run(&loop_ctx, &handle, &loop_shutdown).await
                }
            }
        }
    });

    platform::shutdown_signal().await;
    platform::notify_stopping();
    // Decided when the stop begins: a stop during a self-update (or of a
    // new watchdog still proving itself) leaves the agent to the next one.
    let leave_agent = selfupdate::leaves_agent_running(&ctx)
        || probation.as_ref().is_some_and(|p| !p.is_finished());
    tracing::info!("stopping: finishing what is in flight, stopping the agent, then exiting");
    shutdown.cancel();
    let _ = server_loop.await;
    let _ = controller.await;
    let _ = keepalive.await;
    let _ = pinger.await;
    if let Some(p) = probation {
        let _ = p.await;
    }
    if leave_agent {
        tracing::info!("stopped for a self-update: the agent keeps running for the next watchdog");
    } else if ctx.settings.agent.backend == Backend::Process {
        if let Err(e) = svc.stop().await {
            tracing::error!(error = %chain(&e), "could not stop the agent");
        }
    }
    tracing::info!("palette-watchdog stopped");
    Ok(())
}

/// Pings systemd's watchdog timer only while the controller answers and a
/// transport made progress recently: a stuck watchdog is restarted by
/// systemd instead of pinging from a task that works while the rest hangs.
async fn liveness_pinger(ctx: Arc<Ctx>, handle: Handle, shutdown: CancellationToken) {
    let Some(every) = platform::watchdog_ping_interval() else {
        return;
    };
    // The longest a healthy transport can go without progress: a long poll
    // plus its timeout, plus the longest backoff.
    let s = &ctx.settings;
    let patience_ms = ((s.server.checkin_wait_secs
        + s.server.timeout_secs
        + s.intervals.commands_secs.max(60)
        + 120)
        * 1000) as i64;
    let mut said = false;
    loop {
        if v2loop::sleep_or_shutdown(every, &shutdown).await {
            return;
        }
        let controller_ok = handle.responsive(every).await;
        let transport_ok = ctx.transport.since_progress_ms() < patience_ms;
        if controller_ok && transport_ok {
            platform::watchdog_ping();
            said = false;
        } else if !said {
            tracing::error!(
                controller_ok,
                transport_ok,
                "the watchdog looks stuck; no longer pinging systemd, which will restart it"
            );
            said = true;
        }
    }
}
