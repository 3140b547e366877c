//! Following the hosts a release concerns, after `release publish`,
//! `rollback` and `retry`.
//!
//! Owns: choosing the hosts to follow (those that can take it now, as the
//! server's `reach` says), printing each one's progress as it changes,
//! judging when each has finished (installed it, or failed it again), and
//! the exit code 3 when one failed or had not finished (`hosts_outcome`).
//! Must not: change anything on the server; it only reads.

use std::time::Duration;

use palette_protocol::v2::{HostInfo, Release};
use reqwest::Method;

use crate::api::Api;
use crate::commands::now_ms;
use crate::exit::HostsFailed;

/// Exit code 3 (`HostsFailed`) when any followed host failed or had not
/// finished.
pub fn hosts_outcome(hosts: &[HostOutcome]) -> anyhow::Result<()> {
    let failed = hosts
        .iter()
        .filter(|h| h.outcome == Some(palette_protocol::v2::Outcome::Failed))
        .count();
    let missing = hosts.iter().filter(|h| h.outcome.is_none()).count();
    if failed > 0 || missing > 0 {
        return Err(HostsFailed { failed, missing }.into());
    }
    Ok(())
}

/// A `release retry`: what the hosts are to install, and what each
/// reported before it.
pub struct Retried<'a> {
    pub product: &'a str,
    pub version: palette_protocol::Version,
    /// The release's ids (one per kind).
    pub ids: &'a [i64],
    pub baseline: std::collections::HashMap<String, Option<palette_protocol::v2::UpdateReport>>,
}

/// After `release retry`: follows `targets` until each runs the version
/// (succeeded) or fails it again (seen installing it and then reporting a
/// failure of it, or reporting a failure other than the one before), or
/// `limit` passes (not finished). Prints each host's progress as it
/// changes.
pub async fn follow_retry(
    api: &Api,
    r: &Retried<'_>,
    targets: &[String],
    limit: Duration,
) -> anyhow::Result<Vec<HostOutcome>> {
    use palette_protocol::v2::Outcome;
    let watchdog = r.product == "watchdog";
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen_installing: std::collections::HashSet<String> = Default::default();
    let mut last_line: std::collections::HashMap<String, String> = Default::default();
    let mut done: Vec<HostOutcome> = Vec::new();
    loop {
        let hosts: Vec<HostInfo> = api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
        for name in targets {
            if done.iter().any(|d| &d.hostname == name) {
                continue;
            }
            let Some(rep) = hosts
                .iter()
                .find(|h| &h.hostname == name)
                .and_then(|h| h.report.as_ref())
            else {
                continue;
            };
            let installed = if watchdog {
                rep.watchdog_version.parse().ok()
            } else {
                rep.agent_version
            };
            let last = if watchdog {
                &rep.last_watchdog_update
            } else {
                &rep.last_update
            };
            let installing = rep
                .update_progress
                .as_ref()
                .filter(|p| r.ids.contains(&p.release_id));
            if installing.is_some() {
                seen_installing.insert(name.clone());
            }
            let failed_again = last.as_ref().filter(|u| {
                r.ids.contains(&u.release_id)
                    && u.outcome == Outcome::Failed
                    && installing.is_none()
                    && (seen_installing.contains(name)
                        || r.baseline.get(name).is_some_and(|b| b.as_ref() != Some(*u)))
            });
            // Still taking it (its health check runs with the version
            // already current): not finished, as in `watch_release`.
            let finished = if installed == Some(r.version) && installing.is_none() {
                Some((Outcome::Succeeded, format!("running {}", r.version)))
            } else {
                failed_again.map(|u| (Outcome::Failed, u.message.clone()))
            };
            let line = match (&finished, installing) {
                (Some((o, m)), _) => format!("{o:?}: {m}"),
                (None, Some(p)) => match p.phase {
                    palette_protocol::v2::UpdatePhase::Downloading => "downloading",
                    palette_protocol::v2::UpdatePhase::Installing => "installing",
                    palette_protocol::v2::UpdatePhase::HealthChecking => "health-checking",
                }
                .into(),
                (None, None) => "waiting".into(),
            };
            if last_line.get(name) != Some(&line) {
                outln!("  {name:<32} {line}");
                last_line.insert(name.clone(), line);
            }
            if let Some((o, m)) = finished {
                done.push(HostOutcome {
                    hostname: name.clone(),
                    outcome: Some(o),
                    message: m,
                });
            }
        }
        if done.len() == targets.len() {
            return Ok(done);
        }
        if tokio::time::Instant::now() >= deadline {
            for name in targets {
                if !done.iter().any(|d| &d.hostname == name) {
                    done.push(HostOutcome {
                        hostname: name.clone(),
                        outcome: None,
                        message: format!("{} not installed after {} s", r.version, limit.as_secs()),
                    });
                }
            }
            eprintln!(
                "some hosts had not installed {} {} after {} s (or failed it again the same way); `palettectl hosts` shows them later",
                r.product, r.version, limit.as_secs()
            );
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One host's answer to a release: `None` while it had not finished.
#[derive(Debug, serde::Serialize)]
pub struct HostOutcome {
    hostname: String,
    outcome: Option<palette_protocol::v2::Outcome>,
    message: String,
}

/// After a publish: follows the online hosts the release is for (its
/// product and platform, running an older version or none; after a
/// rollback, those running `rolled_back`), printing each one's progress as
/// it changes, until every one has installed it or failed (with the
/// reason), or `limit` passes.
pub async fn watch_release(
    api: &Api,
    r: &Release,
    rolled_back: Option<palette_protocol::Version>,
    limit: Duration,
    print: bool,
) -> anyhow::Result<Vec<HostOutcome>> {
    use palette_protocol::v2::{HostReport, Outcome, UpdatePhase};
    let watchdog = r.product == "watchdog";
    let installed = |rep: &HostReport| -> Option<palette_protocol::Version> {
        if watchdog {
            rep.watchdog_version.parse().ok()
        } else {
            rep.agent_version
        }
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut targets: Option<Vec<String>> = None;
    let mut last_line: std::collections::HashMap<String, String> = Default::default();
    let mut done: Vec<HostOutcome> = Vec::new();
    // Only the hosts that can take it now are followed (the server says
    // which, and why not the others: pinned, outside a window, held...);
    // a server without `reach` (before 0.2): every fitting online host.
    let reach: Option<palette_protocol::v2::Reach> = if rolled_back.is_none() {
        api.json(api.req(Method::GET, &format!("/api/v2/releases/{}/reach", r.id)))
            .await
            .ok()
    } else {
        None
    };
    if let (Some(reach), true) = (&reach, print) {
        for l in reach.later.iter().filter(|l| {
            !l.reason.starts_with("already on") && !l.reason.starts_with("another platform")
        }) {
            outln!("  {:<32} not followed: {}", l.hostname, l.reason);
        }
    }
    loop {
        let hosts: Vec<HostInfo> = api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
        let targets = targets.get_or_insert_with(|| {
            let now = now_ms();
            let t: Vec<String> = hosts
                .iter()
                .filter(|h| match h.state {
                    Some(s) => s == palette_protocol::v2::HostState::Online,
                    None => palette_protocol::timefmt::parse_rfc3339(&h.last_seen)
                        .is_ok_and(|t| now - t <= 5 * 60 * 1000),
                })
                .filter_map(|h| {
                    let rep = h.report.as_ref()?;
                    let wanted = match rolled_back {
                        Some(b) => installed(rep) == Some(b),
                        None => installed(rep).is_none_or(|v| v < r.version),
                    };
                    let fits = rep.platform == r.platform
                        && (watchdog || rep.product == r.product)
                        && wanted
                        && reach.as_ref().is_none_or(|re| re.now.contains(&h.hostname));
                    fits.then(|| h.hostname.clone())
                })
                .collect();
            if print {
                outln!("{} online host(s) to update", t.len());
            }
            t
        });
        for name in targets.iter() {
            if done.iter().any(|d| &d.hostname == name) {
                continue;
            }
            let Some(rep) = hosts
                .iter()
                .find(|h| &h.hostname == name)
                .and_then(|h| h.report.as_ref())
            else {
                continue;
            };
            let last = if watchdog {
                &rep.last_watchdog_update
            } else {
                &rep.last_update
            };
            // A success counts once the host runs the version: an earlier
            // outcome for the same release (the first install of the
            // version a rollback comes down to) is not this one.
            // A host still taking this release (its health check runs with
            // the new version already current) has not finished it yet.
            let taking_it = rep
                .update_progress
                .as_ref()
                .is_some_and(|p| p.release_id == r.id);
            let runs_it = installed(rep).is_some_and(|v| v == r.version) && !taking_it;
            let finished = match last.as_ref().filter(|u| u.release_id == r.id && !taking_it) {
                Some(u) if u.outcome == Outcome::Failed || runs_it => {
                    Some((u.outcome, u.message.clone()))
                }
                _ if runs_it => Some((Outcome::Succeeded, format!("running {}", r.version))),
                _ => None,
            };
            let line = match (&finished, &rep.update_progress) {
                (Some((o, m)), _) => format!("{o:?}: {m}"),
                (None, Some(p)) if p.release_id == r.id => match (p.phase, p.total) {
                    (UpdatePhase::Downloading, Some(total)) if total > 0 => {
                        format!("downloading {}%", p.bytes * 100 / total / 10 * 10)
                    }
                    (UpdatePhase::Downloading, _) => "downloading".into(),
                    (UpdatePhase::Installing, _) => "installing".into(),
                    (UpdatePhase::HealthChecking, _) => "health-checking".into(),
                },
                (None, _) => "waiting".into(),
            };
            if print && last_line.get(name) != Some(&line) {
                outln!("  {name:<32} {line}");
                last_line.insert(name.clone(), line);
            }
            if let Some((o, m)) = finished {
                done.push(HostOutcome {
                    hostname: name.clone(),
                    outcome: Some(o),
                    message: m,
                });
            }
        }
        if done.len() == targets.len() {
            return Ok(done);
        }
        if tokio::time::Instant::now() >= deadline {
            for name in targets.iter() {
                if !done.iter().any(|d| &d.hostname == name) {
                    done.push(HostOutcome {
                        hostname: name.clone(),
                        outcome: None,
                        message: format!("not finished after {} s", limit.as_secs()),
                    });
                }
            }
            if print {
                eprintln!(
                    "some hosts had not finished after {} s; `palettectl hosts` shows them later",
                    limit.as_secs()
                );
            }
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
