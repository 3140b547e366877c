//! The host inventory: last-contact times and reports (written in
//! batches), retirement, operator-assigned labels, and the readiness
//! probe's write. Queries written once for both dialects.
//!
//! Must not: hold dialect-specific SQL or keep any state of its own.

use palette_protocol::timefmt::Millis;
use sqlx::Row;

use super::SqlStore;
use crate::store::{Audit, HostRow, StoreError, StoreResult};

/// A small write, committed: the store can take writes now.
pub(super) async fn ping(s: &SqlStore) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query(
            "INSERT INTO store_meta (key, value) VALUES ('ready_probe', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(crate::clock::now_ms().to_string())
        .execute(&mut *tx)
        .await?;
    })
}

/// Last-contact times (a time never moves backwards) and, where given, the
/// host's latest report, in one transaction.
pub(super) async fn upsert_heartbeats(
    s: &SqlStore,
    beats: &[(String, Millis, Option<String>)],
) -> StoreResult<()> {
    write_tx!(s, |tx| {
        for (host, at, report) in beats {
            match report {
                None => {
                    sqlx::query(
                        "INSERT INTO hosts (hostname, first_seen, last_seen) VALUES ($1, $2, $2)
                         ON CONFLICT (hostname) DO UPDATE SET last_seen = CASE
                           WHEN excluded.last_seen > hosts.last_seen THEN excluded.last_seen
                           ELSE hosts.last_seen END",
                    )
                    .bind(host)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
                Some(report) => {
                    sqlx::query(
                        "INSERT INTO hosts (hostname, first_seen, last_seen, report, report_at)
                         VALUES ($1, $3, $3, $2, $3)
                         ON CONFLICT (hostname) DO UPDATE SET last_seen = CASE
                           WHEN excluded.last_seen > hosts.last_seen THEN excluded.last_seen
                           ELSE hosts.last_seen END,
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

pub(super) async fn load_hosts(s: &SqlStore) -> StoreResult<Vec<HostRow>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query("SELECT hostname, first_seen, last_seen, report FROM hosts")
                .fetch_all(pool)
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
    })
}

pub(super) async fn retire_host(
    s: &SqlStore,
    hostname: &str,
    audit: Audit<'_>,
) -> StoreResult<bool> {
    write_tx!(s, |tx| {
        let done = sqlx::query("DELETE FROM hosts WHERE hostname = $1")
            .bind(hostname)
            .execute(&mut *tx)
            .await?;
        let done = done.rows_affected() > 0;
        if done {
            put_audit!(tx, audit, None::<i64>);
        }
        done
    })
}

pub(super) async fn set_host_labels(
    s: &SqlStore,
    hostname: &str,
    labels_json: &str,
    audit: Audit<'_>,
) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query(
            "INSERT INTO host_labels (hostname, labels) VALUES ($1, $2)
             ON CONFLICT (hostname) DO UPDATE SET labels = excluded.labels",
        )
        .bind(hostname)
        .bind(labels_json)
        .execute(&mut *tx)
        .await?;
        put_audit!(tx, audit, None::<i64>);
    })
}

pub(super) async fn load_host_labels(
    s: &SqlStore,
) -> StoreResult<Vec<(String, palette_protocol::selector::Labels)>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query("SELECT hostname, labels FROM host_labels")
                .fetch_all(pool)
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
    })
}
