//! The embedded SQLite store: one file (`palette.db`) in the data dir, WAL
//! journal, `synchronous=FULL`, migrations embedded in the binary.
//!
//! Every write runs in an explicit transaction on a connection of its own
//! and returns only after `COMMIT` succeeded (and, with `synchronous=FULL`,
//! was synced), so a failed commit is never acknowledged. A connection that
//! saw any error is closed instead of going back to the pool: a transaction
//! SQLite left half-open (it may or may not roll back on SQLITE_FULL) can
//! never poison a later request, and the pool heals itself with fresh
//! connections once the disk does.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use palette_protocol::timefmt::{rfc3339_millis, Millis};
use palette_protocol::v2::{
    CommandAck, CommandKind, ConfigRevision, ConfigSource, HostUpdate, Outcome, ReleaseKind,
    Target, UpdateReport,
};
use palette_protocol::Version;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, Sqlite, SqlitePool};

use crate::store::{
    Audit, AuditEntry, CommandRow, HostRow, MemberRecord, NewRelease, OutageLog, RolloutRecord,
    Store, StoreError, StoreResult, TokenKind, TokenRow, UiSessionRow,
};

/// Runs `body` (which uses the transaction `tx`) in a write transaction on
/// a connection of its own, commits, and ends through `finish`: the value
/// is returned only after `COMMIT` succeeded, and a connection that saw an
/// error is closed, never reused.
macro_rules! write_tx {
    ($store:expr, |$tx:ident| $body:block) => {{
        let mut conn = $store.conn().await?;
        let r = async {
            let mut $tx = conn.begin().await?;
            let out = $body;
            $tx.commit().await?;
            Ok::<_, sqlx::Error>(out)
        }
        .await;
        $store.finish(conn, r)
    }};
}

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "store identity",
        include_str!("../migrations/sqlite/0002_store_identity.sql"),
    ),
    (
        3,
        "release withdrawal",
        include_str!("../migrations/sqlite/0003_release_withdrawal.sql"),
    ),
    (
        4,
        "release manifest",
        include_str!("../migrations/sqlite/0004_release_manifest.sql"),
    ),
    (
        5,
        "audit",
        include_str!("../migrations/sqlite/0005_audit.sql"),
    ),
    (
        6,
        "token lifecycle",
        include_str!("../migrations/sqlite/0006_token_lifecycle.sql"),
    ),
    (
        7,
        "host tokens",
        include_str!("../migrations/sqlite/0007_host_tokens.sql"),
    ),
    (
        8,
        "command legacy ts",
        include_str!("../migrations/sqlite/0008_command_legacy_ts.sql"),
    ),
    (
        9,
        "update history",
        include_str!("../migrations/sqlite/0009_update_history.sql"),
    ),
    (
        10,
        "release rollback",
        include_str!("../migrations/sqlite/0010_release_rollback.sql"),
    ),
    (
        11,
        "rollouts",
        include_str!("../migrations/sqlite/0011_rollouts.sql"),
    ),
    (
        12,
        "ui sessions and version samples",
        include_str!("../migrations/sqlite/0012_ui_sessions.sql"),
    ),
];

/// Inserts or replaces a rollout's members.
/// Stores an operator write's audit entry in the write's own transaction
/// (`{id}` in its detail standing for `id`): both are stored or neither.
async fn put_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    audit: Audit<'_>,
    id: Option<i64>,
) -> Result<(), sqlx::Error> {
    let Some(e) = audit else {
        return Ok(());
    };
    let e = match id {
        Some(id) => e.with_id(id),
        None => e.clone(),
    };
    sqlx::query("INSERT INTO audit (at, actor, source, action, detail) VALUES (?, ?, ?, ?, ?)")
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.source)
        .bind(&e.action)
        .bind(&e.detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn put_members(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rollout: i64,
    members: &[MemberRecord],
) -> Result<(), sqlx::Error> {
    for m in members {
        sqlx::query(
            "INSERT OR REPLACE INTO rollout_members
               (rollout_id, hostname, position, wave, admitted_at, outcome, finished_at, message)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(rollout)
        .bind(&m.hostname)
        .bind(m.position)
        .bind(m.wave)
        .bind(m.admitted_at)
        .bind(&m.outcome)
        .bind(m.finished_at)
        .bind(&m.message)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Update outcomes kept per host and product (older ones are deleted).
const UPDATE_HISTORY_KEPT: i64 = 200;

pub struct SqliteStore {
    pool: SqlitePool,
    id: String,
    writes: OutageLog,
    reads: OutageLog,
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

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open(path: &Path) -> StoreResult<Self> {
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
        let migrator = Migrator {
            migrations: Cow::Owned(
                MIGRATIONS
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
        migrator.run(&pool).await?;
        sqlx::query(
            "INSERT INTO store_meta (key, value) VALUES ('store_id', ?) ON CONFLICT DO NOTHING",
        )
        .bind(new_uuid())
        .execute(&pool)
        .await?;
        let id: String = sqlx::query_scalar("SELECT value FROM store_meta WHERE key = 'store_id'")
            .fetch_one(&pool)
            .await?;
        Ok(SqliteStore {
            pool,
            id,
            writes: OutageLog::default(),
            reads: OutageLog::default(),
        })
    }

    async fn conn(&self) -> StoreResult<PoolConnection<Sqlite>> {
        let r = self.pool.acquire().await.map_err(StoreError::from);
        self.writes.observe("writes", r)
    }

    /// Ends a write: a connection that saw an error is closed, never reused
    /// (closing rolls back whatever SQLite left open).
    fn finish<T, E: Into<StoreError>>(
        &self,
        mut conn: PoolConnection<Sqlite>,
        r: Result<T, E>,
    ) -> StoreResult<T> {
        if r.is_err() {
            conn.close_on_drop();
        }
        self.writes.observe("writes", r.map_err(Into::into))
    }

    fn read<T>(&self, r: Result<T, sqlx::Error>) -> StoreResult<T> {
        self.reads.observe("reads", r.map_err(StoreError::from))
    }
}

fn command_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<CommandRow> {
    let kind: String = row.try_get("kind")?;
    let target: String = row.try_get("target")?;
    Ok(CommandRow {
        id: row.try_get("id")?,
        kind: CommandKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("command kind {kind:?}")))?,
        target: serde_json::from_str(&target)
            .map_err(|_| StoreError::Corrupt(format!("command target {target:?}")))?,
        issued_at: row.try_get("issued_at")?,
        legacy_ts: match row.try_get::<Option<i64>, _>("legacy_ts")? {
            Some(ts) => ts,
            None => row.try_get("issued_at")?,
        },
        expires_at: row.try_get("expires_at")?,
    })
}

fn config_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<ConfigRevision> {
    let source: String = row.try_get("source")?;
    Ok(ConfigRevision {
        revision: row.try_get("revision")?,
        hostname: row.try_get("hostname")?,
        source: match source.as_str() {
            "desired" => ConfigSource::Desired,
            "reported" => ConfigSource::Reported,
            other => return Err(StoreError::Corrupt(format!("config source {other:?}"))),
        },
        sha256: row.try_get("sha256")?,
        size: row.try_get::<i64, _>("size")? as u64,
        created_at: rfc3339_millis(row.try_get("created_at")?),
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait]
impl Store for SqliteStore {
    fn store_id(&self) -> &str {
        &self.id
    }

    async fn ping(&self) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO store_meta (key, value) VALUES ('ready_probe', ?)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(crate::state::now_ms().to_string())
            .execute(&mut *tx)
            .await?;
        })
    }

    async fn upsert_heartbeats(
        &self,
        beats: &[(String, Millis, Option<String>)],
    ) -> StoreResult<()> {
        write_tx!(self, |tx| {
            for (host, at, report) in beats {
                match report {
                    None => {
                        sqlx::query(
                            "INSERT INTO hosts (hostname, first_seen, last_seen) VALUES (?1, ?2, ?2)
                             ON CONFLICT (hostname) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
                        )
                        .bind(host)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Some(report) => {
                        sqlx::query(
                            "INSERT INTO hosts (hostname, first_seen, last_seen, report, report_at) VALUES (?1, ?3, ?3, ?2, ?3)
                             ON CONFLICT (hostname) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen),
                                 report = excluded.report, report_at = excluded.report_at",
                        )
                        .bind(host)
                        .bind(report)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
        })
    }

    async fn load_hosts(&self) -> StoreResult<Vec<HostRow>> {
        let rows = self.read(
            sqlx::query("SELECT hostname, first_seen, last_seen, report FROM hosts")
                .fetch_all(&self.pool)
                .await,
        )?;
        rows.iter()
            .map(|r| {
                Ok(HostRow {
                    hostname: r.try_get("hostname")?,
                    first_seen: r.try_get("first_seen")?,
                    last_seen: r.try_get("last_seen")?,
                    report: r.try_get("report")?,
                })
            })
            .collect()
    }

    async fn retire_host(&self, hostname: &str, audit: Audit<'_>) -> StoreResult<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query("DELETE FROM hosts WHERE hostname = ?")
                .bind(hostname)
                .execute(&mut *tx)
                .await?;
            let done = done.rows_affected() > 0;
            if done {
                put_audit(&mut tx, audit, None).await?;
            }
            done
        })
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
        let target_json = serde_json::to_string(target).expect("target serialises");
        let id = write_tx!(self, |tx| {
            let id = sqlx::query(
                "INSERT INTO commands (kind, target, issued_at, legacy_ts, expires_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(kind.as_str())
            .bind(&target_json)
            .bind(issued_at)
            .bind(legacy_ts)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?
            .last_insert_rowid();
            put_audit(&mut tx, audit, Some(id)).await?;
            id
        })?;
        Ok(CommandRow {
            id,
            kind,
            target: target.clone(),
            issued_at,
            legacy_ts,
            expires_at,
        })
    }

    async fn command(&self, id: i64) -> StoreResult<Option<CommandRow>> {
        let row = self.read(
            sqlx::query("SELECT * FROM commands WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await,
        )?;
        row.as_ref().map(command_from_row).transpose()
    }

    async fn recent_commands(&self, limit: i64) -> StoreResult<Vec<CommandRow>> {
        let rows = self.read(
            sqlx::query("SELECT * FROM commands ORDER BY id DESC LIMIT ?")
                .bind(limit)
                .fetch_all(&self.pool)
                .await,
        )?;
        rows.iter().map(command_from_row).collect()
    }

    async fn record_ack(&self, ack: &CommandAck, at: Millis) -> StoreResult<bool> {
        let outcome = match ack.outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        };
        write_tx!(self, |tx| {
            let done = sqlx::query(
            "INSERT INTO command_acks (command_id, hostname, outcome, message, at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(ack.id)
        .bind(&ack.hostname)
        .bind(outcome)
        .bind(&ack.message)
        .bind(at)
        .execute(&mut *tx)
        .await?;
            done.rows_affected() == 1
        })
    }

    async fn record_acks(&self, acks: &[(CommandAck, Millis)]) -> StoreResult<Vec<bool>> {
        write_tx!(self, |tx| {
            let mut out = Vec::with_capacity(acks.len());
            for (ack, at) in acks {
                let done = sqlx::query(
                    "INSERT INTO command_acks (command_id, hostname, outcome, message, at) VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT DO NOTHING",
                )
                .bind(ack.id)
                .bind(&ack.hostname)
                .bind(match ack.outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::Failed => "failed",
                })
                .bind(&ack.message)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                out.push(done.rows_affected() == 1);
            }
            out
        })
    }

    async fn acks_for_command(&self, id: i64) -> StoreResult<Vec<CommandAck>> {
        let rows = self.read(
            sqlx::query("SELECT * FROM command_acks WHERE command_id = ? ORDER BY at")
                .bind(id)
                .fetch_all(&self.pool)
                .await,
        )?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get("outcome")?;
                Ok(CommandAck {
                    id: r.try_get("command_id")?,
                    hostname: r.try_get("hostname")?,
                    outcome: if outcome == "succeeded" {
                        Outcome::Succeeded
                    } else {
                        Outcome::Failed
                    },
                    message: r.try_get("message")?,
                    at: rfc3339_millis(r.try_get("at")?),
                })
            })
            .collect()
    }

    async fn host_acks(
        &self,
        hostname: &str,
        limit: u32,
    ) -> StoreResult<Vec<(CommandKind, CommandAck)>> {
        let rows = self.read(
            sqlx::query(
                "SELECT a.command_id, a.hostname, a.outcome, a.message, a.at, c.kind \
                 FROM command_acks a JOIN commands c ON c.id = a.command_id \
                 WHERE a.hostname = ? ORDER BY a.at DESC, a.command_id DESC LIMIT ?",
            )
            .bind(hostname)
            .bind(limit)
            .fetch_all(&self.pool)
            .await,
        )?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                let outcome: String = r.try_get("outcome")?;
                Ok((
                    CommandKind::parse(&kind).unwrap_or(CommandKind::Unknown),
                    CommandAck {
                        id: r.try_get("command_id")?,
                        hostname: r.try_get("hostname")?,
                        outcome: if outcome == "succeeded" {
                            Outcome::Succeeded
                        } else {
                            Outcome::Failed
                        },
                        message: r.try_get("message")?,
                        at: rfc3339_millis(r.try_get("at")?),
                    },
                ))
            })
            .collect()
    }

    async fn record_updates(
        &self,
        updates: &[(String, String, UpdateReport, Millis)],
    ) -> StoreResult<()> {
        if updates.is_empty() {
            return Ok(());
        }
        write_tx!(self, |tx| {
            for (hostname, product, u, at) in updates {
                let outcome = match u.outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::Failed => "failed",
                };
                // The same outcome reported again (every check-in carries
                // it, and a restarted server has forgotten it saw it): one
                // row.
                let done = sqlx::query(
                    "INSERT INTO update_history (hostname, product, release_id, version, outcome, message, at)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE NOT EXISTS (
                       SELECT 1 FROM (SELECT release_id, outcome, message FROM update_history
                                      WHERE hostname = ?1 AND product = ?2 ORDER BY id DESC LIMIT 1) l
                       WHERE l.release_id = ?3 AND l.outcome = ?5 AND l.message = ?6)",
                )
                .bind(hostname)
                .bind(product)
                .bind(u.release_id)
                .bind(u.version.to_string())
                .bind(outcome)
                .bind(&u.message)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 1 {
                    sqlx::query(
                        "DELETE FROM update_history WHERE hostname = ?1 AND product = ?2 AND id <=
                           (SELECT id FROM update_history WHERE hostname = ?1 AND product = ?2
                            ORDER BY id DESC LIMIT 1 OFFSET ?3)",
                    )
                    .bind(hostname)
                    .bind(product)
                    .bind(UPDATE_HISTORY_KEPT)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        })
    }

    async fn update_history(&self, hostname: &str, limit: u32) -> StoreResult<Vec<HostUpdate>> {
        let rows = self.read(
            sqlx::query(
                "SELECT product, release_id, version, outcome, message, at FROM update_history
                 WHERE hostname = ? ORDER BY id DESC LIMIT ?",
            )
            .bind(hostname)
            .bind(limit)
            .fetch_all(&self.pool)
            .await,
        )?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get("outcome")?;
                let version: String = r.try_get("version")?;
                Ok(HostUpdate {
                    product: r.try_get("product")?,
                    release_id: r.try_get("release_id")?,
                    version: version.parse().map_err(|_| {
                        StoreError::Corrupt(format!("update_history version {version:?}"))
                    })?,
                    outcome: if outcome == "succeeded" {
                        Outcome::Succeeded
                    } else {
                        Outcome::Failed
                    },
                    message: r.try_get("message")?,
                    at: rfc3339_millis(r.try_get("at")?),
                })
            })
            .collect()
    }

    async fn acked_by_host(&self, hostname: &str, ids: &[i64]) -> StoreResult<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        // `list` holds integers only: safe to inline.
        let sql = format!(
            "SELECT command_id FROM command_acks WHERE hostname = ? AND command_id IN ({list})"
        );
        self.read(
            sqlx::query_scalar(&sql)
                .bind(hostname)
                .fetch_all(&self.pool)
                .await,
        )
    }

    async fn insert_release(&self, r: &NewRelease, audit: Audit<'_>) -> StoreResult<i64> {
        let mut conn = self.conn().await?;
        let res = async {
            let mut tx = conn.begin().await?;
            let id = sqlx::query(
                "INSERT INTO releases (product, version, platform, kind, sha256, md5, size, signature, manifest, created_at, held)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&r.product)
            .bind(r.version.to_string())
            .bind(&r.platform)
            .bind(r.kind.as_str())
            .bind(&r.sha256)
            .bind(&r.md5)
            .bind(r.size as i64)
            .bind(&r.signature)
            .bind(&r.manifest)
            .bind(r.created_at)
            .bind(r.held as i64)
            .execute(&mut *tx)
            .await?
            .last_insert_rowid();
            put_audit(&mut tx, audit, Some(id)).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(id)
        }
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!(
                    "release {} {} {} {}",
                    r.product,
                    r.version,
                    r.platform,
                    r.kind.as_str()
                ))
            } else {
                e.into()
            }
        });
        self.finish(conn, res)
    }

    async fn releases(&self) -> StoreResult<Vec<(i64, NewRelease)>> {
        let rows = self.read(
            sqlx::query("SELECT * FROM releases ORDER BY id")
                .fetch_all(&self.pool)
                .await,
        )?;
        rows.iter()
            .map(|r| {
                let version: String = r.try_get("version")?;
                let kind: String = r.try_get("kind")?;
                Ok((
                    r.try_get("id")?,
                    NewRelease {
                        product: r.try_get("product")?,
                        version: Version::from_str(&version).map_err(|_| {
                            StoreError::Corrupt(format!("release version {version:?}"))
                        })?,
                        platform: r.try_get("platform")?,
                        kind: ReleaseKind::parse(&kind)
                            .ok_or_else(|| StoreError::Corrupt(format!("release kind {kind:?}")))?,
                        sha256: r.try_get("sha256")?,
                        md5: r.try_get("md5")?,
                        size: r.try_get::<i64, _>("size")? as u64,
                        signature: r.try_get("signature")?,
                        manifest: r.try_get("manifest")?,
                        created_at: r.try_get("created_at")?,
                        withdrawn_at: r.try_get("withdrawn_at")?,
                        rolled_back_at: r.try_get("rolled_back_at")?,
                        held: r.try_get::<i64, _>("held")? != 0,
                    },
                ))
            })
            .collect()
    }

    async fn withdraw_release(&self, id: i64, at: Millis, audit: Audit<'_>) -> StoreResult<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query(
                "UPDATE releases SET withdrawn_at = coalesce(withdrawn_at, ?) WHERE id = ?",
            )
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let done = done.rows_affected() == 1;
            if done {
                put_audit(&mut tx, audit, None).await?;
            }
            done
        })
    }

    async fn roll_back_release(
        &self,
        id: i64,
        target: i64,
        signed: Option<(&str, &str)>,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "UPDATE releases SET withdrawn_at = coalesce(withdrawn_at, ?1),
                 rolled_back_at = coalesce(rolled_back_at, ?1) WHERE id = ?2",
            )
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if let Some((manifest, signature)) = signed {
                sqlx::query("UPDATE releases SET manifest = ?, signature = ? WHERE id = ?")
                    .bind(manifest)
                    .bind(signature)
                    .bind(target)
                    .execute(&mut *tx)
                    .await?;
            }
            put_audit(&mut tx, audit, None).await?;
        })
    }

    async fn set_release_held(&self, id: i64, held: bool) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query("UPDATE releases SET held = ? WHERE id = ?")
                .bind(held as i64)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        })
    }

    async fn insert_rollout(
        &self,
        r: &RolloutRecord,
        members: &[MemberRecord],
        audit: Audit<'_>,
    ) -> StoreResult<i64> {
        write_tx!(self, |tx| {
            let id = sqlx::query(
                "INSERT INTO rollouts (release_id, selector, waves, soak_ms, halt_after, max_concurrent,
                   phase, wave, wave_started_at, reason, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(r.release_id)
            .bind(&r.selector)
            .bind(&r.waves)
            .bind(r.soak_ms)
            .bind(&r.halt_after)
            .bind(r.max_concurrent as i64)
            .bind(&r.phase)
            .bind(r.wave)
            .bind(r.wave_started_at)
            .bind(&r.reason)
            .bind(r.created_at)
            .execute(&mut *tx)
            .await?
            .last_insert_rowid();
            put_members(&mut tx, id, members).await?;
            put_audit(&mut tx, audit, Some(id)).await?;
            id
        })
    }

    async fn update_rollout(&self, r: &RolloutRecord, audit: Audit<'_>) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "UPDATE rollouts SET phase = ?, wave = ?, wave_started_at = ?, reason = ? WHERE id = ?",
            )
            .bind(&r.phase)
            .bind(r.wave)
            .bind(r.wave_started_at)
            .bind(&r.reason)
            .bind(r.id)
            .execute(&mut *tx)
            .await?;
            put_audit(&mut tx, audit, None).await?;
        })
    }

    async fn save_members(&self, rollout: i64, members: &[MemberRecord]) -> StoreResult<()> {
        if members.is_empty() {
            return Ok(());
        }
        write_tx!(self, |tx| {
            put_members(&mut tx, rollout, members).await?;
        })
    }

    async fn load_rollouts(&self) -> StoreResult<Vec<(RolloutRecord, Vec<MemberRecord>)>> {
        let rows = self.read(
            sqlx::query("SELECT * FROM rollouts ORDER BY id")
                .fetch_all(&self.pool)
                .await,
        )?;
        let mut out = Vec::new();
        for r in rows {
            let id: i64 = r.try_get("id")?;
            let members = self.read(
                sqlx::query("SELECT * FROM rollout_members WHERE rollout_id = ? ORDER BY position")
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await,
            )?;
            let members = members
                .iter()
                .map(|m| {
                    Ok(MemberRecord {
                        hostname: m.try_get("hostname")?,
                        position: m.try_get("position")?,
                        wave: m.try_get("wave")?,
                        admitted_at: m.try_get("admitted_at")?,
                        outcome: m.try_get("outcome")?,
                        finished_at: m.try_get("finished_at")?,
                        message: m.try_get("message")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            out.push((
                RolloutRecord {
                    id,
                    release_id: r.try_get("release_id")?,
                    selector: r.try_get("selector")?,
                    waves: r.try_get("waves")?,
                    soak_ms: r.try_get("soak_ms")?,
                    halt_after: r.try_get("halt_after")?,
                    max_concurrent: r.try_get::<i64, _>("max_concurrent")?.max(0) as u32,
                    phase: r.try_get("phase")?,
                    wave: r.try_get("wave")?,
                    wave_started_at: r.try_get("wave_started_at")?,
                    reason: r.try_get("reason")?,
                    created_at: r.try_get("created_at")?,
                },
                members,
            ));
        }
        Ok(out)
    }

    async fn set_host_labels(
        &self,
        hostname: &str,
        labels_json: &str,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query("INSERT OR REPLACE INTO host_labels (hostname, labels) VALUES (?, ?)")
                .bind(hostname)
                .bind(labels_json)
                .execute(&mut *tx)
                .await?;
            put_audit(&mut tx, audit, None).await?;
        })
    }

    async fn load_host_labels(
        &self,
    ) -> StoreResult<Vec<(String, palette_protocol::selector::Labels)>> {
        let rows = self.read(
            sqlx::query("SELECT hostname, labels FROM host_labels")
                .fetch_all(&self.pool)
                .await,
        )?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get("labels")?;
                let labels = serde_json::from_str(&text)
                    .map_err(|_| StoreError::Corrupt(format!("host labels {text:?}")))?;
                Ok((r.try_get("hostname")?, labels))
            })
            .collect()
    }

    async fn insert_pin(
        &self,
        p: &crate::rollouts::Pin,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<i64> {
        write_tx!(self, |tx| {
            let id = sqlx::query(
                "INSERT INTO pins (selector, product, version, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&p.selector)
            .bind(&p.product)
            .bind(p.version.to_string())
            .bind(at)
            .execute(&mut *tx)
            .await?
            .last_insert_rowid();
            put_audit(&mut tx, audit, Some(id)).await?;
            id
        })
    }

    async fn delete_pin(&self, id: i64, audit: Audit<'_>) -> StoreResult<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query("DELETE FROM pins WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if done {
                put_audit(&mut tx, audit, None).await?;
            }
            done
        })
    }

    async fn load_pins(&self) -> StoreResult<Vec<crate::rollouts::Pin>> {
        let rows = self.read(
            sqlx::query("SELECT * FROM pins ORDER BY id")
                .fetch_all(&self.pool)
                .await,
        )?;
        rows.iter()
            .map(|r| {
                let version: String = r.try_get("version")?;
                Ok(crate::rollouts::Pin {
                    id: r.try_get("id")?,
                    selector: r.try_get("selector")?,
                    product: r.try_get("product")?,
                    version: version
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("pin version {version:?}")))?,
                    created_at: rfc3339_millis(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    async fn insert_window(
        &self,
        w: &crate::rollouts::WindowInfo,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<i64> {
        write_tx!(self, |tx| {
            let id = sqlx::query(
                "INSERT INTO maintenance_windows (selector, schedule, tz, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&w.selector)
            .bind(&w.schedule)
            .bind(&w.tz)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .last_insert_rowid();
            put_audit(&mut tx, audit, Some(id)).await?;
            id
        })
    }

    async fn delete_window(&self, id: i64, audit: Audit<'_>) -> StoreResult<bool> {
        write_tx!(self, |tx| {
            let done = sqlx::query("DELETE FROM maintenance_windows WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if done {
                put_audit(&mut tx, audit, None).await?;
            }
            done
        })
    }

    async fn load_windows(&self) -> StoreResult<Vec<crate::rollouts::WindowInfo>> {
        let rows = self.read(
            sqlx::query("SELECT * FROM maintenance_windows ORDER BY id")
                .fetch_all(&self.pool)
                .await,
        )?;
        rows.iter()
            .map(|r| {
                Ok(crate::rollouts::WindowInfo {
                    id: r.try_get("id")?,
                    selector: r.try_get("selector")?,
                    schedule: r.try_get("schedule")?,
                    tz: r.try_get("tz")?,
                    created_at: rfc3339_millis(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    async fn insert_ui_session(&self, s: &UiSessionRow, now: Millis) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= ?")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO ui_sessions (id_hash, token_hash, csrf, expires_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&s.id_hash)
            .bind(&s.token_hash)
            .bind(&s.csrf)
            .bind(s.expires_at)
            .execute(&mut *tx)
            .await?;
        })
    }

    async fn ui_session(&self, id_hash: &str) -> StoreResult<Option<UiSessionRow>> {
        let row = self.read(
            sqlx::query("SELECT * FROM ui_sessions WHERE id_hash = ?")
                .bind(id_hash)
                .fetch_optional(&self.pool)
                .await,
        )?;
        row.map(|r| {
            Ok(UiSessionRow {
                id_hash: r.try_get("id_hash")?,
                token_hash: r.try_get("token_hash")?,
                csrf: r.try_get("csrf")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    async fn delete_ui_session(&self, id_hash: &str) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query("DELETE FROM ui_sessions WHERE id_hash = ?")
                .bind(id_hash)
                .execute(&mut *tx)
                .await?;
        })
    }

    async fn insert_version_sample(
        &self,
        at: Millis,
        mix_json: &str,
        keep_since: Millis,
    ) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query("DELETE FROM version_samples WHERE at < ?")
                .bind(keep_since)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO version_samples (at, mix) VALUES (?, ?) ON CONFLICT (at) DO NOTHING",
            )
            .bind(at)
            .bind(mix_json)
            .execute(&mut *tx)
            .await?;
        })
    }

    async fn version_samples(&self, since: Millis) -> StoreResult<Vec<(Millis, String)>> {
        let rows = self.read(
            sqlx::query("SELECT at, mix FROM version_samples WHERE at >= ? ORDER BY at")
                .bind(since)
                .fetch_all(&self.pool)
                .await,
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get("at")?, r.try_get("mix")?)))
            .collect()
    }

    async fn artifact_in_use(&self, sha256: &str) -> StoreResult<bool> {
        self.read(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM releases WHERE sha256 = ?)")
                .bind(sha256)
                .fetch_one(&self.pool)
                .await,
        )
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
        let sha = hex::encode(Sha256::digest(body));
        let revision = write_tx!(self, |tx| {
            let revision = sqlx::query(
            "INSERT INTO configs (hostname, source, sha256, size, body, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(hostname)
        .bind(source.as_str())
        .bind(&sha)
        .bind(body.len() as i64)
        .bind(body)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
            sqlx::query(
                "DELETE FROM configs WHERE hostname = ?1 AND source = ?2 AND revision NOT IN
             (SELECT revision FROM configs WHERE hostname = ?1 AND source = ?2
              ORDER BY revision DESC LIMIT ?3)",
            )
            .bind(hostname)
            .bind(source.as_str())
            .bind(keep.max(1) as i64)
            .execute(&mut *tx)
            .await?;
            put_audit(&mut tx, audit, Some(revision)).await?;
            revision
        })?;
        Ok(ConfigRevision {
            revision,
            hostname: hostname.to_string(),
            source,
            sha256: sha,
            size: body.len() as u64,
            created_at: rfc3339_millis(at),
        })
    }

    async fn config_history(&self, hostname: &str) -> StoreResult<Vec<ConfigRevision>> {
        let rows = self.read(
            sqlx::query(
                "SELECT revision, hostname, source, sha256, size, created_at FROM configs
                 WHERE hostname = ? ORDER BY revision DESC",
            )
            .bind(hostname)
            .fetch_all(&self.pool)
            .await,
        )?;
        rows.iter().map(config_from_row).collect()
    }

    async fn config_revision(
        &self,
        hostname: &str,
        revision: i64,
    ) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>> {
        let row = self.read(
            sqlx::query("SELECT * FROM configs WHERE hostname = ? AND revision = ?")
                .bind(hostname)
                .bind(revision)
                .fetch_optional(&self.pool)
                .await,
        )?;
        row.map(|r| Ok((config_from_row(&r)?, r.try_get("body")?)))
            .transpose()
    }

    async fn latest_config(
        &self,
        hostname: &str,
        source: Option<ConfigSource>,
    ) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>> {
        let row = self.read(match source {
            Some(s) => {
                sqlx::query(
                    "SELECT * FROM configs WHERE hostname = ? AND source = ? ORDER BY revision DESC LIMIT 1",
                )
                .bind(hostname)
                .bind(s.as_str())
                .fetch_optional(&self.pool)
                .await
            }
            None => {
                sqlx::query("SELECT * FROM configs WHERE hostname = ? ORDER BY revision DESC LIMIT 1")
                    .bind(hostname)
                    .fetch_optional(&self.pool)
                    .await
            }
        })?;
        row.map(|r| Ok((config_from_row(&r)?, r.try_get("body")?)))
            .transpose()
    }

    async fn hosts_with_config(&self) -> StoreResult<Vec<String>> {
        self.read(
            sqlx::query_scalar("SELECT DISTINCT hostname FROM configs")
                .fetch_all(&self.pool)
                .await,
        )
    }

    async fn add_agent_token(
        &self,
        hash: &str,
        label: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO agent_tokens (hash, label, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(hash)
            .bind(label)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            put_audit(&mut tx, audit, None).await?;
        })
    }

    async fn agent_tokens(&self) -> StoreResult<Vec<String>> {
        self.read(
            sqlx::query_scalar("SELECT hash FROM agent_tokens WHERE revoked_at IS NULL")
                .fetch_all(&self.pool)
                .await,
        )
    }

    async fn add_operator_token(
        &self,
        hash: &str,
        label: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        write_tx!(self, |tx| {
            sqlx::query("INSERT INTO operator_tokens (hash, label, created_at) VALUES (?, ?, ?)")
                .bind(hash)
                .bind(label)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            put_audit(&mut tx, audit, None).await?;
        })
    }

    async fn rotate_operator_tokens(
        &self,
        label: &str,
        hash: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<u64> {
        write_tx!(self, |tx| {
            // The old ones first: the new row has the same label.
            let revoked = sqlx::query(
                "UPDATE operator_tokens SET revoked_at = ? WHERE label = ? AND revoked_at IS NULL",
            )
            .bind(at)
            .bind(label)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if revoked > 0 {
                sqlx::query(
                    "INSERT INTO operator_tokens (hash, label, created_at) VALUES (?, ?, ?)",
                )
                .bind(hash)
                .bind(label)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                put_audit(&mut tx, audit, None).await?;
            }
            revoked
        })
    }

    async fn operator_tokens(&self) -> StoreResult<Vec<(String, String)>> {
        self.read(
            sqlx::query_as("SELECT hash, label FROM operator_tokens WHERE revoked_at IS NULL")
                .fetch_all(&self.pool)
                .await,
        )
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRow>> {
        type Row = (i64, String, Option<String>, i64, Option<i64>, Option<i64>);
        let mut all = Vec::new();
        for kind in [TokenKind::Agent, TokenKind::Operator, TokenKind::Host] {
            let sql = match kind {
                TokenKind::Host => "SELECT id, hash, hostname, created_at, revoked_at, last_used FROM host_tokens ORDER BY id".to_string(),
                _ => format!(
                    "SELECT rowid, hash, label, created_at, revoked_at, last_used FROM {} ORDER BY rowid",
                    token_table(kind)
                ),
            };
            let rows: Vec<Row> = self.read(sqlx::query_as(&sql).fetch_all(&self.pool).await)?;
            all.extend(rows.into_iter().map(
                |(id, hash, label, created_at, revoked_at, last_used)| TokenRow {
                    kind,
                    id,
                    hash,
                    label: label.unwrap_or_default(),
                    created_at,
                    revoked_at,
                    last_used,
                },
            ));
        }
        Ok(all)
    }

    async fn revoke_token(
        &self,
        kind: TokenKind,
        id: i64,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE {} SET revoked_at = ? WHERE rowid = ? AND revoked_at IS NULL",
            token_table(kind)
        );
        write_tx!(self, |tx| {
            let done = sqlx::query(&sql)
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let done = done > 0;
            if done {
                put_audit(&mut tx, audit, None).await?;
            }
            done
        })
    }

    async fn enroll_host(
        &self,
        hostname: &str,
        hash: &str,
        at: Millis,
        audit: Audit<'_>,
    ) -> StoreResult<Option<i64>> {
        let mut conn = self.conn().await?;
        let res = async {
            let mut tx = conn.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO host_tokens (hash, hostname, created_at) VALUES (?, ?, ?) \
                 ON CONFLICT (hostname) WHERE revoked_at IS NULL DO NOTHING",
            )
            .bind(hash)
            .bind(hostname)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            let id = (inserted.rows_affected() == 1).then(|| inserted.last_insert_rowid());
            if id.is_some() {
                put_audit(&mut tx, audit, id).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(id)
        }
        .await
        .map_err(StoreError::from);
        self.finish(conn, res)
    }

    async fn touch_tokens(&self, used: &[(TokenKind, i64, Millis)]) -> StoreResult<()> {
        write_tx!(self, |tx| {
            for (kind, id, at) in used {
                let sql = format!(
                    "UPDATE {} SET last_used = ? WHERE rowid = ? AND (last_used IS NULL OR last_used < ?)",
                    token_table(*kind)
                );
                sqlx::query(&sql)
                    .bind(at)
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
        })
    }

    async fn insert_audit(&self, e: &AuditEntry) -> StoreResult<i64> {
        let mut conn = self.conn().await?;
        let res = async {
            let mut tx = conn.begin().await?;
            let id = sqlx::query(
                "INSERT INTO audit (at, actor, source, action, detail) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(e.at)
            .bind(&e.actor)
            .bind(&e.source)
            .bind(&e.action)
            .bind(&e.detail)
            .execute(&mut *tx)
            .await?
            .last_insert_rowid();
            tx.commit().await?;
            Ok::<_, sqlx::Error>(id)
        }
        .await
        .map_err(StoreError::from);
        self.finish(conn, res)
    }

    async fn audit(&self, limit: u32) -> StoreResult<Vec<(i64, AuditEntry)>> {
        let rows: Vec<(i64, i64, String, Option<String>, String, String)> = self.read(
            sqlx::query_as(
                "SELECT id, at, actor, source, action, detail FROM audit ORDER BY id DESC LIMIT ?",
            )
            .bind(limit)
            .fetch_all(&self.pool)
            .await,
        )?;
        Ok(rows
            .into_iter()
            .map(|(id, at, actor, source, action, detail)| {
                (
                    id,
                    AuditEntry {
                        at,
                        actor,
                        source,
                        action,
                        detail,
                    },
                )
            })
            .collect())
    }
}

/// The table a kind of token lives in.
fn token_table(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Agent => "agent_tokens",
        TokenKind::Operator => "operator_tokens",
        TokenKind::Host => "host_tokens",
    }
}
