//! The PostgreSQL dialect (`--database postgres://…`): one database that
//! several server replicas share, with the same tables as SQLite. Owns
//! what only PostgreSQL has: the pool, its migrations (embedded; sqlx's
//! migration lock keeps two replicas from migrating at once), the
//! one-statement batch writes (`UNNEST`, [`Batches`]), and the replicas'
//! coordination: change announcements (`LISTEN`/`NOTIFY`) and the
//! leader's advisory lock ([`Replicas`]).
//!
//! Must not: hold a query both dialects run (those are written once, in
//! `super::sql`), or know anything of HTTP. Not here: `palette-server
//! backup` (use `pg_dump`).

use std::time::Duration;

use palette_protocol::timefmt::Millis;
use palette_protocol::v2::CommandAck;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use super::sql::{outcome_str, Batches, Db, SqlStore};
use super::{MemberRecord, StoreResult};

/// The channel replicas announce changes on.
const CHANNEL: &str = "palette_changes";
/// The advisory lock whose holder steps rollouts.
const LEADER_LOCK: i64 = 0x0070_616c_6574_7465;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "schema (as SQLite v11)",
        include_str!("../../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        "ui sessions and version samples (as SQLite v12)",
        include_str!("../../migrations/postgres/0002_ui_sessions.sql"),
    ),
];

impl SqlStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`) and migrates
    /// the database.
    pub async fn open_postgres(url: &str) -> StoreResult<SqlStore> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(15))
            .connect(url)
            .await?;
        let replicas = Replicas {
            url: url.to_string(),
            leader: tokio::sync::Mutex::new(None),
        };
        SqlStore::init(Db::Postgres(pool, replicas), MIGRATIONS).await
    }
}

/// What replicas on one database share beyond the tables.
pub(crate) struct Replicas {
    url: String,
    /// The connection holding the leader's advisory lock, while held.
    leader: tokio::sync::Mutex<Option<PgConnection>>,
}

/// Tells the other replicas that something changed (`origin`: the telling
/// replica).
pub(crate) async fn announce(pool: &PgPool, origin: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(origin)
        .execute(pool)
        .await
        .map(|_| ())
}

impl Replicas {
    /// The other replicas' announcements, listened for on a connection of
    /// its own (reconnecting with backoff; an empty one after a gap).
    pub(crate) fn subscribe(&self) -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let url = self.url.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                let listened = async {
                    let mut l = sqlx::postgres::PgListener::connect(&url).await?;
                    l.listen(CHANNEL).await?;
                    loop {
                        let n = l.recv().await?;
                        if tx.send(n.payload().to_string()).await.is_err() {
                            return Ok::<_, sqlx::Error>(());
                        }
                    }
                }
                .await;
                if tx.is_closed() {
                    return;
                }
                if let Err(e) = listened {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "listening for other replicas failed; the periodic reconciliation covers the gap");
                }
                // A missed notification is covered by the reconciliation;
                // say so to the replica at once.
                let _ = tx.send(String::new()).await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        });
        rx
    }

    /// Whether this replica holds (or now takes) the leader's advisory
    /// lock, on a connection of its own kept while it leads.
    pub(crate) async fn try_lead(&self) -> bool {
        let mut held = self.leader.lock().await;
        if let Some(c) = held.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut *c).await.is_ok() {
                return true;
            }
            // The connection died, and the lock with it.
            *held = None;
        }
        let Ok(mut c) = <PgConnection as sqlx::Connection>::connect(&self.url).await else {
            return false;
        };
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut c)
            .await
            .unwrap_or(false);
        if got {
            tracing::info!("this replica leads the once-only work (rollouts) now");
            *held = Some(c);
        }
        got
    }
}

/// One statement for the whole batch (one round trip, not one per row).
impl Batches for PgConnection {
    async fn insert_acks(
        &mut self,
        acks: &[(CommandAck, Millis)],
    ) -> Result<Vec<bool>, sqlx::Error> {
        let ids: Vec<i64> = acks.iter().map(|(a, _)| a.id).collect();
        let hosts: Vec<&str> = acks.iter().map(|(a, _)| a.hostname.as_str()).collect();
        let outcomes: Vec<&str> = acks.iter().map(|(a, _)| outcome_str(a.outcome)).collect();
        let messages: Vec<&str> = acks.iter().map(|(a, _)| a.message.as_str()).collect();
        let ats: Vec<i64> = acks.iter().map(|(_, at)| *at).collect();
        // The rows it inserted say which were new.
        let inserted: Vec<(i64, String)> = sqlx::query_as(
            "INSERT INTO command_acks (command_id, hostname, outcome, message, at)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[])
             ON CONFLICT DO NOTHING
             RETURNING command_id, hostname",
        )
        .bind(&ids)
        .bind(&hosts)
        .bind(&outcomes)
        .bind(&messages)
        .bind(&ats)
        .fetch_all(&mut *self)
        .await?;
        let mut new: std::collections::HashSet<(i64, String)> = inserted.into_iter().collect();
        // The first of two equal acknowledgements in one batch is the new
        // one.
        Ok(acks
            .iter()
            .map(|(a, _)| new.remove(&(a.id, a.hostname.clone())))
            .collect())
    }

    /// In host-name order (two writers of the same rows then lock them in
    /// the same order and cannot deadlock); a member given twice: the first
    /// wins.
    async fn put_members(
        &mut self,
        rollout: i64,
        members: &[MemberRecord],
    ) -> Result<(), sqlx::Error> {
        let mut sorted: Vec<&MemberRecord> = members.iter().collect();
        sorted.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        sorted.dedup_by(|a, b| a.hostname == b.hostname);
        let col =
            |f: fn(&MemberRecord) -> Option<i64>| sorted.iter().map(|m| f(m)).collect::<Vec<_>>();
        let hosts: Vec<&str> = sorted.iter().map(|m| m.hostname.as_str()).collect();
        let outcomes: Vec<Option<&str>> = sorted.iter().map(|m| m.outcome.as_deref()).collect();
        let messages: Vec<&str> = sorted.iter().map(|m| m.message.as_str()).collect();
        sqlx::query(
            "INSERT INTO rollout_members
               (rollout_id, hostname, position, wave, admitted_at, outcome, finished_at, message)
             SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                                      $6::text[], $7::bigint[], $8::text[])
             ON CONFLICT (rollout_id, hostname) DO UPDATE SET position = excluded.position,
               wave = excluded.wave, admitted_at = excluded.admitted_at, outcome = excluded.outcome,
               finished_at = excluded.finished_at, message = excluded.message",
        )
        .bind(rollout)
        .bind(&hosts)
        .bind(col(|m| Some(m.position)))
        .bind(col(|m| Some(m.wave)))
        .bind(col(|m| m.admitted_at))
        .bind(&outcomes)
        .bind(col(|m| m.finished_at))
        .bind(&messages)
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}
