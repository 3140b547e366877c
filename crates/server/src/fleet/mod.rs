//! The fleet: the in-memory views that keep the hot paths (heartbeats,
//! command polls, version checks) free of database round trips, and the
//! use cases the HTTP edge calls — hosts, commands and their grouped acks,
//! releases, configs, credentials, audit, rollouts, replica sync.
//! Heartbeats are flushed to the store in batches every second and at
//! shutdown. Must not: know axum or HTTP status codes, or write SQL (the
//! store does).

pub mod credentials;
pub mod history;
pub mod rollouts;

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
    pub store: Arc<dyn Store>,
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
    pub rollouts: crate::fleet::rollouts::Rollouts,
    /// When this replica last sampled the version mix (`history`).
    version_sampled: Mutex<Millis>,
    /// Acknowledgements on their way to the next group commit.
    acks: tokio::sync::mpsc::Sender<AckJob>,
    /// This process, among replicas sharing a store.
    pub replica_id: String,
}

/// One acknowledgement waiting for its commit, and who waits for it.
struct AckJob {
    ack: v2::CommandAck,
    at: Millis,
    done: tokio::sync::oneshot::Sender<StoreResult<bool>>,
}

/// Writes acknowledgements in group commits: every acknowledgement that
/// arrived while the previous commit ran goes into the next one, so a
/// command answered by ten thousand hosts costs a few commits (each
/// durable before its check-ins are answered), not ten thousand.
async fn ack_writer(store: Arc<dyn Store>, mut rx: tokio::sync::mpsc::Receiver<AckJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < 5000 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let items: Vec<(v2::CommandAck, Millis)> =
            jobs.iter().map(|j| (j.ack.clone(), j.at)).collect();
        match store.record_acks(&items).await {
            Ok(news) => {
                for (j, new) in jobs.into_iter().zip(news) {
                    let _ = j.done.send(Ok(new));
                }
            }
            // Each on its own, so each waiter gets its own answer.
            Err(_) => {
                for j in jobs {
                    let r = store.record_ack(&j.ack, j.at).await;
                    let _ = j.done.send(r);
                }
            }
        }
    }
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

/// The rolled-back versions of `offer`'s product and platform newer than
/// it: a host running one of them comes down to `offer`.
fn rolled_back_above(all: &[Release], offer: &Release) -> Vec<Version> {
    let mut v: Vec<Version> = all
        .iter()
        .filter(|r| r.product == offer.product && r.platform == offer.platform)
        .filter(|r| r.rolled_back_at.is_some() && r.version > offer.version)
        .map(|r| r.version)
        .collect();
    v.sort();
    v.dedup();
    v
}

fn release_from(id: i64, r: NewRelease) -> Release {
    Release {
        id,
        url: format!("/api/v2/artifacts/{}", r.sha256),
        product: r.product,
        version: r.version,
        platform: r.platform,
        kind: r.kind,
        sha256: r.sha256,
        md5: r.md5,
        size: r.size,
        signature: r.signature,
        manifest: r.manifest,
        created_at: rfc3339_millis(r.created_at),
        withdrawn_at: r.withdrawn_at.map(rfc3339_millis),
        rolled_back_at: r.rolled_back_at.map(rfc3339_millis),
        rollback_from: Vec::new(),
        held: r.held,
    }
}

/// Why a rollback was refused: nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("no release {0}")]
    NoSuchRelease(i64),
    #[error("a watchdog is not rolled back this way: a watchdog that fails its proof of life reverts by itself; publish a newer watchdog")]
    Watchdog,
    #[error("no older {product} release for {platform} is left to come down to from {version} (publish the version to return to first)")]
    NothingOlder {
        product: String,
        version: Version,
        platform: String,
    },
    #[error("{newer} is offered and newer than {version}: hosts on {version} are offered {newer}, not a rollback (withdraw or roll back {newer} first)")]
    NotNewest { version: Version, newer: Version },
    #[error("the re-signed manifest does not fit: {0}")]
    Manifest(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A manifest re-signed for a rollback must describe `target` exactly and
/// authorise coming down from `bad`.
fn check_rollback_manifest(
    text: &str,
    bad: &Release,
    target: &Release,
) -> Result<(), RollbackError> {
    let m = palette_protocol::manifest::Manifest::parse(text)
        .map_err(|e| RollbackError::Manifest(e.to_string()))?;
    let problem = if m.product != target.product
        || m.platform != target.platform
        || m.version != target.version
        || m.kind != target.kind
    {
        Some(format!(
            "it is for {} {} {} ({:?}), the rollback goes to {} {} {} ({:?})",
            m.product,
            m.version,
            m.platform,
            m.kind,
            target.product,
            target.version,
            target.platform,
            target.kind
        ))
    } else if m.sha256 != target.sha256 || m.size != target.size {
        Some("its sha256 or size is not the target release's".to_string())
    } else if m.allow_downgrade_from.is_none_or(|from| from > bad.version) {
        Some(format!(
            "its allow_downgrade_from must be at most {} (the version rolled back)",
            bad.version
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(RollbackError::Manifest(p)),
        None => Ok(()),
    }
}

/// Why a publish failed: nothing of it is kept.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Artifact(#[from] crate::artifacts::IngestError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
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

    // ---- tokens -------------------------------------------------------

    /// Rebuilds the in-memory credentials from the store (after any add or
    /// revoke: rare).
    async fn reload_tokens(&self) -> StoreResult<()> {
        let rows = self.store.tokens().await?;
        self.tokens.rebuild(rows, self.admin_token, ADMIN_LABEL);
        Ok(())
    }

    /// The live credential `token` is, noting the use.
    pub fn credential(&self, token: &str) -> Option<Arc<crate::fleet::credentials::Credential>> {
        let c = self.tokens.find(token)?;
        c.used(now_ms());
        Some(c)
    }

    /// The live credential whose token hashes to `hash`.
    pub fn credential_by_hash(
        &self,
        hash: &TokenHash,
    ) -> Option<Arc<crate::fleet::credentials::Credential>> {
        let c = self.tokens.find_by_hash(hash)?;
        c.used(now_ms());
        Some(c)
    }

    /// Whether `host` has enrolled (has a live host token).
    pub fn is_enrolled(&self, host: &str) -> bool {
        self.tokens.is_enrolled(host)
    }

    /// Every stored token (hashes only), revoked ones too.
    pub async fn tokens(&self) -> StoreResult<Vec<crate::store::TokenRow>> {
        self.store.tokens().await
    }

    /// A live stored token, by kind and id.
    pub async fn live_token(
        &self,
        kind: crate::store::TokenKind,
        id: i64,
    ) -> StoreResult<Option<crate::store::TokenRow>> {
        Ok(self
            .store
            .tokens()
            .await?
            .into_iter()
            .find(|t| t.kind == kind && t.id == id && t.revoked_at.is_none()))
    }

    /// Revokes a stored token, durably and at once: its next request is
    /// refused. `None` when there is no such live token.
    pub async fn revoke_token(
        &self,
        kind: crate::store::TokenKind,
        id: i64,
        audit: Audit<'_>,
    ) -> StoreResult<Option<crate::store::TokenRow>> {
        let Some(row) = self
            .store
            .tokens()
            .await?
            .into_iter()
            .find(|t| t.kind == kind && t.id == id && t.revoked_at.is_none())
        else {
            return Ok(None);
        };
        let done = self.store.revoke_token(kind, id, now_ms(), audit).await?;
        if done {
            if let Some(a) = audit {
                a.log();
            }
        }
        self.reload_tokens_after_write().await;
        Ok(done.then_some(row))
    }

    /// Enrolls `host`: a new host token, durably recorded (hash only) and
    /// live at once. `Conflict` when the name already has a live token:
    /// only an operator revoking it (or retiring the host) frees the name,
    /// so an enrollment key alone cannot take over an enrolled host.
    pub async fn enroll_host(&self, host: &str, audit: Audit<'_>) -> StoreResult<(i64, String)> {
        let mut raw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
        let token = format!("pht_{}", hex::encode(raw));
        let id = self
            .store
            .enroll_host(host, &hex::encode(token_hash(&token)), now_ms(), audit)
            .await?;
        let Some(id) = id else {
            return Err(crate::store::StoreError::Conflict(format!(
                "a live host token for {host} (an operator must revoke it or retire the host before it can enroll again)"
            )));
        };
        if let Some(a) = audit {
            a.with_id(id).log();
        }
        self.reload_tokens_after_write().await;
        Ok((id, token))
    }

    /// Writes the batched "last used" times of tokens.
    async fn flush_token_uses(&self) -> StoreResult<()> {
        let batch = self.tokens.take_unwritten();
        if batch.is_empty() {
            return Ok(());
        }
        let r = self.store.touch_tokens(&batch).await;
        if r.is_err() {
            self.tokens.unwritten(&batch);
        }
        r
    }

    /// Reloads the live tokens after a committed write. A failure here
    /// must not turn the write's 2xx into an error (it was stored): it is
    /// logged, and the next reload (replica sync, restart) catches up.
    async fn reload_tokens_after_write(&self) {
        if let Err(e) = self.reload_tokens().await {
            tracing::warn!(error = %crate::chain::error_chain(&e), "a token change was stored but could not be read back yet; it takes effect at the next reload");
        }
    }

    pub async fn audit_log(&self, limit: u32) -> StoreResult<Vec<(i64, crate::store::AuditEntry)>> {
        self.store.audit(limit).await
    }

    /// Adds a license key. A key that was revoked stays revoked (409):
    /// a revoked secret is never live again.
    pub async fn add_agent_token(
        &self,
        token: &str,
        label: &str,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        let hex_hash = hex::encode(token_hash(&token.to_lowercase()));
        let revoked = self
            .store
            .tokens()
            .await?
            .into_iter()
            .any(|t| t.hash == hex_hash && t.revoked_at.is_some());
        if revoked {
            return Err(crate::store::StoreError::Conflict(
                "a revoked agent token with this value (choose a new key)".into(),
            ));
        }
        self.store
            .add_agent_token(&hex_hash, label, now_ms(), audit)
            .await?;
        if let Some(a) = audit {
            a.log();
        }
        self.reload_tokens_after_write().await;
        Ok(())
    }

    pub async fn add_operator_token(
        &self,
        token: &str,
        label: &str,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        self.store
            .add_operator_token(&hex::encode(token_hash(token)), label, now_ms(), audit)
            .await?;
        if let Some(a) = audit {
            a.log();
        }
        self.reload_tokens_after_write().await;
        Ok(())
    }

    /// Replaces the live operator tokens labelled `label` with `token` in
    /// one stored transaction; how many were revoked (0: none had that
    /// label, nothing changed).
    pub async fn rotate_operator_tokens(
        &self,
        token: &str,
        label: &str,
        audit: Audit<'_>,
    ) -> StoreResult<u64> {
        let revoked = self
            .store
            .rotate_operator_tokens(label, &hex::encode(token_hash(token)), now_ms(), audit)
            .await?;
        if revoked > 0 {
            if let Some(a) = audit {
                a.log();
            }
            self.reload_tokens_after_write().await;
        }
        Ok(revoked)
    }

    // ---- hosts --------------------------------------------------------

    /// The store's identity (see `Store::store_id`).
    pub fn store_id(&self) -> &str {
        self.store.store_id()
    }

    /// Whether `host` may be recorded for the agent credential `token`: a
    /// known host always; a new name only while the credential's budget of
    /// new names lasts (`new_hosts_burst`, refilled at
    /// `new_hosts_per_minute`), so a leaked license key cannot fill the
    /// inventory with made-up hosts.
    pub fn admit_host(&self, host: &str, token: &TokenHash) -> Result<(), TooManyNewHosts> {
        if self.hosts.lock().unwrap().contains_key(host) {
            return Ok(());
        }
        let burst = f64::from(self.settings.new_hosts_burst.max(1));
        let per_sec = f64::from(self.settings.new_hosts_per_minute.max(1)) / 60.0;
        let now = std::time::Instant::now();
        let mut buckets = self.new_hosts.lock().unwrap();
        let b = buckets.entry(*token).or_insert(Bucket {
            tokens: burst,
            at: now,
            warned: false,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        b.at = now;
        if b.tokens >= burst {
            b.warned = false;
        }
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / per_sec).ceil() as u64;
            if !std::mem::replace(&mut b.warned, true) {
                tracing::warn!(
                    host,
                    burst = self.settings.new_hosts_burst,
                    per_minute = self.settings.new_hosts_per_minute,
                    "one agent credential introduced more new host names than allowed: refusing unknown names with 429 until its budget refills (raise --new-hosts-burst for a large enrollment; a leaked key shows this way)"
                );
            }
            tracing::debug!(
                host,
                retry_after_s = wait,
                "new host name refused: this credential added too many recently"
            );
            Err(TooManyNewHosts {
                retry_after_secs: wait.max(1),
            })
        }
    }

    /// Records contact from `host` (already validated and admitted). A host
    /// the server holds no config for is asked for it (see `v1_command_for`).
    pub fn heartbeat(&self, host: &str) {
        let now = now_ms();
        let mut hosts = self.hosts.lock().unwrap();
        let e = hosts.entry(host.to_string()).or_default();
        e.last_seen = now;
        e.dirty = true;
    }

    /// A legacy poll: contact, and the legacy two-minute interval.
    pub fn legacy_heartbeat(&self, host: &str) {
        let now = now_ms();
        let mut hosts = self.hosts.lock().unwrap();
        let e = hosts.entry(host.to_string()).or_default();
        e.last_seen = now;
        e.interval_ms = LEGACY_INTERVAL_MS;
        e.dirty = true;
    }

    /// The end of a long poll is contact too (the host held its connection
    /// until now). A host retired meanwhile is not brought back.
    pub fn poll_ended(&self, host: &str) {
        if let Some(e) = self.hosts.lock().unwrap().get_mut(host) {
            e.last_seen = now_ms();
            e.dirty = true;
        }
    }

    /// Records a v2 check-in's report; `wait_ms` is the long-poll wait the
    /// host asked for (its check-in interval). Returns the report's update
    /// outcome when it is new (not the one this server already knew).
    pub fn record_report(
        &self,
        report: &HostReport,
        wait_ms: Millis,
    ) -> Vec<(String, v2::UpdateReport)> {
        let mut hosts = self.hosts.lock().unwrap();
        let e = hosts.entry(report.hostname.clone()).or_default();
        e.last_seen = now_ms();
        e.interval_ms = if wait_ms > 0 {
            wait_ms
        } else {
            DEFAULT_INTERVAL_MS
        };
        e.dirty = true;
        let differs = |b: Option<&v2::UpdateReport>, u: &v2::UpdateReport| {
            b.is_none_or(|b| {
                b.release_id != u.release_id || b.outcome != u.outcome || b.message != u.message
            })
        };
        let mut new = Vec::new();
        let before = e.report.as_ref().and_then(|r| r.last_update.as_ref());
        if let Some(u) = &report.last_update {
            if differs(before, u) {
                self.metrics.update_outcome(match u.outcome {
                    v2::Outcome::Succeeded => "succeeded",
                    v2::Outcome::Failed => "failed",
                });
                new.push((report.product.clone(), u.clone()));
            }
        }
        let before = e
            .report
            .as_ref()
            .and_then(|r| r.last_watchdog_update.as_ref());
        if let Some(u) = &report.last_watchdog_update {
            if differs(before, u) {
                new.push(("watchdog".to_string(), u.clone()));
            }
        }
        if e.report.as_ref() != Some(report) {
            e.report = Some(report.clone());
            e.report_dirty = true;
        }
        let at = e.last_seen;
        e.pending_updates
            .extend(new.iter().map(|(p, u)| (p.clone(), u.clone(), at)));
        drop(hosts);
        self.reports.send_modify(|v| *v += 1);
        new
    }

    /// Records a command's acknowledgement durably (in the next group
    /// commit); whether it was new.
    pub async fn record_ack(&self, ack: &v2::CommandAck, at: Millis) -> StoreResult<bool> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let job = AckJob {
            ack: ack.clone(),
            at,
            done,
        };
        if self.acks.send(job).await.is_err() {
            return self.store.record_ack(ack, at).await;
        }
        match wait.await {
            Ok(r) => r,
            Err(_) => self.store.record_ack(ack, at).await,
        }
    }

    pub fn subscribe_reports(&self) -> watch::Receiver<u64> {
        self.reports.subscribe()
    }

    /// The v2 hosts a rollout of `release` reaches: its product and
    /// platform, picked by `selector` (with their labels).
    pub fn rollout_candidates(
        &self,
        release: &Release,
        selector: &palette_protocol::selector::Selector,
    ) -> Vec<(String, palette_protocol::selector::Labels)> {
        let reports: Vec<(String, palette_protocol::selector::Labels)> = {
            let hosts = self.hosts.lock().unwrap();
            hosts
                .iter()
                .filter_map(|(name, e)| {
                    let r = e.report.as_ref()?;
                    (r.product == release.product && r.platform == release.platform)
                        .then(|| (name.clone(), r.labels.clone()))
                })
                .collect()
        };
        reports
            .into_iter()
            .map(|(name, own)| {
                let labels = self.rollouts.labels_of(&name, Some(&own));
                (name, labels)
            })
            .filter(|(name, labels)| selector.matches(name, labels))
            .filter(|(name, labels)| {
                let cache = self.rollouts.cache.read().unwrap();
                !crate::fleet::rollouts::Rollouts::pinned_elsewhere(&cache, name, labels, release)
            })
            .collect()
    }

    /// What the rollout step needs to know about every v2 host.
    pub fn host_views(
        &self,
        release: &Release,
        window_now: Millis,
    ) -> HashMap<String, crate::rollout::HostView> {
        let now = now_ms();
        let snapshot: Vec<(String, v2::HostState, HostReport)> = {
            let hosts = self.hosts.lock().unwrap();
            hosts
                .iter()
                .filter_map(|(n, e)| Some((n.clone(), e.state(now), e.report.clone()?)))
                .collect()
        };
        let cache = self.rollouts.cache.read().unwrap();
        snapshot
            .into_iter()
            .filter_map(|(name, state, r)| {
                let mut labels = r.labels.clone();
                if let Some(a) = cache.assigned.get(&name) {
                    labels.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                if crate::fleet::rollouts::Rollouts::pinned_elsewhere(
                    &cache, &name, &labels, release,
                ) {
                    return None;
                }
                let view = crate::rollout::HostView {
                    state,
                    installed: r.agent_version,
                    result: r
                        .last_update
                        .as_ref()
                        .filter(|u| u.release_id == release.id)
                        .map(|u| (u.outcome, u.message.clone())),
                    in_window: crate::fleet::rollouts::Rollouts::in_window(
                        &cache, &name, &labels, window_now,
                    ),
                    progressing: r
                        .update_progress
                        .as_ref()
                        .is_some_and(|p| p.release_id == release.id),
                };
                Some((name, view))
            })
            .collect()
    }

    /// A host's own labels (from its last report).
    pub fn host_own_labels(&self, host: &str) -> palette_protocol::selector::Labels {
        self.hosts
            .lock()
            .unwrap()
            .get(host)
            .and_then(|e| e.report.as_ref().map(|r| r.labels.clone()))
            .unwrap_or_default()
    }

    /// A host's labels, its own and assigned (empty for an unknown host).
    pub fn host_labels(&self, host: &str) -> palette_protocol::selector::Labels {
        let own = self
            .hosts
            .lock()
            .unwrap()
            .get(host)
            .and_then(|e| e.report.as_ref().map(|r| r.labels.clone()));
        self.rollouts.labels_of(host, own.as_ref())
    }

    /// Sets the inventory gauges (hosts online, stale and offline, hosts by agent
    /// version, live commands, releases) for a `/metrics` answer. The state
    /// is judged against each host's own check-in interval.
    pub fn refresh_gauges(&self) {
        let now = now_ms();
        let (mut online, mut stale, mut offline) = (0u64, 0u64, 0u64);
        let mut by_version: HashMap<String, u64> = HashMap::new();
        {
            let hosts = self.hosts.lock().unwrap();
            for e in hosts.values().filter(|e| e.last_seen > 0) {
                match e.state(now) {
                    v2::HostState::Online => online += 1,
                    v2::HostState::Stale => stale += 1,
                    v2::HostState::Offline => offline += 1,
                }
                let v = match &e.report {
                    Some(r) => r
                        .agent_version
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "none".into()),
                    None => "legacy".into(),
                };
                *by_version.entry(v).or_default() += 1;
            }
        }
        let m = &self.metrics;
        m.set(
            "palette_hosts",
            vec![("state", "online".into())],
            online as f64,
        );
        m.set(
            "palette_hosts",
            vec![("state", "stale".into())],
            stale as f64,
        );
        m.set(
            "palette_hosts",
            vec![("state", "offline".into())],
            offline as f64,
        );
        for (v, n) in by_version {
            m.set(
                "palette_hosts_by_agent_version",
                vec![("version", v)],
                n as f64,
            );
        }
        let live = {
            let cache = self.commands.read().unwrap();
            cache.live.iter().filter(|c| c.expires_at > now).count()
        };
        m.set("palette_commands_live", vec![], live as f64);
        m.set(
            "palette_releases",
            vec![],
            self.releases.read().unwrap().all.len() as f64,
        );
    }

    /// Removes a host from the inventory, durably first; it reappears only
    /// if it checks in again. `false` when unknown.
    pub async fn retire_host(&self, host: &str, audit: Audit<'_>) -> StoreResult<bool> {
        let in_memory = self.hosts.lock().unwrap().contains_key(host);
        let stored = self.store.retire_host(host, audit).await?;
        if !stored && in_memory {
            // Known only in memory (its first contact not flushed yet):
            // the entry is the only write, and it must be stored first.
            if let Some(a) = audit {
                self.store.insert_audit(a).await?;
            }
        }
        if stored || in_memory {
            if let Some(a) = audit {
                a.log();
            }
        }
        if let Some(id) = self.tokens.host_token_id(host) {
            self.revoke_token(crate::store::TokenKind::Host, id, None)
                .await?;
            tracing::info!(host, "host token revoked with the host's retirement");
        }
        if in_memory || stored {
            self.hosts.lock().unwrap().remove(host);
            tracing::info!(host, "host retired from the inventory");
        }
        Ok(in_memory || stored)
    }

    /// Hosts and their last contact, newest first, optionally only those
    /// seen within `window_ms`.
    pub fn hosts(&self, window_ms: Option<Millis>) -> Vec<v2::HostInfo> {
        let now = now_ms();
        let hosts = self.hosts.lock().unwrap();
        let mut list: Vec<_> = hosts
            .iter()
            .filter(|(_, e)| e.last_seen > 0 && window_ms.is_none_or(|w| now - e.last_seen <= w))
            .map(|(h, e)| {
                (
                    e.last_seen,
                    h.clone(),
                    e.report.clone(),
                    e.state(now),
                    e.interval(),
                )
            })
            .collect();
        drop(hosts);
        list.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        list.into_iter()
            .map(|(seen, hostname, report, state, interval)| v2::HostInfo {
                labels: self
                    .rollouts
                    .labels_of(&hostname, report.as_ref().map(|r| &r.labels)),
                hostname,
                last_seen: rfc3339_millis(seen),
                state: Some(state),
                checkin_interval_secs: Some((interval / 1000) as u64),
                report,
            })
            .collect()
    }

    /// Legacy `/agents`: hostname → RFC 3339 last contact (seconds).
    pub fn legacy_agents(&self) -> Vec<(String, String)> {
        let now = now_ms();
        let hosts = self.hosts.lock().unwrap();
        let mut list: Vec<_> = hosts
            .iter()
            .filter(|(_, e)| now - e.last_seen <= AGENT_LIST_WINDOW_MS)
            .map(|(h, e)| (h.clone(), rfc3339_secs(e.last_seen)))
            .collect();
        list.sort();
        list
    }

    /// Writes changed last-contact times to the store.
    pub async fn flush_heartbeats(&self) -> StoreResult<usize> {
        let updates: Vec<(String, String, v2::UpdateReport, Millis)> = {
            let mut hosts = self.hosts.lock().unwrap();
            hosts
                .iter_mut()
                .filter(|(_, e)| !e.pending_updates.is_empty())
                .flat_map(|(h, e)| {
                    std::mem::take(&mut e.pending_updates)
                        .into_iter()
                        .map(move |(p, u, at)| (h.clone(), p, u, at))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for chunk in updates.chunks(5000) {
            if let Err(e) = self.store.record_updates(chunk).await {
                let mut hosts = self.hosts.lock().unwrap();
                for (h, p, u, at) in chunk {
                    if let Some(e) = hosts.get_mut(h) {
                        e.pending_updates.push((p.clone(), u.clone(), *at));
                    }
                }
                return Err(e);
            }
        }
        let beats: Vec<(String, Millis, Option<String>)> = {
            let mut hosts = self.hosts.lock().unwrap();
            hosts
                .iter_mut()
                .filter(|(_, e)| e.dirty || e.report_dirty)
                .map(|(h, e)| {
                    e.dirty = false;
                    let report = if std::mem::take(&mut e.report_dirty) {
                        e.report
                            .as_ref()
                            .map(|r| serde_json::to_string(r).expect("a report serialises"))
                    } else {
                        None
                    };
                    (h.clone(), e.last_seen, report)
                })
                .collect()
        };
        if beats.is_empty() {
            return Ok(0);
        }
        for chunk in beats.chunks(5000) {
            if let Err(e) = self.store.upsert_heartbeats(chunk).await {
                // Mark them dirty again so the next flush retries.
                let mut hosts = self.hosts.lock().unwrap();
                for (h, _, report) in &beats {
                    if let Some(e) = hosts.get_mut(h) {
                        e.dirty = true;
                        e.report_dirty |= report.is_some();
                    }
                }
                return Err(e);
            }
        }
        Ok(beats.len())
    }

    /// Runs until `shutdown` fires, flushing heartbeats every second, and
    /// once more at the end.
    pub async fn heartbeat_flusher(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            // A failed flush keeps its batch (marked dirty again) for the
            // next tick; the store logs the outage once per episode.
            if let Err(e) = self.flush_heartbeats().await {
                tracing::debug!(error = %e, "could not write heartbeats; retrying in 1 s");
            }
            if let Err(e) = self.flush_token_uses().await {
                tracing::debug!(error = %e, "could not write token uses; retrying in 1 s");
            }
        }
        if let Err(e) = self.flush_heartbeats().await {
            tracing::error!(error = %e, "could not write heartbeats at shutdown");
        }
        if let Err(e) = self.flush_token_uses().await {
            tracing::warn!(error = %e, "could not write token uses at shutdown");
        }
    }

    // ---- configs ------------------------------------------------------

    /// Whether a host may upload its config without an operator credential:
    /// only a known host whose own poll, made with a valid agent credential,
    /// was answered PUT-CONFIG or GET-CONFIG recently and since its last
    /// upload. An unknown name, or a host nobody asked, never may.
    /// Whether `host` is in the inventory.
    pub fn knows_host(&self, host: &str) -> bool {
        self.hosts.lock().unwrap().contains_key(host)
    }

    /// Whether any host's config upload is expected now.
    pub fn any_config_upload_expected(&self) -> bool {
        let now = now_ms();
        self.hosts
            .lock()
            .unwrap()
            .values()
            .any(|e| e.upload_expected(now))
    }

    pub fn config_upload_expected(&self, host: &str) -> bool {
        let now = now_ms();
        let hosts = self.hosts.lock().unwrap();
        hosts.get(host).is_some_and(|e| e.upload_expected(now))
    }

    /// Stores a config revision and updates the views: a reported one
    /// counts as contact and closes the host's config request; a desired
    /// one wakes long polls.
    pub async fn store_config(
        &self,
        host: &str,
        source: v2::ConfigSource,
        body: &[u8],
        audit: Audit<'_>,
    ) -> StoreResult<v2::ConfigRevision> {
        let rev = self
            .store
            .insert_config(
                host,
                source,
                body,
                now_ms(),
                self.settings.max_config_revisions,
                audit,
            )
            .await?;
        if let Some(a) = audit {
            a.with_id(rev.revision).log();
        }
        {
            let mut hosts = self.hosts.lock().unwrap();
            let e = hosts.entry(host.to_string()).or_default();
            e.has_config = true;
            e.config_ask = None;
            if source == v2::ConfigSource::Reported {
                let now = now_ms();
                e.last_upload = Some(now);
                if let Some((_, ts)) = e.upload_asked.take() {
                    e.upload_done_for = Some(ts);
                }
                e.last_seen = now;
                e.dirty = true;
            }
        }
        if source == v2::ConfigSource::Desired {
            self.notify_change();
        }
        tracing::info!(
            host,
            revision = rev.revision,
            source = source.as_str(),
            bytes = body.len(),
            "config stored"
        );
        Ok(rev)
    }

    // ---- commands -----------------------------------------------------

    fn cache_command(&self, c: CommandRow, now: Millis) {
        let mut cache = self.commands.write().unwrap();
        cache.last_issued_ms = cache.last_issued_ms.max(c.legacy_ts);
        if c.kind.is_legacy() {
            match &c.target {
                Target::All => cache.latest_all_legacy = Some(c.clone()),
                Target::Hosts(hs) => {
                    for h in hs {
                        cache.latest_for_host_legacy.insert(h.clone(), c.clone());
                    }
                }
            }
        }
        cache.live.retain(|l| l.expires_at > now);
        if c.expires_at > now {
            cache.live.push(c);
        }
    }

    /// Issues a command at the real time. The `ts` legacy watchdogs see is
    /// a whole second after the previous command's, so they can tell any
    /// two commands apart (kept apart from the issue time, which the v2 API
    /// shows as it was).
    pub async fn issue_command(
        &self,
        kind: CommandKind,
        target: Target,
        ttl_secs: u64,
        audit: Audit<'_>,
    ) -> StoreResult<CommandRow> {
        let _guard = self.issue_lock.lock().await;
        let issued = now_ms();
        let mut legacy = issued;
        let last = self.commands.read().unwrap().last_issued_ms;
        if legacy.div_euclid(1000) <= last.div_euclid(1000) {
            legacy = (last.div_euclid(1000) + 1) * 1000;
        }
        let expires = legacy + (ttl_secs as Millis) * 1000;
        let row = self
            .store
            .insert_command(kind, &target, issued, legacy, expires, audit)
            .await?;
        if let Some(a) = audit {
            a.with_id(row.id).log();
        }
        self.cache_command(row.clone(), now_ms());
        self.notify_change();
        Ok(row)
    }

    /// What a legacy watchdog polling `GET /api/v1/command` (with a valid
    /// agent credential) should see. Answering a host PUT-CONFIG or
    /// GET-CONFIG is what allows its next token-less config upload.
    pub fn v1_command_for(&self, host: Option<&str>) -> Option<v1::Command> {
        let cmd = self.v1_command_inner(host);
        if let (Some(host), Some(cmd)) = (host, &cmd) {
            let word = cmd.command.as_str();
            if word == CommandKind::PutConfig.as_str() || word == CommandKind::GetConfig.as_str() {
                if let Some(e) = self.hosts.lock().unwrap().get_mut(host) {
                    if e.upload_done_for.as_deref() != Some(cmd.ts.as_str()) {
                        e.upload_asked = Some((now_ms(), cmd.ts.clone()));
                    }
                }
            }
        }
        cmd
    }

    fn v1_command_inner(&self, host: Option<&str>) -> Option<v1::Command> {
        let now = now_ms();
        let op = {
            let cache = self.commands.read().unwrap();
            let targeted = host.and_then(|h| cache.latest_for_host_legacy.get(h));
            match (cache.latest_all_legacy.as_ref(), targeted) {
                (Some(a), Some(t)) => Some(if t.id > a.id { t.clone() } else { a.clone() }),
                (a, t) => a.or(t).cloned(),
            }
        };
        if let Some(host) = host {
            let mut hosts = self.hosts.lock().unwrap();
            if let Some(e) = hosts.get_mut(host) {
                if !e.has_config {
                    let fresh = |t: Millis| now - t < LEGACY_FRESHNESS_MS - 60_000;
                    let ask = match e.config_ask {
                        // An operator command issued after the ask goes first.
                        Some(a) if fresh(a) => {
                            op.as_ref().is_none_or(|o| o.legacy_ts <= a).then_some(a)
                        }
                        // The ask went unanswered: a fresh operator command
                        // is served before asking again, so none is starved.
                        Some(_)
                            if op
                                .as_ref()
                                .is_some_and(|o| now - o.legacy_ts < LEGACY_FRESHNESS_MS) =>
                        {
                            None
                        }
                        _ => {
                            e.config_ask = Some(now);
                            Some(now)
                        }
                    };
                    if let Some(ask) = ask {
                        return Some(v1::Command {
                            ts: rfc3339_secs(ask),
                            command: CommandKind::PutConfig.as_str().into(),
                        });
                    }
                }
            }
        }
        op.map(|o| v1::Command {
            ts: rfc3339_secs(o.legacy_ts),
            command: o.kind.as_str().into(),
        })
    }

    /// Live commands for `host` that it has not acknowledged yet.
    /// A command by id: from the live ones in memory, else the store.
    pub async fn command_row(&self, id: i64) -> StoreResult<Option<CommandRow>> {
        let cached = {
            let cache = self.commands.read().unwrap();
            cache.live.iter().find(|c| c.id == id).cloned()
        };
        match cached {
            Some(c) => Ok(Some(c)),
            None => self.store.command(id).await,
        }
    }

    /// Whether any config (desired or reported) is stored for `host`, as
    /// this replica knows (other replicas' stores are read at their
    /// announcement).
    pub fn host_has_config(&self, host: &str) -> bool {
        self.hosts
            .lock()
            .unwrap()
            .get(host)
            .is_some_and(|e| e.has_config)
    }

    pub async fn pending_for(&self, host: &str) -> StoreResult<Vec<v2::Command>> {
        let now = now_ms();
        let live: Vec<CommandRow> = {
            let cache = self.commands.read().unwrap();
            cache
                .live
                .iter()
                .filter(|c| c.expires_at > now && c.targets(host))
                .cloned()
                .collect()
        };
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = live.iter().map(|c| c.id).collect();
        let acked: HashSet<i64> = self
            .store
            .acked_by_host(host, &ids)
            .await?
            .into_iter()
            .collect();
        Ok(live
            .into_iter()
            .filter(|c| !acked.contains(&c.id))
            .map(|c| command_wire(&c))
            .collect())
    }

    // ---- releases -----------------------------------------------------

    fn cache_release(&self, r: Release) {
        let mut cache = self.releases.write().unwrap();
        cache.all.push(r);
        Self::render_v1_latest(&mut cache);
    }

    fn render_v1_latest(cache: &mut ReleaseCache) {
        let newest_msi = cache
            .all
            .iter()
            .filter(|r| {
                r.product == "agent"
                    && r.kind == ReleaseKind::Msi
                    && r.withdrawn_at.is_none()
                    && !r.held
            })
            .max_by(|a, b| a.version.cmp(&b.version).then(a.id.cmp(&b.id)))
            .cloned();
        cache.v1_latest = newest_msi.map(|r| {
            let body = v1::encode(&v1::AgentVersion {
                major: r.version.major,
                minor: r.version.minor,
                patch: r.version.patch,
                product: "Agent".into(),
                md5: r.md5.clone(),
                url: V1_AGENT_URL.into(),
            });
            (body, r)
        });
    }

    /// Places a staged artifact and records its release; the 2xx that
    /// follows means both are durable. On failure the artifact file is
    /// deleted again unless another release names it.
    pub async fn publish(
        &self,
        staged: crate::artifacts::Staged,
        mut r: NewRelease,
        audit: Audit<'_>,
    ) -> Result<Release, PublishError> {
        let _guard = self.publish_lock.lock().await;
        let ingested = self.artifacts.place(staged).await?;
        r.sha256 = ingested.sha256;
        r.md5 = ingested.md5;
        r.size = ingested.size;
        match self.store.insert_release(&r, audit).await {
            Ok(id) => {
                if let Some(a) = audit {
                    a.with_id(id).log();
                }
                let release = release_from(id, r);
                self.cache_release(release.clone());
                self.notify_change();
                Ok(release)
            }
            Err(e) => {
                if !self.has_artifact(&r.sha256) {
                    if let Err(rm) = self.artifacts.remove(&r.sha256) {
                        tracing::warn!(sha256 = r.sha256, error = %rm, "could not delete the artifact of a failed publish; it is collected at the next start");
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Deletes artifact files that no release names (left by a crash
    /// between storing a file and recording its release).
    pub async fn collect_orphan_artifacts(&self) {
        let _guard = self.publish_lock.lock().await;
        let files = match self.artifacts.list() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "could not list artifacts to collect orphans");
                return;
            }
        };
        let mut removed = 0;
        for sha in files {
            if !self.has_artifact(&sha) {
                match self.artifacts.remove(&sha) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(sha256 = sha, error = %e, "could not delete an orphan artifact")
                    }
                }
            }
        }
        if removed > 0 {
            tracing::warn!(
                files = removed,
                "deleted artifact files that no release names (a publish cut short)"
            );
        }
        // The bucket is shared: one replica collects it.
        if self.artifacts.is_remote() && self.store.try_lead().await {
            match self.artifacts.collect_remote(|sha| self.has_artifact(sha)).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    objects = n,
                    storage = self.artifacts.storage(),
                    "deleted artifacts in object storage that no release names (publishes cut short over an hour ago)"
                ),
                Err(e) => tracing::warn!(
                    error = %crate::chain::error_chain(&e),
                    storage = self.artifacts.storage(),
                    "could not collect orphan artifacts in object storage; tried again at the next start"
                ),
            }
        }
    }

    pub fn releases(&self) -> Vec<Release> {
        self.releases.read().unwrap().all.clone()
    }

    /// Whether a published release has this artifact.
    pub fn has_artifact(&self, sha256: &str) -> bool {
        self.releases
            .read()
            .unwrap()
            .all
            .iter()
            .any(|r| r.sha256 == sha256)
    }

    pub fn v1_latest(&self) -> Option<(String, Release)> {
        self.releases.read().unwrap().v1_latest.clone()
    }

    /// `/api/v1/agent/version?platform=P` (sent by our own watchdog in v1
    /// mode): the newest agent release for that platform, whatever its
    /// kind, with a download URL that serves exactly it.
    pub fn v1_offer_for(&self, platform: &str) -> Option<(String, Release)> {
        let r = self.release_for("agent", platform)?;
        let url = format!(
            "{V1_AGENT_URL}?platform={}",
            form_urlencoded::byte_serialize(platform.as_bytes()).collect::<String>()
        );
        let body = v1::encode(&v1::AgentVersion {
            major: r.version.major,
            minor: r.version.minor,
            patch: r.version.patch,
            product: "Agent".into(),
            md5: r.md5.clone(),
            url,
        });
        Some((body, r))
    }

    pub fn msi_release(&self, version: &Version) -> Option<Release> {
        self.releases
            .read()
            .unwrap()
            .all
            .iter()
            .filter(|r| {
                r.product == "agent"
                    && r.kind == ReleaseKind::Msi
                    && &r.version == version
                    && r.withdrawn_at.is_none()
            })
            .max_by_key(|r| r.id)
            .cloned()
    }

    /// Withdraws a release: from now on no host is offered it (hosts that
    /// run it keep it; they are offered the newest remaining release only
    /// if it is newer, as watchdogs never downgrade). `None`: no such id.
    pub async fn withdraw(&self, id: i64, audit: Audit<'_>) -> StoreResult<Option<Release>> {
        if !self.store.withdraw_release(id, now_ms(), audit).await? {
            return Ok(None);
        }
        if let Some(a) = audit {
            a.log();
        }
        let mut cache = self.releases.write().unwrap();
        let now = rfc3339_millis(now_ms());
        let r = cache.all.iter_mut().find(|r| r.id == id).map(|r| {
            r.withdrawn_at.get_or_insert(now);
            r.clone()
        });
        Self::render_v1_latest(&mut cache);
        drop(cache);
        self.notify_change();
        Ok(r)
    }

    /// The release a host of `platform` running `product` should have: the
    /// newest one published for it and not withdrawn, carrying the newer
    /// versions an operator rolled back (their hosts come down to it).
    pub fn release_for(&self, product: &str, platform: &str) -> Option<Release> {
        let cache = self.releases.read().unwrap();
        let same = |r: &&Release| r.product == product && r.platform == platform;
        let mut offer = cache
            .all
            .iter()
            .filter(same)
            .filter(|r| r.withdrawn_at.is_none() && !r.held)
            .max_by(|a, b| a.version.cmp(&b.version).then(a.id.cmp(&b.id)))
            .cloned()?;
        offer.rollback_from = rolled_back_above(&cache.all, &offer);
        Some(offer)
    }

    /// The release `report`'s host should be offered: the newest one of its
    /// product and platform that its rollouts, pins and maintenance windows
    /// allow (see `Rollouts::offer`), with the rolled-back versions it
    /// brings hosts down from.
    pub fn release_for_host(&self, report: &HostReport) -> Option<Release> {
        let labels = self
            .rollouts
            .labels_of(&report.hostname, Some(&report.labels));
        let cache = self.releases.read().unwrap();
        let same = |r: &&Release| r.product == report.product && r.platform == report.platform;
        let mut candidates: Vec<&Release> = cache
            .all
            .iter()
            .filter(same)
            .filter(|r| r.withdrawn_at.is_none())
            .collect();
        candidates.sort_by(|a, b| b.version.cmp(&a.version).then(b.id.cmp(&a.id)));
        let mut offer = self
            .rollouts
            .offer(&report.hostname, &labels, &candidates)?;
        offer.rollback_from = rolled_back_above(&cache.all, &offer);
        Some(offer)
    }

    /// Which v2 hosts of a release's product can take it now (they are
    /// offered it at their next check-in and are online), and why each
    /// other one cannot (`ReachWhy`): what `palettectl release publish`
    /// and `rollout create` follow, so they wait only on hosts that can
    /// answer.
    pub fn reach(&self, release: &Release) -> v2::Reach {
        let now = now_ms();
        let window_now = self.rollouts.window_now();
        let reports: Vec<(String, v2::HostState, HostReport)> = {
            let hosts = self.hosts.lock().unwrap();
            hosts
                .iter()
                .filter_map(|(n, e)| Some((n.clone(), e.state(now), e.report.clone()?)))
                .filter(|(_, _, r)| release.product == "watchdog" || r.product == release.product)
                .collect()
        };
        let mut out = v2::Reach::default();
        for (name, state, report) in reports {
            let why = if report.platform != release.platform {
                Some(format!("another platform ({})", report.platform))
            } else if report.agent_version.is_some_and(|v| v >= release.version)
                && release.product != "watchdog"
            {
                Some(format!(
                    "already on {}",
                    report.agent_version.expect("checked")
                ))
            } else if release.product == "watchdog"
                && report
                    .watchdog_version
                    .parse::<palette_protocol::Version>()
                    .is_ok_and(|v| v >= release.version)
            {
                Some(format!("already on {}", report.watchdog_version))
            } else {
                let labels = self.rollouts.labels_of(&name, Some(&report.labels));
                let offered = if release.product == "watchdog" {
                    self.release_for("watchdog", &report.platform)
                        .is_some_and(|r| r.id == release.id)
                } else {
                    self.release_for_host(&report)
                        .is_some_and(|r| r.id == release.id)
                };
                let cache = self.rollouts.cache.read().unwrap();
                if offered {
                    let word = match state {
                        v2::HostState::Online => None,
                        v2::HostState::Stale => Some("stale"),
                        v2::HostState::Offline => Some("offline"),
                    };
                    word.map(|w| format!("{w} (it is offered the release when it checks in)"))
                } else if crate::fleet::rollouts::Rollouts::pinned_elsewhere(
                    &cache, &name, &labels, release,
                ) {
                    Some("pinned to another version".into())
                } else if !crate::fleet::rollouts::Rollouts::in_window(
                    &cache, &name, &labels, window_now,
                ) {
                    Some("outside its maintenance window".into())
                } else if release.withdrawn_at.is_some() {
                    Some("the release is withdrawn".into())
                } else {
                    Some("held: not admitted by a rollout yet".into())
                }
            };
            match why {
                None => out.now.push(name),
                Some(reason) => out.later.push(v2::ReachLater {
                    hostname: name,
                    reason,
                }),
            }
        }
        out.now.sort();
        out.later.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        out
    }

    /// A held release whose rollout finished is offered to every host from
    /// now on (legacy v1 hosts included), durably.
    pub async fn release_unhold(&self, id: i64) -> StoreResult<()> {
        self.store.set_release_held(id, false).await?;
        let mut cache = self.releases.write().unwrap();
        if let Some(r) = cache.all.iter_mut().find(|r| r.id == id) {
            r.held = false;
        }
        Self::render_v1_latest(&mut cache);
        drop(cache);
        self.notify_change();
        Ok(())
    }

    /// Rolls release `id` back: withdrawn, and the hosts running it are
    /// offered the newest older release of the same product and platform
    /// (`target`) as a downgrade. `signed` replaces the target's manifest
    /// and signature (re-signed to authorise the downgrade; checked by the
    /// caller). Returns the rolled-back release and the target.
    pub async fn roll_back(
        &self,
        id: i64,
        signed: Option<(String, String)>,
        audit: Audit<'_>,
    ) -> Result<(Release, Release), RollbackError> {
        let (bad, target) = self.rollback_plan(id)?;
        if let Some((m, _)) = &signed {
            check_rollback_manifest(m, &bad, &target)?;
        }
        self.store
            .roll_back_release(
                id,
                target.id,
                signed.as_ref().map(|(m, s)| (m.as_str(), s.as_str())),
                now_ms(),
                audit,
            )
            .await?;
        if let Some(a) = audit {
            a.log();
        }
        let mut cache = self.releases.write().unwrap();
        let now = rfc3339_millis(now_ms());
        for r in cache.all.iter_mut() {
            if r.id == id {
                r.withdrawn_at.get_or_insert(now.clone());
                r.rolled_back_at.get_or_insert(now.clone());
            } else if r.id == target.id {
                if let Some((m, s)) = &signed {
                    r.manifest = Some(m.clone());
                    r.signature = Some(s.clone());
                }
            }
        }
        let out = (
            cache.all.iter().find(|r| r.id == id).cloned(),
            cache.all.iter().find(|r| r.id == target.id).cloned(),
        );
        Self::render_v1_latest(&mut cache);
        drop(cache);
        self.notify_change();
        match out {
            (Some(b), Some(t)) => Ok((b, t)),
            _ => Err(RollbackError::NoSuchRelease(id)),
        }
    }

    /// The release `id` and the one its hosts would come down to.
    pub fn rollback_plan(&self, id: i64) -> Result<(Release, Release), RollbackError> {
        let cache = self.releases.read().unwrap();
        let bad = cache
            .all
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or(RollbackError::NoSuchRelease(id))?;
        if bad.product == "watchdog" {
            return Err(RollbackError::Watchdog);
        }
        if let Some(newer) = cache.all.iter().find(|r| {
            r.product == bad.product
                && r.platform == bad.platform
                && r.withdrawn_at.is_none()
                && r.version > bad.version
        }) {
            return Err(RollbackError::NotNewest {
                version: bad.version,
                newer: newer.version,
            });
        }
        let target = cache
            .all
            .iter()
            .filter(|r| {
                r.product == bad.product
                    && r.platform == bad.platform
                    && r.withdrawn_at.is_none()
                    && r.version < bad.version
            })
            .max_by(|a, b| a.version.cmp(&b.version).then(a.id.cmp(&b.id)))
            .cloned()
            .ok_or_else(|| RollbackError::NothingOlder {
                product: bad.product.clone(),
                version: bad.version,
                platform: bad.platform.clone(),
            })?;
        Ok((bad, target))
    }

    // ---- change notification (long poll) ------------------------------

    /// Something long polls may be waiting for changed: wakes them here,
    /// and tells the other replicas sharing the store.
    pub fn notify_change(&self) {
        self.changes.send_modify(|v| *v += 1);
        if self.store.shared() {
            let (store, me) = (self.store.clone(), self.replica_id.clone());
            tokio::spawn(async move {
                if let Err(e) = store.announce(&me).await {
                    tracing::warn!(error = %crate::chain::error_chain(&e), "a change was not announced to the other replicas; their reconciliation picks it up");
                }
            });
        }
    }

    /// Reads again what other replicas may have changed in the shared
    /// store — commands, releases, credentials, rollouts (unless this
    /// replica leads them), pins, windows, labels, which hosts have
    /// configs, and hosts' last contact — and wakes the long polls here.
    pub async fn reload_shared(&self, with_hosts: bool) -> StoreResult<()> {
        let now = now_ms();
        {
            let _issuing = self.issue_lock.lock().await;
            let mut recent = self.store.recent_commands(10_000).await?;
            recent.reverse();
            let last = self.commands.read().unwrap().last_issued_ms;
            *self.commands.write().unwrap() = CommandCache {
                last_issued_ms: last,
                ..Default::default()
            };
            for c in recent {
                self.cache_command(c, now);
            }
        }
        self.reload_releases().await?;
        self.reload_tokens().await?;
        let leading = self.store.try_lead().await;
        self.load_rollouts_keeping(leading).await?;
        // Configs stored through other replicas (a check-in answer reads a
        // host's desired config only when one is known to exist).
        let with_config = self.store.hosts_with_config().await?;
        {
            let mut hosts = self.hosts.lock().unwrap();
            for h in with_config {
                if let Some(e) = hosts.get_mut(&h) {
                    e.has_config = true;
                }
            }
        }
        let rows = if with_hosts {
            self.store.load_hosts().await?
        } else {
            Vec::new()
        };
        {
            let mut hosts = self.hosts.lock().unwrap();
            for row in rows {
                let e = hosts.entry(row.hostname.clone()).or_default();
                if row.last_seen > e.last_seen {
                    e.last_seen = row.last_seen;
                    if let Some(r) = row
                        .report
                        .as_deref()
                        .and_then(|r| serde_json::from_str(r).ok())
                    {
                        e.report = Some(r);
                    }
                }
            }
        }
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Reads the releases again (another replica may have published one).
    pub async fn reload_releases(&self) -> StoreResult<()> {
        let _publishing = self.publish_lock.lock().await;
        let rows = self.store.releases().await?;
        let mut cache = ReleaseCache::default();
        for (id, r) in rows {
            cache.all.push(release_from(id, r));
        }
        Self::render_v1_latest(&mut cache);
        *self.releases.write().unwrap() = cache;
        Ok(())
    }

    /// With a store other replicas share: reads what they changed when they
    /// announce it, and every 5 seconds in any case (an announcement may be
    /// missed); the hosts' last contact and reports (never announced: they
    /// change at every check-in) every 30 seconds, every 5 on the replica
    /// that steps rollouts. Until shutdown.
    pub async fn replica_sync(self, mut shutdown: watch::Receiver<bool>) {
        let Some(mut news) = self.store.subscribe() else {
            return;
        };
        tracing::info!(replica = self.replica_id, "sharing the store with other replicas: their changes are read as they announce them, and every 5 s");
        let mut hosts_read = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                n = news.recv() => {
                    match n {
                        None => return,
                        Some(origin) if origin == self.replica_id => continue,
                        Some(_) => {}
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            // Many announcements at once: one reload.
            while news.try_recv().is_ok() {}
            // The leader steps rollouts from the hosts' reports: it reads
            // those of the other replicas' hosts more often.
            let every = if self.store.try_lead().await { 5 } else { 30 };
            let with_hosts = hosts_read.elapsed() >= Duration::from_secs(every);
            if with_hosts {
                hosts_read = std::time::Instant::now();
            }
            if let Err(e) = self.reload_shared(with_hosts).await {
                tracing::warn!(error = %crate::chain::error_chain(&e), "reading the other replicas' changes failed; retried");
            }
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

pub fn command_wire(c: &CommandRow) -> v2::Command {
    v2::Command {
        id: c.id,
        kind: c.kind,
        issued_at: rfc3339_millis(c.issued_at),
        expires_at: rfc3339_millis(c.expires_at),
    }
}
