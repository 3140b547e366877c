//! `palettectl command …`: targeted commands (start, stop, restart,
//! apply-config, collect-config) and their acknowledgements.
//!
//! Owns: sending a command to named hosts, to every host, or to the hosts
//! a selector matches (refusing host names the server does not know),
//! showing and listing commands, and following acknowledgements
//! (`watch_acks`, `hosts_result`, which `config` and `release retry` use
//! too). Must not: decide what a host does with a command (its watchdog
//! does), or retry one (the server redelivers until it expires).

use std::time::Duration;

use anyhow::Context;
use palette_protocol::v2::{CommandKind, CommandStatus, HostInfo, NewCommand, Target};
use reqwest::Method;

use crate::api::Api;
use crate::cli::{CommandCmd, SendArgs, Word};
use crate::exit::{HostsFailed, UsageError};
use crate::output::{print_structured, Output};

pub async fn run(api: &Api, out: Output, cmd: CommandCmd) -> anyhow::Result<()> {
    match cmd {
        CommandCmd::Send(a) => send(api, out, a).await,
        CommandCmd::Show { id } => {
            let st: CommandStatus = api
                .json(api.req(Method::GET, &format!("/api/v2/commands/{id}")))
                .await?;
            if out != Output::Table {
                return print_structured(out, &st);
            }
            print_command(&st);
            Ok(())
        }
        CommandCmd::List => {
            let list: Vec<CommandStatus> =
                api.json(api.req(Method::GET, "/api/v2/commands")).await?;
            if out != Output::Table {
                return print_structured(out, &list);
            }
            for st in list {
                print_command(&st);
            }
            Ok(())
        }
    }
}

/// `command send`: sends it, then watches the acknowledgements of the
/// hosts expected to answer (exit code 3 when one failed or did not).
async fn send(api: &Api, out: Output, a: SendArgs) -> anyhow::Result<()> {
    let SendArgs {
        kind,
        mut hosts,
        all,
        selector,
        ttl,
        watch,
        allow_unknown_host,
    } = a;
    if let Some(sel) = &selector {
        hosts = select_hosts(api, sel).await?;
        if hosts.is_empty() {
            return Err(HostsFailed {
                failed: 0,
                missing: 0,
            })
            .context(format!("no host matches the selector {sel:?}"));
        }
    }
    let kind = match kind {
        Word::Start => CommandKind::Start,
        Word::Stop => CommandKind::Stop,
        Word::Restart => CommandKind::Restart,
        Word::GetConfig => CommandKind::GetConfig,
        Word::PutConfig => CommandKind::PutConfig,
    };
    let target = if all {
        Target::All
    } else {
        Target::Hosts(hosts.clone())
    };
    // Who should answer: the named hosts the server knows, or with
    // --all every host online now (seen within 5 minutes).
    let known: Vec<HostInfo> = api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
    let expected: Vec<String> = if all {
        let now = super::now_ms();
        known
            .iter()
            .filter(|h| {
                palette_protocol::timefmt::parse_rfc3339(&h.last_seen)
                    .is_ok_and(|t| now - t <= 5 * 60 * 1000)
            })
            .map(|h| h.hostname.clone())
            .collect()
    } else {
        hosts.clone()
    };
    let unknown: Vec<&String> = expected
        .iter()
        .filter(|h| !known.iter().any(|k| &k.hostname == *h))
        .collect();
    if !unknown.is_empty() && !allow_unknown_host {
        let words: Vec<String> = unknown
            .iter()
            .map(
                |h| match known.iter().find(|k| k.hostname.eq_ignore_ascii_case(h)) {
                    // Names are matched exactly, as hosts send them.
                    Some(k) => format!("{h:?} (did you mean {:?}?)", k.hostname),
                    None => format!("{h:?}"),
                },
            )
            .collect();
        return Err(UsageError(format!(
                    "the server knows no host {}: nothing was sent (`palettectl hosts` lists the hosts; --allow-unknown-host stores the command for a host that has not checked in yet)",
                    words.join(", ")
                ))
                .into());
    }
    for h in &unknown {
        eprintln!("warning: the server knows no host {h:?}: the command waits for a host of that name to check in (not waited for)");
    }
    // Only the known hosts are waited for.
    let expected: Vec<String> = expected
        .into_iter()
        .filter(|h| known.iter().any(|k| &k.hostname == h))
        .collect();
    let body = NewCommand {
        kind,
        target,
        ttl_secs: Some(ttl),
    };
    let st: CommandStatus = api
        .json(api.req(Method::POST, "/api/v2/commands").json(&body))
        .await?;
    if out == Output::Table {
        outln!(
            "command {} ({}) issued, expires {}",
            st.command.id,
            kind.as_str(),
            st.command.expires_at
        );
    }
    let watch = if expected.is_empty() { 0 } else { watch };
    let final_status = if watch > 0 {
        watch_acks(
            api,
            st.command.id,
            &expected,
            Duration::from_secs(watch),
            out == Output::Table,
        )
        .await?
    } else {
        st
    };
    if out != Output::Table {
        print_structured(out, &final_status)?;
    }
    hosts_result(&final_status, &expected)
}

/// The names of the hosts whose labels match `selector`.
async fn select_hosts(api: &Api, selector: &str) -> anyhow::Result<Vec<String>> {
    let list: Vec<HostInfo> = api
        .json(
            api.req(Method::GET, "/api/v2/hosts")
                .query(&[("selector", selector)]),
        )
        .await?;
    Ok(list.into_iter().map(|h| h.hostname).collect())
}

fn print_command(st: &CommandStatus) {
    let target = match &st.target {
        Target::All => "all hosts".to_string(),
        Target::Hosts(h) => h.join(", "),
    };
    outln!(
        "command {} {} → {target} (issued {}, expires {})",
        st.command.id,
        st.command.kind.as_str(),
        st.command.issued_at,
        st.command.expires_at
    );
    for a in &st.results {
        outln!("  {:<32} {:?}: {}", a.hostname, a.outcome, a.message);
    }
}

/// Exit code 3 when a host failed the command or did not answer.
pub(crate) fn hosts_result(st: &CommandStatus, expected: &[String]) -> anyhow::Result<()> {
    let failed = st
        .results
        .iter()
        .filter(|a| a.outcome == palette_protocol::v2::Outcome::Failed)
        .count();
    let missing = expected
        .iter()
        .filter(|h| !st.results.iter().any(|a| &a.hostname == *h))
        .count();
    if failed > 0 || missing > 0 {
        return Err(HostsFailed { failed, missing }.into());
    }
    Ok(())
}

/// Prints acknowledgements as they arrive, until every `expected` host
/// answered or `limit` passed; returns the command's last status.
pub(crate) async fn watch_acks(
    api: &Api,
    id: i64,
    expected: &[String],
    limit: Duration,
    print: bool,
) -> anyhow::Result<CommandStatus> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut shown = 0;
    loop {
        let st: CommandStatus = api
            .json(api.req(Method::GET, &format!("/api/v2/commands/{id}")))
            .await?;
        if print {
            for a in &st.results[shown..] {
                outln!("  {:<32} {:?}: {}", a.hostname, a.outcome, a.message);
            }
        }
        shown = st.results.len();
        let all_answered = expected
            .iter()
            .all(|h| st.results.iter().any(|a| &a.hostname == h));
        if all_answered {
            return Ok(st);
        }
        if tokio::time::Instant::now() >= deadline {
            if print {
                eprintln!("{shown} acknowledgement(s) after {} s; `palettectl command show {id}` shows later ones", limit.as_secs());
            }
            return Ok(st);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
