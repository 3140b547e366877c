//! Releases (publish, hold, withdraw, roll back), rollouts and their
//! members, pins and maintenance windows. Queries written once for both
//! dialects; the batch write of members is the dialects' own
//! ([`super::Batches`]).
//!
//! Must not: hold dialect-specific SQL or keep any state of its own.

use std::str::FromStr;

use palette_protocol::timefmt::{rfc3339_millis, Millis};
use palette_protocol::v2::ReleaseKind;
use palette_protocol::Version;
use sqlx::Row;

use super::{Batches, SqlStore};
use crate::store::{Audit, MemberRecord, NewRelease, RolloutRecord, StoreError, StoreResult};
use palette_protocol::v2::{Pin, WindowInfo};

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A release of the same product, version, platform and kind is a
/// conflict (nothing written).
pub(super) async fn insert_release(
    s: &SqlStore,
    r: &NewRelease,
    audit: Audit<'_>,
) -> StoreResult<i64> {
    let conflict = |e: sqlx::Error| {
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
    };
    write_tx!(s, map_err = conflict, |tx| {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO releases (product, version, platform, kind, sha256, md5, size, signature,
               manifest, created_at, held)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
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
        .fetch_one(&mut *tx)
        .await?;
        put_audit!(tx, audit, Some(id));
        id
    })
}

pub(super) async fn releases(s: &SqlStore) -> StoreResult<Vec<(i64, NewRelease)>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query("SELECT * FROM releases ORDER BY id")
                .fetch_all(pool)
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
    })
}

/// Marks a release withdrawn; false when there is no such release.
pub(super) async fn withdraw_release(
    s: &SqlStore,
    id: i64,
    at: Millis,
    audit: Audit<'_>,
) -> StoreResult<bool> {
    write_tx!(s, |tx| {
        let done = sqlx::query(
            "UPDATE releases SET withdrawn_at = coalesce(withdrawn_at, $1) WHERE id = $2",
        )
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let done = done.rows_affected() == 1;
        if done {
            put_audit!(tx, audit, None::<i64>);
        }
        done
    })
}

/// Rolls release `id` back and, when given, re-signs release `target`, in
/// one transaction.
pub(super) async fn roll_back_release(
    s: &SqlStore,
    id: i64,
    target: i64,
    signed: Option<(&str, &str)>,
    at: Millis,
    audit: Audit<'_>,
) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query(
            "UPDATE releases SET withdrawn_at = coalesce(withdrawn_at, $1),
             rolled_back_at = coalesce(rolled_back_at, $1) WHERE id = $2",
        )
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some((manifest, signature)) = signed {
            sqlx::query("UPDATE releases SET manifest = $1, signature = $2 WHERE id = $3")
                .bind(manifest)
                .bind(signature)
                .bind(target)
                .execute(&mut *tx)
                .await?;
        }
        put_audit!(tx, audit, None::<i64>);
    })
}

pub(super) async fn set_release_held(s: &SqlStore, id: i64, held: bool) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query("UPDATE releases SET held = $1 WHERE id = $2")
            .bind(held as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    })
}

/// Whether any release (of any product) has this artifact.
pub(super) async fn artifact_in_use(s: &SqlStore, sha256: &str) -> StoreResult<bool> {
    on_db!(s, |pool| {
        s.read(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM releases WHERE sha256 = $1)")
                .bind(sha256)
                .fetch_one(pool)
                .await,
        )
    })
}

/// The rollout (its `id` ignored) and its members, in one transaction.
pub(super) async fn insert_rollout(
    s: &SqlStore,
    r: &RolloutRecord,
    members: &[MemberRecord],
    audit: Audit<'_>,
) -> StoreResult<i64> {
    write_tx!(s, |tx| {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO rollouts (release_id, selector, waves, soak_ms, halt_after, max_concurrent,
               phase, wave, wave_started_at, reason, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
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
        .fetch_one(&mut *tx)
        .await?;
        tx.put_members(id, members).await?;
        put_audit!(tx, audit, Some(id));
        id
    })
}

/// A rollout's phase, wave and reason.
pub(super) async fn update_rollout(
    s: &SqlStore,
    r: &RolloutRecord,
    audit: Audit<'_>,
) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query(
            "UPDATE rollouts SET phase = $1, wave = $2, wave_started_at = $3, reason = $4
             WHERE id = $5",
        )
        .bind(&r.phase)
        .bind(r.wave)
        .bind(r.wave_started_at)
        .bind(&r.reason)
        .bind(r.id)
        .execute(&mut *tx)
        .await?;
        put_audit!(tx, audit, None::<i64>);
    })
}

pub(super) async fn save_members(
    s: &SqlStore,
    rollout: i64,
    members: &[MemberRecord],
) -> StoreResult<()> {
    if members.is_empty() {
        return Ok(());
    }
    write_tx!(s, |tx| {
        tx.put_members(rollout, members).await?;
    })
}

pub(super) async fn load_rollouts(
    s: &SqlStore,
) -> StoreResult<Vec<(RolloutRecord, Vec<MemberRecord>)>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query("SELECT * FROM rollouts ORDER BY id")
                .fetch_all(pool)
                .await,
        )?;
        let mut out = Vec::new();
        for r in rows {
            let id: i64 = r.try_get("id")?;
            let members = s.read(
                sqlx::query(
                    "SELECT * FROM rollout_members WHERE rollout_id = $1 ORDER BY position",
                )
                .bind(id)
                .fetch_all(pool)
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
    })
}

pub(super) async fn insert_pin(
    s: &SqlStore,
    p: &Pin,
    at: Millis,
    audit: Audit<'_>,
) -> StoreResult<i64> {
    write_tx!(s, |tx| {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO pins (selector, product, version, created_at) VALUES ($1, $2, $3, $4)
             RETURNING id",
        )
        .bind(&p.selector)
        .bind(&p.product)
        .bind(p.version.to_string())
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        put_audit!(tx, audit, Some(id));
        id
    })
}

pub(super) async fn delete_pin(s: &SqlStore, id: i64, audit: Audit<'_>) -> StoreResult<bool> {
    delete_by_id(s, "pins", id, audit).await
}

/// Deletes row `id` of `table` (a name, never input) and, when there was
/// one, stores the audit entry with it.
async fn delete_by_id(
    s: &SqlStore,
    table: &'static str,
    id: i64,
    audit: Audit<'_>,
) -> StoreResult<bool> {
    let sql = format!("DELETE FROM {table} WHERE id = $1");
    write_tx!(s, |tx| {
        let done = sqlx::query(&sql)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if done {
            put_audit!(tx, audit, None::<i64>);
        }
        done
    })
}

pub(super) async fn load_pins(s: &SqlStore) -> StoreResult<Vec<Pin>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query("SELECT * FROM pins ORDER BY id")
                .fetch_all(pool)
                .await,
        )?;
        rows.iter()
            .map(|r| {
                let version: String = r.try_get("version")?;
                Ok(Pin {
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
    })
}

pub(super) async fn insert_window(
    s: &SqlStore,
    w: &WindowInfo,
    at: Millis,
    audit: Audit<'_>,
) -> StoreResult<i64> {
    write_tx!(s, |tx| {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO maintenance_windows (selector, schedule, tz, created_at)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&w.selector)
        .bind(&w.schedule)
        .bind(&w.tz)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        put_audit!(tx, audit, Some(id));
        id
    })
}

pub(super) async fn delete_window(s: &SqlStore, id: i64, audit: Audit<'_>) -> StoreResult<bool> {
    delete_by_id(s, "maintenance_windows", id, audit).await
}

pub(super) async fn load_windows(s: &SqlStore) -> StoreResult<Vec<WindowInfo>> {
    on_db!(s, |pool| {
        let rows = s.read(
            sqlx::query("SELECT * FROM maintenance_windows ORDER BY id")
                .fetch_all(pool)
                .await,
        )?;
        rows.iter()
            .map(|r| {
                Ok(WindowInfo {
                    id: r.try_get("id")?,
                    selector: r.try_get("selector")?,
                    schedule: r.try_get("schedule")?,
                    tz: r.try_get("tz")?,
                    created_at: rfc3339_millis(r.try_get("created_at")?),
                })
            })
            .collect()
    })
}
