//! The one implementation of [`Store`] for both databases: [`SqlStore`]
//! over a SQLite or a PostgreSQL pool ([`Db`]). Every query is written once,
//! in portable SQL (`$N` placeholders, `RETURNING`, `ON CONFLICT`), and
//! [`on_db!`] compiles its body once per dialect, so each is checked
//! against both drivers. The submodules hold the bodies, one per concern;
//! this module holds the machinery (transactions, the outage logs, row
//! reading, the store's identity) and the `Store` impl, which only
//! forwards to them.
//!
//! Guarantees every write keeps (through [`write_tx!`]): it runs in an
//! explicit transaction on a connection of its own and answers only after
//! `COMMIT` succeeded (on SQLite, with `synchronous=FULL`, synced); a
//! connection that saw any error is closed, never reused (closing rolls
//! back whatever the database left open, e.g. SQLite on SQLITE_FULL); an
//! operator write's audit entry goes into the same transaction
//! ([`put_audit!`]); every failure is classified (outage, full disk) and
//! logged once per episode ([`OutageLog`]).
//!
//! Must not: spell a query twice, hold dialect-specific SQL (that lives in
//! `super::sqlite` and `super::postgres`, behind [`Db`]'s arms and the
//! [`Batches`] trait), or know anything of HTTP.

use palette_protocol::timefmt::Millis;
use palette_protocol::v2::{
    CommandAck, CommandKind, ConfigRevision, ConfigSource, HostUpdate, Target, UpdateReport,
};
use rand::RngCore;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use sqlx::{Database, Decode, Row, Type};

use super::{
    Audit, AuditEntry, CommandRow, HostRow, MemberRecord, NewRelease, OutageLog, RolloutRecord,
    Store, StoreError, StoreResult, TokenKind, TokenRow, UiSessionRow,
};

/// Runs `$body` with `$pool` bound to the store's pool, whichever dialect
/// it is: the body is written once and compiled for each.
macro_rules! on_db {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.db {
            $crate::store::sql::Db::Sqlite($pool) => $body,
            $crate::store::sql::Db::Postgres($pool, _) => $body,
        }
    };
}

/// Runs `$body` (which uses the transaction `$tx`) in a write transaction
/// on a connection of its own, commits, and ends through
/// [`SqlStore::finish`]: the value is returned only after `COMMIT`
/// succeeded, and a connection that saw an error is closed, never reused.
/// `map_err` turns the failure into the write's own error first.
macro_rules! write_tx {
    ($store:expr, |$tx:ident| $body:block) => {
        write_tx!($store, map_err = $crate::store::StoreError::from, |$tx| {
            $body
        })
    };
    ($store:expr, map_err = $map:expr, |$tx:ident| $body:block) => {
        on_db!($store, |pool| {
            let mut conn = $store.conn(pool).await?;
            let r = async {
                let mut $tx = sqlx::Connection::begin(&mut *conn).await?;
                let out = $body;
                $tx.commit().await?;
                Ok::<_, sqlx::Error>(out)
            }
            .await
            .map_err($map);
            $store.finish(conn, r)
        })
    };
}

/// Stores an operator write's audit entry in the write's own transaction
/// `$tx` (`{id}` in its detail standing for `$id`): both are stored or
/// neither. Nothing for a write no operator asked for (`None`).
macro_rules! put_audit {
    ($tx:ident, $audit:expr, $id:expr) => {
        if let Some(e) = $audit {
            let e = match $id {
                Some(id) => e.with_id(id),
                None => e.clone(),
            };
            sqlx::query(
                "INSERT INTO audit (at, actor, source, action, detail) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(e.at)
            .bind(&e.actor)
            .bind(&e.source)
            .bind(&e.action)
            .bind(&e.detail)
            .execute(&mut *$tx)
            .await?;
        }
    };
}

/// Inserts one acknowledgement on `$conn` (nothing when that command and
/// host have one already): the statement of `record_ack`, and of each row
/// of SQLite's batch.
macro_rules! insert_ack {
    ($conn:expr, $ack:expr, $at:expr) => {
        sqlx::query(
            "INSERT INTO command_acks (command_id, hostname, outcome, message, at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind($ack.id)
        .bind(&$ack.hostname)
        .bind($crate::store::sql::outcome_str($ack.outcome))
        .bind(&$ack.message)
        .bind($at)
        .execute($conn)
        .await
    };
}
pub(crate) use insert_ack;

mod commands;
mod configs;
mod hosts;
mod releases;
mod tokens;

/// The pool of one of the two databases, with what only that one has.
pub(crate) enum Db {
    /// The embedded file (`super::sqlite`).
    Sqlite(SqlitePool),
    /// A database several replicas share (`super::postgres`).
    Postgres(PgPool, super::postgres::Replicas),
}

/// Writes that are one statement per row on SQLite and one statement for
/// the whole batch on PostgreSQL (`UNNEST`): the one real difference in
/// how the two dialects write. Implemented on each driver's connection
/// (in `super::sqlite` and `super::postgres`), called inside a
/// [`write_tx!`] body as `tx.insert_acks(..)`.
pub(crate) trait Batches {
    /// Inserts acknowledgements (a second one for the same command and
    /// host is ignored); for each, whether it was new (the first of two
    /// equal ones in the batch is).
    async fn insert_acks(
        &mut self,
        acks: &[(CommandAck, Millis)],
    ) -> Result<Vec<bool>, sqlx::Error>;
    /// Inserts or replaces these members of a rollout.
    async fn put_members(
        &mut self,
        rollout: i64,
        members: &[MemberRecord],
    ) -> Result<(), sqlx::Error>;
}

/// The store over either database (made by `SqlStore::open_sqlite` or
/// `SqlStore::open_postgres`).
pub struct SqlStore {
    db: Db,
    id: String,
    writes: OutageLog,
    reads: OutageLog,
}

/// A value both drivers decode.
pub(crate) trait Value:
    for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}
impl<T> Value for T where
    T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

/// A row of either database, read by column name: lets a row be turned
/// into a record by one function for both.
pub(crate) trait Fields {
    fn field<T: Value>(&self, column: &str) -> Result<T, sqlx::Error>;
}

impl Fields for SqliteRow {
    fn field<T: Value>(&self, column: &str) -> Result<T, sqlx::Error> {
        self.try_get(column)
    }
}

impl Fields for PgRow {
    fn field<T: Value>(&self, column: &str) -> Result<T, sqlx::Error> {
        self.try_get(column)
    }
}

/// A random UUID (version 4) as text.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A dialect's migrations: (version, description, SQL), embedded.
pub(crate) type Migrations = &'static [(i64, &'static str, &'static str)];

impl SqlStore {
    /// Migrates a freshly connected database and reads its identity
    /// (made at its first open).
    pub(crate) async fn init(db: Db, migrations: Migrations) -> StoreResult<SqlStore> {
        use sqlx::migrate::{Migration, MigrationType, Migrator};
        use std::borrow::Cow;
        let migrator = Migrator {
            migrations: Cow::Owned(
                migrations
                    .iter()
                    .map(|(v, d, sql)| {
                        Migration::new(
                            *v,
                            Cow::Borrowed(d),
                            MigrationType::Simple,
                            Cow::Borrowed(sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        let mut store = SqlStore {
            db,
            id: String::new(),
            writes: OutageLog::default(),
            reads: OutageLog::default(),
        };
        let id: String = on_db!(store, |pool| {
            migrator.run(pool).await?;
            sqlx::query(
                "INSERT INTO store_meta (key, value) VALUES ('store_id', $1) ON CONFLICT DO NOTHING",
            )
            .bind(new_uuid())
            .execute(pool)
            .await?;
            sqlx::query_scalar("SELECT value FROM store_meta WHERE key = 'store_id'")
                .fetch_one(pool)
                .await?
        });
        store.id = id;
        Ok(store)
    }

    /// A connection for a write (an outage if none can be had).
    pub(crate) async fn conn<DB: Database>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> StoreResult<PoolConnection<DB>> {
        let r = pool.acquire().await.map_err(StoreError::from);
        self.writes.observe("writes", r)
    }

    /// Ends a write: a connection that saw an error is closed, never reused
    /// (closing rolls back whatever the database left open).
    pub(crate) fn finish<DB: Database, T, E: Into<StoreError>>(
        &self,
        mut conn: PoolConnection<DB>,
        r: Result<T, E>,
    ) -> StoreResult<T> {
        if r.is_err() {
            conn.close_on_drop();
        }
        self.writes.observe("writes", r.map_err(Into::into))
    }

    /// A read's outcome, classified and logged once per outage.
    pub(crate) fn read<T>(&self, r: Result<T, sqlx::Error>) -> StoreResult<T> {
        self.reads.observe("reads", r.map_err(StoreError::from))
    }

    /// The column naming a token row: SQLite's agent and operator token
    /// tables have no `id` column (their rowid is the id); PostgreSQL's do.
    pub(crate) fn token_id(&self, kind: TokenKind) -> &'static str {
        match (&self.db, kind) {
            (_, TokenKind::Host) => "id",
            (Db::Sqlite(_), _) => "rowid",
            (Db::Postgres(..), _) => "id",
        }
    }
}

/// The text an outcome is stored as.
pub(crate) fn outcome_str(o: palette_protocol::v2::Outcome) -> &'static str {
    match o {
        palette_protocol::v2::Outcome::Succeeded => "succeeded",
        palette_protocol::v2::Outcome::Failed => "failed",
    }
}

#[async_trait::async_trait]
impl Store for SqlStore {
    fn store_id(&self) -> &str {
        &self.id
    }

    fn shared(&self) -> bool {
        matches!(self.db, Db::Postgres(..))
    }

    async fn announce(&self, origin: &str) -> StoreResult<()> {
        match &self.db {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(pool, _) => self.read(super::postgres::announce(pool, origin).await),
        }
    }

    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        match &self.db {
            Db::Sqlite(_) => None,
            Db::Postgres(_, replicas) => Some(replicas.subscribe()),
        }
    }

    async fn try_lead(&self) -> bool {
        match &self.db {
            Db::Sqlite(_) => true,
            Db::Postgres(_, replicas) => replicas.try_lead().await,
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        hosts::ping(self).await
    }

    async fn upsert_heartbeats(
        &self,
        beats: &[(String, Millis, Option<String>)],
    ) -> StoreResult<()> {
        hosts::upsert_heartbeats(self, beats).await
    }

    async fn load_hosts(&self) -> StoreResult<Vec<HostRow>> {
        hosts::load_hosts(self).await
    }

    async fn retire_host(&self, hostname: &str, audit: Audit<'_>) -> StoreResult<bool> {
        hosts::retire_host(self, hostname, audit).await
    }

    async fn insert_command(
        &self,
        kind: CommandKind,
        target: &Target,
        issued_at: Millis,
        legacy_ts: Millis,
        expires_at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<CommandRow> {
        commands::insert_command(self, kind, target, issued_at, legacy_ts, expires_at, audit).await
    }

    async fn command(&self, id: i64) -> StoreResult<Option<CommandRow>> {
        commands::command(self, id).await
    }

    async fn recent_commands(&self, limit: i64) -> StoreResult<Vec<CommandRow>> {
        commands::recent_commands(self, limit).await
    }

    async fn record_ack(&self, ack: &CommandAck, at: Millis) -> StoreResult<bool> {
        commands::record_ack(self, ack, at).await
    }

    async fn record_acks(&self, acks: &[(CommandAck, Millis)]) -> StoreResult<Vec<bool>> {
        commands::record_acks(self, acks).await
    }

    async fn acks_for_command(&self, id: i64) -> StoreResult<Vec<CommandAck>> {
        commands::acks_for_command(self, id).await
    }
    async fn acks_from_command(&self, first_id: i64) -> StoreResult<Vec<CommandAck>> {
        commands::acks_from_command(self, first_id).await
    }

    async fn record_updates(
        &self,
        updates: &[(String, String, UpdateReport, Millis)],
    ) -> StoreResult<()> {
        commands::record_updates(self, updates).await
    }

    async fn update_history(&self, hostname: &str, limit: u32) -> StoreResult<Vec<HostUpdate>> {
        commands::update_history(self, hostname, limit).await
    }

    async fn host_acks(
        &self,
        hostname: &str,
        limit: u32,
    ) -> StoreResult<Vec<(CommandKind, CommandAck)>> {
        commands::host_acks(self, hostname, limit).await
    }

    async fn acked_by_host(&self, hostname: &str, ids: &[i64]) -> StoreResult<Vec<i64>> {
        commands::acked_by_host(self, hostname, ids).await
    }

    async fn insert_release(&self, r: &NewRelease, audit: Audit<'_>) -> StoreResult<i64> {
        releases::insert_release(self, r, audit).await
    }

    async fn releases(&self) -> StoreResult<Vec<(i64, NewRelease)>> {
        releases::releases(self).await
    }

    async fn set_release_held(&self, id: i64, held: bool) -> StoreResult<()> {
        releases::set_release_held(self, id, held).await
    }

    async fn insert_rollout(
        &self,
        r: &RolloutRecord,
        members: &[MemberRecord],
        audit: Audit<'_>,
    ) -> StoreResult<i64> {
        releases::insert_rollout(self, r, members, audit).await
    }

    async fn update_rollout(&self, r: &RolloutRecord, audit: Audit<'_>) -> StoreResult<()> {
        releases::update_rollout(self, r, audit).await
    }

    async fn save_members(&self, rollout: i64, members: &[MemberRecord]) -> StoreResult<()> {
        releases::save_members(self, rollout, members).await
    }

    async fn load_rollouts(&self) -> StoreResult<Vec<(RolloutRecord, Vec<MemberRecord>)>> {
        releases::load_rollouts(self).await
    }

    async fn set_host_labels(
        &self,
        hostname: &str,
        labels_json: &str,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        hosts::set_host_labels(self, hostname, labels_json, audit).await
    }

    async fn load_host_labels(
        &self,
    ) -> StoreResult<Vec<(String, palette_protocol::selector::Labels)>> {
        hosts::load_host_labels(self).await
    }

    async fn insert_pin(
        &self,
        p: &palette_protocol::v2::Pin,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<i64> {
        releases::insert_pin(self, p, at, audit).await
    }

    async fn delete_pin(&self, id: i64, audit: Audit<'_>) -> StoreResult<bool> {
        releases::delete_pin(self, id, audit).await
    }

    async fn load_pins(&self) -> StoreResult<Vec<palette_protocol::v2::Pin>> {
        releases::load_pins(self).await
    }

    async fn insert_window(
        &self,
        w: &palette_protocol::v2::WindowInfo,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<i64> {
        releases::insert_window(self, w, at, audit).await
    }

    async fn delete_window(&self, id: i64, audit: Audit<'_>) -> StoreResult<bool> {
        releases::delete_window(self, id, audit).await
    }

    async fn load_windows(&self) -> StoreResult<Vec<palette_protocol::v2::WindowInfo>> {
        releases::load_windows(self).await
    }

    async fn withdraw_release(&self, id: i64, at: Millis, audit: Audit<'_>) -> StoreResult<bool> {
        releases::withdraw_release(self, id, at, audit).await
    }

    async fn roll_back_release(
        &self,
        id: i64,
        target: i64,
        signed: Option<(&str, &str)>,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        releases::roll_back_release(self, id, target, signed, at, audit).await
    }

    async fn insert_ui_session(&self, s: &UiSessionRow, now: Millis) -> StoreResult<()> {
        configs::insert_ui_session(self, s, now).await
    }

    async fn ui_session(&self, id_hash: &str) -> StoreResult<Option<UiSessionRow>> {
        configs::ui_session(self, id_hash).await
    }

    async fn delete_ui_session(&self, id_hash: &str) -> StoreResult<()> {
        configs::delete_ui_session(self, id_hash).await
    }

    async fn insert_version_sample(
        &self,
        at: Millis,
        mix_json: &str,
        keep_since: Millis,
    ) -> StoreResult<()> {
        configs::insert_version_sample(self, at, mix_json, keep_since).await
    }

    async fn version_samples(&self, since: Millis) -> StoreResult<Vec<(Millis, String)>> {
        configs::version_samples(self, since).await
    }

    async fn artifact_in_use(&self, sha256: &str) -> StoreResult<bool> {
        releases::artifact_in_use(self, sha256).await
    }

    async fn insert_config(
        &self,
        hostname: &str,
        source: ConfigSource,
        body: &[u8],
        at: Millis,
        keep: usize,
        audit: Audit<'_>,
    ) -> StoreResult<ConfigRevision> {
        configs::insert_config(self, hostname, source, body, at, keep, audit).await
    }

    async fn config_history(&self, hostname: &str) -> StoreResult<Vec<ConfigRevision>> {
        configs::config_history(self, hostname).await
    }

    async fn config_revision(
        &self,
        hostname: &str,
        revision: i64,
    ) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>> {
        configs::config_revision(self, hostname, revision).await
    }

    async fn latest_config(
        &self,
        hostname: &str,
        source: Option<ConfigSource>,
    ) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>> {
        configs::latest_config(self, hostname, source).await
    }

    async fn hosts_with_config(&self) -> StoreResult<Vec<String>> {
        configs::hosts_with_config(self).await
    }

    async fn add_agent_token(
        &self,
        hash: &str,
        label: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        tokens::add_agent_token(self, hash, label, at, audit).await
    }

    async fn agent_tokens(&self) -> StoreResult<Vec<String>> {
        tokens::agent_tokens(self).await
    }

    async fn add_operator_token(
        &self,
        hash: &str,
        label: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        tokens::add_operator_token(self, hash, label, at, audit).await
    }

    async fn rotate_operator_tokens(
        &self,
        label: &str,
        hash: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<u64> {
        tokens::rotate_operator_tokens(self, label, hash, at, audit).await
    }

    async fn operator_tokens(&self) -> StoreResult<Vec<(String, String)>> {
        tokens::operator_tokens(self).await
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRow>> {
        tokens::tokens(self).await
    }

    async fn revoke_token(
        &self,
        kind: TokenKind,
        id: i64,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<bool> {
        tokens::revoke_token(self, kind, id, at, audit).await
    }

    async fn enroll_host(
        &self,
        hostname: &str,
        hash: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<Option<i64>> {
        tokens::enroll_host(self, hostname, hash, at, audit).await
    }

    async fn touch_tokens(&self, used: &[(TokenKind, i64, Millis)]) -> StoreResult<()> {
        tokens::touch_tokens(self, used).await
    }

    async fn insert_audit(&self, e: &AuditEntry) -> StoreResult<i64> {
        tokens::insert_audit(self, e).await
    }

    async fn audit(&self, limit: u32) -> StoreResult<Vec<(i64, AuditEntry)>> {
        tokens::audit(self, limit).await
    }
}
