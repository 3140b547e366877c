//! `palettectl`: the operator CLI over palette-server's v2 API.
//!
//! Owns: the program's entry: parsing the command line, connecting to the
//! server, handing each command to its module, and the exit code. Must
//! not: hold any state of its own, bypass the server's API, or do a
//! command's work here (each command's lives in `commands/`).
//!
//! The modules:
//! - `cli`: the clap tree, every command's flags and help text;
//! - `api`: the HTTP client and its readable errors;
//! - `output`: stdout (`outln!`), `--output` and JSON/YAML output;
//! - `exit`: the exit codes and the errors that choose 2 and 3;
//! - `signing`: publisher keys and manifest signatures (minisign);
//! - `commands/`: one module per command (`hosts`, `command`, `config`,
//!   `release`, `rollout`, `pin`, `window`, `token`, `keys`, `audit`).

use clap::Parser;

// First: its `outln!`/`out!` are used by the modules below.
#[macro_use]
mod output;
mod api;
mod cli;
mod commands;
mod exit;
mod signing;

use api::Api;
use cli::{Cli, Cmd};
use commands::{audit, command, config, hosts, keys, pin, release, rollout, token, window};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let out = cli.output;
    match exit::code(run(cli).await, out) {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("palettectl: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Connects, and runs the command.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = cli.output;
    let api = Api::connect(&cli.server, cli.token, cli.ca_file.as_deref())?;
    match cli.cmd {
        Cmd::Release(c) => release::run(&api, out, c).await,
        Cmd::Command(c) => command::run(&api, out, c).await,
        Cmd::Config(c) => config::run(&api, out, c).await,
        Cmd::Hosts(a) => hosts::run(&api, out, a).await,
        Cmd::Rollout(c) => rollout::run(&api, out, c).await,
        Cmd::Pin(c) => pin::run(&api, out, c).await,
        Cmd::Window(c) => window::run(&api, out, c).await,
        Cmd::Token(c) => token::run(&api, out, c).await,
        Cmd::Keys(c) => keys::run(c),
        Cmd::Audit { limit } => audit::run(&api, out, limit).await,
    }
}
