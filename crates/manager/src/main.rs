//! `palette-manager`: performs one operation on the agent installation and
//! exits. The watchdog runs it as `manager_in_action`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use palette_host::settings::{Backend, Settings};
use palette_host::Layout;
use palette_manager::extract::Limits;
use palette_manager::ops;
use palette_service::{CommandService, CommandSpec, ServiceControl};

#[derive(Parser)]
#[command(
    version,
    about = "Installs, switches and rolls back agent versions; run by the watchdog."
)]
struct Cli {
    /// The install folder (default: this executable's folder).
    #[arg(long, global = true)]
    base: Option<PathBuf>,
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// Verify, unpack and switch to a new version (archive releases).
    Update {
        artifact: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        sha256: String,
        #[arg(long, default_value_t = 0)]
        release_id: i64,
    },
    /// Keep the version an update switched to.
    Commit,
    /// Go back to the version before the update.
    Rollback,
    /// Finish or discard an update a crash interrupted.
    Recover,
    /// Start the agent (command backend).
    Start,
    /// Stop the agent (command backend).
    Stop,
    /// Restart the agent (command backend).
    Restart,
}

fn main() {
    let cli = Cli::parse();
    let layout = match Layout::from_arg_or_exe(cli.base.clone()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("palette-manager: cannot work out the install folder: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = palette_host::logging::init(&layout.logs(), "manager") {
        eprintln!(
            "palette-manager: cannot open the log in {}: {e}",
            layout.logs().display()
        );
    }
    if let Err(e) = run(cli.op, &layout) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(op: Op, layout: &Layout) -> anyhow::Result<()> {
    match op {
        Op::Update {
            artifact,
            version,
            sha256,
            release_id,
        } => {
            let version = version.parse().context("while reading --version")?;
            tracing::info!(artifact = %artifact.display(), %version, "update requested");
            ops::install_archive(
                layout,
                &ops::UpdateRequest {
                    artifact,
                    version,
                    sha256,
                    release_id,
                },
                Limits::default(),
            )?;
        }
        Op::Commit => {
            ops::commit(layout)?;
        }
        Op::Rollback => {
            let restored = ops::rollback(layout)?;
            println!(
                "{}",
                restored
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "none".into())
            );
        }
        Op::Recover => {
            let r = ops::recover(layout)?;
            println!("{r:?}");
        }
        Op::Start | Op::Stop | Op::Restart => {
            let settings = Settings::load(&layout.settings_file())?;
            if settings.agent.backend != Backend::Command {
                bail!("with the process backend the watchdog itself runs the agent; send the command to the watchdog");
            }
            let svc = CommandService::new(CommandSpec {
                start: settings.agent.start.clone(),
                stop: settings.agent.stop.clone(),
                status: settings.agent.status.clone(),
                timeout: Duration::from_secs(settings.agent.stop_timeout_secs.max(1) + 30),
            });
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                match op {
                    Op::Start => svc.start().await,
                    Op::Stop => svc.stop().await,
                    _ => svc.restart().await,
                }
            })?;
            tracing::info!(
                "agent {} done",
                match op {
                    Op::Start => "start",
                    Op::Stop => "stop",
                    _ => "restart",
                }
            );
        }
    }
    Ok(())
}
