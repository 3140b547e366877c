//! The `Store` trait: everything the server keeps durably. SQLite is the
//! embedded implementation (`sqlite.rs`); a PostgreSQL one slots in behind
//! the same trait for several replicas.

use async_trait::async_trait;
use palette_protocol::timefmt::Millis;
use palette_protocol::v2::{CommandAck, CommandKind, ConfigRevision, ConfigSource, Target};
use thiserror::Error;

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
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
    pub issued_at: Millis,
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
    pub signature: Option<String>,
    pub created_at: Millis,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records last-contact times for many hosts in one transaction.
    async fn upsert_heartbeats(&self, beats: &[(String, Millis)]) -> StoreResult<()>;
    async fn load_hosts(&self) -> StoreResult<Vec<HostRow>>;
    async fn save_report(&self, hostname: &str, report_json: &str, at: Millis) -> StoreResult<()>;

    async fn insert_command(
        &self,
        kind: CommandKind,
        target: &Target,
        issued_at: Millis,
        expires_at: Millis,
    ) -> StoreResult<CommandRow>;
    async fn command(&self, id: i64) -> StoreResult<Option<CommandRow>>;
    /// The newest `limit` commands, newest first.
    async fn recent_commands(&self, limit: i64) -> StoreResult<Vec<CommandRow>>;
    /// Records an acknowledgement; a second one for the same (command, host)
    /// is ignored (returns false).
    async fn record_ack(&self, ack: &CommandAck, at: Millis) -> StoreResult<bool>;
    async fn acks_for_command(&self, id: i64) -> StoreResult<Vec<CommandAck>>;
    /// Which of `ids` the host has acknowledged.
    async fn acked_by_host(&self, hostname: &str, ids: &[i64]) -> StoreResult<Vec<i64>>;

    async fn insert_release(&self, r: &NewRelease) -> StoreResult<i64>;
    async fn releases(&self) -> StoreResult<Vec<(i64, NewRelease)>>;

    async fn insert_config(
        &self,
        hostname: &str,
        source: ConfigSource,
        body: &[u8],
        at: Millis,
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

    async fn add_agent_token(&self, hash: &str, at: Millis) -> StoreResult<()>;
    async fn agent_tokens(&self) -> StoreResult<Vec<String>>;
    async fn add_operator_token(&self, hash: &str, label: &str, at: Millis) -> StoreResult<()>;
    async fn operator_tokens(&self) -> StoreResult<Vec<String>>;
}
