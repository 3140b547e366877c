//! `palettectl`: the operator CLI over palette-server's v2 API.
//!
//! Owns: turning operator intent into API calls and readable output. Must
//! not: hold any state of its own, or bypass the server's API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use palette_protocol::env;
use palette_protocol::v2::{
    CommandKind, CommandStatus, ConfigRevision, HostInfo, NewCommand, Release, Target,
};
use reqwest::{header, Method, StatusCode};

// First: its `outln!`/`out!` are used by the modules below.
#[macro_use]
mod stdout;
mod rollout;
mod signing;

#[derive(Parser)]
#[command(version, about = "Operate a palette-updater fleet.")]
struct Cli {
    /// Server base URL.
    #[arg(
        long,
        env = env::SERVER,
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// Operator token.
    #[arg(long, env = env::TOKEN, global = true, hide_env_values = true)]
    token: Option<String>,
    /// Extra CA certificate (PEM) to trust.
    #[arg(long, env = env::CA_FILE, global = true)]
    ca_file: Option<PathBuf>,
    /// Output of read commands: a table for people, or JSON (the v2 API's
    /// shapes, see docs/api-v2.md) or YAML (the same shapes) for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    Hosts {
        #[command(subcommand)]
        action: Option<HostsAction>,
        host: Option<String>,
        /// With HOST: remove it from the inventory (the same as `hosts retire
        /// HOST`).
        #[arg(long, requires = "host")]
        retire: bool,
        /// Only hosts in this state, judged against each host's check-in
        /// interval (online: at most one check-in missed; stale: heard from
        /// within a day; offline: longer ago).
        #[arg(long, value_parser = ["online", "stale", "offline"])]
        state: Option<String>,
        /// Only online hosts (the same as --state online).
        #[arg(long, conflicts_with_all = ["state", "offline"])]
        online: bool,
        /// Only hosts not online (stale or offline).
        #[arg(long, conflicts_with = "state")]
        offline: bool,
        /// Only hosts running this agent version.
        #[arg(long)]
        version: Option<String>,
        /// Only host names matching this pattern (`*` matches any run).
        #[arg(long)]
        name: Option<String>,
        /// Only hosts whose labels match (`role=web,site!=us`).
        #[arg(long)]
        selector: Option<String>,
    },
    /// Staged rollouts: create, list, show, pause, resume, abort.
    #[command(subcommand)]
    Rollout(rollout::RolloutCmd),
    /// Pins: hold hosts on one version.
    #[command(subcommand)]
    Pin(rollout::PinCmd),
    /// Maintenance windows: when hosts may start an update.
    #[command(subcommand)]
    Window(rollout::WindowCmd),
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

#[derive(Subcommand)]
enum HostsAction {
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
enum KeysCmd {
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
enum ReleaseCmd {
    /// Upload an artifact as a new release.
    Publish {
        file: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long, default_value_t = palette_default_platform())]
        platform: String,
        #[arg(long, value_enum, default_value_t = Kind::Archive)]
        kind: Kind,
        #[arg(long, default_value = "agent")]
        product: String,
        /// Publish even a version lower than the newest one offered.
        #[arg(long)]
        force: bool,
        /// Sign the release manifest with this secret key (PREFIX.key of
        /// `keys generate`); hosts with `trust.keys` install only signed
        /// releases.
        #[arg(long)]
        sign_key: Option<PathBuf>,
        /// Days the signed manifest stays valid (hosts refuse it after).
        #[arg(long, default_value_t = 90, requires = "sign_key", value_parser = clap::value_parser!(u32).range(0..=3650))]
        expires_days: u32,
        /// Authorise hosts running at least this version to install this
        /// (older) release: a signed downgrade.
        #[arg(long, requires = "sign_key")]
        allow_downgrade_from: Option<String>,
        /// Offer it to no host until a rollout starts (`rollout create`).
        #[arg(long)]
        hold: bool,
        /// Return once published, without following the hosts.
        #[arg(long)]
        no_wait: bool,
        /// How long to follow the hosts installing it, in seconds (exit
        /// code 3 when one failed or had not finished by then).
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
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
    Rollback {
        version: String,
        #[arg(long, default_value_t = palette_default_platform())]
        platform: String,
        #[arg(long, default_value = "agent")]
        product: String,
        /// Re-sign the older release's manifest with this secret key so
        /// hosts with `trust.keys` accept the downgrade.
        #[arg(long)]
        sign_key: Option<PathBuf>,
        /// Days the re-signed manifest stays valid.
        #[arg(long, default_value_t = 90, requires = "sign_key", value_parser = clap::value_parser!(u32).range(0..=3650))]
        expires_days: u32,
        /// Return at once, without following the hosts.
        #[arg(long)]
        no_wait: bool,
        /// How long to follow the hosts coming down, in seconds.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Let hosts try a release again that failed on them (a passing
    /// reason: the manager killed, a full disk since freed): their
    /// "failed" marks are cleared and they install what they are offered.
    /// Without --host, every host whose last update of it failed. Then
    /// follows those hosts installing it: exit code 3 when one fails
    /// again or has not installed it within --wait.
    Retry {
        version: String,
        /// Only these hosts (repeat).
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = palette_default_platform())]
        platform: String,
        #[arg(long, default_value = "agent")]
        product: String,
        /// How long to wait for the hosts to answer, and then for them to
        /// install it, in seconds (each).
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
}

fn palette_default_platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    /// The JSON shapes written as YAML.
    Yaml,
}

/// Exit codes: 0 all good, 1 an error, 2 a usage error (clap), 3 some
/// targeted host failed or did not answer in time.
const EXIT_HOSTS: i32 = 3;

/// Prints `v` as pretty JSON or as YAML (the same shapes).
fn print_structured<T: serde::Serialize>(out: Output, v: &T) -> anyhow::Result<()> {
    match out {
        Output::Yaml => out!("{}", serde_saphyr::to_string(v)?),
        _ => outln!("{}", serde_json::to_string_pretty(v)?),
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Archive,
    Msi,
    Installer,
}

#[derive(Clone, Copy, ValueEnum)]
enum Word {
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
enum CommandCmd {
    /// Send a command to some hosts or all, and watch the acknowledgements.
    Send {
        #[arg(value_enum)]
        kind: Word,
        /// Target hosts (repeat); or --all, or --selector.
        #[arg(long = "host", required_unless_present_any = ["all", "selector"])]
        hosts: Vec<String>,
        #[arg(long, conflicts_with_all = ["hosts", "selector"])]
        all: bool,
        /// The hosts whose labels match (`role=web,site!=us`), as they are
        /// now.
        #[arg(long, conflicts_with = "hosts")]
        selector: Option<String>,
        /// Seconds until the command expires.
        #[arg(long, default_value_t = 600)]
        ttl: u64,
        /// Seconds to wait for acknowledgements (0: don't wait).
        #[arg(long, default_value_t = 30)]
        watch: u64,
        /// Store the command even for --host names the server does not
        /// know (a host that has not checked in yet); without it such a
        /// name is refused and nothing is sent.
        #[arg(long)]
        allow_unknown_host: bool,
    },
    Show {
        id: i64,
    },
    List,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Store FILE as HOST's desired Config.yml and tell the host to apply it.
    Push {
        /// The host the config is for.
        host: String,
        /// The Config.yml to store as its desired config.
        file: PathBuf,
        /// Store only; don't tell the host to apply it.
        #[arg(long)]
        no_apply: bool,
        /// Return once stored, without waiting for the host to apply it.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the host to answer, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
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

#[derive(Subcommand)]
enum TokenCmd {
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

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            rb = rb.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        rb
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let res = rb.send().await.map_err(|e| {
            let hint = transport_hint(&e, &self.base);
            anyhow::Error::new(e).context(format!("{}{hint}", self.unreachable()))
        })?;
        if res.status().is_success() {
            return Ok(res);
        }
        if res.status() == StatusCode::NOT_FOUND
            && res
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"))
        {
            bail!(
                "{} answered 404 for {}: check --server (the server's base URL, without a path)",
                self.base,
                res.url().path()
            );
        }
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(text);
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "the server refused the token ({status}): {reason}; set --token or PALETTE_TOKEN"
            );
        }
        bail!("the server answered {status}: {}", reason.trim())
    }

    fn unreachable(&self) -> String {
        format!("while contacting {}", self.base)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let res = self.send(rb).await?;
        res.json()
            .await
            .context("while reading the server's answer")
    }
}

/// The TLS error inside `e`, looking through io::Errors (whose source()
/// skips the error they wrap).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_rustls(inner)
}

/// What to do about a request that never got an answer, from the error's
/// type (never its text): TLS trouble, a refused connection, a timeout.
fn transport_hint(e: &reqwest::Error, base: &str) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        let tls = find_rustls(s);
        if let Some(tls) = tls {
            return match tls {
                rustls::Error::InvalidCertificate(_) => {
                    ": the server's certificate is not trusted — pass --ca-file with the CA that issued it (the server must present a certificate issued by that CA, not the CA itself)"
                }
                rustls::Error::InvalidMessage(_) => {
                    ": the server does not speak TLS there — use http:// (or give the server --tls-cert/--tls-key)"
                }
                _ => ": the TLS handshake failed",
            };
        }
        source = s.source();
    }
    if e.is_timeout() {
        ": no answer in time"
    } else if e.is_connect() {
        ": nothing answers there — is palette-server running, and is --server right?"
    } else if base.starts_with("http://") {
        ": the connection broke — if the server uses TLS, use https://"
    } else {
        ""
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("palettectl: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs the command; `Ok` carries the exit code (0, or 3 when hosts failed
/// or did not answer).
async fn run(cli: Cli) -> anyhow::Result<i32> {
    let out = cli.output;
    run_inner(cli)
        .await
        .map(|()| 0)
        .or_else(|e| match e.downcast::<HostsFailed>() {
            Ok(h) => {
                if out == Output::Table {
                    eprintln!("palettectl: {h}");
                }
                Ok(EXIT_HOSTS)
            }
            Err(e) => match e.downcast::<UsageError>() {
                Ok(u) => {
                    eprintln!("palettectl: {u}");
                    Ok(2)
                }
                Err(e) => Err(e),
            },
        })
}

/// The command line asks for something impossible (exit code 2, as clap's
/// own usage errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Some targeted hosts failed or did not answer in time (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{failed} host(s) failed, {missing} did not answer in time")]
struct HostsFailed {
    failed: usize,
    missing: usize,
}

async fn run_inner(cli: Cli) -> anyhow::Result<()> {
    let out = cli.output;
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(10))
        // Below the 20 s the server keeps an idle connection (`command send`
        // polls for minutes on one client).
        .pool_idle_timeout(Duration::from_secs(10));
    if let Some(ca) = &cli.ca_file {
        let pem = fs_err::read(ca)?;
        for c in reqwest::Certificate::from_pem_bundle(&pem).context("while reading the CA file")? {
            b = b.add_root_certificate(c);
        }
    }
    if !(cli.server.starts_with("http://") || cli.server.starts_with("https://")) {
        return Err(UsageError(format!(
            "--server {:?} needs a scheme: http://{0} or https://{0}",
            cli.server
        ))
        .into());
    }
    let api = Api {
        http: b.build()?,
        base: cli.server.trim_end_matches('/').to_string(),
        token: cli.token,
    };
    let cmd = match cli.cmd {
        Cmd::Hosts {
            action:
                Some(HostsAction::Label {
                    host,
                    labels,
                    remove,
                }),
            ..
        } => return rollout::label(&api, &host, &labels, &remove).await,
        Cmd::Rollout(c) => return rollout::rollout(&api, out, c).await,
        Cmd::Pin(c) => return rollout::pin(&api, out, c).await,
        Cmd::Window(c) => return rollout::window(&api, out, c).await,
        Cmd::Hosts {
            action: Some(action),
            state,
            online,
            offline,
            version,
            name,
            selector,
            ..
        } => {
            let (host, retire) = match action {
                HostsAction::Show { host } => (host, false),
                HostsAction::Retire { host } => (host, true),
                HostsAction::Label { .. } => unreachable!("handled above"),
            };
            Cmd::Hosts {
                action: None,
                host: Some(host),
                retire,
                state,
                online,
                offline,
                version,
                name,
                selector,
            }
        }
        cmd => cmd,
    };
    match cmd {
        Cmd::Release(ReleaseCmd::Publish {
            file,
            version,
            platform,
            kind,
            product,
            force,
            sign_key,
            expires_days,
            allow_downgrade_from,
            hold,
            no_wait,
            wait,
        }) => {
            let signing = sign_key.map(|key| Signing {
                key,
                expires_days,
                allow_downgrade_from,
            });
            let r = publish(
                &api,
                file,
                version,
                platform,
                kind,
                product,
                force,
                hold,
                signing,
                out != Output::Table,
            )
            .await?;
            if r.held && out == Output::Table {
                outln!("held: no host is offered it until a rollout starts (palettectl rollout create {} ...)", r.version);
            }
            let hosts = if no_wait || r.held {
                Vec::new()
            } else {
                watch_release(
                    &api,
                    &r,
                    None,
                    Duration::from_secs(wait),
                    out == Output::Table,
                )
                .await?
            };
            if out != Output::Table {
                print_structured(out, &serde_json::json!({ "release": r, "hosts": hosts }))?;
            }
            hosts_outcome(&hosts)
        }
        Cmd::Release(ReleaseCmd::Rollback {
            version,
            platform,
            product,
            sign_key,
            expires_days,
            no_wait,
            wait,
        }) => {
            let version: palette_protocol::Version =
                version.parse().context("while reading the version")?;
            let list: Vec<Release> = api.json(api.req(Method::GET, "/api/v2/releases")).await?;
            let Some(bad) = list
                .iter()
                .filter(|r| r.version == version && r.platform == platform && r.product == product)
                .max_by_key(|r| r.id)
            else {
                bail!("no {product} release {version} for {platform}");
            };
            let path = format!("/api/v2/releases/{}/rollback", bad.id);
            let mut rb = api.req(Method::POST, &path);
            if let Some(key) = sign_key {
                // What it would come down to, to sign exactly that.
                let plan: serde_json::Value = api
                    .json(api.req(Method::POST, &format!("{path}?dry_run=true")))
                    .await?;
                let target: Release = serde_json::from_value(plan["target"].clone())
                    .context("while reading the server's rollback plan")?;
                let now = time::OffsetDateTime::now_utc();
                let fmt = &time::format_description::well_known::Rfc3339;
                let manifest = palette_protocol::manifest::Manifest {
                    product: target.product.clone(),
                    version: target.version,
                    platform: target.platform.clone(),
                    kind: target.kind,
                    size: target.size,
                    sha256: target.sha256.clone(),
                    created: now.format(fmt)?,
                    expires: (now + time::Duration::days(i64::from(expires_days))).format(fmt)?,
                    allow_downgrade_from: Some(version),
                };
                let signature = signing::sign(&key, &manifest)?;
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD;
                rb = rb
                    .header("x-palette-manifest", b64.encode(manifest.to_text()))
                    .header("x-palette-signature", b64.encode(signature));
            }
            let done: serde_json::Value = api.json(rb).await?;
            let target: Release = serde_json::from_value(done["target"].clone())
                .context("while reading the server's answer")?;
            if out == Output::Table {
                outln!(
                    "rolled back {product} {version} for {platform} (release {}): withdrawn; hosts running it come down to {} (release {})",
                    bad.id, target.version, target.id
                );
            }
            let hosts = if no_wait {
                Vec::new()
            } else {
                watch_release(
                    &api,
                    &target,
                    Some(version),
                    Duration::from_secs(wait),
                    out == Output::Table,
                )
                .await?
            };
            if out != Output::Table {
                print_structured(
                    out,
                    &serde_json::json!({ "rolled_back": done["rolled_back"], "target": target, "hosts": hosts }),
                )?;
            }
            hosts_outcome(&hosts)
        }
        Cmd::Keys(KeysCmd::Generate { out, no_password }) => {
            let (pub_path, line) = signing::generate(&out, no_password)?;
            outln!(
                "wrote {} and the secret key beside it; trust it on hosts with:\ntrust:\n  keys:\n    - {line}",
                pub_path.display()
            );
            Ok(())
        }
        Cmd::Release(ReleaseCmd::Withdraw {
            version,
            platform,
            product,
        }) => {
            let version: palette_protocol::Version =
                version.parse().context("while reading the version")?;
            let list: Vec<Release> = api.json(api.req(Method::GET, "/api/v2/releases")).await?;
            let matching: Vec<&Release> = list
                .iter()
                .filter(|r| r.version == version && r.platform == platform && r.product == product)
                .collect();
            if matching.is_empty() {
                bail!("no {product} release {version} for {platform}");
            }
            for r in matching {
                let w: Release = api
                    .json(api.req(Method::POST, &format!("/api/v2/releases/{}/withdraw", r.id)))
                    .await?;
                outln!(
                    "withdrew release {}: {} {} {} {} (no host is offered it any more)",
                    w.id,
                    w.product,
                    w.version,
                    w.platform,
                    w.kind.as_str()
                );
            }
            Ok(())
        }
        Cmd::Release(ReleaseCmd::Retry {
            version,
            hosts,
            platform,
            product,
            wait,
        }) => {
            let version: palette_protocol::Version =
                version.parse().context("while reading the version")?;
            let list: Vec<Release> = api.json(api.req(Method::GET, "/api/v2/releases")).await?;
            let ids: Vec<i64> = list
                .iter()
                .filter(|r| r.version == version && r.platform == platform && r.product == product)
                .map(|r| r.id)
                .collect();
            if ids.is_empty() {
                bail!("no {product} release {version} for {platform}");
            }
            let targets: Vec<String> = if hosts.is_empty() {
                let known: Vec<HostInfo> = api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
                known
                    .into_iter()
                    .filter(|h| {
                        h.report.as_ref().is_some_and(|rep| {
                            let last = if product == "watchdog" {
                                &rep.last_watchdog_update
                            } else {
                                &rep.last_update
                            };
                            last.as_ref().is_some_and(|u| {
                                ids.contains(&u.release_id)
                                    && u.outcome == palette_protocol::v2::Outcome::Failed
                            })
                        })
                    })
                    .map(|h| h.hostname)
                    .collect()
            } else {
                hosts.clone()
            };
            if targets.is_empty() {
                outln!("no host reports a failed update to {product} {version}");
                return Ok(());
            }
            // What each host reported before: a new attempt's outcome
            // differs from it (or the host runs the version).
            let before: Vec<HostInfo> = api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
            let last_of = |h: &HostInfo| {
                h.report.as_ref().and_then(|rep| {
                    if product == "watchdog" {
                        rep.last_watchdog_update.clone()
                    } else {
                        rep.last_update.clone()
                    }
                })
            };
            let baseline: std::collections::HashMap<
                String,
                Option<palette_protocol::v2::UpdateReport>,
            > = before
                .iter()
                .filter(|h| targets.contains(&h.hostname))
                .map(|h| (h.hostname.clone(), last_of(h)))
                .collect();
            let body = NewCommand {
                kind: CommandKind::RetryUpdates,
                target: Target::Hosts(targets.clone()),
                ttl_secs: Some(wait.max(60)),
            };
            let st: CommandStatus = api
                .json(api.req(Method::POST, "/api/v2/commands").json(&body))
                .await?;
            outln!(
                "retry-updates command {} sent to {} host(s)",
                st.command.id,
                targets.len()
            );
            let st = watch_acks(
                &api,
                st.command.id,
                &targets,
                Duration::from_secs(wait),
                true,
            )
            .await?;
            hosts_result(&st, &targets)?;
            let retry = Retried {
                product: &product,
                version,
                ids: &ids,
                baseline,
            };
            let outcomes = follow_retry(&api, &retry, &targets, Duration::from_secs(wait)).await?;
            hosts_outcome(&outcomes)
        }
        Cmd::Release(ReleaseCmd::List) => {
            let list: Vec<Release> = api.json(api.req(Method::GET, "/api/v2/releases")).await?;
            if out != Output::Table {
                return print_structured(out, &list);
            }
            outln!(
                "{:>4}  {:<10} {:<12} {:<16} {:<9} {:>12}  SHA256",
                "ID",
                "PRODUCT",
                "VERSION",
                "PLATFORM",
                "KIND",
                "SIZE"
            );
            for r in list {
                outln!(
                    "{:>4}  {:<10} {:<12} {:<16} {:<9} {:>12}  {}{}",
                    r.id,
                    r.product,
                    r.version.to_string(),
                    r.platform,
                    r.kind.as_str(),
                    r.size,
                    &r.sha256[..16],
                    match (&r.rolled_back_at, &r.withdrawn_at) {
                        (Some(t), _) => format!("  rolled back {t}"),
                        (None, Some(t)) => format!("  withdrawn {t}"),
                        (None, None) => String::new(),
                    }
                );
            }
            Ok(())
        }
        Cmd::Command(CommandCmd::Send {
            kind,
            mut hosts,
            all,
            selector,
            ttl,
            watch,
            allow_unknown_host,
        }) => {
            if let Some(sel) = &selector {
                hosts = select_hosts(&api, sel).await?;
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
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
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
                    &api,
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
        Cmd::Command(CommandCmd::Show { id }) => {
            let st: CommandStatus = api
                .json(api.req(Method::GET, &format!("/api/v2/commands/{id}")))
                .await?;
            if out != Output::Table {
                return print_structured(out, &st);
            }
            print_command(&st);
            Ok(())
        }
        Cmd::Rollout(_) | Cmd::Pin(_) | Cmd::Window(_) => unreachable!("handled above"),
        Cmd::Audit { limit } => {
            let list: Vec<serde_json::Value> = api
                .json(api.req(Method::GET, &format!("/api/v2/audit?limit={limit}")))
                .await?;
            if out != Output::Table {
                return print_structured(out, &list);
            }
            outln!(
                "{:<24}  {:<16}  {:<15}  {:<20}  DETAIL",
                "AT",
                "WHO",
                "FROM",
                "ACTION"
            );
            for e in &list {
                let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
                outln!(
                    "{:<24}  {:<16}  {:<15}  {:<20}  {}",
                    s("at"),
                    s("actor"),
                    s("source"),
                    s("action"),
                    s("detail")
                );
            }
            Ok(())
        }
        Cmd::Command(CommandCmd::List) => {
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
        Cmd::Config(ConfigCmd::Push {
            host,
            file,
            no_apply,
            no_wait,
            wait,
        }) => {
            let body = fs_err::read(&file)?;
            if let Err(e) = palette_protocol_yaml_check(&body) {
                bail!("{} is not a usable Config.yml: {e}", file.display());
            }
            let host = host.to_lowercase();
            let known = host_is_known(&api, &host).await?;
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
                &api,
                id,
                std::slice::from_ref(&host),
                Duration::from_secs(wait),
                true,
            )
            .await?;
            hosts_result(&st, &[host])
        }
        Cmd::Config(ConfigCmd::Collect {
            host,
            save_to,
            wait,
        }) => {
            let host = host.to_lowercase();
            if !host_is_known(&api, &host).await? {
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
                &api,
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
        Cmd::Config(ConfigCmd::Pull {
            host,
            source,
            save_to,
        }) => {
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
        Cmd::Config(ConfigCmd::Diff { host }) => {
            let api = &api;
            // A source with no config yet is empty; any other failure is
            // an error (not an empty file).
            let get = |src: &'static str| {
                let path = format!("/api/v2/hosts/{host}/configs/latest?source={src}");
                async move {
                    let res = api
                        .http
                        .execute(api.req(Method::GET, &path).build()?)
                        .await
                        .with_context(|| api.unreachable())?;
                    let res = match res.status() {
                        StatusCode::NOT_FOUND => return Ok::<_, anyhow::Error>(String::new()),
                        s if s.is_success() => res,
                        // Asked again through `send` for its readable error.
                        _ => api.send(api.req(Method::GET, &path)).await?,
                    };
                    Ok(String::from_utf8_lossy(&res.bytes().await?).into_owned())
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
        Cmd::Config(ConfigCmd::History { host }) => {
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
        Cmd::Hosts {
            host: Some(host),
            retire: true,
            ..
        } => {
            api.send(api.req(Method::DELETE, &format!("/api/v2/hosts/{host}")))
                .await?;
            outln!(
                "retired {host}: removed from the inventory (it reappears if it checks in again)"
            );
            Ok(())
        }
        Cmd::Hosts {
            host: Some(host), ..
        } => {
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
                .http
                .execute(
                    api.req(
                        Method::GET,
                        &format!("/api/v2/hosts/{host}/history?limit=10"),
                    )
                    .build()?,
                )
                .await
                .with_context(|| api.unreachable())?;
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
        Cmd::Hosts {
            host: None,
            state,
            online,
            offline,
            version,
            name,
            selector,
            ..
        } => {
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
        Cmd::Token(TokenCmd::AddAgent { key, label }) => {
            api.send(
                api.req(Method::POST, "/api/v2/agent-tokens")
                    .json(&serde_json::json!({ "token": key, "label": label })),
            )
            .await?;
            outln!("agent token registered");
            Ok(())
        }
        Cmd::Token(TokenCmd::List) => {
            let list: Vec<serde_json::Value> =
                api.json(api.req(Method::GET, "/api/v2/tokens")).await?;
            if out != Output::Table {
                return print_structured(out, &list);
            }
            outln!(
                "{:<16}  {:<24}  {:<24}  {:<24}  REVOKED",
                "ID",
                "LABEL",
                "CREATED",
                "LAST USED"
            );
            for t in &list {
                let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
                outln!(
                    "{:<16}  {:<24}  {:<24}  {:<24}  {}",
                    format!("{}:{}", s("kind"), t["id"]),
                    s("label"),
                    s("created_at"),
                    s("last_used"),
                    s("revoked_at")
                );
            }
            Ok(())
        }
        Cmd::Token(TokenCmd::Revoke { which }) => {
            let n = revoke_tokens(&api, &which).await?;
            outln!("{n} token(s) revoked");
            Ok(())
        }
        Cmd::Token(TokenCmd::Rotate { label }) => {
            // One action on the server: the new token and the old ones
            // revoked in one transaction, audited as token.rotate.
            let v: serde_json::Value = api
                .json(
                    api.req(Method::POST, "/api/v2/tokens/operator/rotate")
                        .json(&serde_json::json!({ "label": label })),
                )
                .await?;
            let Some(new_token) = v["token"].as_str() else {
                bail!("the server's answer holds no token: {v}");
            };
            outln!("{new_token}");
            eprintln!(
                "operator token {label:?} rotated: the new one is above (shown only once); {} old one(s) revoked",
                v["revoked"]
            );
            Ok(())
        }
        Cmd::Token(TokenCmd::NewOperator { label }) => {
            let v: serde_json::Value = api
                .json(
                    api.req(Method::POST, "/api/v2/operator-tokens")
                        .json(&serde_json::json!({ "label": label })),
                )
                .await?;
            outln!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!("operator token {label:?} created; it is shown only once");
            Ok(())
        }
    }
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
fn palette_protocol_yaml_check(body: &[u8]) -> Result<(), ConfigFileError> {
    let text = std::str::from_utf8(body).map_err(|e| ConfigFileError::NotUtf8 {
        at: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(ConfigFileError::Empty);
    }
    Ok(())
}

/// A host's state as the server judged it against the host's own check-in
/// interval (online: at most one check-in missed; stale: heard from within
/// a day; offline: longer ago), and the age of its last contact. A server
/// before 0.2 sends no state: judged here against a 2-minute interval.
fn host_state(h: &HostInfo) -> (&'static str, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
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

/// Prints acknowledgements as they arrive, until every `expected` host
/// answered or `limit` passed; returns the command's last status.
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

/// Exit code 3 when a host failed the command or did not answer.
fn hosts_result(st: &CommandStatus, expected: &[String]) -> anyhow::Result<()> {
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

/// Whether the server has `host` in its inventory.
async fn host_is_known(api: &Api, host: &str) -> anyhow::Result<bool> {
    let res = api
        .http
        .execute(
            api.req(Method::GET, &format!("/api/v2/hosts/{host}"))
                .build()?,
        )
        .await
        .with_context(|| api.unreachable())?;
    match res.status() {
        StatusCode::NOT_FOUND => Ok(false),
        s if s.is_success() => Ok(true),
        _ => {
            api.send(api.req(Method::GET, &format!("/api/v2/hosts/{host}")))
                .await?;
            Ok(true)
        }
    }
}

async fn watch_acks(
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

/// Revokes `agent:ID`, `operator:ID`, `host:ID`, or every live token
/// labelled `which` (a host token's label is its host name); returns how
/// many.
async fn revoke_tokens(api: &Api, which: &str) -> anyhow::Result<usize> {
    let targets: Vec<(String, String)> = match which.split_once(':') {
        Some((kind @ ("agent" | "operator" | "host"), id)) if id.parse::<i64>().is_ok() => {
            vec![(kind.to_string(), id.to_string())]
        }
        _ => api
            .json::<Vec<serde_json::Value>>(api.req(Method::GET, "/api/v2/tokens"))
            .await?
            .into_iter()
            .filter(|t| t["label"] == which && t["revoked_at"].is_null())
            .map(|t| {
                (
                    t["kind"].as_str().unwrap_or_default().to_string(),
                    t["id"].to_string(),
                )
            })
            .collect(),
    };
    if targets.is_empty() {
        bail!("no live token is labelled {which:?} (ids look like agent:3 or operator:5; see `token list`)");
    }
    for (kind, id) in &targets {
        api.send(api.req(Method::POST, &format!("/api/v2/tokens/{kind}/{id}/revoke")))
            .await?;
    }
    Ok(targets.len())
}

/// How `release publish` signs the manifest.
struct Signing {
    key: PathBuf,
    expires_days: u32,
    allow_downgrade_from: Option<String>,
}

/// The artifact's SHA-256 (hex) and size, read once before the upload.
fn digest(file: &std::path::Path) -> anyhow::Result<(String, u64)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = fs_err::File::open(file)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    api: &Api,
    file: PathBuf,
    version: String,
    platform: String,
    kind: Kind,
    product: String,
    force: bool,
    hold: bool,
    signing: Option<Signing>,
    json: bool,
) -> anyhow::Result<Release> {
    // With -o json, stdout holds the JSON only.
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            outln!("{line}");
        }
    };
    // Refuse what the server would refuse before uploading anything.
    match fs_err::metadata(&file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => bail!("{} is not a file: nothing was published", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} does not exist: nothing was published", file.display())
        }
        Err(e) => return Err(anyhow::Error::new(e).context("nothing was published")),
    }
    let version: palette_protocol::Version = version.parse().context("while reading --version")?;
    let kind_v2 = match kind {
        Kind::Archive => palette_protocol::v2::ReleaseKind::Archive,
        Kind::Msi => palette_protocol::v2::ReleaseKind::Msi,
        Kind::Installer => palette_protocol::v2::ReleaseKind::Installer,
    };
    let signed = match signing {
        None => None,
        Some(s) => {
            let (sha256, size) =
                digest(&file).with_context(|| format!("while reading {}", file.display()))?;
            let now = time::OffsetDateTime::now_utc();
            let fmt = &time::format_description::well_known::Rfc3339;
            let manifest = palette_protocol::manifest::Manifest {
                product: product.clone(),
                version,
                platform: platform.clone(),
                kind: kind_v2,
                size,
                sha256,
                created: now.format(fmt)?,
                expires: (now + time::Duration::days(i64::from(s.expires_days))).format(fmt)?,
                allow_downgrade_from: s
                    .allow_downgrade_from
                    .map(|v| v.parse())
                    .transpose()
                    .context("while reading --allow-downgrade-from")?,
            };
            if manifest
                .allow_downgrade_from
                .is_some_and(|from| from <= manifest.version)
            {
                bail!("--allow-downgrade-from must be newer than --version (it names the versions hosts may come down from)");
            }
            let signature = signing::sign(&s.key, &manifest)?;
            Some((manifest.to_text(), signature))
        }
    };

    let size = fs_err::metadata(&file)?.len();
    let f = tokio::fs::File::open(&file)
        .await
        .with_context(|| format!("while opening {}", file.display()))?;
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("uploading {}", file.display()));
    let b2 = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect(move |c| {
        if let Ok(c) = c {
            b2.inc(c.len() as u64);
        }
    });
    let kind = match kind {
        Kind::Archive => "archive",
        Kind::Msi => "msi",
        Kind::Installer => "installer",
    };
    let path = format!(
        "/api/v2/releases?product={product}&version={version}&platform={platform}&kind={kind}&force={force}&hold={hold}"
    );
    let mut rb = api
        .req(Method::POST, &path)
        .header(header::CONTENT_LENGTH, size)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some((manifest, signature)) = &signed {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        rb = rb
            .header("x-palette-manifest", b64.encode(manifest))
            .header("x-palette-signature", b64.encode(signature));
    }
    let rb = rb.body(reqwest::Body::wrap_stream(stream));
    let result: anyhow::Result<Release> = api.json(rb).await;
    bar.finish_and_clear();
    let r = result?;
    if r.manifest.is_some() {
        say("signed manifest attached (hosts with trust.keys verify it)".into());
    }
    say(format!(
        "published release {}: {} {} {} {} ({} bytes, sha256 {})",
        r.id,
        r.product,
        r.version,
        r.platform,
        r.kind.as_str(),
        r.size,
        r.sha256
    ));
    Ok(r)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Exit code 3 (`HostsFailed`) when any followed host failed or had not
/// finished.
fn hosts_outcome(hosts: &[HostOutcome]) -> anyhow::Result<()> {
    let failed = hosts
        .iter()
        .filter(|h| h.outcome == Some(palette_protocol::v2::Outcome::Failed))
        .count();
    let missing = hosts.iter().filter(|h| h.outcome.is_none()).count();
    if failed > 0 || missing > 0 {
        return Err(HostsFailed { failed, missing }.into());
    }
    Ok(())
}

/// A `release retry`: what the hosts are to install, and what each
/// reported before it.
struct Retried<'a> {
    product: &'a str,
    version: palette_protocol::Version,
    /// The release's ids (one per kind).
    ids: &'a [i64],
    baseline: std::collections::HashMap<String, Option<palette_protocol::v2::UpdateReport>>,
}

/// After `release retry`: follows `targets` until each runs the version
/// (succeeded) or fails it again (seen installing it and then reporting a
/// failure of it, or reporting a failure other than the one before), or
/// `limit` passes (not finished). Prints each host's progress as it
/// changes.
async fn follow_retry(
    api: &Api,
    r: &Retried<'_>,
    targets: &[String],
    limit: Duration,
) -> anyhow::Result<Vec<HostOutcome>> {
    use palette_protocol::v2::Outcome;
    let watchdog = r.product == "watchdog";
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen_installing: std::collections::HashSet<String> = Default::default();
    let mut last_line: std::collections::HashMap<String, String> = Default::default();
    let mut done: Vec<HostOutcome> = Vec::new();
    loop {
        let hosts: Vec<HostInfo> = api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
        for name in targets {
            if done.iter().any(|d| &d.hostname == name) {
                continue;
            }
            let Some(rep) = hosts
                .iter()
                .find(|h| &h.hostname == name)
                .and_then(|h| h.report.as_ref())
            else {
                continue;
            };
            let installed = if watchdog {
                rep.watchdog_version.parse().ok()
            } else {
                rep.agent_version
            };
            let last = if watchdog {
                &rep.last_watchdog_update
            } else {
                &rep.last_update
            };
            let installing = rep
                .update_progress
                .as_ref()
                .filter(|p| r.ids.contains(&p.release_id));
            if installing.is_some() {
                seen_installing.insert(name.clone());
            }
            let failed_again = last.as_ref().filter(|u| {
                r.ids.contains(&u.release_id)
                    && u.outcome == Outcome::Failed
                    && installing.is_none()
                    && (seen_installing.contains(name)
                        || r.baseline.get(name).is_some_and(|b| b.as_ref() != Some(*u)))
            });
            let finished = if installed == Some(r.version) {
                Some((Outcome::Succeeded, format!("running {}", r.version)))
            } else {
                failed_again.map(|u| (Outcome::Failed, u.message.clone()))
            };
            let line = match (&finished, installing) {
                (Some((o, m)), _) => format!("{o:?}: {m}"),
                (None, Some(p)) => match p.phase {
                    palette_protocol::v2::UpdatePhase::Downloading => "downloading",
                    palette_protocol::v2::UpdatePhase::Installing => "installing",
                    palette_protocol::v2::UpdatePhase::HealthChecking => "health-checking",
                }
                .into(),
                (None, None) => "waiting".into(),
            };
            if last_line.get(name) != Some(&line) {
                outln!("  {name:<32} {line}");
                last_line.insert(name.clone(), line);
            }
            if let Some((o, m)) = finished {
                done.push(HostOutcome {
                    hostname: name.clone(),
                    outcome: Some(o),
                    message: m,
                });
            }
        }
        if done.len() == targets.len() {
            return Ok(done);
        }
        if tokio::time::Instant::now() >= deadline {
            for name in targets {
                if !done.iter().any(|d| &d.hostname == name) {
                    done.push(HostOutcome {
                        hostname: name.clone(),
                        outcome: None,
                        message: format!("{} not installed after {} s", r.version, limit.as_secs()),
                    });
                }
            }
            eprintln!(
                "some hosts had not installed {} {} after {} s (or failed it again the same way); `palettectl hosts` shows them later",
                r.product, r.version, limit.as_secs()
            );
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One host's answer to a release: `None` while it had not finished.
#[derive(Debug, serde::Serialize)]
struct HostOutcome {
    hostname: String,
    outcome: Option<palette_protocol::v2::Outcome>,
    message: String,
}

/// After a publish: follows the online hosts the release is for (its
/// product and platform, running an older version or none; after a
/// rollback, those running `rolled_back`), printing each one's progress as
/// it changes, until every one has installed it or failed (with the
/// reason), or `limit` passes.
async fn watch_release(
    api: &Api,
    r: &Release,
    rolled_back: Option<palette_protocol::Version>,
    limit: Duration,
    print: bool,
) -> anyhow::Result<Vec<HostOutcome>> {
    use palette_protocol::v2::{HostReport, Outcome, UpdatePhase};
    let watchdog = r.product == "watchdog";
    let installed = |rep: &HostReport| -> Option<palette_protocol::Version> {
        if watchdog {
            rep.watchdog_version.parse().ok()
        } else {
            rep.agent_version
        }
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut targets: Option<Vec<String>> = None;
    let mut last_line: std::collections::HashMap<String, String> = Default::default();
    let mut done: Vec<HostOutcome> = Vec::new();
    // Only the hosts that can take it now are followed (the server says
    // which, and why not the others: pinned, outside a window, held...);
    // a server without `reach` (before 0.2): every fitting online host.
    let reach: Option<palette_protocol::v2::Reach> = if rolled_back.is_none() {
        api.json(api.req(Method::GET, &format!("/api/v2/releases/{}/reach", r.id)))
            .await
            .ok()
    } else {
        None
    };
    if let (Some(reach), true) = (&reach, print) {
        for l in reach.later.iter().filter(|l| {
            !l.reason.starts_with("already on") && !l.reason.starts_with("another platform")
        }) {
            outln!("  {:<32} not followed: {}", l.hostname, l.reason);
        }
    }
    loop {
        let hosts: Vec<HostInfo> = api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
        let targets = targets.get_or_insert_with(|| {
            let now = now_ms();
            let t: Vec<String> = hosts
                .iter()
                .filter(|h| match h.state {
                    Some(s) => s == palette_protocol::v2::HostState::Online,
                    None => palette_protocol::timefmt::parse_rfc3339(&h.last_seen)
                        .is_ok_and(|t| now - t <= 5 * 60 * 1000),
                })
                .filter_map(|h| {
                    let rep = h.report.as_ref()?;
                    let wanted = match rolled_back {
                        Some(b) => installed(rep) == Some(b),
                        None => installed(rep).is_none_or(|v| v < r.version),
                    };
                    let fits = rep.platform == r.platform
                        && (watchdog || rep.product == r.product)
                        && wanted
                        && reach.as_ref().is_none_or(|re| re.now.contains(&h.hostname));
                    fits.then(|| h.hostname.clone())
                })
                .collect();
            if print {
                outln!("{} online host(s) to update", t.len());
            }
            t
        });
        for name in targets.iter() {
            if done.iter().any(|d| &d.hostname == name) {
                continue;
            }
            let Some(rep) = hosts
                .iter()
                .find(|h| &h.hostname == name)
                .and_then(|h| h.report.as_ref())
            else {
                continue;
            };
            let last = if watchdog {
                &rep.last_watchdog_update
            } else {
                &rep.last_update
            };
            // A success counts once the host runs the version: an earlier
            // outcome for the same release (the first install of the
            // version a rollback comes down to) is not this one.
            let runs_it = installed(rep).is_some_and(|v| v == r.version);
            let finished = match last.as_ref().filter(|u| u.release_id == r.id) {
                Some(u) if u.outcome == Outcome::Failed || runs_it => {
                    Some((u.outcome, u.message.clone()))
                }
                _ if runs_it => Some((Outcome::Succeeded, format!("running {}", r.version))),
                _ => None,
            };
            let line = match (&finished, &rep.update_progress) {
                (Some((o, m)), _) => format!("{o:?}: {m}"),
                (None, Some(p)) if p.release_id == r.id => match (p.phase, p.total) {
                    (UpdatePhase::Downloading, Some(total)) if total > 0 => {
                        format!("downloading {}%", p.bytes * 100 / total / 10 * 10)
                    }
                    (UpdatePhase::Downloading, _) => "downloading".into(),
                    (UpdatePhase::Installing, _) => "installing".into(),
                    (UpdatePhase::HealthChecking, _) => "health-checking".into(),
                },
                (None, _) => "waiting".into(),
            };
            if print && last_line.get(name) != Some(&line) {
                outln!("  {name:<32} {line}");
                last_line.insert(name.clone(), line);
            }
            if let Some((o, m)) = finished {
                done.push(HostOutcome {
                    hostname: name.clone(),
                    outcome: Some(o),
                    message: m,
                });
            }
        }
        if done.len() == targets.len() {
            return Ok(done);
        }
        if tokio::time::Instant::now() >= deadline {
            for name in targets.iter() {
                if !done.iter().any(|d| &d.hostname == name) {
                    done.push(HostOutcome {
                        hostname: name.clone(),
                        outcome: None,
                        message: format!("not finished after {} s", limit.as_secs()),
                    });
                }
            }
            if print {
                eprintln!(
                    "some hosts had not finished after {} s; `palettectl hosts` shows them later",
                    limit.as_secs()
                );
            }
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
