//! The live credentials, in memory: operator tokens, agent (enrollment)
//! keys and host tokens, by SHA-256 hash, rebuilt from the store whenever
//! one is added or revoked (rare), read on every request (often). Each
//! remembers when it was last used; the heartbeat flusher writes those
//! times in batches, so using a token costs no database write.
//!
//! Owns only the in-memory view: the store stays the truth, and nothing
//! here decides what a credential may do (that is `http::auth` and `http::v2::Caller`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use palette_protocol::timefmt::Millis;

use sha2::{Digest, Sha256};

use crate::store::{TokenKind, TokenRow};

/// A credential as it is kept and looked up: its SHA-256.
pub type TokenHash = [u8; 32];

/// The hash a token is kept and looked up by.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A known, live credential.
#[derive(Debug)]
pub struct Credential {
    pub kind: TokenKind,
    /// Its row in the store; `None` for PALETTE_ADMIN_TOKEN (not stored).
    pub id: Option<i64>,
    /// The operator token's label, the agent key's label, or the host
    /// token's host name.
    pub label: String,
    last_used: AtomicI64,
    written: AtomicI64,
}

impl Credential {
    fn new(kind: TokenKind, id: Option<i64>, label: String, last_used: Millis) -> Self {
        Credential {
            kind,
            id,
            label,
            last_used: AtomicI64::new(last_used),
            written: AtomicI64::new(last_used),
        }
    }

    /// Notes a use at `now` (a relaxed atomic store: no lock, no I/O).
    pub fn used(&self, now: Millis) {
        self.last_used.fetch_max(now, Ordering::Relaxed);
    }
}

/// Last-used times are written at most this often per token.
const TOUCH_GRANULARITY_MS: Millis = 60_000;

#[derive(Default)]
struct Maps {
    by_hash: HashMap<TokenHash, Arc<Credential>>,
    /// Host name → its live host token's id.
    enrolled: HashMap<String, i64>,
}

#[derive(Default)]
pub struct Tokens {
    maps: RwLock<Maps>,
}

impl Tokens {
    /// Rebuilds the view from every stored token (revoked ones are left
    /// out) plus the operator token from the environment. Use times
    /// already noted in memory survive the rebuild.
    pub fn rebuild(&self, rows: Vec<TokenRow>, admin: Option<TokenHash>, admin_label: &str) {
        let mut fresh = Maps::default();
        let old = self.maps.read().unwrap();
        for row in rows.into_iter().filter(|r| r.revoked_at.is_none()) {
            let Some(hash) = hex::decode(&row.hash)
                .ok()
                .and_then(|h| TokenHash::try_from(h).ok())
            else {
                tracing::error!(kind = ?row.kind, id = row.id, "stored token hash is corrupt; token ignored");
                continue;
            };
            let seen = old
                .by_hash
                .get(&hash)
                .map(|c| c.last_used.load(Ordering::Relaxed))
                .unwrap_or(0)
                .max(row.last_used.unwrap_or(0));
            if row.kind == TokenKind::Host {
                fresh.enrolled.insert(row.label.clone(), row.id);
            }
            let cred = Credential::new(row.kind, Some(row.id), row.label, seen);
            cred.written
                .store(row.last_used.unwrap_or(0), Ordering::Relaxed);
            fresh.by_hash.insert(hash, Arc::new(cred));
        }
        if let Some(h) = admin {
            fresh.by_hash.insert(
                h,
                Arc::new(Credential::new(
                    TokenKind::Operator,
                    None,
                    admin_label.into(),
                    0,
                )),
            );
        }
        drop(old);
        *self.maps.write().unwrap() = fresh;
    }

    /// The live credential `token` is, if any. Operator and host tokens
    /// match exactly; license keys case-insensitively, as the legacy
    /// server compared them (and only license keys).
    pub fn find(&self, token: &str) -> Option<Arc<Credential>> {
        let maps = self.maps.read().unwrap();
        if let Some(c) = maps.by_hash.get(&token_hash(token)) {
            return Some(c.clone());
        }
        maps.by_hash
            .get(&token_hash(&token.to_lowercase()))
            .filter(|c| c.kind == TokenKind::Agent)
            .cloned()
    }

    /// The live credential whose token hashes to `hash`.
    pub fn find_by_hash(&self, hash: &TokenHash) -> Option<Arc<Credential>> {
        self.maps.read().unwrap().by_hash.get(hash).cloned()
    }

    /// Whether `host` has a live host token (only that token may act for
    /// it then).
    pub fn is_enrolled(&self, host: &str) -> bool {
        self.maps.read().unwrap().enrolled.contains_key(host)
    }

    /// The id of `host`'s live host token.
    pub fn host_token_id(&self, host: &str) -> Option<i64> {
        self.maps.read().unwrap().enrolled.get(host).copied()
    }

    /// Uses not yet written (at most one per token per minute), marked
    /// written; `unwritten` puts them back after a failed write.
    pub fn take_unwritten(&self) -> Vec<(TokenKind, i64, Millis)> {
        let maps = self.maps.read().unwrap();
        maps.by_hash
            .values()
            .filter_map(|c| {
                let id = c.id?;
                let used = c.last_used.load(Ordering::Relaxed);
                let written = c.written.load(Ordering::Relaxed);
                (used >= written + TOUCH_GRANULARITY_MS || (written == 0 && used > 0)).then(|| {
                    c.written.store(used, Ordering::Relaxed);
                    (c.kind, id, used)
                })
            })
            .collect()
    }

    /// Marks these uses unwritten again (the write failed).
    pub fn unwritten(&self, batch: &[(TokenKind, i64, Millis)]) {
        let maps = self.maps.read().unwrap();
        for c in maps.by_hash.values() {
            if batch
                .iter()
                .any(|(k, id, _)| *k == c.kind && Some(*id) == c.id)
            {
                c.written.store(0, Ordering::Relaxed);
            }
        }
    }
}

use super::Fleet;
#[allow(unused_imports)]
use super::*;

impl Fleet {
    // ---- tokens -------------------------------------------------------

    /// Rebuilds the in-memory credentials from the store (after any add or
    /// revoke: rare).
    pub(super) async fn reload_tokens(&self) -> StoreResult<()> {
        let rows = self.store.tokens().await?;
        self.tokens.rebuild(rows, self.admin_token, ADMIN_LABEL);
        Ok(())
    }

    /// The live credential `token` is, noting the use.
    pub fn credential(&self, token: &str) -> Option<Arc<crate::fleet::credentials::Credential>> {
        let c = self.tokens.find(token)?;
        c.used(now_ms());
        Some(c)
    }

    /// The live credential whose token hashes to `hash`.
    pub fn credential_by_hash(
        &self,
        hash: &TokenHash,
    ) -> Option<Arc<crate::fleet::credentials::Credential>> {
        let c = self.tokens.find_by_hash(hash)?;
        c.used(now_ms());
        Some(c)
    }

    /// Whether `host` has enrolled (has a live host token).
    pub fn is_enrolled(&self, host: &str) -> bool {
        self.tokens.is_enrolled(host)
    }

    /// Every stored token (hashes only), revoked ones too.
    pub async fn tokens(&self) -> StoreResult<Vec<crate::store::TokenRow>> {
        self.store.tokens().await
    }

    /// A live stored token, by kind and id.
    pub async fn live_token(
        &self,
        kind: crate::store::TokenKind,
        id: i64,
    ) -> StoreResult<Option<crate::store::TokenRow>> {
        Ok(self
            .store
            .tokens()
            .await?
            .into_iter()
            .find(|t| t.kind == kind && t.id == id && t.revoked_at.is_none()))
    }

    /// Revokes a stored token, durably and at once: its next request is
    /// refused. `None` when there is no such live token.
    pub async fn revoke_token(
        &self,
        kind: crate::store::TokenKind,
        id: i64,
        audit: Audit<'_>,
    ) -> StoreResult<Option<crate::store::TokenRow>> {
        let Some(row) = self
            .store
            .tokens()
            .await?
            .into_iter()
            .find(|t| t.kind == kind && t.id == id && t.revoked_at.is_none())
        else {
            return Ok(None);
        };
        let done = self.store.revoke_token(kind, id, now_ms(), audit).await?;
        if done {
            if let Some(a) = audit {
                a.log();
            }
        }
        self.reload_tokens_after_write().await;
        Ok(done.then_some(row))
    }

    /// Enrolls `host`: a new host token, durably recorded (hash only) and
    /// live at once. `Conflict` when the name already has a live token:
    /// only an operator revoking it (or retiring the host) frees the name,
    /// so an enrollment key alone cannot take over an enrolled host.
    pub async fn enroll_host(&self, host: &str, audit: Audit<'_>) -> StoreResult<(i64, String)> {
        let mut raw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
        let token = format!("pht_{}", hex::encode(raw));
        let id = self
            .store
            .enroll_host(host, &hex::encode(token_hash(&token)), now_ms(), audit)
            .await?;
        let Some(id) = id else {
            return Err(crate::store::StoreError::Conflict(format!(
                "a live host token for {host} (an operator must revoke it or retire the host before it can enroll again)"
            )));
        };
        if let Some(a) = audit {
            a.with_id(id).log();
        }
        self.reload_tokens_after_write().await;
        Ok((id, token))
    }

    /// Writes the batched "last used" times of tokens.
    pub(super) async fn flush_token_uses(&self) -> StoreResult<()> {
        let batch = self.tokens.take_unwritten();
        if batch.is_empty() {
            return Ok(());
        }
        let r = self.store.touch_tokens(&batch).await;
        if r.is_err() {
            self.tokens.unwritten(&batch);
        }
        r
    }

    /// Reloads the live tokens after a committed write. A failure here
    /// must not turn the write's 2xx into an error (it was stored): it is
    /// logged, and the next reload (replica sync, restart) catches up.
    pub(super) async fn reload_tokens_after_write(&self) {
        if let Err(e) = self.reload_tokens().await {
            tracing::warn!(error = %crate::chain::error_chain(&e), "a token change was stored but could not be read back yet; it takes effect at the next reload");
        }
    }

    pub async fn audit_log(&self, limit: u32) -> StoreResult<Vec<(i64, crate::store::AuditEntry)>> {
        self.store.audit(limit).await
    }

    /// Adds a license key. A key that was revoked stays revoked (409):
    /// a revoked secret is never live again.
    pub async fn add_agent_token(
        &self,
        token: &str,
        label: &str,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        let hex_hash = hex::encode(token_hash(&token.to_lowercase()));
        let revoked = self
            .store
            .tokens()
            .await?
            .into_iter()
            .any(|t| t.hash == hex_hash && t.revoked_at.is_some());
        if revoked {
            return Err(crate::store::StoreError::Conflict(
                "a revoked agent token with this value (choose a new key)".into(),
            ));
        }
        self.store
            .add_agent_token(&hex_hash, label, now_ms(), audit)
            .await?;
        if let Some(a) = audit {
            a.log();
        }
        self.reload_tokens_after_write().await;
        Ok(())
    }

    pub async fn add_operator_token(
        &self,
        token: &str,
        label: &str,
        audit: Audit<'_>,
    ) -> StoreResult<()> {
        self.store
            .add_operator_token(&hex::encode(token_hash(token)), label, now_ms(), audit)
            .await?;
        if let Some(a) = audit {
            a.log();
        }
        self.reload_tokens_after_write().await;
        Ok(())
    }

    /// Replaces the live operator tokens labelled `label` with `token` in
    /// one stored transaction; how many were revoked (0: none had that
    /// label, nothing changed).
    pub async fn rotate_operator_tokens(
        &self,
        token: &str,
        label: &str,
        audit: Audit<'_>,
    ) -> StoreResult<u64> {
        let revoked = self
            .store
            .rotate_operator_tokens(label, &hex::encode(token_hash(token)), now_ms(), audit)
            .await?;
        if revoked > 0 {
            if let Some(a) = audit {
                a.log();
            }
            self.reload_tokens_after_write().await;
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: TokenKind, id: i64, secret: &str, label: &str) -> TokenRow {
        TokenRow {
            kind,
            id,
            hash: hex::encode(token_hash(secret)),
            label: label.into(),
            created_at: 1,
            revoked_at: None,
            last_used: None,
        }
    }

    #[test]
    fn license_keys_alone_match_case_insensitively() {
        let t = Tokens::default();
        t.rebuild(
            vec![
                row(TokenKind::Agent, 1, "fleetkey", "fleet"),
                row(TokenKind::Operator, 2, "pop_abc", "ops"),
                row(TokenKind::Host, 3, "pht_abc", "web-1"),
            ],
            Some(token_hash("admin-secret")),
            "admin",
        );
        assert_eq!(t.find("FleetKey").unwrap().kind, TokenKind::Agent);
        assert_eq!(t.find("pop_abc").unwrap().label, "ops");
        assert!(t.find("POP_ABC").is_none());
        assert!(t.find("PHT_ABC").is_none());
        assert_eq!(t.find("pht_abc").unwrap().label, "web-1");
        assert_eq!(t.find("admin-secret").unwrap().id, None);
        assert!(t.is_enrolled("web-1"));
        assert!(!t.is_enrolled("web-2"));
    }

    #[test]
    fn revoked_rows_are_not_live_and_uses_are_batched() {
        let t = Tokens::default();
        let mut revoked = row(TokenKind::Host, 4, "pht_old", "web-1");
        revoked.revoked_at = Some(5);
        t.rebuild(
            vec![revoked, row(TokenKind::Operator, 2, "pop_abc", "ops")],
            None,
            "admin",
        );
        assert!(t.find("pht_old").is_none());
        assert!(!t.is_enrolled("web-1"));
        assert!(t.take_unwritten().is_empty());
        t.find("pop_abc").unwrap().used(1_000_000);
        assert_eq!(
            t.take_unwritten(),
            vec![(TokenKind::Operator, 2, 1_000_000)]
        );
        // Again within the minute: nothing new to write.
        t.find("pop_abc").unwrap().used(1_010_000);
        assert!(t.take_unwritten().is_empty());
        t.find("pop_abc").unwrap().used(1_070_000);
        let batch = t.take_unwritten();
        assert_eq!(batch, vec![(TokenKind::Operator, 2, 1_070_000)]);
        // A failed write is retried.
        t.unwritten(&batch);
        assert_eq!(t.take_unwritten(), batch);
    }
}
