//! `palette-watchdog`: command-line entry point.
//! The argument tree, logging, and a dispatch to the library (`run`,
//! `os_service`) and to `enroll`.
//!
//! Must not: hold logic the library's tests cannot drive.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use palette_host::Layout;
use palette_watchdog::os_service::{self, InstallOptions};

mod enroll;

#[derive(Parser)]
#[command(
    version = palette_watchdog::version(),
    about = "Keeps the agent running, updated and configured."
)]
struct Cli {
    /// The install folder (default: this executable's folder).
    #[arg(long, global = true)]
    base: Option<PathBuf>,
    /// Log format of the log file: text, or json (one object a line). Also
    /// PALETTE_LOG_FORMAT; the manager runs it starts use the same. The
    /// filter is PALETTE_LOG (`info` by default, e.g.
    /// `palette_watchdog=debug,info`).
    #[arg(long, global = true, env = palette_protocol::env::LOG_FORMAT, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run in the foreground (Ctrl-C stops it; what the systemd unit runs).
    Run,
    /// Run as a Windows service (what the service control manager starts).
    #[command(hide = true)]
    Service,
    /// Set up this host folder for a fleet in one step: Config/Config.yml
    /// (server, enrollment key), watchdog.yml (host name, CA file) and this
    /// host's own token from the server. Checks the server answers and
    /// takes the key first; writes nothing otherwise.
    Enroll {
        /// The server, with its scheme: https://palette.example.com:8443
        #[arg(long)]
        server: String,
        /// The fleet's enrollment key (the license key).
        #[arg(long)]
        key: String,
        /// This host's name in the fleet (default: the system's host name).
        #[arg(long)]
        hostname: Option<String>,
        /// The CA certificate (PEM) that issued the server's certificate,
        /// when it is not a public one.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Replace an existing Config.yml and watchdog.yml.
        #[arg(long)]
        force: bool,
        /// The agent's command line, words separated by spaces ({current},
        /// {base} and {exe} are expanded), e.g.
        /// '{current}/palette-sample-agent --base {base}' (preset process).
        #[arg(long)]
        agent_command: Option<String>,
        /// How the agent runs: process (the watchdog runs --agent-command),
        /// systemd (a unit, --agent-service), windows_service (a Windows
        /// service, --agent-service). Default: process.
        #[arg(long, value_enum)]
        preset: Option<enroll::Preset>,
        /// The agent's systemd unit (default agent.service) or Windows
        /// service name.
        #[arg(long)]
        agent_service: Option<String>,
    },
    /// Install the service: a systemd unit on Linux (then: systemctl
    /// daemon-reload && systemctl enable --now palette-watchdog), a
    /// Windows service on Windows.
    Install {
        /// Linux: where the unit is written.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// Linux: check the written unit with `systemd-analyze verify`.
        #[arg(long)]
        verify: bool,
        /// Start the service once installed.
        #[arg(long)]
        start: bool,
    },
    /// Remove the service (stopping it first).
    Remove {
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// Start the installed service.
    Start,
    /// Stop the installed service.
    Stop,
    /// Stop the installed service and start it again.
    Restart,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(f) = &cli.log_format {
        // Read by the log set-up and inherited by the manager's runs; set
        // before any thread starts.
        std::env::set_var(palette_protocol::env::LOG_FORMAT, f);
    }
    let layout =
        Layout::from_arg_or_exe(cli.base).context("while working out the install folder")?;
    match cli.cmd {
        Cmd::Run => run(layout),
        Cmd::Service => os_service::run_as_service(layout, run),
        Cmd::Enroll {
            server,
            key,
            hostname,
            ca_file,
            force,
            agent_command,
            preset,
            agent_service,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let opts = enroll::EnrollOptions {
                server,
                key,
                hostname,
                ca_file,
                force,
                agent_command,
                preset,
                agent_service,
            };
            println!("{}", rt.block_on(enroll::enroll(&layout, opts))?);
            Ok(())
        }
        Cmd::Install {
            unit_dir,
            verify,
            start,
        } => {
            let exe = std::env::current_exe().context("while finding this executable")?;
            let opts = InstallOptions {
                unit_dir,
                verify,
                start,
            };
            println!("{}", os_service::install(&exe, &layout.base, &opts)?);
            Ok(())
        }
        Cmd::Remove { unit_dir } => {
            let opts = InstallOptions {
                unit_dir,
                verify: false,
                start: false,
            };
            println!("{}", os_service::remove(&opts)?);
            Ok(())
        }
        Cmd::Start => os_service::start(),
        Cmd::Stop => os_service::stop(),
        Cmd::Restart => os_service::restart(),
    }
}

/// The watchdog itself, until it is asked to stop.
fn run(layout: Layout) -> anyhow::Result<()> {
    layout
        .ensure_dirs()
        .with_context(|| format!("while creating the folders under {}", layout.base.display()))?;
    // One watchdog per install folder, checked before anything is touched
    // (even the log).
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the async runtime")?;
    let result = rt.block_on(palette_watchdog::run::run(layout));
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    result
}
