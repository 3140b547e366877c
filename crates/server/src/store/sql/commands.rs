//! Commands, their acknowledgements and the update outcomes hosts report.
//! Queries written once for both dialects; the batch insert of
//! acknowledgements is the dialects' own ([`super::Batches`]).
//!
//! Must not: hold dialect-specific SQL or keep any state of its own.

use palette_protocol::timefmt::{rfc3339_millis, Millis};
use palette_protocol::v2::{CommandAck, CommandKind, HostUpdate, Outcome, Target, UpdateReport};

use super::{outcome_str, Batches, Fields, SqlStore};
use crate::store::{Audit, CommandRow, StoreError, StoreResult};

/// Update outcomes kept per host and product (older ones are deleted).
const UPDATE_HISTORY_KEPT: i64 = 200;

fn command_from_row(row: &impl Fields) -> StoreResult<CommandRow> {
    let kind: String = row.field("kind")?;
    let target: String = row.field("target")?;
    Ok(CommandRow {
        id: row.field("id")?,
        kind: CommandKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("command kind {kind:?}")))?,
        target: serde_json::from_str(&target)
            .map_err(|_| StoreError::Corrupt(format!("command target {target:?}")))?,
        issued_at: row.field("issued_at")?,
        legacy_ts: match row.field::<Option<i64>>("legacy_ts")? {
            Some(ts) => ts,
            None => row.field("issued_at")?,
        },
        expires_at: row.field("expires_at")?,
    })
}

fn outcome_from(text: &str) -> Outcome {
    if text == "succeeded" {
        Outcome::Succeeded
    } else {
        Outcome::Failed
    }
}

fn ack_from_row(row: &impl Fields) -> Result<CommandAck, sqlx::Error> {
    Ok(CommandAck {
        id: row.field("command_id")?,
        hostname: row.field("hostname")?,
        outcome: outcome_from(&row.field::<String>("outcome")?),
        message: row.field("message")?,
        at: rfc3339_millis(row.field("at")?),
    })
}

pub(super) async fn insert_command(
    s: &SqlStore,
    kind: CommandKind,
    target: &Target,
    issued_at: Millis,
    legacy_ts: Millis,
    expires_at: Millis,
    audit: Audit<'_>,
) -> StoreResult<CommandRow> {
    let target_json = serde_json::to_string(target).expect("target serialises");
    let id = write_tx!(s, |tx| {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO commands (kind, target, issued_at, legacy_ts, expires_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(kind.as_str())
        .bind(&target_json)
        .bind(issued_at)
        .bind(legacy_ts)
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        put_audit!(tx, audit, Some(id));
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

pub(super) async fn command(s: &SqlStore, id: i64) -> StoreResult<Option<CommandRow>> {
    on_db!(s, |pool| {
        let row = s.read(
            sqlx::query("SELECT * FROM commands WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await,
        )?;
        row.as_ref().map(command_from_row).transpose()
    })
}

/// The newest `limit` commands, newest first.
pub(super) async fn recent_commands(s: &SqlStore, limit: i64) -> StoreResult<Vec<CommandRow>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query("SELECT * FROM commands ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(pool)
                .await,
        )?;
        rows.iter().map(command_from_row).collect()
    })
}

/// A second acknowledgement for the same (command, host) is ignored
/// (false).
pub(super) async fn record_ack(s: &SqlStore, ack: &CommandAck, at: Millis) -> StoreResult<bool> {
    write_tx!(s, |tx| {
        insert_ack!(&mut *tx, ack, at)?.rows_affected() == 1
    })
}

/// Many acknowledgements in one transaction (one commit for many
/// check-ins).
pub(super) async fn record_acks(
    s: &SqlStore,
    acks: &[(CommandAck, Millis)],
) -> StoreResult<Vec<bool>> {
    write_tx!(s, |tx| { tx.insert_acks(acks).await? })
}

pub(super) async fn acks_for_command(s: &SqlStore, id: i64) -> StoreResult<Vec<CommandAck>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query("SELECT * FROM command_acks WHERE command_id = $1 ORDER BY at")
                .bind(id)
                .fetch_all(pool)
                .await,
        )?;
        rows.iter()
            .map(|r| ack_from_row(r).map_err(StoreError::from))
            .collect()
    })
}

/// Every acknowledgement of the commands from `first_id` on, by command
/// and time: one read for a list of recent commands.
pub(super) async fn acks_from_command(s: &SqlStore, first_id: i64) -> StoreResult<Vec<CommandAck>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query(
                "SELECT * FROM command_acks WHERE command_id >= $1 ORDER BY command_id, at",
            )
            .bind(first_id)
            .fetch_all(pool)
            .await,
        )?;
        rows.iter()
            .map(|r| ack_from_row(r).map_err(StoreError::from))
            .collect()
    })
}

/// The host's newest `limit` acknowledgements, newest first, with the kind
/// of command each answered.
pub(super) async fn host_acks(
    s: &SqlStore,
    hostname: &str,
    limit: u32,
) -> StoreResult<Vec<(CommandKind, CommandAck)>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query(
                "SELECT a.command_id, a.hostname, a.outcome, a.message, a.at, c.kind \
                 FROM command_acks a JOIN commands c ON c.id = a.command_id \
                 WHERE a.hostname = $1 ORDER BY a.at DESC, a.command_id DESC LIMIT $2",
            )
            .bind(hostname)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await,
        )?;
        rows.iter()
            .map(|r| {
                let kind: String = r.field("kind")?;
                Ok((
                    CommandKind::parse(&kind).unwrap_or(CommandKind::Unknown),
                    ack_from_row(r)?,
                ))
            })
            .collect()
    })
}

/// Each outcome unless it is the newest one already recorded for its host
/// and product; the oldest beyond `UPDATE_HISTORY_KEPT` are deleted.
pub(super) async fn record_updates(
    s: &SqlStore,
    updates: &[(String, String, UpdateReport, Millis)],
) -> StoreResult<()> {
    if updates.is_empty() {
        return Ok(());
    }
    write_tx!(s, |tx| {
        for (hostname, product, u, at) in updates {
            // The same outcome reported again (every check-in carries it,
            // and a restarted server has forgotten it saw it): one row.
            // (PostgreSQL wants the types of a SELECT list's parameters
            // spelled out: hence the casts, a no-op on SQLite.)
            let done = sqlx::query(
                "INSERT INTO update_history (hostname, product, release_id, version, outcome, message, at)
                 SELECT CAST($1 AS TEXT), CAST($2 AS TEXT), CAST($3 AS BIGINT), CAST($4 AS TEXT),
                        CAST($5 AS TEXT), CAST($6 AS TEXT), CAST($7 AS BIGINT)
                 WHERE NOT EXISTS (
                   SELECT 1 FROM (SELECT release_id, outcome, message FROM update_history
                                  WHERE hostname = $1 AND product = $2 ORDER BY id DESC LIMIT 1) l
                   WHERE l.release_id = $3 AND l.outcome = $5 AND l.message = $6)",
            )
            .bind(hostname)
            .bind(product)
            .bind(u.release_id)
            .bind(u.version.to_string())
            .bind(outcome_str(u.outcome))
            .bind(&u.message)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                sqlx::query(
                    "DELETE FROM update_history WHERE hostname = $1 AND product = $2 AND id <=
                       (SELECT id FROM update_history WHERE hostname = $1 AND product = $2
                        ORDER BY id DESC LIMIT 1 OFFSET $3)",
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

/// The host's newest `limit` update outcomes (all products), newest first.
pub(super) async fn update_history(
    s: &SqlStore,
    hostname: &str,
    limit: u32,
) -> StoreResult<Vec<HostUpdate>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query(
                "SELECT product, release_id, version, outcome, message, at FROM update_history
                 WHERE hostname = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(hostname)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await,
        )?;
        rows.iter()
            .map(|r| {
                let version: String = r.field("version")?;
                Ok(HostUpdate {
                    product: r.field("product")?,
                    release_id: r.field("release_id")?,
                    version: version.parse().map_err(|_| {
                        StoreError::Corrupt(format!("update_history version {version:?}"))
                    })?,
                    outcome: outcome_from(&r.field::<String>("outcome")?),
                    message: r.field("message")?,
                    at: rfc3339_millis(r.field("at")?),
                })
            })
            .collect()
    })
}

/// Which of `ids` the host has acknowledged.
pub(super) async fn acked_by_host(
    s: &SqlStore,
    hostname: &str,
    ids: &[i64],
) -> StoreResult<Vec<i64>> {
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
        "SELECT command_id FROM command_acks WHERE hostname = $1 AND command_id IN ({list})"
    );
    on_db!(s, |pool| {
        s.read(
            sqlx::query_scalar(&sql)
                .bind(hostname)
                .fetch_all(pool)
                .await,
        )
    })
}
