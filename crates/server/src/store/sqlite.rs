//! The SQLite dialect: the embedded store, one file (`palette.db`) in the
//! data dir. Owns what only SQLite has: the connect options (WAL journal,
//! `synchronous=FULL` so a commit is on disk before it is answered, busy
//! timeout, foreign keys, a small pool), its migrations (embedded in the
//! binary), and its per-row form of the batch writes ([`Batches`]).
//!
//! Must not: hold a query both dialects run (those are written once, in
//! `super::sql`), or know anything of HTTP.

use std::path::Path;
use std::time::Duration;

use palette_protocol::timefmt::Millis;
use palette_protocol::v2::CommandAck;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};

use super::sql::{insert_ack, Batches, Db, SqlStore};
use super::{MemberRecord, StoreResult};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "store identity",
        include_str!("../../migrations/sqlite/0002_store_identity.sql"),
    ),
    (
        3,
        "release withdrawal",
        include_str!("../../migrations/sqlite/0003_release_withdrawal.sql"),
    ),
    (
        4,
        "release manifest",
        include_str!("../../migrations/sqlite/0004_release_manifest.sql"),
    ),
    (
        5,
        "audit",
        include_str!("../../migrations/sqlite/0005_audit.sql"),
    ),
    (
        6,
        "token lifecycle",
        include_str!("../../migrations/sqlite/0006_token_lifecycle.sql"),
    ),
    (
        7,
        "host tokens",
        include_str!("../../migrations/sqlite/0007_host_tokens.sql"),
    ),
    (
        8,
        "command legacy ts",
        include_str!("../../migrations/sqlite/0008_command_legacy_ts.sql"),
    ),
    (
        9,
        "update history",
        include_str!("../../migrations/sqlite/0009_update_history.sql"),
    ),
    (
        10,
        "release rollback",
        include_str!("../../migrations/sqlite/0010_release_rollback.sql"),
    ),
    (
        11,
        "rollouts",
        include_str!("../../migrations/sqlite/0011_rollouts.sql"),
    ),
    (
        12,
        "ui sessions and version samples",
        include_str!("../../migrations/sqlite/0012_ui_sessions.sql"),
    ),
];

impl SqlStore {
    /// Opens (creating if needed) the SQLite database file and migrates it.
    pub async fn open_sqlite(path: &Path) -> StoreResult<SqlStore> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(opts)
            .await?;
        SqlStore::init(Db::Sqlite(pool), MIGRATIONS).await
    }
}

/// One statement per row: SQLite has no arrays to batch with, and a row is
/// cheap (no round trip; the commit is the cost, and it is one).
impl Batches for SqliteConnection {
    async fn insert_acks(
        &mut self,
        acks: &[(CommandAck, Millis)],
    ) -> Result<Vec<bool>, sqlx::Error> {
        let mut out = Vec::with_capacity(acks.len());
        for (ack, at) in acks {
            let done = insert_ack!(&mut *self, ack, at)?;
            out.push(done.rows_affected() == 1);
        }
        Ok(out)
    }

    /// Row by row, in the order given (a member given twice: the last
    /// wins).
    async fn put_members(
        &mut self,
        rollout: i64,
        members: &[MemberRecord],
    ) -> Result<(), sqlx::Error> {
        for m in members {
            sqlx::query(
                "INSERT OR REPLACE INTO rollout_members
                   (rollout_id, hostname, position, wave, admitted_at, outcome, finished_at, message)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(rollout)
            .bind(&m.hostname)
            .bind(m.position)
            .bind(m.wave)
            .bind(m.admitted_at)
            .bind(&m.outcome)
            .bind(m.finished_at)
            .bind(&m.message)
            .execute(&mut *self)
            .await?;
        }
        Ok(())
    }
}
