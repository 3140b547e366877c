//! `palettectl config …`: each host's Config.yml, as the server keeps it.
//!
//! Owns: pushing a desired config (after a light local check of the file)
//! and following the host applying it, collecting the config a host has,
//! printing or saving a revision, diffing reported against desired, and
//! listing revisions. Must not: parse or judge the YAML itself (the server
//! and the watchdog do), or write any file but the one `--to` names.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use palette_protocol::v2::{CommandKind, CommandStatus, ConfigRevision, NewCommand, Target};
use reqwest::Method;

use super::command::{hosts_result, watch_acks};
use crate::api::Api;
use crate::cli::{ConfigCmd, PushArgs};
use crate::exit::UsageError;
use crate::output::{print_structured, Output};

pub async fn run(api: &Api, out: Output, cmd: ConfigCmd) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Push(a) => push(api, a).await,
        ConfigCmd::Collect {
            host,
            save_to,
            wait,
        } => collect(api, host, save_to, wait).await,
        ConfigCmd::Pull {
            host,
            source,
            save_to,
        } => pull(api, &host, source, save_to).await,
        ConfigCmd::Diff { host } => diff(api, out, &host).await,
        ConfigCmd::History { host } => {
            let list: Vec<ConfigRevision> = api
                .json(api.req(Method::GET, &format!("/api/v2/hosts/{host}/configs")))
                .await?;
            if out != Output::Table {
                return print_structured(out, &list);
            }
            for r in list {
                outln!(
                    "{:>5}  {:<9} {:>7} bytes  {}  {}",
                    r.revision,
                    r.source.as_str(),
                    r.size,
                    r.created_at,
                    &r.sha256[..16]
                );
            }
            Ok(())
        }
    }
}

/// `config push`: stores the file, and follows the host applying it.
async fn push(api: &Api, a: PushArgs) -> anyhow::Result<()> {
    let PushArgs {
        host,
        file,
        no_apply,
        no_wait,
        wait,
    } = a;
    let body = fs_err::read(&file)?;
    if let Err(e) = check_config_file(&body) {
        bail!("{} is not a usable Config.yml: {e}", file.display());
    }
    let host = host.to_lowercase();
    let known = host_is_known(api, &host).await?;
    let path = format!("/api/v2/hosts/{host}/configs?apply={}", !no_apply);
    let v: serde_json::Value = api.json(api.req(Method::POST, &path).body(body)).await?;
    let command = v["command"]["id"].as_i64();
    outln!(
        "stored revision {} for {host}{}",
        v["revision"]["revision"],
        command
            .map(|id| format!("; apply-config command {id} sent"))
            .unwrap_or_default()
    );
    if !known {
        eprintln!("warning: the server knows no host {host:?}: the config waits for a host of that name to check in");
    }
    let (Some(id), false, true) = (command, no_wait, known) else {
        return Ok(());
    };
    let st = watch_acks(
        api,
        id,
        std::slice::from_ref(&host),
        Duration::from_secs(wait),
        true,
    )
    .await?;
    hosts_result(&st, &[host])
}

/// `config collect`: asks the host for the config it has, and prints (or
/// saves) it.
async fn collect(
    api: &Api,
    host: String,
    save_to: Option<PathBuf>,
    wait: u64,
) -> anyhow::Result<()> {
    let host = host.to_lowercase();
    if !host_is_known(api, &host).await? {
        return Err(UsageError(format!("the server knows no host {host:?}")).into());
    }
    let body = NewCommand {
        kind: CommandKind::PutConfig,
        target: Target::Hosts(vec![host.clone()]),
        ttl_secs: Some(wait.max(60)),
    };
    let st: CommandStatus = api
        .json(api.req(Method::POST, "/api/v2/commands").json(&body))
        .await?;
    let st = watch_acks(
        api,
        st.command.id,
        std::slice::from_ref(&host),
        Duration::from_secs(wait),
        false,
    )
    .await?;
    hosts_result(&st, std::slice::from_ref(&host))?;
    let res = api
        .send(api.req(
            Method::GET,
            &format!("/api/v2/hosts/{host}/configs/latest?source=reported"),
        ))
        .await?;
    print_or_save(res, save_to).await
}

/// `config pull`: the newest revision (of `source`, or of either).
async fn pull(
    api: &Api,
    host: &str,
    source: Option<String>,
    save_to: Option<PathBuf>,
) -> anyhow::Result<()> {
    let q = source
        .as_ref()
        .map(|s| format!("?source={s}"))
        .unwrap_or_default();
    let res = api
        .send(api.req(
            Method::GET,
            &format!("/api/v2/hosts/{host}/configs/latest{q}"),
        ))
        .await?;
    // Which one this is, on stderr (stdout is the file).
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string()
    };
    let (shown, revision) = (header("x-config-source"), header("x-config-revision"));
    let note = match (source.is_none(), shown.as_str()) {
                (true, "desired") => ": the newest revision is the operator's, which the host may not have applied or may have refused (`config diff` compares; --source reported shows what the host has)",
                (true, _) => ": the newest revision (--source desired shows the operator's)",
                (false, _) => "",
            };
    eprintln!("{host}: the {shown} config, revision {revision}{note}");
    print_or_save(res, save_to).await
}

/// `config diff`: how the reported config differs from the desired one.
async fn diff(api: &Api, out: Output, host: &str) -> anyhow::Result<()> {
    // A source with no config yet is empty; any other failure is
    // an error (not an empty file).
    let get = |src: &'static str| {
        let path = format!("/api/v2/hosts/{host}/configs/latest?source={src}");
        async move {
            match api.get_unless_missing(&path).await? {
                None => Ok::<_, anyhow::Error>(String::new()),
                Some(res) => Ok(String::from_utf8_lossy(&res.bytes().await?).into_owned()),
            }
        }
    };
    let desired = get("desired").await?;
    let reported = get("reported").await?;
    let diff = similar::TextDiff::from_lines(&desired, &reported);
    let text = diff
        .unified_diff()
        .header("desired", "reported")
        .to_string();
    if out != Output::Table {
        return print_structured(
            out,
            &serde_json::json!({
                "host": host,
                "same": text.is_empty(),
                "diff": text,
            }),
        );
    }
    if text.is_empty() {
        outln!("{host}: reported config matches the desired one");
    } else {
        out!("{text}");
    }
    Ok(())
}

/// Why a file cannot be a `Config.yml` (found before pushing it).
#[derive(Debug, thiserror::Error)]
enum ConfigFileError {
    #[error("not UTF-8 text (byte {at} is not)")]
    NotUtf8 { at: usize },
    #[error("empty")]
    Empty,
}

/// A light local check before pushing: the file must be UTF-8 text (the
/// server and the watchdog check the YAML itself).
fn check_config_file(body: &[u8]) -> Result<(), ConfigFileError> {
    let text = std::str::from_utf8(body).map_err(|e| ConfigFileError::NotUtf8 {
        at: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(ConfigFileError::Empty);
    }
    Ok(())
}

/// Prints a config the server answered, or saves it to `save_to`.
async fn print_or_save(res: reqwest::Response, save_to: Option<PathBuf>) -> anyhow::Result<()> {
    let bytes = res.bytes().await?;
    match save_to {
        Some(p) => {
            fs_err::write(&p, &bytes)?;
            eprintln!("wrote {} ({} bytes)", p.display(), bytes.len());
        }
        None => out!("{}", String::from_utf8_lossy(&bytes)),
    }
    Ok(())
}

/// Whether the server has `host` in its inventory.
async fn host_is_known(api: &Api, host: &str) -> anyhow::Result<bool> {
    Ok(api
        .get_unless_missing(&format!("/api/v2/hosts/{host}"))
        .await?
        .is_some())
}
