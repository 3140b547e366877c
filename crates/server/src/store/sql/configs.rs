//! Per-host config revisions (desired and reported), the dashboard's
//! sessions and its version-mix samples. Queries written once for both
//! dialects.
//!
//! Must not: hold dialect-specific SQL or keep any state of its own.

use palette_protocol::timefmt::{rfc3339_millis, Millis};
use palette_protocol::v2::{ConfigRevision, ConfigSource};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Fields, SqlStore};
use crate::store::{Audit, StoreError, StoreResult, UiSessionRow};

fn config_from_row(row: &impl Fields) -> StoreResult<ConfigRevision> {
    let source: String = row.field("source")?;
    Ok(ConfigRevision {
        revision: row.field("revision")?,
        hostname: row.field("hostname")?,
        source: match source.as_str() {
            "desired" => ConfigSource::Desired,
            "reported" => ConfigSource::Reported,
            other => return Err(StoreError::Corrupt(format!("config source {other:?}"))),
        },
        sha256: row.field("sha256")?,
        size: row.field::<i64>("size")? as u64,
        created_at: rfc3339_millis(row.field("created_at")?),
    })
}

/// Stores a revision and keeps only the newest `keep` of that host and
/// source.
pub(super) async fn insert_config(
    s: &SqlStore,
    hostname: &str,
    source: ConfigSource,
    body: &[u8],
    at: Millis,
    keep: usize,
    audit: Audit<'_>,
) -> StoreResult<ConfigRevision> {
    let sha = hex::encode(Sha256::digest(body));
    let revision = write_tx!(s, |tx| {
        let revision: i64 = sqlx::query_scalar(
            "INSERT INTO configs (hostname, source, sha256, size, body, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING revision",
        )
        .bind(hostname)
        .bind(source.as_str())
        .bind(&sha)
        .bind(body.len() as i64)
        .bind(body)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM configs WHERE hostname = $1 AND source = $2 AND revision NOT IN
             (SELECT revision FROM configs WHERE hostname = $1 AND source = $2
              ORDER BY revision DESC LIMIT $3)",
        )
        .bind(hostname)
        .bind(source.as_str())
        .bind(keep.max(1) as i64)
        .execute(&mut *tx)
        .await?;
        put_audit!(tx, audit, Some(revision));
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

pub(super) async fn config_history(
    s: &SqlStore,
    hostname: &str,
) -> StoreResult<Vec<ConfigRevision>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query(
                "SELECT revision, hostname, source, sha256, size, created_at FROM configs
                 WHERE hostname = $1 ORDER BY revision DESC",
            )
            .bind(hostname)
            .fetch_all(pool)
            .await,
        )?;
        rows.iter().map(config_from_row).collect()
    })
}

pub(super) async fn config_revision(
    s: &SqlStore,
    hostname: &str,
    revision: i64,
) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>> {
    on_db!(s, |pool| {
        let row = s.read(
            sqlx::query("SELECT * FROM configs WHERE hostname = $1 AND revision = $2")
                .bind(hostname)
                .bind(revision)
                .fetch_optional(pool)
                .await,
        )?;
        row.map(|r| Ok((config_from_row(&r)?, r.try_get("body")?)))
            .transpose()
    })
}

/// The newest revision of the host (of `source`, when given).
pub(super) async fn latest_config(
    s: &SqlStore,
    hostname: &str,
    source: Option<ConfigSource>,
) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>> {
    on_db!(s, |pool| {
        let row = s.read(match source {
            Some(source) => {
                sqlx::query(
                    "SELECT * FROM configs WHERE hostname = $1 AND source = $2
                     ORDER BY revision DESC LIMIT 1",
                )
                .bind(hostname)
                .bind(source.as_str())
                .fetch_optional(pool)
                .await
            }
            None => {
                sqlx::query(
                    "SELECT * FROM configs WHERE hostname = $1 ORDER BY revision DESC LIMIT 1",
                )
                .bind(hostname)
                .fetch_optional(pool)
                .await
            }
        })?;
        row.map(|r| Ok((config_from_row(&r)?, r.try_get("body")?)))
            .transpose()
    })
}

pub(super) async fn hosts_with_config(s: &SqlStore) -> StoreResult<Vec<String>> {
    on_db!(s, |pool| {
        s.read(
            sqlx::query_scalar("SELECT DISTINCT hostname FROM configs")
                .fetch_all(pool)
                .await,
        )
    })
}

/// Stores a dashboard session, deleting those expired by `now`.
pub(super) async fn insert_ui_session(
    s: &SqlStore,
    session: &UiSessionRow,
    now: Millis,
) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO ui_sessions (id_hash, token_hash, csrf, expires_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&session.id_hash)
        .bind(&session.token_hash)
        .bind(&session.csrf)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await?;
    })
}

pub(super) async fn ui_session(s: &SqlStore, id_hash: &str) -> StoreResult<Option<UiSessionRow>> {
    on_db!(s, |pool| {
        let row = s.read(
            sqlx::query("SELECT * FROM ui_sessions WHERE id_hash = $1")
                .bind(id_hash)
                .fetch_optional(pool)
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
    })
}

pub(super) async fn delete_ui_session(s: &SqlStore, id_hash: &str) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&mut *tx)
            .await?;
    })
}

/// Stores a version-mix sample (JSON), deleting those before `keep_since`.
pub(super) async fn insert_version_sample(
    s: &SqlStore,
    at: Millis,
    mix_json: &str,
    keep_since: Millis,
) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query("DELETE FROM version_samples WHERE at < $1")
            .bind(keep_since)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO version_samples (at, mix) VALUES ($1, $2) ON CONFLICT (at) DO NOTHING",
        )
        .bind(at)
        .bind(mix_json)
        .execute(&mut *tx)
        .await?;
    })
}

/// The version-mix samples since `since`, oldest first.
pub(super) async fn version_samples(
    s: &SqlStore,
    since: Millis,
) -> StoreResult<Vec<(Millis, String)>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query("SELECT at, mix FROM version_samples WHERE at >= $1 ORDER BY at")
                .bind(since)
                .fetch_all(pool)
                .await,
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get("at")?, r.try_get("mix")?)))
            .collect()
    })
}
