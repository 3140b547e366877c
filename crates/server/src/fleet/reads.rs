//! What the edge reads of the store through the fleet: command statuses,
//! host histories, config revisions, dashboard sessions and readiness —
//! each one call, so no handler reaches past the fleet into the store.
//! Must not: change anything (the writes live with their concern).

use palette_protocol::v2::{
    CommandAck, CommandKind, CommandStatus, ConfigRevision, ConfigSource, HostUpdate,
};

use super::{command_wire, Fleet};
use crate::store::{StoreResult, UiSessionRow};

impl Fleet {
    /// The newest `limit` commands with their acknowledgements, newest
    /// first.
    pub async fn command_statuses(&self, limit: i64) -> StoreResult<Vec<CommandStatus>> {
        let rows = self.store.recent_commands(limit).await?;
        let Some(first) = rows.iter().map(|r| r.id).min() else {
            return Ok(Vec::new());
        };
        // One read for every row's acknowledgements (not one per row).
        let mut acks: std::collections::HashMap<i64, Vec<CommandAck>> = Default::default();
        for a in self.store.acks_from_command(first).await? {
            acks.entry(a.id).or_default().push(a);
        }
        Ok(rows
            .into_iter()
            .map(|row| CommandStatus {
                command: command_wire(&row),
                results: acks.remove(&row.id).unwrap_or_default(),
                target: row.target,
            })
            .collect())
    }

    /// One command with its acknowledgements.
    pub async fn command_status(&self, id: i64) -> StoreResult<Option<CommandStatus>> {
        let Some(row) = self.store.command(id).await? else {
            return Ok(None);
        };
        let results = self.store.acks_for_command(id).await?;
        Ok(Some(CommandStatus {
            command: command_wire(&row),
            target: row.target.clone(),
            results,
        }))
    }

    /// The host's newest `limit` acknowledgements, newest first, with the
    /// kind of command each answered.
    pub async fn host_acks(
        &self,
        host: &str,
        limit: u32,
    ) -> StoreResult<Vec<(CommandKind, CommandAck)>> {
        self.store.host_acks(host, limit).await
    }

    /// The host's newest `limit` update outcomes.
    pub async fn update_history(&self, host: &str, limit: u32) -> StoreResult<Vec<HostUpdate>> {
        self.store.update_history(host, limit).await
    }

    /// The host's config revisions, newest first.
    pub async fn config_history(&self, host: &str) -> StoreResult<Vec<ConfigRevision>> {
        self.store.config_history(host).await
    }

    /// One config revision and its bytes.
    pub async fn config_revision(
        &self,
        host: &str,
        revision: i64,
    ) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>> {
        self.store.config_revision(host, revision).await
    }

    /// The newest config of `source` (any source: `None`) and its bytes.
    pub async fn latest_config(
        &self,
        host: &str,
        source: Option<ConfigSource>,
    ) -> StoreResult<Option<(ConfigRevision, Vec<u8>)>> {
        self.store.latest_config(host, source).await
    }

    /// A dashboard session by its cookie's hash.
    pub async fn ui_session(&self, id_hash: &str) -> StoreResult<Option<UiSessionRow>> {
        self.store.ui_session(id_hash).await
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn store_ready(&self) -> StoreResult<()> {
        self.store.ping().await
    }
}
