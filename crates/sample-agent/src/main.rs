//! `palette-sample-agent`: a small agent for tests and the demo. It reads
//! `Config/Config.yml`, reports its version (the `VERSION` file beside it,
//! else the folder it runs from), writes `state/sample-agent.json` (pid,
//! version, endpoint) and runs until SIGTERM / Ctrl-C. A `FAIL` file beside
//! it makes it exit with code 3 after a moment: a release that fails its
//! health check; `SampleAgent: {Fail: true}` in Config.yml makes it exit
//! with 4 (a config the agent cannot live with). `--help` prints this and
//! touches nothing.

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

const USAGE: &str = "palette-sample-agent --base DIR

A small agent for palette-updater's tests and demo: reads DIR/Config/Config.yml,
writes DIR/state/sample-agent.json (pid, version, endpoint) and runs until
SIGTERM or Ctrl-C. Its version is the VERSION file beside it. It exits with 3
when a FAIL file lies beside it, and with 4 when Config.yml says
`SampleAgent: {Fail: true}`.";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    if arg_base().is_none() && !args.is_empty() {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .context("executable has no folder")?
        .to_path_buf();
    let base = arg_base().unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
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
    shutdown().await;
    println!("sample agent {version} stopping");
    Ok(())
}

#[cfg(unix)]
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}
