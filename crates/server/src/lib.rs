//! palette-server: the fleet's control point.
//!
//! The layers, each a folder whose `mod.rs` says what it owns:
//! - `http`: the only place that knows axum — the router (v1, v2, the
//!   dashboard, ops), extractors, errors to status codes, connection and
//!   body limits. Parses, authorises, calls the fleet once, renders.
//! - `fleet`: the in-memory views and the use cases (hosts, commands and
//!   their acks, releases, configs, credentials, audit, rollouts' driver,
//!   replica sync). No axum, no SQL.
//! - `rollout`: the pure rules of staged rollouts and maintenance windows.
//! - `artifacts`: release files, in the data folder or S3.
//! - `store`: the records and the one store for SQLite and PostgreSQL.
//! - leaves: `clock`, `chain`, `metrics`, `platform`.
//!
//! Nothing imports `http`; `http` never calls `store` for a use case;
//! `store` knows only `protocol` and the leaves.
//!
//! Must not: trust a host name, token or upload before validating it, write
//! anything half-way, or block a request on another host's work.

pub mod artifacts;
pub mod chain;
pub mod clock;
pub mod fleet;
pub mod http;
pub mod metrics;
pub(crate) mod platform;
pub mod rollout;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

pub use fleet::{Fleet, Settings};
pub use http::{conn, ratelimit, AppState, HttpSettings};

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_token: Option<String>,
    pub agent_tokens: Vec<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: only clients presenting a certificate issued by this CA
    /// (PEM) are served (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Largest accepted release artifact.
    pub max_artifact_bytes: u64,
    /// Connection and body limits.
    pub limits: conn::Limits,
    /// New host names one agent credential may introduce at once, and per
    /// minute after that.
    pub new_hosts_burst: u32,
    /// See `Settings::require_host_tokens`.
    pub require_host_tokens: bool,
    pub new_hosts_per_minute: u32,
    /// Failed authentications allowed per source address.
    pub auth_limit: ratelimit::AuthLimit,
    /// What a release published without a rollout does.
    pub default_rollout: fleet::rollouts::DefaultRollout,
    /// Tests: the file holding the instant maintenance windows are judged at.
    pub clock_file: Option<PathBuf>,
    /// `postgres://…`; `None`: SQLite in the data folder.
    pub database: Option<String>,
    /// Load balancers or proxies whose forwarded client address is
    /// believed (see `client_addr`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// See `Settings::rollout_host_timeout`.
    pub rollout_host_timeout: std::time::Duration,
    /// `s3://bucket/prefix`; `None`: artifacts in the data folder.
    pub artifacts: Option<String>,
}

impl ServerOptions {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        ServerOptions {
            data_dir,
            listen,
            admin_token: None,
            agent_tokens: Vec::new(),
            tls: None,
            client_ca: None,
            max_artifact_bytes: Settings::new(PathBuf::new()).max_artifact_bytes,
            limits: conn::Limits::default(),
            new_hosts_burst: Settings::new(PathBuf::new()).new_hosts_burst,
            require_host_tokens: false,
            new_hosts_per_minute: Settings::new(PathBuf::new()).new_hosts_per_minute,
            auth_limit: ratelimit::AuthLimit::default(),
            trusted_proxies: Vec::new(),
            rollout_host_timeout: std::time::Duration::from_secs(30 * 60),
            default_rollout: Default::default(),
            clock_file: None,
            database: None,
            artifacts: None,
        }
    }
}

/// Opens the store `database` names (`postgres://…`), or SQLite in
/// `data_dir`.
pub async fn open_store(
    data_dir: &std::path::Path,
    database: Option<&str>,
) -> anyhow::Result<Arc<dyn store::Store>> {
    match database {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            // The password stays out of the log and the error.
            let shown = url
                .split_once('@')
                .map(|(_, host)| host)
                .unwrap_or("(the database)");
            let s = store::SqlStore::open_postgres(url)
                .await
                .with_context(|| format!("while opening the PostgreSQL database at {shown}"))?;
            tracing::info!(database = shown, "store: PostgreSQL");
            Ok(Arc::new(s))
        }
        Some(_) => anyhow::bail!(
            "--database must be a postgres:// URL (leave it out for SQLite in the data folder)"
        ),
        None => {
            let db = data_dir.join("palette.db");
            let s = store::SqlStore::open_sqlite(&db)
                .await
                .with_context(|| format!("while opening the database {}", db.display()))?;
            Ok(Arc::new(s))
        }
    }
}

/// Opens the store and builds the state.
pub async fn open_state(opts: &ServerOptions) -> anyhow::Result<AppState> {
    fs_err::create_dir_all(&opts.data_dir)?;
    let store = open_store(&opts.data_dir, opts.database.as_deref()).await?;
    let mut settings = Settings::new(opts.data_dir.clone());
    settings.max_artifact_bytes = opts.max_artifact_bytes;
    settings.new_hosts_burst = opts.new_hosts_burst;
    settings.require_host_tokens = opts.require_host_tokens;
    settings.new_hosts_per_minute = opts.new_hosts_per_minute;
    settings.default_rollout = opts.default_rollout;
    settings.clock_file = opts.clock_file.clone();
    settings.rollout_host_timeout = opts.rollout_host_timeout;
    settings.artifacts = opts.artifacts.clone();
    let fleet = Fleet::load(
        store,
        settings,
        opts.admin_token.as_deref(),
        &opts.agent_tokens,
    )
    .await
    .context("while loading the server state")?;
    Ok(AppState::new(
        fleet,
        HttpSettings {
            limits: opts.limits.clone(),
            auth_limit: opts.auth_limit,
            tls: opts.tls.is_some(),
            trusted_proxies: opts.trusted_proxies.clone(),
        },
    ))
}

pub use http::serve::{serve, serve_on};
