//! The fleet: the in-memory views that keep the hot paths (heartbeats,
//! command polls, version checks) free of database round trips, and the
//! use cases the HTTP edge calls — hosts, commands and their grouped acks,
//! releases, configs, credentials, audit, rollouts, replica sync.
//! Heartbeats are flushed to the store in batches every second and at
//! shutdown. Must not: know axum or HTTP status codes, or write SQL (the
//! store does).

mod commands;
mod configs;
pub mod credentials;
pub mod history;
mod hosts;
mod reads;
mod releases;
pub mod rollouts;
mod sessions;
mod sync;

pub use commands::command_wire;
use commands::{ack_writer, AckJob};
use releases::release_from;
pub use releases::{PublishError, RollbackError};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use palette_protocol::timefmt::{rfc3339_millis, rfc3339_secs, Millis};
use palette_protocol::v2::{self, CommandKind, HostReport, Release, ReleaseKind, Target};
use palette_protocol::{v1, Version};
use tokio::sync::watch;

use crate::artifacts::ArtifactStore;
use crate::fleet::credentials::{token_hash, TokenHash};
use crate::store::{Audit, CommandRow, NewRelease, Store, StoreResult};

/// A legacy watchdog ignores commands older than this.
pub const LEGACY_FRESHNESS_MS: Millis = 7 * 60 * 1000;
/// Default lifetime of a command.
pub const DEFAULT_COMMAND_TTL_SECS: u64 = 600;
/// A host seen this recently counts as online for targeting `--all` (legacy
/// hosts poll every two minutes, v2 hosts long-poll for at most two).
pub const ONLINE_MS: Millis = 5 * 60 * 1000;
/// How often a legacy (v1) watchdog polls.
pub const LEGACY_INTERVAL_MS: Millis = 2 * 60 * 1000;
/// The interval assumed for a v2 host that does not long-poll (`wait=0`)
/// or has not checked in since the server started.
pub const DEFAULT_INTERVAL_MS: Millis = 2 * 60 * 1000;
/// Hosts silent this long are left out of the legacy agent list.
pub const AGENT_LIST_WINDOW_MS: Millis = 24 * 3600 * 1000;

pub use crate::clock::now_ms;

/// Limits and paths the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Largest accepted `Config.yml` upload.
    pub max_config_bytes: usize,
    /// Largest accepted release artifact.
    pub max_artifact_bytes: u64,
    /// Largest JSON request body.
    pub max_json_bytes: usize,
    /// Longest long-poll wait a client may ask for.
    pub max_wait_secs: u64,
    /// Config revisions kept per host and source (older ones are deleted).
    pub max_config_revisions: usize,
    /// Largest host report (the `host` of a v2 check-in, as JSON).
    pub max_report_bytes: usize,
    /// New host names one agent credential may introduce at once...
    pub new_hosts_burst: u32,
    /// ...and per minute after that.
    pub new_hosts_per_minute: u32,
    /// Refuse the enrollment key on the v2 API for anything but enrolling
    /// (off: a host that has not enrolled may still use it, as watchdogs
    /// before 0.2 did; an enrolled host never).
    pub require_host_tokens: bool,
    /// What a release published without a rollout does.
    pub default_rollout: crate::fleet::rollouts::DefaultRollout,
    /// A file holding the instant maintenance windows are judged at (tests).
    pub clock_file: Option<PathBuf>,
    /// How long a host admitted to a rollout may show no sign of taking
    /// the release before it counts as failed (`Plan::step`).
    pub rollout_host_timeout: std::time::Duration,
    /// `s3://bucket/prefix`: artifacts in object storage, the data folder a
    /// cache of them.
    pub artifacts: Option<String>,
}

impl Settings {
    pub fn new(data_dir: PathBuf) -> Self {
        Settings {
            data_dir,
            max_config_bytes: 1024 * 1024,
            max_artifact_bytes: 4 * 1024 * 1024 * 1024,
            max_json_bytes: 1024 * 1024,
            max_wait_secs: 120,
            max_config_revisions: 50,
            max_report_bytes: 16 * 1024,
            new_hosts_burst: 10_000,
            new_hosts_per_minute: 1200,
            require_host_tokens: false,
            default_rollout: Default::default(),
            clock_file: None,
            rollout_host_timeout: std::time::Duration::from_secs(30 * 60),
            artifacts: None,
        }
    }
}

#[derive(Debug, Default)]
struct HostEntry {
    last_seen: Millis,
    /// How often the host contacts the server (0: not known yet).
    interval_ms: Millis,
    /// The report changed since it was last written to the store.
    report_dirty: bool,
    /// New update outcomes for the host's history, written with the next
    /// batch (the host reports its last ones at every check-in, so none is
    /// lost to a crash: the store keeps each once).
    pending_updates: Vec<(String, v2::UpdateReport, Millis)>,
    dirty: bool,
    has_config: bool,
    /// When the server last asked this (legacy) host for its config.
    config_ask: Option<Millis>,
    /// When an authenticated poll of this host was answered PUT-CONFIG or
    /// GET-CONFIG, and that command's `ts`: the only thing that allows a
    /// token-less upload.
    upload_asked: Option<(Millis, String)>,
    /// The `ts` of the ask the host's last upload answered: the same
    /// command redelivered does not open the door again.
    upload_done_for: Option<String>,
    /// When the host last uploaded its config.
    last_upload: Option<Millis>,
    report: Option<HostReport>,
}

impl HostEntry {
    /// The host's check-in interval (the default until it is known).
    fn interval(&self) -> Millis {
        if self.interval_ms > 0 {
            self.interval_ms
        } else {
            DEFAULT_INTERVAL_MS
        }
    }

    /// Whether a token-less legacy config upload from this host is
    /// expected now (its poll was answered PUT-CONFIG or GET-CONFIG).
    fn upload_expected(&self, now: Millis) -> bool {
        self.upload_asked
            .as_ref()
            .is_some_and(|(asked, _)| now - asked < LEGACY_FRESHNESS_MS + 3 * 60_000)
    }

    fn state(&self, now: Millis) -> v2::HostState {
        v2::HostState::judge(now - self.last_seen, self.interval())
    }
}

#[derive(Default)]
struct CommandCache {
    latest_all_legacy: Option<CommandRow>,
    latest_for_host_legacy: HashMap<String, CommandRow>,
    /// Commands that have not expired yet, oldest first.
    live: Vec<CommandRow>,
    last_issued_ms: Millis,
}

#[derive(Default)]
struct ReleaseCache {
    all: Vec<Release>,
    /// The pre-rendered `/api/v1/agent/version` body and its release.
    v1_latest: Option<(String, Release)>,
}

/// Cheap to clone: everything is behind one `Arc`.
#[derive(Clone)]
pub struct Fleet(pub Arc<Inner>);

pub struct Inner {
    store: Arc<dyn Store>,
    pub settings: Settings,
    pub artifacts: ArtifactStore,
    pub metrics: crate::metrics::Metrics,
    hosts: Mutex<HashMap<String, HostEntry>>,
    commands: RwLock<CommandCache>,
    issue_lock: tokio::sync::Mutex<()>,
    /// Held from placing an artifact to recording its release, so a failed
    /// publish can delete the file it placed without racing another.
    publish_lock: tokio::sync::Mutex<()>,
    releases: RwLock<ReleaseCache>,
    /// Every live credential, by hash.
    tokens: crate::fleet::credentials::Tokens,
    /// The hash of PALETTE_ADMIN_TOKEN (kept across token rebuilds).
    admin_token: Option<TokenHash>,
    new_hosts: Mutex<HashMap<TokenHash, Bucket>>,
    changes: watch::Sender<u64>,
    /// Bumped at every v2 report (wakes the rollout driver).
    reports: watch::Sender<u64>,
    /// Rollouts, pins, windows, assigned labels.
    rollouts: crate::fleet::rollouts::Rollouts,
    /// When this replica last sampled the version mix (`history`).
    version_sampled: Mutex<Millis>,
    /// Acknowledgements on their way to the next group commit.
    acks: tokio::sync::mpsc::Sender<AckJob>,
    /// This process, among replicas sharing a store.
    pub replica_id: String,
}

/// A token bucket: how many new host names a credential may still add.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
    /// Whether running dry was logged (again once it has refilled).
    warned: bool,
}

/// Why a host was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyNewHosts {
    pub retry_after_secs: u64,
}

impl std::ops::Deref for Fleet {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The URL a legacy watchdog downloads the newest agent installer from.
pub const V1_AGENT_URL: &str = "/api/v1/agent";

/// The audit label of the token given in PALETTE_ADMIN_TOKEN.
pub const ADMIN_LABEL: &str = "admin";

impl Fleet {
    /// Loads every in-memory view from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        settings: Settings,
        admin_token: Option<&str>,
        agent_tokens: &[String],
    ) -> anyhow::Result<Self> {
        let remote = match &settings.artifacts {
            Some(url) => Some(crate::artifacts::Remote::s3(url)?),
            None => None,
        };
        let artifacts = ArtifactStore::open(settings.data_dir.join("artifacts"), remote)?;
        let now = now_ms();
        for t in agent_tokens {
            store
                .add_agent_token(
                    &hex::encode(token_hash(&t.to_lowercase())),
                    "PALETTE_AGENT_TOKENS",
                    now,
                    None,
                )
                .await?;
        }
        let with_config: HashSet<String> = store.hosts_with_config().await?.into_iter().collect();
        let mut hosts = HashMap::new();
        for row in store.load_hosts().await? {
            let report = row
                .report
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok());
            hosts.insert(
                row.hostname.clone(),
                HostEntry {
                    last_seen: row.last_seen,
                    has_config: with_config.contains(&row.hostname),
                    report,
                    ..Default::default()
                },
            );
        }
        let (ack_tx, ack_rx) = tokio::sync::mpsc::channel(16_384);
        tokio::spawn(ack_writer(store.clone(), ack_rx));
        let settings_clock_file = settings.clock_file.clone();
        let settings_default_rollout = settings.default_rollout;
        let state = Fleet(Arc::new(Inner {
            store,
            settings,
            artifacts,
            metrics: crate::metrics::Metrics::new(),
            hosts: Mutex::new(hosts),
            commands: RwLock::new(CommandCache::default()),
            issue_lock: tokio::sync::Mutex::new(()),
            publish_lock: tokio::sync::Mutex::new(()),
            releases: RwLock::new(ReleaseCache::default()),
            tokens: crate::fleet::credentials::Tokens::default(),
            admin_token: admin_token.map(token_hash),
            new_hosts: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
            reports: watch::channel(0).0,
            rollouts: crate::fleet::rollouts::Rollouts {
                clock_file: settings_clock_file,
                default: settings_default_rollout,
                ..Default::default()
            },
            version_sampled: Mutex::new(0),
            acks: ack_tx,
            replica_id: {
                let mut b = [0u8; 8];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
                hex::encode(b)
            },
        }));
        state.reload_tokens().await?;
        let mut recent = state.store.recent_commands(10_000).await?;
        recent.reverse();
        for c in recent {
            state.cache_command(c, now);
        }
        for (id, r) in state.store.releases().await? {
            state.cache_release(release_from(id, r));
        }
        state.load_rollouts().await?;
        Ok(state)
    }
}
