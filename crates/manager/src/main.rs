//! `palette-manager`: performs one operation on the agent installation and
//! exits. The watchdog runs it as `manager_in_action`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use palette_host::manager_result::{ManagerResult, RecoveryKind};
use palette_host::settings::{Backend, Settings};
use palette_host::Layout;
use palette_manager::extract::Limits;
use palette_manager::{ops, selfupdate};
use palette_service::{CommandService, CommandSpec, ServiceControl};

#[derive(Parser)]
#[command(
    version = palette_host::stamp::version(),
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
        /// Only verify and unpack into staging (the agent may keep
        /// running); the same `update` without it then switches.
        #[arg(long)]
        stage_only: bool,
    },
    /// Replace the watchdog and the manager with a watchdog release's
    /// binaries, restart the watchdog, and put the old ones back unless the
    /// new one proves itself in time.
    SelfUpdate {
        artifact: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        sha256: String,
        #[arg(long, default_value_t = 0)]
        release_id: i64,
        /// The watchdog executable the service runs.
        #[arg(long)]
        watchdog_exe: PathBuf,
        /// The version of the watchdog asking.
        #[arg(long)]
        previous: String,
        /// The service manager's restart command, a word each; none: the
        /// manager stops the old watchdog and starts the new one itself.
        #[arg(long = "restart-word")]
        restart_words: Vec<String>,
        /// Seconds the new watchdog has to prove itself.
        #[arg(long, default_value_t = 120)]
        prove_secs: u64,
    },
    /// Install a Windows Installer release with msiexec (the properties
    /// come from `agent.msi_properties` in watchdog.yml).
    InstallMsi {
        msi: PathBuf,
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
    palette_manager::fault::set_layout(&layout);
    // One manager at a time, for its whole run: a watchdog restarted while
    // this one works waits for it instead of recovering over it.
    if let Err(e) = fs_err::create_dir_all(layout.state()) {
        tracing::error!(error = %e, "cannot create the state folder");
        std::process::exit(1);
    }
    let _lock = match palette_host::lock::lock_waiting(&layout.manager_lock(), |pid| {
        tracing::warn!(
            ?pid,
            "another manager is running on this folder; waiting for it to finish"
        )
    }) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot take the manager lock");
            std::process::exit(1);
        }
    };
    let name = cli.op.name();
    let mut result = ManagerResult {
        op: name.into(),
        ok: true,
        reason: None,
        recovery: None,
        version: None,
        current: None,
        local_io: false,
        pid: std::process::id(),
    };
    let outcome = run(cli.op, &layout, &mut result);
    if let Err(e) = &outcome {
        tracing::error!("{e:#}");
        result.ok = false;
        result.reason = Some(format!("{e:#}"));
        // A full or failing local disk is a passing trouble: the watchdog
        // retries once it clears, instead of holding it against the release.
        // So is a release that does not fit in the free space.
        result.local_io = result.local_io
            || e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(palette_host::fsx::is_local_disk_trouble)
                    || c.downcast_ref::<palette_manager::extract::ExtractError>()
                        .is_some_and(|x| x.is_lack_of_space())
            });
    }
    if let Err(e) = result.save(&layout) {
        tracing::error!(error = %e, "cannot write the manager's result file");
    }
    if outcome.is_err() {
        std::process::exit(1);
    }
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Update { .. } => "update",
            Op::SelfUpdate { .. } => "self-update",
            Op::InstallMsi { .. } => "install-msi",
            Op::Commit => "commit",
            Op::Rollback => "rollback",
            Op::Recover => "recover",
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Restart => "restart",
        }
    }
}

fn run(op: Op, layout: &Layout, result: &mut ManagerResult) -> anyhow::Result<()> {
    match op {
        Op::Update {
            artifact,
            version,
            sha256,
            release_id,
            stage_only,
        } => {
            let version = version.parse().context("while reading --version")?;
            result.version = Some(version);
            tracing::info!(artifact = %artifact.display(), %version, stage_only, "update requested");
            let limits = Limits::for_archive(
                fs_err::metadata(&artifact).map(|m| m.len()).unwrap_or(0),
                palette_host::disk::available_space(&layout.versions()),
            );
            let req = ops::UpdateRequest {
                artifact,
                version,
                sha256,
                release_id,
            };
            if stage_only {
                ops::stage_archive(layout, &req, limits)?;
            } else {
                ops::install_archive(layout, &req, limits)?;
            }
        }
        Op::SelfUpdate {
            artifact,
            version,
            sha256,
            release_id,
            watchdog_exe,
            previous,
            restart_words,
            prove_secs,
        } => {
            let version = version.parse().context("while reading --version")?;
            result.version = Some(version);
            tracing::info!(artifact = %artifact.display(), %version, %previous, "watchdog self-update requested");
            selfupdate::self_update(
                layout,
                &selfupdate::SelfUpdateRequest {
                    artifact,
                    version,
                    sha256,
                    release_id,
                    watchdog_exe,
                    previous,
                    restart: if restart_words.is_empty() {
                        selfupdate::Restart::Itself
                    } else {
                        selfupdate::Restart::Command(restart_words)
                    },
                    prove_within: Duration::from_secs(prove_secs.max(1)),
                },
            )?;
        }
        Op::InstallMsi {
            msi,
            version,
            sha256,
            release_id,
        } => {
            let version = version.parse().context("while reading --version")?;
            result.version = Some(version);
            let settings = Settings::load(&layout.settings_file())?;
            let req = palette_manager::msi::MsiRequest {
                msi,
                version,
                sha256,
                release_id,
                properties: settings.agent.msi_properties.clone(),
            };
            if let Err(e) = palette_manager::msi::install(layout, &req) {
                // 1618: another installation runs; retried, not held
                // against the release.
                result.local_io = e.is_passing();
                return Err(e.into());
            }
        }
        Op::Commit => {
            ops::commit(layout)?;
        }
        Op::Rollback => {
            let props = Settings::load(&layout.settings_file())
                .map(|s| s.agent.msi_properties)
                .unwrap_or_default();
            let restored = ops::rollback_with(layout, &props)?;
            result.current = restored;
            println!(
                "{}",
                restored
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "none".into())
            );
        }
        Op::Recover => {
            let props = Settings::load(&layout.settings_file())
                .map(|s| s.agent.msi_properties)
                .unwrap_or_default();
            let r = ops::recover_with(layout, &props)?;
            let (kind, version) = match &r {
                ops::Recovery::Nothing => (RecoveryKind::Nothing, None),
                ops::Recovery::Discarded { version } => (RecoveryKind::Discarded, Some(*version)),
                ops::Recovery::NeedsHealthCheck { version, .. } => {
                    (RecoveryKind::NeedsHealthCheck, Some(*version))
                }
                ops::Recovery::RolledBack { version, .. } => {
                    (RecoveryKind::RolledBack, Some(*version))
                }
                ops::Recovery::Stale { version, .. } => (RecoveryKind::Stale, Some(*version)),
            };
            result.recovery = Some(kind);
            result.version = version;
            result.current = layout.current_version();
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
