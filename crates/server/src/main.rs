//! `palette-server`: command-line entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use palette_protocol::env;
use palette_server::ServerOptions;

/// The fleet's control server: legacy Insight Server v1 API and our v2 API.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Folder for the database and artifacts.
    #[arg(long, env = env::DATA_DIR, default_value = "palette-data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// Address to listen on.
    #[arg(long, env = env::LISTEN, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// PEM certificate chain; serves HTTPS with --tls-key.
    #[arg(long, env = env::TLS_CERT, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = env::TLS_KEY, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: serve only clients presenting a certificate issued by
    /// this CA (PEM). Needs --tls-cert; legacy watchdogs need one too.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Largest accepted release artifact, in bytes (default 4 GiB).
    #[arg(long, env = env::MAX_ARTIFACT_BYTES)]
    max_artifact_bytes: Option<u64>,
    /// Connections served at once (default: half the file limit, which is
    /// raised to its hard maximum at start). At the cap the longest-idle
    /// connection is closed; when all are busy, new ones get 503.
    #[arg(long, env = env::MAX_CONNECTIONS)]
    max_connections: Option<usize>,
    /// The address (CIDR) of a load balancer or proxy in front of the
    /// server, whose `X-Forwarded-For` / `Forwarded` header names the
    /// client (repeat, or comma-separate in the variable). Only then is
    /// such a header believed; the failed-authentication limit and the
    /// audit log see the client, not the proxy.
    /// Minutes a host admitted to a rollout may show no sign of taking the
    /// release (no progress, not the version) before it counts as failed
    /// (and the rollout halts as for any failure): a rollout never waits
    /// forever on a host that does not update.
    #[arg(long, env = env::ROLLOUT_HOST_TIMEOUT_MINS, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    rollout_host_timeout_mins: u64,
    #[arg(long = "trusted-proxy", env = env::TRUSTED_PROXIES, value_delimiter = ',', value_name = "CIDR")]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds a client has to send a request's headers; also how long a
    /// kept-alive connection may sit idle.
    #[arg(long, env = env::HEADER_TIMEOUT_SECS, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_secs: u64,
    /// Seconds a client has to send a whole request body (artifacts aside).
    #[arg(long, env = env::BODY_TIMEOUT_SECS, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_secs: u64,
    /// Log lines as `text` (colours only on a terminal) or `json`.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Longest pause, in seconds, allowed in an artifact upload.
    #[arg(long, env = env::UPLOAD_STALL_SECS, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    upload_stall_secs: u64,
    /// New host names one agent credential (license key) may introduce at
    /// once; past it, unknown names get 429 until the budget refills.
    #[arg(long, env = env::NEW_HOSTS_BURST, default_value_t = 10_000)]
    new_hosts_burst: u32,
    /// How fast that budget refills, in host names per minute.
    #[arg(long, env = env::NEW_HOSTS_PER_MINUTE, default_value_t = 1200)]
    new_hosts_per_minute: u32,
    /// On the v2 API, accept the enrollment key (license key) only to
    /// enroll: every host must use its own host token. Without it, a host
    /// that has not enrolled may still check in with the key (watchdogs
    /// before 0.2); an enrolled host never may.
    #[arg(long, env = env::REQUIRE_HOST_TOKENS)]
    require_host_tokens: bool,
    /// What a release published without a rollout does: `immediate`, every
    /// host is offered it at once (what legacy fleets expect); `manual`, it
    /// is held until an operator starts a rollout (`palettectl rollout
    /// create`). A single release can be held with `publish --hold`.
    #[arg(long, env = env::DEFAULT_ROLLOUT, value_enum, default_value = "immediate")]
    default_rollout: palette_server::fleet::rollouts::DefaultRollout,
    /// The database: `postgres://user:password@host:port/db` for several
    /// replicas on one PostgreSQL; without it, SQLite in --data-dir (which
    /// keeps the artifacts either way).
    #[arg(long, env = env::DATABASE, global = true, hide_env_values = true)]
    database: Option<String>,
    /// Where release artifacts live: `s3://bucket/prefix` on S3 or any
    /// S3-compatible storage (settings from the usual AWS_* variables:
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL, AWS_ALLOW_HTTP), which several replicas share;
    /// --data-dir then keeps a read-through cache. Default: --data-dir.
    #[arg(long, env = env::ARTIFACTS, global = true)]
    artifacts: Option<String>,
}

/// Without a subcommand the server runs.
#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Write the whole server state (a consistent copy of the database and
    /// every artifact) to one file; safe while the server runs.
    Backup {
        /// The backup file to write (replaced atomically).
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a backup into --data-dir, which must hold no database yet;
    /// then start the server on it. The restored store gets a new identity,
    /// so hosts do not confuse new command ids with ones they performed.
    Restore {
        /// A file written by `palette-server backup`.
        #[arg(long)]
        from: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env(env::LOG).unwrap_or_else(|_| "info".into());
    if cli.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            // Colours only on a terminal: a log file gets plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init();
    }
    if cli.cmd.is_some() && cli.database.is_some() {
        anyhow::bail!(
            "backup and restore cover the embedded SQLite store; with PostgreSQL use pg_dump / pg_restore, and copy the artifacts folder ({})",
            cli.data_dir.join("artifacts").display()
        );
    }
    if let (Some(Sub::Backup { .. }), Some(bucket)) = (&cli.cmd, &cli.artifacts) {
        tracing::warn!(
            artifacts = bucket,
            "artifacts live in object storage: this backup holds the database and the artifacts cached in --data-dir; back the bucket up by the storage's own means (versioning, replication)"
        );
    }
    match &cli.cmd {
        Some(Sub::Backup { to }) => {
            let sum = palette_server::store::backup::backup(&cli.data_dir, to)
                .await
                .with_context(|| {
                    format!("backing up {} to {}", cli.data_dir.display(), to.display())
                })?;
            println!(
                "backup written to {}: database {} bytes, {} artifact(s), {} bytes",
                to.display(),
                sum.database_bytes,
                sum.artifacts,
                sum.artifact_bytes
            );
            return Ok(());
        }
        Some(Sub::Restore { from }) => {
            let sum = palette_server::store::backup::restore(from, &cli.data_dir)
                .await
                .with_context(|| {
                    format!(
                        "restoring {} into {}",
                        from.display(),
                        cli.data_dir.display()
                    )
                })?;
            println!(
                "restored into {}: database {} bytes, {} artifact(s), {} bytes; start palette-server --data-dir {} to serve it",
                cli.data_dir.display(),
                sum.database_bytes,
                sum.artifacts,
                sum.artifact_bytes,
                cli.data_dir.display()
            );
            return Ok(());
        }
        None => {}
    }
    let admin_token = std::env::var(env::ADMIN_TOKEN)
        .ok()
        .filter(|t| !t.is_empty());
    if admin_token.is_none() {
        tracing::warn!("PALETTE_ADMIN_TOKEN is not set: only operator tokens already in the database can write");
    }
    let agent_tokens: Vec<String> = std::env::var(env::AGENT_TOKENS)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut opts = ServerOptions::new(cli.data_dir, cli.listen);
    opts.admin_token = admin_token;
    opts.agent_tokens = agent_tokens;
    opts.tls = cli.tls_cert.zip(cli.tls_key);
    opts.client_ca = cli.client_ca;
    if let Some(max) = cli.max_artifact_bytes {
        opts.max_artifact_bytes = max;
    }
    opts.limits = palette_server::conn::Limits {
        header_timeout: Duration::from_secs(cli.header_timeout_secs),
        body_timeout: Duration::from_secs(cli.body_timeout_secs),
        upload_stall_timeout: Duration::from_secs(cli.upload_stall_secs),
        max_connections: cli.max_connections,
    };
    opts.new_hosts_burst = cli.new_hosts_burst;
    opts.trusted_proxies = cli.trusted_proxies.clone();
    opts.rollout_host_timeout = Duration::from_secs(cli.rollout_host_timeout_mins * 60);
    opts.require_host_tokens = cli.require_host_tokens;
    opts.default_rollout = cli.default_rollout;
    opts.database = cli.database.clone();
    opts.artifacts = cli.artifacts.clone();
    opts.clock_file = std::env::var_os(env::TEST_CLOCK_FILE).map(std::path::PathBuf::from);
    opts.new_hosts_per_minute = cli.new_hosts_per_minute;
    palette_server::serve(opts, async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests and writing the inventory");
    })
    .await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
