//! What shapes rollouts and offers: pins, maintenance windows and the
//! labels operators assign, each stored with its audit entry and then
//! mirrored in the cache the check-in path reads.

#[allow(unused_imports)]
use super::*;

/// Pins, windows and assigned labels: each stored (with its audit entry)
/// and then mirrored in the cache the check-in path reads.
impl Fleet {
    /// Every pin.
    pub fn pins(&self) -> Vec<Pin> {
        let cache = self.rollouts.cache.read().unwrap();
        cache.pins.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Every maintenance window.
    pub fn windows(&self) -> Vec<WindowInfo> {
        let cache = self.rollouts.cache.read().unwrap();
        cache.windows.iter().map(|(w, _, _)| w.clone()).collect()
    }

    /// The labels an operator assigned to `host` (none: empty).
    pub fn assigned_labels(&self, host: &str) -> Labels {
        let cache = self.rollouts.cache.read().unwrap();
        cache.assigned.get(host).cloned().unwrap_or_default()
    }

    /// What a release published without a rollout does.
    pub fn default_rollout(&self) -> DefaultRollout {
        self.rollouts.default
    }

    /// Stores a pin and starts offering by it.
    pub async fn add_pin(
        &self,
        mut pin: Pin,
        selector: Selector,
        audit: &crate::store::AuditEntry,
    ) -> StoreResult<Pin> {
        pin.id = self.store.insert_pin(&pin, now_ms(), Some(audit)).await?;
        audit.with_id(pin.id).log();
        self.rollouts
            .cache
            .write()
            .unwrap()
            .pins
            .push((pin.clone(), selector));
        self.notify_change();
        Ok(pin)
    }

    /// Removes a pin; false when there is none with that id.
    pub async fn remove_pin(&self, id: i64, audit: &crate::store::AuditEntry) -> StoreResult<bool> {
        if !self.store.delete_pin(id, Some(audit)).await? {
            return Ok(false);
        }
        self.rollouts
            .cache
            .write()
            .unwrap()
            .pins
            .retain(|(p, _)| p.id != id);
        self.notify_change();
        audit.log();
        Ok(true)
    }

    /// Stores a maintenance window and starts judging by it.
    pub async fn add_window(
        &self,
        mut info: WindowInfo,
        selector: Selector,
        window: Window,
        audit: &crate::store::AuditEntry,
    ) -> StoreResult<WindowInfo> {
        info.id = self
            .store
            .insert_window(&info, now_ms(), Some(audit))
            .await?;
        audit.with_id(info.id).log();
        self.rollouts
            .cache
            .write()
            .unwrap()
            .windows
            .push((info.clone(), selector, window));
        self.notify_change();
        Ok(info)
    }

    /// Removes a window; false when there is none with that id.
    pub async fn remove_window(
        &self,
        id: i64,
        audit: &crate::store::AuditEntry,
    ) -> StoreResult<bool> {
        if !self.store.delete_window(id, Some(audit)).await? {
            return Ok(false);
        }
        self.rollouts
            .cache
            .write()
            .unwrap()
            .windows
            .retain(|(w, _, _)| w.id != id);
        self.notify_change();
        audit.log();
        Ok(true)
    }

    /// Replaces the labels an operator assigned to `host`.
    pub async fn assign_labels(
        &self,
        host: &str,
        assigned: Labels,
        audit: &crate::store::AuditEntry,
    ) -> StoreResult<()> {
        let json = serde_json::to_string(&assigned).expect("labels serialise");
        self.store.set_host_labels(host, &json, Some(audit)).await?;
        audit.log();
        self.rollouts
            .cache
            .write()
            .unwrap()
            .assigned
            .insert(host.to_string(), assigned);
        Ok(())
    }
}
