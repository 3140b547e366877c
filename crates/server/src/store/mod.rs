//! Everything the server keeps durably: the [`Store`] trait, the records it
//! takes and gives, [`StoreError`] (what failed, classified: outage, full
//! disk, conflict, corrupt row) and the outage log.
//!
//! One implementation serves both databases, [`SqlStore`] (`sql`: every
//! query written once); what only one dialect has lives beside it:
//! `sqlite` (the embedded file: connect options, `synchronous=FULL`, its
//! migrations) and `postgres` (several replicas on one database: `UNNEST`
//! batches, `LISTEN`/`NOTIFY`, the leader's advisory lock, its
//! migrations).
//!
//! Must not: know anything of HTTP (no axum type; `http::error` maps these
//! errors to status codes), or of the server's in-memory views. Imports only
//! `protocol` and the crate's leaves (`clock`, `chain`).

pub mod backup;
mod postgres;
mod sql;
mod sqlite;

pub use sql::SqlStore;

use async_trait::async_trait;
use palette_protocol::timefmt::Millis;
use palette_protocol::v2::{
    CommandAck, CommandKind, ConfigRevision, ConfigSource, HostUpdate, Target, UpdateReport,
};
use thiserror::Error;

/// Why a store operation failed. Nothing was written when any of these is
/// returned: a write either commits (and is synced) or fails as a whole.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The disk holding the database is full (SQLITE_FULL, ENOSPC).
    #[error("the disk holding the database is full")]
    Full(#[source] sqlx::Error),
    /// No database connection could be had in time.
    #[error("the database is busy")]
    Busy(#[source] sqlx::Error),
    #[error("database error")]
    Db(#[source] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_disk_full(&e) {
            StoreError::Full(e)
        } else if matches!(e, sqlx::Error::PoolTimedOut) {
            StoreError::Busy(e)
        } else {
            StoreError::Db(e)
        }
    }
}

/// SQLITE_FULL (13, in the low byte of an extended code) or an I/O error
/// whose cause is a full disk.
fn is_disk_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 13),
        sqlx::Error::Io(io) => is_enospc(io),
        _ => false,
    }
}

/// Whether an I/O error means the disk is full.
pub fn is_enospc(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

impl StoreError {
    /// The one-line reason a client is given.
    pub fn public_reason(&self) -> String {
        match self {
            StoreError::Full(_) => {
                "the server's disk is full: nothing was stored; retry later".into()
            }
            StoreError::Busy(_) => {
                "the server's database is busy: nothing was stored; retry later".into()
            }
            StoreError::Conflict(what) => format!("{what} already exists"),
            _ => "internal error: nothing was stored; see the server log".into(),
        }
    }

    /// Whether this failure is the store's health (disk, database) rather
    /// than the request's content.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            StoreError::Full(_) | StoreError::Busy(_) | StoreError::Db(_)
        )
    }
}

/// Logs store outages once per episode: the first failure at error level,
/// the rest at debug level, and one line when the store works again. On a
/// nearly full disk some small writes still succeed between failures: the
/// episode ends only after writes have worked for `OutageLog::QUIET` with
/// no failure, so it is not logged as over (and begun again) at every one.
#[derive(Debug, Default)]
pub struct OutageLog {
    episode: std::sync::Mutex<Episode>,
}

#[derive(Debug, Default)]
struct Episode {
    failures: u64,
    last_failure: Option<std::time::Instant>,
}

/// What an observation starts or ends.
#[derive(Debug, PartialEq, Eq)]
enum Transition {
    Began,
    Continued,
    Ended { failures: u64 },
    Nothing,
}

impl OutageLog {
    /// How long writes must work, with no failure, before an outage is over.
    pub const QUIET: std::time::Duration = std::time::Duration::from_secs(10);

    fn note(&self, ok: bool, now: std::time::Instant) -> Transition {
        let mut e = self.episode.lock().unwrap();
        if !ok {
            e.failures += 1;
            e.last_failure = Some(now);
            return if e.failures == 1 {
                Transition::Began
            } else {
                Transition::Continued
            };
        }
        match e.last_failure {
            Some(last) if now.duration_since(last) >= Self::QUIET => {
                let failures = e.failures;
                *e = Episode::default();
                Transition::Ended { failures }
            }
            _ => Transition::Nothing,
        }
    }

    pub fn observe<T>(&self, what: &'static str, r: StoreResult<T>) -> StoreResult<T> {
        let now = std::time::Instant::now();
        match &r {
            Ok(_) => {
                if let Transition::Ended { failures } = self.note(true, now) {
                    tracing::info!(
                        what,
                        failures,
                        "database {what} work again; the requests that failed were answered with an error and stored nothing"
                    );
                }
            }
            Err(e) if e.is_outage() => match self.note(false, now) {
                Transition::Began => tracing::error!(
                    what,
                    error = %e,
                    cause = %crate::chain::error_chain(e),
                    "database {what} failing: answering 5xx and storing nothing until it recovers (further failures are logged at debug level)"
                ),
                _ => {
                    tracing::debug!(what, error = %crate::chain::error_chain(e), "database {what} still failing")
                }
            },
            Err(_) => {}
        }
        r
    }
}

#[cfg(test)]
mod outage_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn an_outage_is_one_episode_while_writes_fail_now_and_then() {
        let log = OutageLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note(false, t0), Transition::Began);
        // A small write that still fits, then failures again: one episode.
        for i in 1..100u64 {
            let t = t0 + Duration::from_millis(i * 50);
            assert_eq!(log.note(true, t), Transition::Nothing);
            assert_eq!(log.note(false, t), Transition::Continued);
        }
        let last = t0 + Duration::from_millis(99 * 50);
        assert_eq!(
            log.note(true, last + Duration::from_secs(1)),
            Transition::Nothing
        );
        assert_eq!(
            log.note(true, last + OutageLog::QUIET),
            Transition::Ended { failures: 100 }
        );
        assert_eq!(
            log.note(true, last + OutageLog::QUIET * 2),
            Transition::Nothing
        );
        assert_eq!(
            log.note(false, last + OutageLog::QUIET * 3),
            Transition::Began
        );
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A host row as loaded at start-up.
#[derive(Debug, Clone)]
pub struct HostRow {
    pub hostname: String,
    pub first_seen: Millis,
    pub last_seen: Millis,
    /// The last v2 report as JSON.
    pub report: Option<String>,
}

/// A stored command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    pub id: i64,
    pub kind: CommandKind,
    pub target: Target,
    /// When it was issued (shown by the v2 API).
    pub issued_at: Millis,
    /// The whole-second time legacy v1 watchdogs see as `ts`: at or after
    /// `issued_at`, strictly increasing by the second.
    pub legacy_ts: Millis,
    pub expires_at: Millis,
}

impl CommandRow {
    pub fn targets(&self, hostname: &str) -> bool {
        match &self.target {
            Target::All => true,
            Target::Hosts(hosts) => hosts.iter().any(|h| h == hostname),
        }
    }
}

/// Which table a token lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A license key (the fleet's enrollment key): a host enrolls with it
    /// (and legacy v1 watchdogs check in with it).
    Agent,
    Operator,
    /// One host's own credential, made at enrollment.
    Host,
}

impl TokenKind {
    /// As the API and the audit log name it.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Agent => "agent",
            TokenKind::Operator => "operator",
            TokenKind::Host => "host",
        }
    }
}

/// A dashboard session as stored: the SHA-256 (hex) of its cookie and of
/// the operator token it stands for; neither secret is kept.
#[derive(Debug, Clone)]
pub struct UiSessionRow {
    pub id_hash: String,
    pub token_hash: String,
    pub csrf: String,
    pub expires_at: Millis,
}

/// A stored token (its hash only; the secret is never kept).
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub kind: TokenKind,
    pub id: i64,
    pub hash: String,
    pub label: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
    /// When it last authenticated a request (written in batches, so up to
    /// a minute behind).
    pub last_used: Option<Millis>,
}

/// One operator action in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Millis,
    /// The operator token's label (`admin` for PALETTE_ADMIN_TOKEN).
    pub actor: String,
    /// The caller's address, when known.
    pub source: Option<String>,
    /// What was done (`release.publish`, `command.create`, ...).
    pub action: String,
    /// What it was done to, in words. `{id}` stands for the id of the row
    /// the write it goes with creates (see [`AuditEntry::with_id`]).
    pub detail: String,
}

impl AuditEntry {
    /// What `actor` (from `source`) is doing now, for the write it goes
    /// with (`Audit`).
    pub fn now(actor: &str, source: Option<&str>, action: &str, detail: String) -> AuditEntry {
        AuditEntry {
            at: crate::clock::now_ms(),
            actor: actor.into(),
            source: source.map(str::to_string),
            action: action.into(),
            detail,
        }
    }

    /// The entry with `{id}` in its detail replaced by `id`.
    pub fn with_id(&self, id: i64) -> AuditEntry {
        AuditEntry {
            detail: self.detail.replace("{id}", &id.to_string()),
            ..self.clone()
        }
    }

    /// Logs the entry (after it is stored).
    pub fn log(&self) {
        tracing::info!(
            actor = self.actor,
            source = self.source,
            action = self.action,
            detail = self.detail,
            "audit"
        );
    }
}

/// The audit entry of an operator's write, stored in the write's own
/// transaction: the action and its entry are both stored or neither is.
/// `None` for writes no operator asked for (a host's upload, a rollout's
/// own step).
pub type Audit<'a> = Option<&'a AuditEntry>;

/// A release before it has an id.
#[derive(Debug, Clone)]
pub struct NewRelease {
    pub product: String,
    pub version: palette_protocol::Version,
    pub platform: String,
    pub kind: palette_protocol::v2::ReleaseKind,
    pub sha256: String,
    pub md5: String,
    pub size: u64,
    /// The minisign signature over `manifest`.
    pub signature: Option<String>,
    /// The signed manifest, exactly as signed (verified by hosts, not here).
    pub manifest: Option<String>,
    pub created_at: Millis,
    /// When it was withdrawn (never at publish).
    pub withdrawn_at: Option<Millis>,
    /// When it was rolled back (withdrawn, and its hosts brought down).
    pub rolled_back_at: Option<Millis>,
    /// Offered to no host until a rollout starts.
    pub held: bool,
}

/// A rollout as stored (see `crate::fleet::rollouts::Rollout`).
#[derive(Debug, Clone)]
pub struct RolloutRecord {
    pub id: i64,
    pub release_id: i64,
    pub selector: String,
    pub waves: String,
    pub soak_ms: Millis,
    pub halt_after: String,
    pub max_concurrent: u32,
    pub phase: String,
    pub wave: i64,
    pub wave_started_at: Millis,
    pub reason: Option<String>,
    pub created_at: Millis,
}

/// One host of a rollout as stored.
#[derive(Debug, Clone)]
pub struct MemberRecord {
    pub hostname: String,
    pub position: i64,
    pub wave: i64,
    pub admitted_at: Option<Millis>,
    pub outcome: Option<String>,
    pub finished_at: Option<Millis>,
    pub message: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's identity, made once when it was created.
    fn store_id(&self) -> &str;
    /// Whether several servers (replicas) may share this store.
    fn shared(&self) -> bool {
        false
    }
    /// Tells the other replicas that something changed (`origin`: the
    /// telling replica, which ignores its own news).
    async fn announce(&self, _origin: &str) -> StoreResult<()> {
        Ok(())
    }
    /// The other replicas' announcements (`None`: no other replicas).
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        None
    }
    /// Whether this replica leads the once-only work (stepping rollouts)
    /// now; a store only one server uses always does.
    async fn try_lead(&self) -> bool {
        true
    }
    /// A small write, committed: the store can take writes now.
    async fn ping(&self) -> StoreResult<()>;

    /// Records last-contact times (and, where given, the host's latest
    /// report as JSON) for many hosts in one transaction.
    async fn upsert_heartbeats(
        &self,
        beats: &[(String, Millis, Option<String>)],
    ) -> StoreResult<()>;
    async fn load_hosts(&self) -> StoreResult<Vec<HostRow>>;
    /// Removes a host from the inventory (it may enroll again); false when
    /// it was not there.
    async fn retire_host(&self, hostname: &str, audit: Audit<'_>) -> StoreResult<bool>;

    async fn insert_command(
        &self,
        kind: CommandKind,
        target: &Target,
        issued_at: Millis,
        legacy_ts: Millis,
        expires_at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<CommandRow>;
    async fn command(&self, id: i64) -> StoreResult<Option<CommandRow>>;
    /// The newest `limit` commands, newest first.
    async fn recent_commands(&self, limit: i64) -> StoreResult<Vec<CommandRow>>;
    /// Records an acknowledgement; a second one for the same (command, host)
    /// is ignored (returns false).
    async fn record_ack(&self, ack: &CommandAck, at: Millis) -> StoreResult<bool>;
    /// Records many acknowledgements in one transaction (one commit for
    /// many check-ins); for each, whether it was new.
    async fn record_acks(&self, acks: &[(CommandAck, Millis)]) -> StoreResult<Vec<bool>>;
    async fn acks_for_command(&self, id: i64) -> StoreResult<Vec<CommandAck>>;
    /// Every acknowledgement of the commands from `first_id` on, by
    /// command and time (one read for a list of recent commands).
    async fn acks_from_command(&self, first_id: i64) -> StoreResult<Vec<CommandAck>>;
    /// Records update outcomes hosts reported (host, product, outcome,
    /// when), in one transaction; each unless it is the newest one already
    /// recorded for its host and product.
    async fn record_updates(
        &self,
        updates: &[(String, String, UpdateReport, Millis)],
    ) -> StoreResult<()>;
    /// The host's newest `limit` update outcomes (all products), newest
    /// first.
    async fn update_history(&self, hostname: &str, limit: u32) -> StoreResult<Vec<HostUpdate>>;
    /// The host's newest `limit` acknowledgements, newest first, with the
    /// kind of command each answered.
    async fn host_acks(
        &self,
        hostname: &str,
        limit: u32,
    ) -> StoreResult<Vec<(CommandKind, CommandAck)>>;
    /// Which of `ids` the host has acknowledged.
    async fn acked_by_host(&self, hostname: &str, ids: &[i64]) -> StoreResult<Vec<i64>>;

    async fn insert_release(&self, r: &NewRelease, audit: Audit<'_>) -> StoreResult<i64>;
    async fn releases(&self) -> StoreResult<Vec<(i64, NewRelease)>>;
    /// Holds a release back from every host, or releases it.
    async fn set_release_held(&self, id: i64, held: bool) -> StoreResult<()>;
    /// Records a rollout (its `id` is ignored) and its members in one
    /// transaction (no replica ever sees it without them); returns its id.
    async fn insert_rollout(
        &self,
        r: &RolloutRecord,
        members: &[MemberRecord],
        audit: Audit<'_>,
    ) -> StoreResult<i64>;
    /// Updates a rollout's phase, wave and reason.
    async fn update_rollout(&self, r: &RolloutRecord, audit: Audit<'_>) -> StoreResult<()>;
    /// Inserts or replaces these members of a rollout.
    async fn save_members(&self, rollout: i64, members: &[MemberRecord]) -> StoreResult<()>;
    async fn load_rollouts(&self) -> StoreResult<Vec<(RolloutRecord, Vec<MemberRecord>)>>;
    /// Replaces the labels an operator assigned to a host (JSON object).
    async fn set_host_labels(
        &self,
        hostname: &str,
        labels_json: &str,
        audit: Audit<'_>,
    ) -> StoreResult<()>;
    async fn load_host_labels(
        &self,
    ) -> StoreResult<Vec<(String, palette_protocol::selector::Labels)>>;
    async fn insert_pin(
        &self,
        p: &palette_protocol::v2::Pin,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<i64>;
    async fn delete_pin(&self, id: i64, audit: Audit<'_>) -> StoreResult<bool>;
    async fn load_pins(&self) -> StoreResult<Vec<palette_protocol::v2::Pin>>;
    async fn insert_window(
        &self,
        w: &palette_protocol::v2::WindowInfo,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<i64>;
    async fn delete_window(&self, id: i64, audit: Audit<'_>) -> StoreResult<bool>;
    async fn load_windows(&self) -> StoreResult<Vec<palette_protocol::v2::WindowInfo>>;
    /// Marks a release withdrawn; false when there is no such release.
    async fn withdraw_release(&self, id: i64, at: Millis, audit: Audit<'_>) -> StoreResult<bool>;
    /// Rolls release `id` back (withdrawn and marked rolled back) and, when
    /// given, replaces release `target`'s manifest and signature (re-signed
    /// to authorise the downgrade), in one transaction.
    async fn roll_back_release(
        &self,
        id: i64,
        target: i64,
        signed: Option<(&str, &str)>,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<()>;
    /// Stores a dashboard session, deleting those expired by `now`.
    async fn insert_ui_session(&self, s: &UiSessionRow, now: Millis) -> StoreResult<()>;
    async fn ui_session(&self, id_hash: &str) -> StoreResult<Option<UiSessionRow>>;
    async fn delete_ui_session(&self, id_hash: &str) -> StoreResult<()>;
    /// Stores a version-mix sample (JSON), deleting those before `keep_since`.
    async fn insert_version_sample(
        &self,
        at: Millis,
        mix_json: &str,
        keep_since: Millis,
    ) -> StoreResult<()>;
    /// The version-mix samples since `since`, oldest first.
    async fn version_samples(&self, since: Millis) -> StoreResult<Vec<(Millis, String)>>;
    /// Whether any release (of any product) has this artifact.
    async fn artifact_in_use(&self, sha256: &str) -> StoreResult<bool>;

    /// Stores a revision and keeps only the newest `keep` of that host and
    /// source.
    async fn insert_config(
        &self,
        hostname: &str,
        source: ConfigSource,
        body: &[u8],
        at: Millis,
        keep: usize,
        audit: Audit<'_>,
    ) -> StoreResult<ConfigRevision>;
    async fn config_history(&self, hostname: &str) -> StoreResult<Vec<ConfigRevision>>;
    async fn config_revision(
        &self,
        hostname: &str,
        revision: i64,
    ) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>>;
    async fn latest_config(
        &self,
        hostname: &str,
        source: Option<ConfigSource>,
    ) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>>;
    async fn hosts_with_config(&self) -> StoreResult<Vec<String>>;

    /// Adds a license key (a no-op when it exists, revoked or not).
    async fn add_agent_token(
        &self,
        hash: &str,
        label: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<()>;
    async fn agent_tokens(&self) -> StoreResult<Vec<String>>;
    async fn add_operator_token(
        &self,
        hash: &str,
        label: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<()>;
    /// Replaces the live operator tokens labelled `label` with a new one
    /// (`hash`), in one transaction: the new row, the old rows revoked at
    /// `at`, and the audit entry. Returns how many were revoked; 0 (and
    /// nothing written) when no live operator token has that label.
    async fn rotate_operator_tokens(
        &self,
        label: &str,
        hash: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<u64>;
    /// (hash, label) of every operator token.
    async fn operator_tokens(&self) -> StoreResult<Vec<(String, String)>>;
    /// Every token, revoked ones too.
    async fn tokens(&self) -> StoreResult<Vec<TokenRow>>;
    /// Revokes one token; false when there is no such live token.
    async fn revoke_token(
        &self,
        kind: TokenKind,
        id: i64,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<bool>;
    /// Records a new host token for `hostname`; `None` (nothing written)
    /// when the name already has a live one.
    async fn enroll_host(
        &self,
        hostname: &str,
        hash: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<Option<i64>>;
    /// Records when tokens were last used: (kind, id, at), in one
    /// transaction; a time never moves backwards.
    async fn touch_tokens(&self, used: &[(TokenKind, i64, Millis)]) -> StoreResult<()>;
    /// Records one operator action on its own (one that changes nothing
    /// else stored); answered after it is durable. An action that writes
    /// passes its entry to that write instead (`Audit`).
    async fn insert_audit(&self, e: &AuditEntry) -> StoreResult<i64>;
    /// The newest `limit` audit entries, newest first.
    async fn audit(&self, limit: u32) -> StoreResult<Vec<(i64, AuditEntry)>>;
}
