//! Hosts: liveness from heartbeats and reports, admission of new host
//! names (a token bucket per credential), the inventory and its batched
//! flush, retirement, labels and the views rollouts read. Must not: know
//! HTTP or write SQL.

#[allow(unused_imports)]
use super::*;

impl Fleet {
    // ---- hosts --------------------------------------------------------

    /// The store's identity (see `Store::store_id`).
    pub fn store_id(&self) -> &str {
        self.store.store_id()
    }

    /// Whether `host` may be recorded for the agent credential `token`: a
    /// known host always; a new name only while the credential's budget of
    /// new names lasts (`new_hosts_burst`, refilled at
    /// `new_hosts_per_minute`), so a leaked license key cannot fill the
    /// inventory with made-up hosts.
    pub fn admit_host(&self, host: &str, token: &TokenHash) -> Result<(), TooManyNewHosts> {
        if self.hosts.lock().unwrap().contains_key(host) {
            return Ok(());
        }
        let burst = f64::from(self.settings.new_hosts_burst.max(1));
        let per_sec = f64::from(self.settings.new_hosts_per_minute.max(1)) / 60.0;
        let now = std::time::Instant::now();
        let mut buckets = self.new_hosts.lock().unwrap();
        let b = buckets.entry(*token).or_insert(Bucket {
            tokens: burst,
            at: now,
            warned: false,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        b.at = now;
        if b.tokens >= burst {
            b.warned = false;
        }
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / per_sec).ceil() as u64;
            if !std::mem::replace(&mut b.warned, true) {
                tracing::warn!(
                    host,
                    burst = self.settings.new_hosts_burst,
                    per_minute = self.settings.new_hosts_per_minute,
                    "one agent credential introduced more new host names than allowed: refusing unknown names with 429 until its budget refills (raise --new-hosts-burst for a large enrollment; a leaked key shows this way)"
                );
            }
            tracing::debug!(
                host,
                retry_after_s = wait,
                "new host name refused: this credential added too many recently"
            );
            Err(TooManyNewHosts {
                retry_after_secs: wait.max(1),
            })
        }
    }

    /// Records contact from `host` (already validated and admitted). A host
    /// the server holds no config for is asked for it (see `v1_command_for`).
    pub fn heartbeat(&self, host: &str) {
        let now = now_ms();
        let mut hosts = self.hosts.lock().unwrap();
        let e = hosts.entry(host.to_string()).or_default();
        e.last_seen = now;
        e.dirty = true;
    }

    /// A legacy poll: contact, and the legacy two-minute interval.
    pub fn legacy_heartbeat(&self, host: &str) {
        let now = now_ms();
        let mut hosts = self.hosts.lock().unwrap();
        let e = hosts.entry(host.to_string()).or_default();
        e.last_seen = now;
        e.interval_ms = LEGACY_INTERVAL_MS;
        e.dirty = true;
    }

    /// The end of a long poll is contact too (the host held its connection
    /// until now). A host retired meanwhile is not brought back.
    pub fn poll_ended(&self, host: &str) {
        if let Some(e) = self.hosts.lock().unwrap().get_mut(host) {
            e.last_seen = now_ms();
            e.dirty = true;
        }
    }

    /// Records a v2 check-in's report; `wait_ms` is the long-poll wait the
    /// host asked for (its check-in interval). Returns the report's update
    /// outcome when it is new (not the one this server already knew).
    pub fn record_report(
        &self,
        report: &HostReport,
        wait_ms: Millis,
    ) -> Vec<(String, v2::UpdateReport)> {
        let mut hosts = self.hosts.lock().unwrap();
        let e = hosts.entry(report.hostname.clone()).or_default();
        e.last_seen = now_ms();
        e.interval_ms = if wait_ms > 0 {
            wait_ms
        } else {
            DEFAULT_INTERVAL_MS
        };
        e.dirty = true;
        let differs = |b: Option<&v2::UpdateReport>, u: &v2::UpdateReport| {
            b.is_none_or(|b| {
                b.release_id != u.release_id || b.outcome != u.outcome || b.message != u.message
            })
        };
        let mut new = Vec::new();
        let before = e.report.as_ref().and_then(|r| r.last_update.as_ref());
        if let Some(u) = &report.last_update {
            if differs(before, u) {
                self.metrics.update_outcome(match u.outcome {
                    v2::Outcome::Succeeded => "succeeded",
                    v2::Outcome::Failed => "failed",
                });
                new.push((report.product.clone(), u.clone()));
            }
        }
        let before = e
            .report
            .as_ref()
            .and_then(|r| r.last_watchdog_update.as_ref());
        if let Some(u) = &report.last_watchdog_update {
            if differs(before, u) {
                new.push(("watchdog".to_string(), u.clone()));
            }
        }
        if e.report.as_ref() != Some(report) {
            e.report = Some(report.clone());
            e.report_dirty = true;
        }
        let at = e.last_seen;
        e.pending_updates
            .extend(new.iter().map(|(p, u)| (p.clone(), u.clone(), at)));
        drop(hosts);
        self.reports.send_modify(|v| *v += 1);
        new
    }

    pub fn subscribe_reports(&self) -> watch::Receiver<u64> {
        self.reports.subscribe()
    }

    /// The v2 hosts a rollout of `release` reaches: its product and
    /// platform, picked by `selector` (with their labels).
    pub fn rollout_candidates(
        &self,
        release: &Release,
        selector: &palette_protocol::selector::Selector,
    ) -> Vec<(String, palette_protocol::selector::Labels)> {
        let reports: Vec<(String, palette_protocol::selector::Labels)> = {
            let hosts = self.hosts.lock().unwrap();
            hosts
                .iter()
                .filter_map(|(name, e)| {
                    let r = e.report.as_ref()?;
                    (r.product == release.product && r.platform == release.platform)
                        .then(|| (name.clone(), r.labels.clone()))
                })
                .collect()
        };
        reports
            .into_iter()
            .map(|(name, own)| {
                let labels = self.rollouts.labels_of(&name, Some(&own));
                (name, labels)
            })
            .filter(|(name, labels)| selector.matches(name, labels))
            .filter(|(name, labels)| {
                let cache = self.rollouts.cache.read().unwrap();
                !crate::fleet::rollouts::Rollouts::pinned_elsewhere(&cache, name, labels, release)
            })
            .collect()
    }

    /// What the rollout step needs to know about every v2 host.
    pub fn host_views(
        &self,
        release: &Release,
        window_now: Millis,
    ) -> HashMap<String, crate::rollout::HostView> {
        let now = now_ms();
        let snapshot: Vec<(String, v2::HostState, HostReport)> = {
            let hosts = self.hosts.lock().unwrap();
            hosts
                .iter()
                .filter_map(|(n, e)| Some((n.clone(), e.state(now), e.report.clone()?)))
                .collect()
        };
        let cache = self.rollouts.cache.read().unwrap();
        snapshot
            .into_iter()
            .filter_map(|(name, state, r)| {
                let mut labels = r.labels.clone();
                if let Some(a) = cache.assigned.get(&name) {
                    labels.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                if crate::fleet::rollouts::Rollouts::pinned_elsewhere(
                    &cache, &name, &labels, release,
                ) {
                    return None;
                }
                let view = crate::rollout::HostView {
                    state,
                    installed: r.agent_version,
                    result: r
                        .last_update
                        .as_ref()
                        .filter(|u| u.release_id == release.id)
                        .map(|u| (u.outcome, u.message.clone())),
                    in_window: crate::fleet::rollouts::Rollouts::in_window(
                        &cache, &name, &labels, window_now,
                    ),
                    progressing: r
                        .update_progress
                        .as_ref()
                        .is_some_and(|p| p.release_id == release.id),
                };
                Some((name, view))
            })
            .collect()
    }

    /// A host's own labels (from its last report).
    pub fn host_own_labels(&self, host: &str) -> palette_protocol::selector::Labels {
        self.hosts
            .lock()
            .unwrap()
            .get(host)
            .and_then(|e| e.report.as_ref().map(|r| r.labels.clone()))
            .unwrap_or_default()
    }

    /// A host's labels, its own and assigned (empty for an unknown host).
    pub fn host_labels(&self, host: &str) -> palette_protocol::selector::Labels {
        let own = self
            .hosts
            .lock()
            .unwrap()
            .get(host)
            .and_then(|e| e.report.as_ref().map(|r| r.labels.clone()));
        self.rollouts.labels_of(host, own.as_ref())
    }

    /// Sets the inventory gauges (hosts online, stale and offline, hosts by agent
    /// version, live commands, releases) for a `/metrics` answer. The state
    /// is judged against each host's own check-in interval.
    pub fn refresh_gauges(&self) {
        let now = now_ms();
        let (mut online, mut stale, mut offline) = (0u64, 0u64, 0u64);
        let mut by_version: HashMap<String, u64> = HashMap::new();
        {
            let hosts = self.hosts.lock().unwrap();
            for e in hosts.values().filter(|e| e.last_seen > 0) {
                match e.state(now) {
                    v2::HostState::Online => online += 1,
                    v2::HostState::Stale => stale += 1,
                    v2::HostState::Offline => offline += 1,
                }
                let v = match &e.report {
                    Some(r) => r
                        .agent_version
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "none".into()),
                    None => "legacy".into(),
                };
                *by_version.entry(v).or_default() += 1;
            }
        }
        let m = &self.metrics;
        m.set(
            "palette_hosts",
            vec![("state", "online".into())],
            online as f64,
        );
        m.set(
            "palette_hosts",
            vec![("state", "stale".into())],
            stale as f64,
        );
        m.set(
            "palette_hosts",
            vec![("state", "offline".into())],
            offline as f64,
        );
        for (v, n) in by_version {
            m.set(
                "palette_hosts_by_agent_version",
                vec![("version", v)],
                n as f64,
            );
        }
        let live = {
            let cache = self.commands.read().unwrap();
            cache.live.iter().filter(|c| c.expires_at > now).count()
        };
        m.set("palette_commands_live", vec![], live as f64);
        m.set(
            "palette_releases",
            vec![],
            self.releases.read().unwrap().all.len() as f64,
        );
    }

    /// Removes a host from the inventory, durably first; it reappears only
    /// if it checks in again. `false` when unknown.
    pub async fn retire_host(&self, host: &str, audit: Audit<'_>) -> StoreResult<bool> {
        let in_memory = self.hosts.lock().unwrap().contains_key(host);
        let stored = self.store.retire_host(host, audit).await?;
        if !stored && in_memory {
            // Known only in memory (its first contact not flushed yet):
            // the entry is the only write, and it must be stored first.
            if let Some(a) = audit {
                self.store.insert_audit(a).await?;
            }
        }
        if stored || in_memory {
            if let Some(a) = audit {
                a.log();
            }
        }
        if let Some(id) = self.tokens.host_token_id(host) {
            self.revoke_token(crate::store::TokenKind::Host, id, None)
                .await?;
            tracing::info!(host, "host token revoked with the host's retirement");
        }
        if in_memory || stored {
            self.hosts.lock().unwrap().remove(host);
            tracing::info!(host, "host retired from the inventory");
        }
        Ok(in_memory || stored)
    }

    /// Hosts and their last contact, newest first, optionally only those
    /// seen within `window_ms`.
    pub fn hosts(&self, window_ms: Option<Millis>) -> Vec<v2::HostInfo> {
        let now = now_ms();
        let hosts = self.hosts.lock().unwrap();
        let mut list: Vec<_> = hosts
            .iter()
            .filter(|(_, e)| e.last_seen > 0 && window_ms.is_none_or(|w| now - e.last_seen <= w))
            .map(|(h, e)| {
                (
                    e.last_seen,
                    h.clone(),
                    e.report.clone(),
                    e.state(now),
                    e.interval(),
                )
            })
            .collect();
        drop(hosts);
        list.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        list.into_iter()
            .map(|(seen, hostname, report, state, interval)| v2::HostInfo {
                labels: self
                    .rollouts
                    .labels_of(&hostname, report.as_ref().map(|r| &r.labels)),
                hostname,
                last_seen: rfc3339_millis(seen),
                state: Some(state),
                checkin_interval_secs: Some((interval / 1000) as u64),
                report,
            })
            .collect()
    }

    /// Legacy `/agents`: hostname → RFC 3339 last contact (seconds).
    pub fn legacy_agents(&self) -> Vec<(String, String)> {
        let now = now_ms();
        let hosts = self.hosts.lock().unwrap();
        let mut list: Vec<_> = hosts
            .iter()
            .filter(|(_, e)| now - e.last_seen <= AGENT_LIST_WINDOW_MS)
            .map(|(h, e)| (h.clone(), rfc3339_secs(e.last_seen)))
            .collect();
        list.sort();
        list
    }

    /// Writes changed last-contact times to the store.
    pub async fn flush_heartbeats(&self) -> StoreResult<usize> {
        let updates: Vec<(String, String, v2::UpdateReport, Millis)> = {
            let mut hosts = self.hosts.lock().unwrap();
            hosts
                .iter_mut()
                .filter(|(_, e)| !e.pending_updates.is_empty())
                .flat_map(|(h, e)| {
                    std::mem::take(&mut e.pending_updates)
                        .into_iter()
                        .map(move |(p, u, at)| (h.clone(), p, u, at))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for chunk in updates.chunks(5000) {
            if let Err(e) = self.store.record_updates(chunk).await {
                let mut hosts = self.hosts.lock().unwrap();
                for (h, p, u, at) in chunk {
                    if let Some(e) = hosts.get_mut(h) {
                        e.pending_updates.push((p.clone(), u.clone(), *at));
                    }
                }
                return Err(e);
            }
        }
        let beats: Vec<(String, Millis, Option<String>)> = {
            let mut hosts = self.hosts.lock().unwrap();
            hosts
                .iter_mut()
                .filter(|(_, e)| e.dirty || e.report_dirty)
                .map(|(h, e)| {
                    e.dirty = false;
                    let report = if std::mem::take(&mut e.report_dirty) {
                        e.report
                            .as_ref()
                            .map(|r| serde_json::to_string(r).expect("a report serialises"))
                    } else {
                        None
                    };
                    (h.clone(), e.last_seen, report)
                })
                .collect()
        };
        if beats.is_empty() {
            return Ok(0);
        }
        for chunk in beats.chunks(5000) {
            if let Err(e) = self.store.upsert_heartbeats(chunk).await {
                // Mark them dirty again so the next flush retries.
                let mut hosts = self.hosts.lock().unwrap();
                for (h, _, report) in &beats {
                    if let Some(e) = hosts.get_mut(h) {
                        e.dirty = true;
                        e.report_dirty |= report.is_some();
                    }
                }
                return Err(e);
            }
        }
        Ok(beats.len())
    }

    /// Runs until `shutdown` fires, flushing heartbeats every second, and
    /// once more at the end.
    pub async fn heartbeat_flusher(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            // A failed flush keeps its batch (marked dirty again) for the
            // next tick; the store logs the outage once per episode.
            if let Err(e) = self.flush_heartbeats().await {
                tracing::debug!(error = %e, "could not write heartbeats; retrying in 1 s");
            }
            if let Err(e) = self.flush_token_uses().await {
                tracing::debug!(error = %e, "could not write token uses; retrying in 1 s");
            }
        }
        if let Err(e) = self.flush_heartbeats().await {
            tracing::error!(error = %e, "could not write heartbeats at shutdown");
        }
        if let Err(e) = self.flush_token_uses().await {
            tracing::warn!(error = %e, "could not write token uses at shutdown");
        }
    }
}
