//! Is the agent healthy? After an update or a new `Config.yml` the agent
//! must keep running for `agent.health_secs` and, when the settings name
//! one, pass a probe (a command exiting 0, an HTTP URL answering 2xx)
//! within that window. Used for releases and remote configs alike.
//!
//! Must not: start, stop or roll back anything — it only watches and
//! answers; the caller decides what a failure undoes.

use std::time::Duration;

use palette_service::Event;
use tokio::sync::broadcast;

use crate::agent::expand;
use crate::ctx::Ctx;
use crate::error::{chain, HealthError, ProbeError};

/// How often a failing probe is tried again within the window.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Longest a health command may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Watches the agent for the health window. `events` must be subscribed
/// before the agent was (re)started, so an instant crash is seen.
pub async fn watch(
    ctx: &Ctx,
    mut events: Option<broadcast::Receiver<Event>>,
) -> Result<(), HealthError> {
    let window = Duration::from_secs(ctx.settings.agent.health_secs);
    let deadline = tokio::time::Instant::now() + window;
    let has_probe =
        !ctx.settings.agent.health_command.is_empty() || ctx.settings.agent.health_url.is_some();
    let mut probe_ok = !has_probe;
    let mut last_probe_error = None;
    // Only the exit of the process started for this check counts (a
    // restart first reports the old process's exit).
    let mut started: Option<u32> = None;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        if !probe_ok {
            match probe(ctx).await {
                Ok(()) => probe_ok = true,
                Err(e) => last_probe_error = Some(e),
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let pause = if probe_ok {
            left
        } else {
            PROBE_EVERY.min(left)
        };
        match events.as_mut() {
            Some(rx) => match tokio::time::timeout(pause, rx.recv()).await {
                Ok(Ok(Event::Started { pid })) => started = Some(pid),
                Ok(Ok(Event::Exited { pid, how, .. })) if started == Some(pid) => {
                    return Err(HealthError::Exited(how))
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => events = None,
                _ => {}
            },
            None => tokio::time::sleep(pause).await,
        }
    }
    let running = ctx
        .supervisor
        .service()
        .status()
        .await
        .map(|s| s.is_running())
        .unwrap_or(false);
    if !running {
        return Err(HealthError::NotRunning(window.as_secs()));
    }
    if let (false, Some(e)) = (probe_ok, last_probe_error) {
        return Err(HealthError::Probe(e));
    }
    Ok(())
}

/// One try of the configured probe(s).
async fn probe(ctx: &Ctx) -> Result<(), ProbeError> {
    let a = &ctx.settings.agent;
    if !a.health_command.is_empty() {
        let words: Vec<String> = a
            .health_command
            .iter()
            .map(|w| {
                expand(w, &ctx.layout).map_err(|error| ProbeError::Expand {
                    word: w.clone(),
                    error,
                })
            })
            .collect::<Result<_, _>>()?;
        let program = words[0].clone();
        let mut cmd = tokio::process::Command::new(&words[0]);
        cmd.args(&words[1..]).kill_on_drop(true);
        let out = tokio::time::timeout(PROBE_TIMEOUT, cmd.output())
            .await
            .map_err(|_| ProbeError::TimedOut {
                program: program.clone(),
                secs: PROBE_TIMEOUT.as_secs(),
            })?
            .map_err(|error| ProbeError::Spawn {
                program: program.clone(),
                error,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(ProbeError::Failed {
                program,
                status: out.status.to_string(),
                last_line: stderr.trim().lines().last().unwrap_or("").to_string(),
            });
        }
    }
    if let Some(url) = &a.health_url {
        let unreachable = |e: reqwest::Error| ProbeError::Unreachable {
            url: url.clone(),
            reason: chain(&e),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(unreachable)?;
        let res = client.get(url).send().await.map_err(unreachable)?;
        if !res.status().is_success() {
            return Err(ProbeError::Status {
                url: url.clone(),
                status: res.status().as_u16(),
            });
        }
    }
    Ok(())
}

/// The last `n` lines of the agent's log (process backend), for reports.
pub fn agent_log_tail(ctx: &Ctx, n: usize) -> String {
    let text = fs_err::read_to_string(ctx.layout.logs().join("agent.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
