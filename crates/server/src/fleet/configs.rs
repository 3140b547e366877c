//! Configs: the revisions operators set and hosts report, and the
//! windows in which a legacy host may upload without a credential. Must
//! not: know HTTP or write SQL.

#[allow(unused_imports)]
use super::*;

impl Fleet {
    // ---- configs ------------------------------------------------------

    /// Whether a host may upload its config without an operator credential:
    /// only a known host whose own poll, made with a valid agent credential,
    /// was answered PUT-CONFIG or GET-CONFIG recently and since its last
    /// upload. An unknown name, or a host nobody asked, never may.
    /// Whether `host` is in the inventory.
    pub fn knows_host(&self, host: &str) -> bool {
        self.hosts.lock().unwrap().contains_key(host)
    }

    /// Whether any host's config upload is expected now.
    pub fn any_config_upload_expected(&self) -> bool {
        let now = now_ms();
        self.hosts
            .lock()
            .unwrap()
            .values()
            .any(|e| e.upload_expected(now))
    }

    pub fn config_upload_expected(&self, host: &str) -> bool {
        let now = now_ms();
        let hosts = self.hosts.lock().unwrap();
        hosts.get(host).is_some_and(|e| e.upload_expected(now))
    }

    /// Stores a config revision and updates the views: a reported one
    /// counts as contact and closes the host's config request; a desired
    /// one wakes long polls.
    pub async fn store_config(
        &self,
        host: &str,
        source: v2::ConfigSource,
        body: &[u8],
        audit: Audit<'_>,
    ) -> StoreResult<v2::ConfigRevision> {
        let rev = self
            .store
            .insert_config(
                host,
                source,
                body,
                now_ms(),
                self.settings.max_config_revisions,
                audit,
            )
            .await?;
        if let Some(a) = audit {
            a.with_id(rev.revision).log();
        }
        {
            let mut hosts = self.hosts.lock().unwrap();
            let e = hosts.entry(host.to_string()).or_default();
            e.has_config = true;
            e.config_ask = None;
            if source == v2::ConfigSource::Reported {
                let now = now_ms();
                e.last_upload = Some(now);
                if let Some((_, ts)) = e.upload_asked.take() {
                    e.upload_done_for = Some(ts);
                }
                e.last_seen = now;
                e.dirty = true;
            }
        }
        if source == v2::ConfigSource::Desired {
            self.notify_change();
        }
        tracing::info!(
            host,
            revision = rev.revision,
            source = source.as_str(),
            bytes = body.len(),
            "config stored"
        );
        Ok(rev)
    }
}
