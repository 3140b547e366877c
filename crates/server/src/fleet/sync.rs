//! Change notification (long polls wake on it) and replica sync: what
//! another replica changed in the shared store is read back here. Must
//! not: know HTTP or write SQL.

#[allow(unused_imports)]
use super::*;

impl Fleet {
    // ---- change notification (long poll) ------------------------------

    /// Something long polls may be waiting for changed: wakes them here,
    /// and tells the other replicas sharing the store.
    pub fn notify_change(&self) {
        self.changes.send_modify(|v| *v += 1);
        if self.store.shared() {
            let (store, me) = (self.store.clone(), self.replica_id.clone());
            tokio::spawn(async move {
                if let Err(e) = store.announce(&me).await {
                    tracing::warn!(error = %crate::chain::error_chain(&e), "a change was not announced to the other replicas; their reconciliation picks it up");
                }
            });
        }
    }

    /// Reads again what other replicas may have changed in the shared
    /// store — commands, releases, credentials, rollouts (unless this
    /// replica leads them), pins, windows, labels, which hosts have
    /// configs, and hosts' last contact — and wakes the long polls here.
    pub async fn reload_shared(&self, with_hosts: bool) -> StoreResult<()> {
        let now = now_ms();
        {
            let _issuing = self.issue_lock.lock().await;
            let mut recent = self.store.recent_commands(10_000).await?;
            recent.reverse();
            let last = self.commands.read().unwrap().last_issued_ms;
            *self.commands.write().unwrap() = CommandCache {
                last_issued_ms: last,
                ..Default::default()
            };
            for c in recent {
                self.cache_command(c, now);
            }
        }
        self.reload_releases().await?;
        self.reload_tokens().await?;
        let leading = self.store.try_lead().await;
        self.load_rollouts_keeping(leading).await?;
        // Configs stored through other replicas (a check-in answer reads a
        // host's desired config only when one is known to exist).
        let with_config = self.store.hosts_with_config().await?;
        {
            let mut hosts = self.hosts.lock().unwrap();
            for h in with_config {
                if let Some(e) = hosts.get_mut(&h) {
                    e.has_config = true;
                }
            }
        }
        let rows = if with_hosts {
            self.store.load_hosts().await?
        } else {
            Vec::new()
        };
        {
            let mut hosts = self.hosts.lock().unwrap();
            for row in rows {
                let e = hosts.entry(row.hostname.clone()).or_default();
                if row.last_seen > e.last_seen {
                    e.last_seen = row.last_seen;
                    if let Some(r) = row
                        .report
                        .as_deref()
                        .and_then(|r| serde_json::from_str(r).ok())
                    {
                        e.report = Some(r);
                    }
                }
            }
        }
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Reads the releases again (another replica may have published one).
    pub async fn reload_releases(&self) -> StoreResult<()> {
        let _publishing = self.publish_lock.lock().await;
        let rows = self.store.releases().await?;
        let mut cache = ReleaseCache::default();
        for (id, r) in rows {
            cache.all.push(release_from(id, r));
        }
        Self::render_v1_latest(&mut cache);
        *self.releases.write().unwrap() = cache;
        Ok(())
    }

    /// With a store other replicas share: reads what they changed when they
    /// announce it, and every 5 seconds in any case (an announcement may be
    /// missed); the hosts' last contact and reports (never announced: they
    /// change at every check-in) every 30 seconds, every 5 on the replica
    /// that steps rollouts. Until shutdown.
    pub async fn replica_sync(self, mut shutdown: watch::Receiver<bool>) {
        let Some(mut news) = self.store.subscribe() else {
            return;
        };
        tracing::info!(replica = self.replica_id, "sharing the store with other replicas: their changes are read as they announce them, and every 5 s");
        let mut hosts_read = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                n = news.recv() => {
                    match n {
                        None => return,
                        Some(origin) if origin == self.replica_id => continue,
                        Some(_) => {}
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            // Many announcements at once: one reload.
            while news.try_recv().is_ok() {}
            // The leader steps rollouts from the hosts' reports: it reads
            // those of the other replicas' hosts more often.
            let every = if self.store.try_lead().await { 5 } else { 30 };
            let with_hosts = hosts_read.elapsed() >= Duration::from_secs(every);
            if with_hosts {
                hosts_read = std::time::Instant::now();
            }
            if let Err(e) = self.reload_shared(with_hosts).await {
                tracing::warn!(error = %crate::chain::error_chain(&e), "reading the other replicas' changes failed; retried");
            }
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
