//! Commands: issuing (with the legacy `ts` spacing), the cache the poll
//! paths read, what a host has pending, and the acknowledgements written
//! in group commits. Must not: know HTTP or write SQL.

#[allow(unused_imports)]
use super::*;

/// One acknowledgement waiting for its commit, and who waits for it.
pub(super) struct AckJob {
    ack: v2::CommandAck,
    at: Millis,
    done: tokio::sync::oneshot::Sender<StoreResult<bool>>,
}

/// Writes acknowledgements in group commits: every acknowledgement that
/// arrived while the previous commit ran goes into the next one, so a
/// command answered by ten thousand hosts costs a few commits (each
/// durable before its check-ins are answered), not ten thousand.
pub(super) async fn ack_writer(store: Arc<dyn Store>, mut rx: tokio::sync::mpsc::Receiver<AckJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < 5000 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let items: Vec<(v2::CommandAck, Millis)> =
            jobs.iter().map(|j| (j.ack.clone(), j.at)).collect();
        match store.record_acks(&items).await {
            Ok(news) => {
                for (j, new) in jobs.into_iter().zip(news) {
                    let _ = j.done.send(Ok(new));
                }
            }
            // Each on its own, so each waiter gets its own answer.
            Err(_) => {
                for j in jobs {
                    let r = store.record_ack(&j.ack, j.at).await;
                    let _ = j.done.send(r);
                }
            }
        }
    }
}

pub fn command_wire(c: &CommandRow) -> v2::Command {
    v2::Command {
        id: c.id,
        kind: c.kind,
        issued_at: rfc3339_millis(c.issued_at),
        expires_at: rfc3339_millis(c.expires_at),
    }
}

impl Fleet {
    /// Records a command's acknowledgement durably (in the next group
    /// commit); whether it was new.
    pub async fn record_ack(&self, ack: &v2::CommandAck, at: Millis) -> StoreResult<bool> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let job = AckJob {
            ack: ack.clone(),
            at,
            done,
        };
        if self.acks.send(job).await.is_err() {
            return self.store.record_ack(ack, at).await;
        }
        match wait.await {
            Ok(r) => r,
            Err(_) => self.store.record_ack(ack, at).await,
        }
    }

    // ---- commands -----------------------------------------------------

    pub(super) fn cache_command(&self, c: CommandRow, now: Millis) {
        let mut cache = self.commands.write().unwrap();
        cache.last_issued_ms = cache.last_issued_ms.max(c.legacy_ts);
        if c.kind.is_legacy() {
            match &c.target {
                Target::All => cache.latest_all_legacy = Some(c.clone()),
                Target::Hosts(hs) => {
                    for h in hs {
                        cache.latest_for_host_legacy.insert(h.clone(), c.clone());
                    }
                }
            }
        }
        cache.live.retain(|l| l.expires_at > now);
        if c.expires_at > now {
            cache.live.push(c);
        }
    }

    /// Issues a command at the real time. The `ts` legacy watchdogs see is
    /// a whole second after the previous command's, so they can tell any
    /// two commands apart (kept apart from the issue time, which the v2 API
    /// shows as it was).
    pub async fn issue_command(
        &self,
        kind: CommandKind,
        target: Target,
        ttl_secs: u64,
        audit: Audit<'_>,
    ) -> StoreResult<CommandRow> {
        let _guard = self.issue_lock.lock().await;
        let issued = now_ms();
        let mut legacy = issued;
        let last = self.commands.read().unwrap().last_issued_ms;
        if legacy.div_euclid(1000) <= last.div_euclid(1000) {
            legacy = (last.div_euclid(1000) + 1) * 1000;
        }
        let expires = legacy + (ttl_secs as Millis) * 1000;
        let row = self
            .store
            .insert_command(kind, &target, issued, legacy, expires, audit)
            .await?;
        if let Some(a) = audit {
            a.with_id(row.id).log();
        }
        self.cache_command(row.clone(), now_ms());
        self.notify_change();
        Ok(row)
    }

    /// What a legacy watchdog polling `GET /api/v1/command` (with a valid
    /// agent credential) should see. Answering a host PUT-CONFIG or
    /// GET-CONFIG is what allows its next token-less config upload.
    pub fn v1_command_for(&self, host: Option<&str>) -> Option<v1::Command> {
        let cmd = self.v1_command_inner(host);
        if let (Some(host), Some(cmd)) = (host, &cmd) {
            let word = cmd.command.as_str();
            if word == CommandKind::PutConfig.as_str() || word == CommandKind::GetConfig.as_str() {
                if let Some(e) = self.hosts.lock().unwrap().get_mut(host) {
                    if e.upload_done_for.as_deref() != Some(cmd.ts.as_str()) {
                        e.upload_asked = Some((now_ms(), cmd.ts.clone()));
                    }
                }
            }
        }
        cmd
    }

    pub(super) fn v1_command_inner(&self, host: Option<&str>) -> Option<v1::Command> {
        let now = now_ms();
        let op = {
            let cache = self.commands.read().unwrap();
            let targeted = host.and_then(|h| cache.latest_for_host_legacy.get(h));
            match (cache.latest_all_legacy.as_ref(), targeted) {
                (Some(a), Some(t)) => Some(if t.id > a.id { t.clone() } else { a.clone() }),
                (a, t) => a.or(t).cloned(),
            }
        };
        if let Some(host) = host {
            let mut hosts = self.hosts.lock().unwrap();
            if let Some(e) = hosts.get_mut(host) {
                if !e.has_config {
                    let fresh = |t: Millis| now - t < LEGACY_FRESHNESS_MS - 60_000;
                    let ask = match e.config_ask {
                        // An operator command issued after the ask goes first.
                        Some(a) if fresh(a) => {
                            op.as_ref().is_none_or(|o| o.legacy_ts <= a).then_some(a)
                        }
                        // The ask went unanswered: a fresh operator command
                        // is served before asking again, so none is starved.
                        Some(_)
                            if op
                                .as_ref()
                                .is_some_and(|o| now - o.legacy_ts < LEGACY_FRESHNESS_MS) =>
                        {
                            None
                        }
                        _ => {
                            e.config_ask = Some(now);
                            Some(now)
                        }
                    };
                    if let Some(ask) = ask {
                        return Some(v1::Command {
                            ts: rfc3339_secs(ask),
                            command: CommandKind::PutConfig.as_str().into(),
                        });
                    }
                }
            }
        }
        op.map(|o| v1::Command {
            ts: rfc3339_secs(o.legacy_ts),
            command: o.kind.as_str().into(),
        })
    }

    /// Live commands for `host` that it has not acknowledged yet.
    /// A command by id: from the live ones in memory, else the store.
    pub async fn command_row(&self, id: i64) -> StoreResult<Option<CommandRow>> {
        let cached = {
            let cache = self.commands.read().unwrap();
            cache.live.iter().find(|c| c.id == id).cloned()
        };
        match cached {
            Some(c) => Ok(Some(c)),
            None => self.store.command(id).await,
        }
    }

    /// Whether any config (desired or reported) is stored for `host`, as
    /// this replica knows (other replicas' stores are read at their
    /// announcement).
    pub fn host_has_config(&self, host: &str) -> bool {
        self.hosts
            .lock()
            .unwrap()
            .get(host)
            .is_some_and(|e| e.has_config)
    }

    pub async fn pending_for(&self, host: &str) -> StoreResult<Vec<v2::Command>> {
        let now = now_ms();
        let live: Vec<CommandRow> = {
            let cache = self.commands.read().unwrap();
            cache
                .live
                .iter()
                .filter(|c| c.expires_at > now && c.targets(host))
                .cloned()
                .collect()
        };
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = live.iter().map(|c| c.id).collect();
        let acked: HashSet<i64> = self
            .store
            .acked_by_host(host, &ids)
            .await?
            .into_iter()
            .collect();
        Ok(live
            .into_iter()
            .filter(|c| !acked.contains(&c.id))
            .map(|c| command_wire(&c))
            .collect())
    }
}
