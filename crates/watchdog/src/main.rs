//! `palette-watchdog`: command-line entry point.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use palette_host::Layout;
use palette_watchdog::systemd;

#[derive(Parser)]
#[command(
    version = palette_watchdog::version(),
    about = "Keeps the agent running, updated and configured."
)]
struct Cli {
    /// The install folder (default: this executable's folder).
    #[arg(long, global = true)]
    base: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run in the foreground (what the service runs).
    Run,
    /// Write the systemd unit (then: systemctl daemon-reload && systemctl enable --now palette-watchdog).
    Install {
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// Check the written unit with `systemd-analyze verify`.
        #[arg(long)]
        verify: bool,
    },
    /// Remove the systemd unit.
    Remove {
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let layout =
        Layout::from_arg_or_exe(cli.base).context("while working out the install folder")?;
    match cli.cmd {
        Cmd::Run => {
            layout.ensure_dirs().with_context(|| {
                format!("while creating the folders under {}", layout.base.display())
            })?;
            // One watchdog per install folder, checked before anything is
            // touched (even the log).
            let _instance = match palette_host::lock::try_lock(&layout.watchdog_lock()) {
                Ok(l) => l,
                Err(palette_host::lock::LockError::Held { pid, .. }) => anyhow::bail!(
                    "another palette-watchdog (pid {}) is already running on {}; this one exits without touching anything",
                    pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()),
                    layout.base.display()
                ),
                Err(e) => return Err(e).context("while taking the single-instance lock"),
            };
            palette_host::logging::init(&layout.logs(), "watchdog")
                .with_context(|| format!("while opening the log in {}", layout.logs().display()))?;
            let result = palette_watchdog::run::run(layout).await;
            if let Err(e) = &result {
                tracing::error!("{e:#}");
            }
            result
        }
        Cmd::Install { unit_dir, verify } => {
            let exe = std::env::current_exe().context("while finding this executable")?;
            let path = systemd::install(&unit_dir, &exe, &layout.base)
                .with_context(|| format!("while writing the unit into {}", unit_dir.display()))?;
            println!("wrote {}", path.display());
            if verify {
                let out = std::process::Command::new("systemd-analyze")
                    .arg("verify")
                    .arg(&path)
                    .output()
                    .context("while running systemd-analyze verify")?;
                let text = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() {
                    anyhow::bail!(
                        "systemd-analyze verify refused {}: {}",
                        path.display(),
                        text.trim()
                    );
                }
                println!("systemd-analyze verify: ok");
            }
            Ok(())
        }
        Cmd::Remove { unit_dir } => {
            if systemd::remove(&unit_dir)? {
                println!("removed {}", unit_dir.join(systemd::UNIT_NAME).display());
            } else {
                println!("no unit in {}", unit_dir.display());
            }
            Ok(())
        }
    }
}
