//! Credentials (license keys, operator tokens, host tokens: hashes only),
//! enrollment, and the audit log. Queries written once for both dialects;
//! the one difference, which column names a token row, is
//! [`SqlStore::token_id`].
//!
//! Must not: hold dialect-specific SQL, keep any state of its own, or ever
//! see a token's secret.

use palette_protocol::timefmt::Millis;

use super::SqlStore;
use crate::store::{Audit, AuditEntry, StoreResult, TokenKind, TokenRow};

/// The table a kind of token lives in.
fn token_table(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Agent => "agent_tokens",
        TokenKind::Operator => "operator_tokens",
        TokenKind::Host => "host_tokens",
    }
}

/// Adds a license key (a no-op when it exists, revoked or not).
pub(super) async fn add_agent_token(
    s: &SqlStore,
    hash: &str,
    label: &str,
    at: Millis,
    audit: Audit<'_>,
) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query(
            "INSERT INTO agent_tokens (hash, label, created_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(hash)
        .bind(label)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        put_audit!(tx, audit, None::<i64>);
    })
}

pub(super) async fn agent_tokens(s: &SqlStore) -> StoreResult<Vec<String>> {
    on_db!(s, |pool| {
        s.read(
            sqlx::query_scalar("SELECT hash FROM agent_tokens WHERE revoked_at IS NULL")
                .fetch_all(pool)
                .await,
        )
    })
}

pub(super) async fn add_operator_token(
    s: &SqlStore,
    hash: &str,
    label: &str,
    at: Millis,
    audit: Audit<'_>,
) -> StoreResult<()> {
    write_tx!(s, |tx| {
        sqlx::query("INSERT INTO operator_tokens (hash, label, created_at) VALUES ($1, $2, $3)")
            .bind(hash)
            .bind(label)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        put_audit!(tx, audit, None::<i64>);
    })
}

/// Replaces the live operator tokens labelled `label` with `hash`, in one
/// transaction; how many were revoked (0: nothing written).
pub(super) async fn rotate_operator_tokens(
    s: &SqlStore,
    label: &str,
    hash: &str,
    at: Millis,
    audit: Audit<'_>,
) -> StoreResult<u64> {
    write_tx!(s, |tx| {
        // The old ones first: the new row has the same label.
        let revoked = sqlx::query(
            "UPDATE operator_tokens SET revoked_at = $1 WHERE label = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(label)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if revoked > 0 {
            sqlx::query(
                "INSERT INTO operator_tokens (hash, label, created_at) VALUES ($1, $2, $3)",
            )
            .bind(hash)
            .bind(label)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            put_audit!(tx, audit, None::<i64>);
        }
        revoked
    })
}

/// (hash, label) of every live operator token.
pub(super) async fn operator_tokens(s: &SqlStore) -> StoreResult<Vec<(String, String)>> {
    on_db!(s, |pool| {
        s.read(
            sqlx::query_as("SELECT hash, label FROM operator_tokens WHERE revoked_at IS NULL")
                .fetch_all(pool)
                .await,
        )
    })
}

/// Every token, revoked ones too.
pub(super) async fn tokens(s: &SqlStore) -> StoreResult<Vec<TokenRow>> {
    type Row = (i64, String, Option<String>, i64, Option<i64>, Option<i64>);
    let mut all = Vec::new();
    for kind in [TokenKind::Agent, TokenKind::Operator, TokenKind::Host] {
        let id = s.token_id(kind);
        let label = match kind {
            TokenKind::Host => "hostname",
            _ => "label",
        };
        let sql = format!(
            "SELECT {id}, hash, {label}, created_at, revoked_at, last_used FROM {} ORDER BY {id}",
            token_table(kind)
        );
        let rows: Vec<Row> = on_db!(s, |pool| s.read(sqlx::query_as(&sql).fetch_all(pool).await))?;
        all.extend(
            rows.into_iter().map(
                |(id, hash, label, created_at, revoked_at, last_used)| TokenRow {
                    kind,
                    id,
                    hash,
                    label: label.unwrap_or_default(),
                    created_at,
                    revoked_at,
                    last_used,
                },
            ),
        );
    }
    Ok(all)
}

/// Revokes one token; false when there is no such live token.
pub(super) async fn revoke_token(
    s: &SqlStore,
    kind: TokenKind,
    id: i64,
    at: Millis,
    audit: Audit<'_>,
) -> StoreResult<bool> {
    let sql = format!(
        "UPDATE {} SET revoked_at = $1 WHERE {} = $2 AND revoked_at IS NULL",
        token_table(kind),
        s.token_id(kind)
    );
    write_tx!(s, |tx| {
        let done = sqlx::query(&sql)
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let done = done > 0;
        if done {
            put_audit!(tx, audit, None::<i64>);
        }
        done
    })
}

/// A new host token for `hostname`; `None` (nothing written) when the name
/// already has a live one (the partial unique index decides, atomically).
pub(super) async fn enroll_host(
    s: &SqlStore,
    hostname: &str,
    hash: &str,
    at: Millis,
    audit: Audit<'_>,
) -> StoreResult<Option<i64>> {
    write_tx!(s, |tx| {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO host_tokens (hash, hostname, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (hostname) WHERE revoked_at IS NULL DO NOTHING RETURNING id",
        )
        .bind(hash)
        .bind(hostname)
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        if id.is_some() {
            put_audit!(tx, audit, id);
        }
        id
    })
}

/// When tokens were last used, in one transaction; a time never moves
/// backwards.
pub(super) async fn touch_tokens(
    s: &SqlStore,
    used: &[(TokenKind, i64, Millis)],
) -> StoreResult<()> {
    write_tx!(s, |tx| {
        for (kind, id, at) in used {
            let sql = format!(
                "UPDATE {} SET last_used = $1 WHERE {} = $2 AND (last_used IS NULL OR last_used < $3)",
                token_table(*kind),
                s.token_id(*kind)
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

/// One operator action on its own, answered after it is durable.
pub(super) async fn insert_audit(s: &SqlStore, e: &AuditEntry) -> StoreResult<i64> {
    write_tx!(s, |tx| {
        sqlx::query_scalar(
            "INSERT INTO audit (at, actor, source, action, detail) VALUES ($1, $2, $3, $4, $5)
             RETURNING id",
        )
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.source)
        .bind(&e.action)
        .bind(&e.detail)
        .fetch_one(&mut *tx)
        .await?
    })
}

/// The newest `limit` audit entries, newest first.
pub(super) async fn audit(s: &SqlStore, limit: u32) -> StoreResult<Vec<(i64, AuditEntry)>> {
    let rows: Vec<(i64, i64, String, Option<String>, String, String)> = on_db!(s, |pool| {
        s.read(
            sqlx::query_as(
                "SELECT id, at, actor, source, action, detail FROM audit ORDER BY id DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await,
        )
    })?;
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
