//! The rollout driver: creating a rollout, pause/resume/abort, and the
//! one task that steps every active rollout (on the replica that leads)
//! when something changes and at least every second, storing what moved.

#[allow(unused_imports)]
use super::*;

impl Fleet {
    /// Starts a rollout of a release to the hosts matching its selector.
    pub async fn create_rollout(
        &self,
        new: NewRollout,
        audit: Audit<'_>,
    ) -> Result<RolloutStatus, RolloutError> {
        let find = || self.releases().into_iter().find(|r| r.id == new.release_id);
        let found = match find() {
            Some(r) => Some(r),
            // Published a moment ago through another replica: not read yet.
            None if self.store.shared() => {
                self.reload_releases().await?;
                find()
            }
            None => None,
        };
        let release = found.ok_or(RolloutError::NoRelease(new.release_id))?;
        if release.withdrawn_at.is_some() {
            return Err(RolloutError::Withdrawn(release.id));
        }
        if release.product == "watchdog" {
            return Err(RolloutError::Watchdog);
        }
        let selector =
            Selector::parse(&new.selector).map_err(|e| RolloutError::Invalid(e.to_string()))?;
        let waves_text = if new.waves.is_empty() {
            "100%".to_string()
        } else {
            new.waves.join(",")
        };
        let waves = parse_waves(&waves_text).map_err(|e| RolloutError::Invalid(e.to_string()))?;
        let halt_after = match new.halt_after.as_deref() {
            None => Threshold::Hosts(1),
            Some(t) => Threshold::parse(t).ok_or_else(|| {
                RolloutError::Invalid(format!(
                    "halt_after {t:?} must be a host count (at least 1) or a percentage"
                ))
            })?,
        };
        if new.soak_secs > 30 * 24 * 3600 {
            return Err(RolloutError::Invalid("soak_secs is at most 30 days".into()));
        }
        {
            let cache = self.rollouts.cache.read().unwrap();
            if let Some(o) = cache.rollouts.iter().find(|o| {
                o.release.id == release.id && !matches!(o.plan.phase, Phase::Aborted | Phase::Done)
            }) {
                return Err(RolloutError::Active(o.id, o.plan.phase.as_str()));
            }
        }
        let now = now_ms();
        let record = RolloutRecord {
            id: 0,
            release_id: release.id,
            selector: selector.to_string(),
            waves: waves_text,
            soak_ms: new.soak_secs as Millis * 1000,
            halt_after: halt_after.to_string(),
            max_concurrent: new.max_concurrent,
            phase: "running".into(),
            wave: 0,
            wave_started_at: now,
            reason: None,
            created_at: now,
        };
        // The hosts: every v2 host of the product and platform the selector
        // picks, ordered for the waves (seeded by the creation time: each
        // rollout picks other canaries).
        let candidates = self.rollout_candidates(&release, &selector);
        let ordered = crate::rollout::order_hosts(now, &candidates);
        // Hosts that can take it now go first, so the canaries are hosts
        // that prove something soon (online, inside their window).
        let views = self.host_views(&release, self.rollouts.window_now());
        let (ready, later): (Vec<String>, Vec<String>) = ordered.into_iter().partition(|h| {
            views
                .get(h)
                .is_some_and(|v| v.state == palette_protocol::v2::HostState::Online && v.in_window)
        });
        let ordered: Vec<String> = ready.into_iter().chain(later).collect();
        let members = Plan::assign(&waves, ordered);
        let records: Vec<MemberRecord> = members
            .iter()
            .enumerate()
            .map(|(i, m)| member_record(i, m))
            .collect();
        // With its members, in one transaction: the replica that leads
        // never sees it half made.
        let id = self.store.insert_rollout(&record, &records, audit).await?;
        if let Some(a) = audit {
            a.with_id(id).log();
        }
        let rollout = Rollout {
            id,
            selector,
            created_at: now,
            unsaved: Default::default(),
            unsaved_record: false,
            plan: Plan {
                version: release.version,
                waves,
                soak_ms: record.soak_ms,
                halt_after,
                max_concurrent: new.max_concurrent,
                phase: Phase::Running,
                wave: 0,
                wave_started_at: now,
                reason: None,
                members,
                signs: Default::default(),
            },
            release,
        };
        let status = rollout.status();
        self.rollouts.cache.write().unwrap().rollouts.push(rollout);
        tracing::info!(id, version = %status.version, selector = status.selector, hosts = status.hosts.len(), waves = ?status.waves, "rollout started");
        self.notify_change();
        self.step_if_leading().await;
        Ok(self.rollout(id).unwrap_or(status))
    }

    pub fn rollout(&self, id: i64) -> Option<RolloutStatus> {
        let cache = self.rollouts.cache.read().unwrap();
        cache
            .rollouts
            .iter()
            .find(|o| o.id == id)
            .map(Rollout::status)
    }

    pub fn rollout_list(&self) -> Vec<RolloutStatus> {
        let cache = self.rollouts.cache.read().unwrap();
        let mut v: Vec<RolloutStatus> = cache.rollouts.iter().map(Rollout::status).collect();
        v.reverse();
        v
    }

    /// Pause, resume or abort.
    pub async fn rollout_action(
        &self,
        id: i64,
        action: &'static str,
        audit: Audit<'_>,
    ) -> Result<RolloutStatus, RolloutError> {
        // Started a moment ago through another replica: not read yet.
        if self.rollout(id).is_none() && self.store.shared() {
            let leading = self.store.try_lead().await;
            self.load_rollouts_keeping(leading).await?;
        }
        // The change is stored (with its audit entry) before the view
        // takes it: a refused write changes nothing a host would see.
        let _one_action = self.rollouts.action_lock.lock().await;
        let (record, before) = {
            let mut cache = self.rollouts.cache.write().unwrap();
            let o = cache
                .rollouts
                .iter_mut()
                .find(|o| o.id == id)
                .ok_or(RolloutError::NotFound(id))?;
            let before = (o.plan.phase, o.plan.reason.clone(), o.plan.wave_started_at);
            let from = o.plan.phase;
            let to = match (action, from) {
                ("pause", Phase::Running) => Phase::Paused,
                ("resume", Phase::Paused | Phase::Halted) => Phase::Running,
                ("abort", Phase::Running | Phase::Paused | Phase::Halted) => Phase::Aborted,
                _ => {
                    return Err(RolloutError::Phase {
                        id,
                        phase: from.as_str(),
                        action: match action {
                            "pause" => "paused",
                            "resume" => "resumed",
                            _ => "aborted",
                        },
                    })
                }
            };
            o.plan.phase = to;
            if to == Phase::Running {
                o.plan.reason = None;
                o.plan.wave_started_at = now_ms();
            }
            if to == Phase::Aborted {
                o.plan.reason = Some("aborted by an operator".into());
            }
            let record = o.record();
            (o.plan.phase, o.plan.reason, o.plan.wave_started_at) = before.clone();
            (record, before)
        };
        self.store.update_rollout(&record, audit).await?;
        {
            let mut cache = self.rollouts.cache.write().unwrap();
            if let Some(o) = cache.rollouts.iter_mut().find(|o| o.id == id) {
                // Unless a step moved it meanwhile (it reads the stored row).
                if (o.plan.phase, &o.plan.reason, o.plan.wave_started_at)
                    == (before.0, &before.1, before.2)
                {
                    o.plan.phase = Phase::parse(&record.phase).unwrap_or(o.plan.phase);
                    o.plan.reason = record.reason.clone();
                    o.plan.wave_started_at = record.wave_started_at;
                }
            }
        }
        if let Some(a) = audit {
            a.log();
        }
        tracing::warn!(id, action, phase = record.phase, "rollout {action}");
        self.notify_change();
        self.step_if_leading().await;
        self.rollout(id).ok_or(RolloutError::NotFound(id))
    }

    /// Steps the rollouts at once when this replica leads them (another
    /// replica's leader steps them when it reads the change).
    pub(super) async fn step_if_leading(&self) {
        if self.store.try_lead().await {
            self.step_rollouts().await;
        }
    }

    /// Steps every active rollout once and stores what changed.
    pub async fn step_rollouts(&self) {
        let now = now_ms();
        let window_now = self.rollouts.window_now();
        let mut to_store: Vec<(RolloutRecord, Vec<MemberRecord>)> = Vec::new();
        let mut finished_releases: Vec<i64> = Vec::new();
        let mut admitted_any = false;
        // Host views for every active rollout's hosts, taken first.
        let active: Vec<(i64, Release, Selector)> = {
            let cache = self.rollouts.cache.read().unwrap();
            cache
                .rollouts
                .iter()
                .filter(|o| matches!(o.plan.phase, Phase::Running | Phase::Paused))
                .map(|o| (o.id, o.release.clone(), o.selector.clone()))
                .collect()
        };
        if active.is_empty() {
            return;
        }
        for (id, release, selector) in active {
            let candidates = self.rollout_candidates(&release, &selector);
            let views = self.host_views(&release, window_now);
            let mut cache = self.rollouts.cache.write().unwrap();
            let Some(o) = cache.rollouts.iter_mut().find(|o| o.id == id) else {
                continue;
            };
            // Hosts that joined since: the last wave.
            let last = o.plan.waves.len() - 1;
            let mut joined = Vec::new();
            for (name, _) in candidates {
                if !o.plan.members.iter().any(|m| m.hostname == name) {
                    o.plan.members.push(Member {
                        hostname: name.clone(),
                        wave: last,
                        admitted_at: None,
                        outcome: None,
                        message: String::new(),
                    });
                    joined.push(name);
                }
            }
            let before = o.plan.phase;
            let ch: Changes = o.plan.step(
                now,
                self.settings.rollout_host_timeout.as_millis() as Millis,
                |h| views.get(h).cloned(),
            );
            if !ch.any() && joined.is_empty() && o.unsaved.is_empty() && !o.unsaved_record {
                continue;
            }
            admitted_any |= !ch.admitted.is_empty() || ch.moved;
            for h in &ch.admitted {
                tracing::info!(
                    rollout = id,
                    host = h,
                    wave = o.plan.wave + 1,
                    "host admitted to the rollout"
                );
            }
            for (h, outcome) in &ch.finished {
                tracing::info!(rollout = id, host = h, ?outcome, "rollout host finished");
            }
            if ch.moved {
                match o.plan.phase {
                    Phase::Halted => tracing::error!(
                        rollout = id,
                        reason = o.plan.reason.as_deref(),
                        "rollout halted"
                    ),
                    Phase::Done => {
                        tracing::info!(rollout = id, "rollout done");
                        if o.release.held {
                            finished_releases.push(o.release.id);
                        }
                    }
                    _ if before == o.plan.phase => {
                        tracing::info!(rollout = id, wave = o.plan.wave + 1, "rollout wave started")
                    }
                    _ => {}
                }
            }
            // What changed now, and what an earlier step could not store.
            let changed = ch
                .admitted
                .iter()
                .chain(ch.finished.iter().map(|(h, _)| h))
                .chain(joined.iter())
                .cloned()
                .collect::<Vec<_>>();
            o.unsaved.extend(changed);
            o.unsaved_record = true;
            let members: Vec<MemberRecord> = o
                .plan
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| o.unsaved.contains(&m.hostname))
                .map(|(i, m)| member_record(i, m))
                .collect();
            to_store.push((o.record(), members));
        }
        for (r, members) in to_store {
            let res = async {
                self.store.update_rollout(&r, None).await?;
                self.store.save_members(r.id, &members).await
            }
            .await;
            match res {
                Ok(()) => {
                    let mut cache = self.rollouts.cache.write().unwrap();
                    if let Some(o) = cache.rollouts.iter_mut().find(|o| o.id == r.id) {
                        // Changed again since: stored at the next step.
                        o.unsaved_record = false;
                        for m in &members {
                            o.unsaved.remove(&m.hostname);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(rollout = r.id, error = %crate::chain::error_chain(&e), "rollout progress not stored; retried at the next step");
                }
            }
        }
        for id in finished_releases {
            // Every host of the rollout has it: legacy hosts may have it too.
            if let Err(e) = self.release_unhold(id).await {
                tracing::warn!(release = id, error = %crate::chain::error_chain(&e), "a finished rollout's release stays held; retried at restart");
            }
        }
        if admitted_any {
            self.notify_change();
        }
    }

    /// Loads rollouts, pins, windows and assigned labels at start.
    pub async fn load_rollouts(&self) -> StoreResult<()> {
        self.load_rollouts_keeping(false).await
    }

    /// As `load_rollouts`; with `keep`, the rollouts in memory stay (this
    /// replica leads them: its memory is ahead of the store) and only pins,
    /// windows and labels are read again.
    pub async fn load_rollouts_keeping(&self, keep: bool) -> StoreResult<()> {
        let releases = self.releases();
        let mut cache = Cache::default();
        for (r, members) in self.store.load_rollouts().await? {
            let id = r.id;
            let Some(release) = releases.iter().find(|x| x.id == r.release_id).cloned() else {
                tracing::warn!(rollout = id, "rollout of an unknown release ignored");
                continue;
            };
            match Rollout::from_records(r, members, release) {
                Some(o) => cache.rollouts.push(o),
                None => tracing::warn!(
                    rollout = id,
                    "a stored rollout this version cannot read was ignored"
                ),
            }
        }
        for p in self.store.load_pins().await? {
            if let Ok(s) = Selector::parse(&p.selector) {
                cache.pins.push((p, s));
            }
        }
        for w in self.store.load_windows().await? {
            if let (Ok(s), Ok(win)) = (
                Selector::parse(&w.selector),
                Window::parse(&w.schedule, &w.tz),
            ) {
                cache.windows.push((w, s, win));
            }
        }
        cache.assigned = self.store.load_host_labels().await?.into_iter().collect();
        let mut now = self.rollouts.cache.write().unwrap();
        if keep {
            // Leading: hosts' progress in memory is ahead of the store (it
            // is written right after each step), but an operator's pause,
            // resume or abort on another replica, and rollouts started
            // there, are only in the store.
            let mine = std::mem::take(&mut now.rollouts);
            for stored in cache.rollouts.iter_mut() {
                if let Some(m) = mine.iter().find(|m| m.id == stored.id) {
                    let (phase, reason) = (stored.plan.phase, stored.plan.reason.clone());
                    *stored = m.clone();
                    stored.plan.phase = phase;
                    stored.plan.reason = reason;
                }
            }
        }
        *now = cache;
        Ok(())
    }

    /// The task that moves rollouts on: at every change (a host's report,
    /// an operator's action) and every second, until shutdown.
    pub async fn rollout_driver(self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.subscribe_reports();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if *shutdown.borrow() {
                return;
            }
            // One replica steps rollouts at a time (the others read them).
            if self.store.try_lead().await {
                self.step_rollouts().await;
                self.sample_versions().await;
            }
        }
    }
}
