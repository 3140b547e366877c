//! `palettectl hosts …`: the inventory.
//!
//! Owns: listing hosts (with their state judged against each one's
//! check-in interval, and the `--state`, `--version`, `--name` filters),
//! showing one in detail with its recent history, retiring one, and the
//! labels an operator assigns (`hosts label`). Must not: change a host's
//! agent or config (`command` and `config` do), or keep an inventory of
//! its own.

use anyhow::bail;
use palette_protocol::v2::HostInfo;
use reqwest::Method;
use serde_json::Value;

use crate::api::Api;
use crate::cli::{HostsAction, HostsArgs};
use crate::output::{print_structured, Output};

pub async fn run(api: &Api, out: Output, mut args: HostsArgs) -> anyhow::Result<()> {
    match args.action.take() {
        Some(HostsAction::Label {
            host,
            labels,
            remove,
        }) => label(api, &host, &labels, &remove).await,
        Some(HostsAction::Show { host }) => show(api, out, &host).await,
        Some(HostsAction::Retire { host }) => retire(api, &host).await,
        None => match args.host.take() {
            Some(host) if args.retire => retire(api, &host).await,
            Some(host) => show(api, out, &host).await,
            None => list(api, out, args).await,
        },
    }
}

/// `hosts retire HOST` (or `hosts HOST --retire`).
async fn retire(api: &Api, host: &str) -> anyhow::Result<()> {
    api.send(api.req(Method::DELETE, &format!("/api/v2/hosts/{host}")))
        .await?;
    outln!("retired {host}: removed from the inventory (it reappears if it checks in again)");
    Ok(())
}

/// `hosts show HOST` (or `hosts HOST`): one host in detail.
async fn show(api: &Api, out: Output, host: &str) -> anyhow::Result<()> {
    let h: HostInfo = api
        .json(api.req(Method::GET, &format!("/api/v2/hosts/{host}")))
        .await?;
    if out != Output::Table {
        return print_structured(out, &h);
    }
    outln!("host:          {}", h.hostname);
    let (st, age) = host_state(&h);
    outln!(
        "state:         {st} (last seen {age} ago, at {})",
        h.last_seen
    );
    if let Some(i) = h.checkin_interval_secs {
        outln!("checks in:     every {i} s");
    }
    let Some(r) = &h.report else {
        outln!("(a legacy v1 host: no report)");
        return Ok(());
    };
    let ver = |v: Option<palette_protocol::Version>| {
        v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
    };
    outln!("platform:      {}", r.platform);
    outln!("watchdog:      {}", r.watchdog_version);
    let as_of = if st == "online" {
        String::new()
    } else {
        format!(" — as last reported {age} ago; the host is {st}")
    };
    outln!(
        "agent:         {} ({:?}, desired {:?}){as_of}",
        ver(r.agent_version),
        r.agent_state,
        r.desired_state
    );
    outln!(
        "config:        revision {}",
        r.config_revision
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into())
    );
    match &r.update_progress {
        Some(p) => {
            let pct = p
                .total
                .filter(|t| *t > 0)
                .map(|t| format!(" ({}%)", p.bytes * 100 / t))
                .unwrap_or_default();
            outln!(
                "updating:      {} {} {:?}: {} of {} bytes{pct}",
                p.product,
                p.version,
                p.phase,
                p.bytes,
                p.total.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
            );
        }
        None => outln!("updating:      no"),
    }
    match &r.last_update {
        Some(u) => outln!(
            "last update:   {} {:?}: {}",
            u.version,
            u.outcome,
            u.message
        ),
        None => outln!("last update:   -"),
    }
    if let Some(t) = &r.local_trouble {
        outln!("trouble:       {t}");
    }
    if let Some(u) = &r.last_watchdog_update {
        outln!(
            "self-update:   {} {:?}: {}",
            u.version,
            u.outcome,
            u.message
        );
    }
    // Recent history (a server before it answers 404: left out).
    let res = api
        .execute(api.req(
            Method::GET,
            &format!("/api/v2/hosts/{host}/history?limit=10"),
        ))
        .await?;
    if res.status().is_success() {
        let hist: serde_json::Value = res.json().await?;
        outln!("recent commands:");
        for c in hist["commands"].as_array().into_iter().flatten() {
            outln!(
                "  {}  #{:<6} {:<14} {:<9} {}",
                c["at"].as_str().unwrap_or("-"),
                c["id"],
                c["kind"].as_str().unwrap_or("-"),
                c["outcome"].as_str().unwrap_or("-"),
                c["message"].as_str().unwrap_or("")
            );
        }
        outln!("recent updates:");
        for u in hist["updates"].as_array().into_iter().flatten() {
            outln!(
                "  {}  {:<8} {:<10} {:<9} {}",
                u["at"].as_str().unwrap_or("-"),
                u["product"].as_str().unwrap_or("-"),
                u["version"].as_str().unwrap_or("-"),
                u["outcome"].as_str().unwrap_or("-"),
                u["message"].as_str().unwrap_or("")
            );
        }
        outln!("recent configs:");
        for c in hist["configs"].as_array().into_iter().flatten() {
            outln!(
                "  {}  revision {:<5} {:<8} {} bytes",
                c["created_at"].as_str().unwrap_or("-"),
                c["revision"],
                c["source"].as_str().unwrap_or("-"),
                c["size"]
            );
        }
    }
    Ok(())
}

/// `hosts`: the hosts that pass the filters, as a table.
async fn list(api: &Api, out: Output, filters: HostsArgs) -> anyhow::Result<()> {
    let HostsArgs {
        state,
        online,
        offline,
        version,
        name,
        selector,
        ..
    } = filters;
    let list: Vec<HostInfo> = api
        .json(
            api.req(Method::GET, "/api/v2/hosts")
                .query(&[("selector", selector.unwrap_or_default())]),
        )
        .await?;
    let list: Vec<HostInfo> = list
        .into_iter()
        .filter(|h| state.as_deref().is_none_or(|s| host_state(h).0 == s))
        .filter(|h| !online || host_state(h).0 == "online")
        .filter(|h| !offline || host_state(h).0 != "online")
        .filter(|h| {
            version.as_deref().is_none_or(|v| {
                h.report
                    .as_ref()
                    .and_then(|r| r.agent_version)
                    .is_some_and(|a| a.to_string() == v)
            })
        })
        .filter(|h| name.as_deref().is_none_or(|p| glob(p, &h.hostname)))
        .collect();
    if out != Output::Table {
        return print_structured(out, &list);
    }
    outln!(
        "{:<32} {:<8} {:>5} {:<10} {:<10} {:<9} {:<9} LAST UPDATE",
        "HOST",
        "STATE",
        "AGE",
        "AGENT",
        "WATCHDOG",
        "RUNNING",
        "DESIRED"
    );
    for h in list {
        let watchdog = h
            .report
            .as_ref()
            .map(|r| r.watchdog_version.clone())
            .unwrap_or_else(|| "-".into());
        let (ver, state, desired, upd) = match &h.report {
            Some(r) => (
                r.agent_version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                format!("{:?}", r.agent_state).to_lowercase(),
                format!("{:?}", r.desired_state).to_lowercase(),
                r.last_update
                    .as_ref()
                    .map(|u| format!("{} {:?}: {}", u.version, u.outcome, u.message))
                    .unwrap_or_default(),
            ),
            None => ("(legacy)".into(), "-".into(), "-".into(), String::new()),
        };
        let (online, age) = host_state(&h);
        // A host not heard from lately: its agent's state is what
        // it last said, not what it is now.
        let state = if online == "online" || state == "-" {
            state
        } else {
            format!("{state} (last seen {age} ago, {online})")
        };
        outln!(
            "{:<32} {:<8} {:>5} {:<10} {:<10} {:<9} {:<9} {}",
            h.hostname,
            online,
            age,
            ver,
            watchdog,
            state,
            desired,
            upd
        );
    }
    Ok(())
}

/// `hosts label HOST k=v … [--remove k …]`: the labels an operator assigns
/// (over the host's own).
pub async fn label(api: &Api, host: &str, set: &[String], remove: &[String]) -> anyhow::Result<()> {
    let current: Value = api
        .json(api.req(Method::GET, &format!("/api/v2/hosts/{host}/labels")))
        .await?;
    let mut assigned: serde_json::Map<String, Value> =
        current["assigned"].as_object().cloned().unwrap_or_default();
    for kv in set {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("{kv:?} is not key=value");
        };
        assigned.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
    }
    for k in remove {
        assigned.remove(k.trim());
    }
    let r: Value = api
        .json(
            api.req(Method::PUT, &format!("/api/v2/hosts/{host}/labels"))
                .json(&serde_json::json!({ "assigned": assigned })),
        )
        .await?;
    outln!(
        "{host}: {}",
        r["labels"]
            .as_object()
            .map(|m| m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default()
    );
    Ok(())
}

/// A host's state as the server judged it against the host's own check-in
/// interval (online: at most one check-in missed; stale: heard from within
/// a day; offline: longer ago), and the age of its last contact. A server
/// before 0.2 sends no state: judged here against a 2-minute interval.
fn host_state(h: &HostInfo) -> (&'static str, String) {
    let now = super::now_ms();
    let Ok(seen) = palette_protocol::timefmt::parse_rfc3339(&h.last_seen) else {
        return ("offline", "?".into());
    };
    let age_ms = (now - seen).max(0);
    let state = h
        .state
        .unwrap_or_else(|| palette_protocol::v2::HostState::judge(age_ms, 120_000))
        .as_str();
    let age = (age_ms / 1000) as u64;
    let age = if age < 120 {
        format!("{age}s")
    } else if age < 7200 {
        format!("{}m", age / 60)
    } else if age < 172_800 {
        format!("{}h", age / 3600)
    } else {
        format!("{}d", age / 86_400)
    };
    (state, age)
}

/// `*`-only glob, anchored at both ends.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(at) => rest = &rest[at + p.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        assert!(super::glob("web-*", "web-01"));
        assert!(super::glob("*-01", "web-01"));
        assert!(super::glob("w*b*1", "web-01"));
        assert!(!super::glob("web-*", "db-01"));
        assert!(super::glob("db-01", "db-01"));
        assert!(!super::glob("db-0", "db-01"));
    }
}
