//! `palettectl rollout …`: staged rollouts of a published release, in
//! waves.
//!
//! Owns: creating, listing, showing, pausing, resuming and aborting
//! rollouts, following one until it ends (or until only hosts that cannot
//! take it now are left), and reading the durations its flags take. Must
//! not: plan the waves or admit hosts (the server's rollout driver does),
//! or follow single hosts' installs (`release` does that for a publish).

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;

use crate::api::Api;
use crate::cli::RolloutCmd;
use crate::exit::HostsFailed;
use crate::output::{print_structured, Output};

/// `90s`, `10m`, `2h`, `1d` or plain seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration (90s, 10m, 1h)"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{s:?} is not a duration (90s, 10m, 1h)"),
    };
    Ok(n * mul)
}

/// A rollout's id from an id or a version (its newest rollout).
async fn resolve(api: &Api, which: &str) -> anyhow::Result<i64> {
    if let Ok(id) = which.parse::<i64>() {
        return Ok(id);
    }
    let list: Vec<Value> = api.json(api.req(Method::GET, "/api/v2/rollouts")).await?;
    list.iter()
        .find(|r| r["version"] == which)
        .and_then(|r| r["id"].as_i64())
        .with_context(|| format!("no rollout of version {which} (see `palettectl rollout list`)"))
}

fn summary(r: &Value) -> String {
    let waves: Vec<String> = r["wave_progress"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            format!(
                "{}/{}{}",
                w["succeeded"],
                w["hosts"],
                if w["failed"].as_u64().unwrap_or(0) > 0 {
                    format!(" ({} failed)", w["failed"])
                } else {
                    String::new()
                }
            )
        })
        .collect();
    format!(
        "rollout {} of {} to '{}': {} in wave {} of {} — waves {}{}",
        r["id"],
        r["version"].as_str().unwrap_or("?"),
        r["selector"].as_str().unwrap_or(""),
        r["phase"].as_str().unwrap_or("?"),
        r["wave"],
        r["waves"].as_array().map(|w| w.len()).unwrap_or(0),
        waves.join(" → "),
        r["reason"]
            .as_str()
            .map(|s| format!("\n  why: {s}"))
            .unwrap_or_default()
    )
}

fn print_detail(r: &Value) {
    outln!("{}", summary(r));
    outln!(
        "  waves {}, soak {} s, halt after {}, at most {} at once",
        r["waves"]
            .as_array()
            .map(|w| w
                .iter()
                .map(|x| x.as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        r["soak_secs"],
        r["halt_after"].as_str().unwrap_or("?"),
        match r["max_concurrent"].as_u64() {
            Some(0) | None => "any".to_string(),
            Some(n) => n.to_string(),
        }
    );
    for h in r["hosts"].as_array().into_iter().flatten() {
        outln!(
            "  wave {:<3} {:<32} {:<10} {}",
            h["wave"],
            h["hostname"].as_str().unwrap_or("?"),
            h["outcome"]
                .as_str()
                .unwrap_or(if h["admitted_at"].is_string() {
                    "updating"
                } else {
                    "waiting"
                }),
            h["message"].as_str().unwrap_or("")
        );
    }
}

pub async fn run(api: &Api, out: Output, cmd: RolloutCmd) -> anyhow::Result<()> {
    match cmd {
        RolloutCmd::Create {
            version,
            platform,
            product,
            selector,
            waves,
            soak,
            halt_after,
            max_concurrent,
            no_wait,
            wait,
        } => {
            let v: palette_protocol::Version =
                version.parse().context("while reading the version")?;
            let soak_secs = parse_duration(&soak)?;
            let list: Vec<palette_protocol::v2::Release> =
                api.json(api.req(Method::GET, "/api/v2/releases")).await?;
            let Some(rel) = list
                .iter()
                .filter(|r| r.version == v && r.platform == platform && r.product == product)
                .max_by_key(|r| r.id)
            else {
                bail!("no {product} release {version} for {platform} (publish it first, with --hold to offer it to nobody before the rollout)");
            };
            let body = serde_json::json!({
                "release_id": rel.id,
                "selector": selector,
                "waves": waves.split(',').map(str::trim).collect::<Vec<_>>(),
                "soak_secs": soak_secs,
                "halt_after": halt_after,
                "max_concurrent": max_concurrent,
            });
            let r: Value = api
                .json(api.req(Method::POST, "/api/v2/rollouts").json(&body))
                .await?;
            let id = r["id"].as_i64().context("the server's answer has no id")?;
            if no_wait {
                if out != Output::Table {
                    return print_structured(out, &r);
                }
                outln!("{}", summary(&r));
                return Ok(());
            }
            follow(api, out, id, Duration::from_secs(wait)).await
        }
        RolloutCmd::List => {
            let list: Vec<Value> = api.json(api.req(Method::GET, "/api/v2/rollouts")).await?;
            if out != Output::Table {
                return print_structured(out, &list);
            }
            for r in &list {
                outln!("{}", summary(r));
            }
            Ok(())
        }
        RolloutCmd::Show {
            rollout,
            follow: true,
            wait,
        } => {
            let id = resolve(api, &rollout).await?;
            follow(api, out, id, Duration::from_secs(wait)).await
        }
        RolloutCmd::Show { rollout, .. } => {
            let id = resolve(api, &rollout).await?;
            let r: Value = api
                .json(api.req(Method::GET, &format!("/api/v2/rollouts/{id}")))
                .await?;
            if out != Output::Table {
                return print_structured(out, &r);
            }
            print_detail(&r);
            Ok(())
        }
        RolloutCmd::Pause { rollout } => action(api, out, &rollout, "pause").await,
        RolloutCmd::Resume { rollout } => action(api, out, &rollout, "resume").await,
        RolloutCmd::Abort { rollout } => action(api, out, &rollout, "abort").await,
    }
}

async fn action(api: &Api, out: Output, which: &str, what: &str) -> anyhow::Result<()> {
    let id = resolve(api, which).await?;
    let r: Value = api
        .json(api.req(Method::POST, &format!("/api/v2/rollouts/{id}/{what}")))
        .await?;
    if out != Output::Table {
        return print_structured(out, &r);
    }
    outln!("{}", summary(&r));
    Ok(())
}

/// Prints the rollout's progress as it changes until it ends or `limit`
/// passes; exit code 3 unless it finished.
async fn follow(api: &Api, out: Output, id: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::new();
    loop {
        let r: Value = api
            .json(api.req(Method::GET, &format!("/api/v2/rollouts/{id}")))
            .await?;
        let line = summary(&r);
        if out == Output::Table && line != last {
            outln!("{line}");
            last = line;
        }
        let phase = r["phase"].as_str().unwrap_or("");
        let ended = matches!(phase, "done" | "halted" | "aborted");
        if !ended {
            if let Some(later) = only_later_hosts_left(api, &r).await? {
                if out != Output::Table {
                    return print_structured(out, &r);
                }
                for (host, why) in &later {
                    outln!("  {host:<32} not followed: {why}");
                }
                outln!(
                    "every host that can take it now has; {} host(s) take it when they can (the rollout stays {phase} on the server: `palettectl rollout show {id}`)",
                    later.len()
                );
                return Ok(());
            }
        }
        if ended || tokio::time::Instant::now() >= deadline {
            if out != Output::Table {
                print_structured(out, &r)?;
            }
            if phase == "done" {
                return Ok(());
            }
            let failed = r["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| h["outcome"] == "failed")
                .count();
            let missing = r["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| h["outcome"].is_null())
                .count();
            if out == Output::Table && !ended {
                eprintln!(
                    "still {phase} after {} s; `palettectl rollout show {id} --follow` follows it later",
                    limit.as_secs()
                );
            }
            return Err(HostsFailed { failed, missing }.into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// When a running rollout is in its last wave, every host it admitted has
/// finished, and each host still waiting cannot be admitted now (offline,
/// outside its maintenance window, pinned since), nothing more happens
/// until they can: those hosts, each with why (`None` while a host that
/// can take it now is still to come).
async fn only_later_hosts_left(
    api: &Api,
    r: &Value,
) -> anyhow::Result<Option<Vec<(String, String)>>> {
    let last_wave = r["waves"].as_array().map_or(0, |w| w.len()) as u64;
    if r["phase"] != "running" || r["wave"].as_u64() != Some(last_wave) {
        return Ok(None);
    }
    let members = r["hosts"].as_array().cloned().unwrap_or_default();
    if members
        .iter()
        .any(|m| !m["admitted_at"].is_null() && m["outcome"].is_null())
    {
        return Ok(None);
    }
    let waiting: Vec<&str> = members
        .iter()
        .filter(|m| m["admitted_at"].is_null())
        .filter_map(|m| m["hostname"].as_str())
        .collect();
    if waiting.is_empty() {
        return Ok(None);
    }
    let release = r["release_id"]
        .as_i64()
        .context("the rollout has no release_id")?;
    let reach: palette_protocol::v2::Reach = api
        .json(api.req(Method::GET, &format!("/api/v2/releases/{release}/reach")))
        .await?;
    let hosts: Vec<palette_protocol::v2::HostInfo> =
        api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
    let mut later = Vec::new();
    for name in waiting {
        let state = hosts
            .iter()
            .find(|h| h.hostname == name)
            .and_then(|h| h.state);
        let why = match state {
            Some(palette_protocol::v2::HostState::Online) | None => reach
                .later
                .iter()
                .find(|l| l.hostname == name)
                .map(|l| l.reason.clone())
                // Held is what every waiting member is until admitted:
                // one that is online and in its window is admitted soon.
                .filter(|why| !why.starts_with("held")),
            Some(s) => Some(format!(
                "{} (it is admitted when it is back)",
                format!("{s:?}").to_lowercase()
            )),
        };
        match why {
            Some(why) => later.push((name.to_string(), why)),
            None => return Ok(None),
        }
    }
    Ok(Some(later))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("90s").unwrap(), 90);
        assert_eq!(super::parse_duration("10m").unwrap(), 600);
        assert_eq!(super::parse_duration("2h").unwrap(), 7200);
        assert_eq!(super::parse_duration("15").unwrap(), 15);
        assert!(super::parse_duration("ten").is_err());
        assert!(super::parse_duration("5y").is_err());
    }
}
