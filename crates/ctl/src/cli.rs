//! The command line of `palettectl`: every command, flag and help text.
//!
//! Owns: the clap tree (`Cli` and each command's subcommands and
//! arguments, whose doc comments are the `--help` text), and the defaults
//! the flags show. Must not: do any work, call the server, or check more
//! than clap checks (a command's module judges what its arguments mean).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use palette_protocol::env;

use crate::output::Output;

#[derive(Parser)]
#[command(version, about = "Operate a palette-updater fleet.")]
pub struct Cli {
    /// Server base URL.
    #[arg(
        long,
        env = env::SERVER,
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Operator token.
    #[arg(long, env = env::TOKEN, global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Extra CA certificate (PEM) to trust.
    #[arg(long, env = env::CA_FILE, global = true)]
    pub ca_file: Option<PathBuf>,
    /// Output of read commands: a table for people, or JSON (the v2 API's
    /// shapes, see docs/api-v2.md) or YAML (the same shapes) for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Releases: publish, list.
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// Commands: send, show, list.
    #[command(subcommand)]
    Command(CommandCmd),
    /// Per-host Config.yml: push, pull, diff, history.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// List hosts and their state; with a host name (or `hosts show HOST`),
    /// that host in detail (its update in progress, the last update's
    /// outcome and why, its recent history); `hosts retire HOST` removes it.
    #[command(args_conflicts_with_subcommands = true)]
    Hosts(HostsArgs),
    /// Staged rollouts: create, list, show, pause, resume, abort.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Pins: hold hosts on one version.
    #[command(subcommand)]
    Pin(PinCmd),
    /// Maintenance windows: when hosts may start an update.
    #[command(subcommand)]
    Window(WindowCmd),
    /// Credentials.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Release signing keys (minisign).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// The audit log: who did what, when, from where (newest first).
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

// `hosts`: its doc comment (the help text) is the variant's, in `Cmd`.
#[derive(Args)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub action: Option<HostsAction>,
    pub host: Option<String>,
    /// With HOST: remove it from the inventory (the same as `hosts retire
    /// HOST`).
    #[arg(long, requires = "host")]
    pub retire: bool,
    /// Only hosts in this state, judged against each host's check-in
    /// interval (online: at most one check-in missed; stale: heard from
    /// within a day; offline: longer ago).
    #[arg(long, value_parser = ["online", "stale", "offline"])]
    pub state: Option<String>,
    /// Only online hosts (the same as --state online).
    #[arg(long, conflicts_with_all = ["state", "offline"])]
    pub online: bool,
    /// Only hosts not online (stale or offline).
    #[arg(long, conflicts_with = "state")]
    pub offline: bool,
    /// Only hosts running this agent version.
    #[arg(long)]
    pub version: Option<String>,
    /// Only host names matching this pattern (`*` matches any run).
    #[arg(long)]
    pub name: Option<String>,
    /// Only hosts whose labels match (`role=web,site!=us`).
    #[arg(long)]
    pub selector: Option<String>,
}

#[derive(Subcommand)]
pub enum HostsAction {
    /// One host in detail, with its recent history.
    Show { host: String },
    /// Remove a host from the inventory and from targeting, and revoke its
    /// host token: it may enroll again.
    Retire { host: String },
    /// Assign labels to a host (`role=web site=eu`; over its own), or
    /// remove assigned ones (--remove role).
    Label {
        host: String,
        labels: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Make a publisher key pair: PREFIX.pub (the public key; its second
    /// line goes into the hosts' `trust.keys`) and PREFIX.key (the secret
    /// key, password-protected; the password is asked for, or taken from
    /// PALETTE_SIGN_KEY_PASSWORD). Keep PREFIX.key off the server.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// An unprotected secret key (for automation that keeps it safe).
        #[arg(long)]
        no_password: bool,
    },
}

#[derive(Subcommand)]
pub enum ReleaseCmd {
    /// Upload an artifact as a new release.
    Publish(PublishArgs),
    /// Every release, newest version first.
    List,
    /// Stop offering a release to any host (hosts that run it keep it).
    Withdraw {
        version: String,
        #[arg(long, default_value_t = palette_default_platform())]
        platform: String,
        #[arg(long, default_value = "agent")]
        product: String,
    },
    /// Take a bad release back: it is withdrawn, and the hosts running it
    /// are offered the newest older release (of the same product and
    /// platform) and come down to it. Hosts that verify signatures need the
    /// older release's manifest re-signed to authorise that: give
    /// --sign-key. Follows those hosts like `publish` does.
    Rollback(RollbackArgs),
    /// Let hosts try a release again that failed on them (a passing
    /// reason: the manager killed, a full disk since freed): their
    /// "failed" marks are cleared and they install what they are offered.
    /// Without --host, every host whose last update of it failed. Then
    /// follows those hosts installing it: exit code 3 when one fails
    /// again or has not installed it within --wait.
    Retry(RetryArgs),
}

// `release publish`: its doc comment (the help text) is the variant's, in `ReleaseCmd`.
#[derive(Args)]
pub struct PublishArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub version: String,
    #[arg(long, default_value_t = palette_default_platform())]
    pub platform: String,
    #[arg(long, value_enum, default_value_t = Kind::Archive)]
    pub kind: Kind,
    #[arg(long, default_value = "agent")]
    pub product: String,
    /// Publish even a version lower than the newest one offered.
    #[arg(long)]
    pub force: bool,
    /// Sign the release manifest with this secret key (PREFIX.key of
    /// `keys generate`); hosts with `trust.keys` install only signed
    /// releases.
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Days the signed manifest stays valid (hosts refuse it after).
    #[arg(long, default_value_t = 90, requires = "sign_key", value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub expires_days: u32,
    /// Authorise hosts running at least this version to install this
    /// (older) release: a signed downgrade.
    #[arg(long, requires = "sign_key")]
    pub allow_downgrade_from: Option<String>,
    /// Offer it to no host until a rollout starts (`rollout create`).
    #[arg(long)]
    pub hold: bool,
    /// Return once published, without following the hosts.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to follow the hosts installing it, in seconds (exit
    /// code 3 when one failed or had not finished by then).
    #[arg(long, default_value_t = 600)]
    pub wait: u64,
}

// `release rollback`: its doc comment (the help text) is the variant's, in `ReleaseCmd`.
#[derive(Args)]
pub struct RollbackArgs {
    pub version: String,
    #[arg(long, default_value_t = palette_default_platform())]
    pub platform: String,
    #[arg(long, default_value = "agent")]
    pub product: String,
    /// Re-sign the older release's manifest with this secret key so
    /// hosts with `trust.keys` accept the downgrade.
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Days the re-signed manifest stays valid.
    #[arg(long, default_value_t = 90, requires = "sign_key", value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub expires_days: u32,
    /// Return at once, without following the hosts.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to follow the hosts coming down, in seconds.
    #[arg(long, default_value_t = 600)]
    pub wait: u64,
}

// `release retry`: its doc comment (the help text) is the variant's, in `ReleaseCmd`.
#[derive(Args)]
pub struct RetryArgs {
    pub version: String,
    /// Only these hosts (repeat).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    #[arg(long, default_value_t = palette_default_platform())]
    pub platform: String,
    #[arg(long, default_value = "agent")]
    pub product: String,
    /// How long to wait for the hosts to answer, and then for them to
    /// install it, in seconds (each).
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
}

pub fn palette_default_platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Archive,
    Msi,
    Installer,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Word {
    /// Start the agent (and keep it running).
    Start,
    /// Stop the agent; it stays stopped, across watchdog restarts, until
    /// `start`.
    Stop,
    /// Stop the agent and start it again.
    Restart,
    /// The host fetches its desired Config.yml from the server and applies
    /// it (the legacy word: get-config).
    #[value(name = "apply-config", alias = "get-config")]
    GetConfig,
    /// The host uploads the Config.yml it has to the server (the legacy
    /// word: put-config).
    #[value(name = "collect-config", alias = "put-config")]
    PutConfig,
}

#[derive(Subcommand)]
pub enum CommandCmd {
    /// Send a command to some hosts or all, and watch the acknowledgements.
    Send(SendArgs),
    Show {
        id: i64,
    },
    List,
}

// `command send`: its doc comment (the help text) is the variant's, in `CommandCmd`.
#[derive(Args)]
pub struct SendArgs {
    #[arg(value_enum)]
    pub kind: Word,
    /// Target hosts (repeat); or --all, or --selector.
    #[arg(long = "host", required_unless_present_any = ["all", "selector"])]
    pub hosts: Vec<String>,
    #[arg(long, conflicts_with_all = ["hosts", "selector"])]
    pub all: bool,
    /// The hosts whose labels match (`role=web,site!=us`), as they are
    /// now.
    #[arg(long, conflicts_with = "hosts")]
    pub selector: Option<String>,
    /// Seconds until the command expires.
    #[arg(long, default_value_t = 600)]
    pub ttl: u64,
    /// Seconds to wait for acknowledgements (0: don't wait).
    #[arg(long, default_value_t = 30)]
    pub watch: u64,
    /// Store the command even for --host names the server does not
    /// know (a host that has not checked in yet); without it such a
    /// name is refused and nothing is sent.
    #[arg(long)]
    pub allow_unknown_host: bool,
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Store FILE as HOST's desired Config.yml and tell the host to apply it.
    Push(PushArgs),
    /// Ask HOST to upload the Config.yml it has, wait for it, and print it
    /// (or save it with --to).
    Collect {
        host: String,
        /// Save to this file instead of printing.
        #[arg(long = "to")]
        save_to: Option<PathBuf>,
        /// How long to wait for the host to answer, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Print (or save) HOST's newest config.
    Pull {
        host: String,
        #[arg(long, value_parser = ["desired", "reported"])]
        source: Option<String>,
        /// Save to this file instead of printing.
        #[arg(long = "to")]
        save_to: Option<PathBuf>,
    },
    /// Show how HOST's reported config differs from its desired one.
    Diff { host: String },
    /// HOST's config revisions (desired and reported), newest first.
    History { host: String },
}

// `config push`: its doc comment (the help text) is the variant's, in `ConfigCmd`.
#[derive(Args)]
pub struct PushArgs {
    /// The host the config is for.
    pub host: String,
    /// The Config.yml to store as its desired config.
    pub file: PathBuf,
    /// Store only; don't tell the host to apply it.
    #[arg(long)]
    pub no_apply: bool,
    /// Return once stored, without waiting for the host to apply it.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the host to answer, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Register an agent token (license key) that hosts check in with.
    AddAgent {
        #[arg(value_name = "KEY")]
        key: String,
        /// What the key is for (shown by `token list`).
        #[arg(long)]
        label: Option<String>,
    },
    /// Create a new operator token; printed once.
    NewOperator { label: String },
    /// Every stored token: kind, id, label, created, last used, revoked
    /// (never the secret; PALETTE_ADMIN_TOKEN is not stored and is not
    /// listed). Kinds: operator, agent (enrollment keys), host.
    List,
    /// Revoke tokens at once: `agent:ID`, `operator:ID`, `host:ID`, or a
    /// label (every live token with it; a host token's label is its host
    /// name). A host whose token is revoked must enroll again.
    Revoke {
        #[arg(value_name = "LABEL-OR-ID")]
        which: String,
    },
    /// Replace the operator token(s) labelled LABEL: one server-side
    /// action (audited as token.rotate) creates a new one (printed once)
    /// and revokes the old ones, or changes nothing. (An agent key is
    /// rotated with add-agent, the hosts' Config.yml, then revoke.)
    Rotate { label: String },
}

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Start a staged rollout of a published release: the hosts matching
    /// --selector, in waves (cumulative: `1,25%,100%` = one canary, then up
    /// to a quarter of the hosts, then all), each wave soaking before the
    /// next starts; it halts by itself when a wave fails past --halt-after.
    /// Follows its progress until it ends (--no-wait returns at once).
    Create {
        version: String,
        #[arg(long, default_value_t = palette_default_platform())]
        platform: String,
        #[arg(long, default_value = "agent")]
        product: String,
        /// Which hosts (`role=web,site!=us`; empty: every host).
        #[arg(long, default_value = "")]
        selector: String,
        /// Wave sizes, cumulative host counts or percentages.
        #[arg(long, default_value = "100%")]
        waves: String,
        /// How long every host of a wave must be healthy before the next
        /// wave starts (`90s`, `10m`, `1h`, or seconds).
        #[arg(long, default_value = "0")]
        soak: String,
        /// Halt when this many hosts of a wave failed (`1`, or `10%`).
        #[arg(long, default_value = "1")]
        halt_after: String,
        /// Most hosts updating at once (0: no cap).
        #[arg(long, default_value_t = 0)]
        max_concurrent: u32,
        /// Return once started.
        #[arg(long)]
        no_wait: bool,
        /// How long to follow it, in seconds (exit code 3 when it halted
        /// or had not finished by then).
        #[arg(long, default_value_t = 3600)]
        wait: u64,
    },
    /// Every rollout, newest first.
    List,
    /// One rollout: its waves and hosts (an id, or a version: its newest
    /// rollout); --follow follows it as `create` does.
    Show {
        rollout: String,
        /// Follow its progress until it ends, or until only hosts that
        /// cannot take it now (offline, outside their window) are left.
        #[arg(long)]
        follow: bool,
        /// How long to follow it, in seconds (with --follow).
        #[arg(long, default_value_t = 3600)]
        wait: u64,
    },
    /// No more hosts are admitted; hosts already updating go on.
    Pause { rollout: String },
    /// Go on after a pause or a halt.
    Resume { rollout: String },
    /// Stop offering the release; hosts that took it keep it (`release
    /// rollback` brings them down).
    Abort { rollout: String },
}

#[derive(Subcommand)]
pub enum PinCmd {
    /// Offer the hosts matching --selector this version and nothing else.
    Add {
        version: String,
        #[arg(long)]
        selector: String,
        #[arg(long, default_value = "agent")]
        product: String,
    },
    List,
    Remove {
        id: i64,
    },
}

#[derive(Subcommand)]
pub enum WindowCmd {
    /// A weekly maintenance window for the hosts matching --selector: no
    /// such host starts an update outside it.
    Add {
        #[arg(long)]
        selector: String,
        /// `Sat,Sun 01:00-05:00`, `Mon-Fri 22:00-02:00`, `daily 02:00-04:00`.
        #[arg(long)]
        schedule: String,
        /// An IANA time zone (`Europe/Paris`, `UTC`).
        #[arg(long, default_value = "UTC")]
        tz: String,
    },
    List,
    Remove {
        id: i64,
    },
}
