//! Releases: publish, withdraw, roll back, the release cache the version
//! checks read, what each host is offered and which hosts can take a
//! release now. Must not: know HTTP or write SQL.

#[allow(unused_imports)]
use super::*;

/// The rolled-back versions of `offer`'s product and platform newer than
/// it: a host running one of them comes down to `offer`.
pub(super) fn rolled_back_above(all: &[Release], offer: &Release) -> Vec<Version> {
    let mut v: Vec<Version> = all
        .iter()
        .filter(|r| r.product == offer.product && r.platform == offer.platform)
        .filter(|r| r.rolled_back_at.is_some() && r.version > offer.version)
        .map(|r| r.version)
        .collect();
    v.sort();
    v.dedup();
    v
}

pub(super) fn release_from(id: i64, r: NewRelease) -> Release {
    Release {
        id,
        url: format!("/api/v2/artifacts/{}", r.sha256),
        product: r.product,
        version: r.version,
        platform: r.platform,
        kind: r.kind,
        sha256: r.sha256,
        md5: r.md5,
        size: r.size,
        signature: r.signature,
        manifest: r.manifest,
        created_at: rfc3339_millis(r.created_at),
        withdrawn_at: r.withdrawn_at.map(rfc3339_millis),
        rolled_back_at: r.rolled_back_at.map(rfc3339_millis),
        rollback_from: Vec::new(),
        held: r.held,
    }
}

/// Why a rollback was refused: nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("no release {0}")]
    NoSuchRelease(i64),
    #[error("a watchdog is not rolled back this way: a watchdog that fails its proof of life reverts by itself; publish a newer watchdog")]
    Watchdog,
    #[error("no older {product} release for {platform} is left to come down to from {version} (publish the version to return to first)")]
    NothingOlder {
        product: String,
        version: Version,
        platform: String,
    },
    #[error("{newer} is offered and newer than {version}: hosts on {version} are offered {newer}, not a rollback (withdraw or roll back {newer} first)")]
    NotNewest { version: Version, newer: Version },
    #[error("the re-signed manifest does not fit: {0}")]
    Manifest(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A manifest re-signed for a rollback must describe `target` exactly and
/// authorise coming down from `bad`.
pub(super) fn check_rollback_manifest(
    text: &str,
    bad: &Release,
    target: &Release,
) -> Result<(), RollbackError> {
    let m = palette_protocol::manifest::Manifest::parse(text)
        .map_err(|e| RollbackError::Manifest(e.to_string()))?;
    let problem = if m.product != target.product
        || m.platform != target.platform
        || m.version != target.version
        || m.kind != target.kind
    {
        Some(format!(
            "it is for {} {} {} ({:?}), the rollback goes to {} {} {} ({:?})",
            m.product,
            m.version,
            m.platform,
            m.kind,
            target.product,
            target.version,
            target.platform,
            target.kind
        ))
    } else if m.sha256 != target.sha256 || m.size != target.size {
        Some("its sha256 or size is not the target release's".to_string())
    } else if m.allow_downgrade_from.is_none_or(|from| from > bad.version) {
        Some(format!(
            "its allow_downgrade_from must be at most {} (the version rolled back)",
            bad.version
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(RollbackError::Manifest(p)),
        None => Ok(()),
    }
}

/// Why a publish failed: nothing of it is kept.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Artifact(#[from] crate::artifacts::IngestError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Fleet {
    // ---- releases -----------------------------------------------------

    pub(super) fn cache_release(&self, r: Release) {
        let mut cache = self.releases.write().unwrap();
        cache.all.push(r);
        Self::render_v1_latest(&mut cache);
    }

    pub(super) fn render_v1_latest(cache: &mut ReleaseCache) {
        let newest_msi = cache
            .all
            .iter()
            .filter(|r| {
                r.product == "agent"
                    && r.kind == ReleaseKind::Msi
                    && r.withdrawn_at.is_none()
                    && !r.held
            })
            .max_by(|a, b| a.version.cmp(&b.version).then(a.id.cmp(&b.id)))
            .cloned();
        cache.v1_latest = newest_msi.map(|r| {
            let body = v1::encode(&v1::AgentVersion {
                major: r.version.major,
                minor: r.version.minor,
                patch: r.version.patch,
                product: "Agent".into(),
                md5: r.md5.clone(),
                url: V1_AGENT_URL.into(),
            });
            (body, r)
        });
    }

    /// Places a staged artifact and records its release; the 2xx that
    /// follows means both are durable. On failure the artifact file is
    /// deleted again unless another release names it.
    pub async fn publish(
        &self,
        staged: crate::artifacts::Staged,
        mut r: NewRelease,
        audit: Audit<'_>,
    ) -> Result<Release, PublishError> {
        let _guard = self.publish_lock.lock().await;
        let ingested = self.artifacts.place(staged).await?;
        r.sha256 = ingested.sha256;
        r.md5 = ingested.md5;
        r.size = ingested.size;
        match self.store.insert_release(&r, audit).await {
            Ok(id) => {
                if let Some(a) = audit {
                    a.with_id(id).log();
                }
                let release = release_from(id, r);
                self.cache_release(release.clone());
                self.notify_change();
                Ok(release)
            }
            Err(e) => {
                if !self.has_artifact(&r.sha256) {
                    if let Err(rm) = self.artifacts.remove(&r.sha256) {
                        tracing::warn!(sha256 = r.sha256, error = %rm, "could not delete the artifact of a failed publish; it is collected at the next start");
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Deletes artifact files that no release names (left by a crash
    /// between storing a file and recording its release).
    pub async fn collect_orphan_artifacts(&self) {
        let _guard = self.publish_lock.lock().await;
        let files = match self.artifacts.list() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "could not list artifacts to collect orphans");
                return;
            }
        };
        let mut removed = 0;
        for sha in files {
            if !self.has_artifact(&sha) {
                match self.artifacts.remove(&sha) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(sha256 = sha, error = %e, "could not delete an orphan artifact")
                    }
                }
            }
        }
        if removed > 0 {
            tracing::warn!(
                files = removed,
                "deleted artifact files that no release names (a publish cut short)"
            );
        }
        // The bucket is shared: one replica collects it.
        if self.artifacts.is_remote() && self.store.try_lead().await {
            match self.artifacts.collect_remote(|sha| self.has_artifact(sha)).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    objects = n,
                    storage = self.artifacts.storage(),
                    "deleted artifacts in object storage that no release names (publishes cut short over an hour ago)"
                ),
                Err(e) => tracing::warn!(
                    error = %crate::chain::error_chain(&e),
                    storage = self.artifacts.storage(),
                    "could not collect orphan artifacts in object storage; tried again at the next start"
                ),
            }
        }
    }

    pub fn releases(&self) -> Vec<Release> {
        self.releases.read().unwrap().all.clone()
    }

    /// Whether a published release has this artifact.
    pub fn has_artifact(&self, sha256: &str) -> bool {
        self.releases
            .read()
            .unwrap()
            .all
            .iter()
            .any(|r| r.sha256 == sha256)
    }

    pub fn v1_latest(&self) -> Option<(String, Release)> {
        self.releases.read().unwrap().v1_latest.clone()
    }

    /// `/api/v1/agent/version?platform=P` (sent by our own watchdog in v1
    /// mode): the newest agent release for that platform, whatever its
    /// kind, with a download URL that serves exactly it.
    pub fn v1_offer_for(&self, platform: &str) -> Option<(String, Release)> {
        let r = self.release_for("agent", platform)?;
        let url = format!(
            "{V1_AGENT_URL}?platform={}",
            form_urlencoded::byte_serialize(platform.as_bytes()).collect::<String>()
        );
        let body = v1::encode(&v1::AgentVersion {
            major: r.version.major,
            minor: r.version.minor,
            patch: r.version.patch,
            product: "Agent".into(),
            md5: r.md5.clone(),
            url,
        });
        Some((body, r))
    }

    pub fn msi_release(&self, version: &Version) -> Option<Release> {
        self.releases
            .read()
            .unwrap()
            .all
            .iter()
            .filter(|r| {
                r.product == "agent"
                    && r.kind == ReleaseKind::Msi
                    && &r.version == version
                    && r.withdrawn_at.is_none()
            })
            .max_by_key(|r| r.id)
            .cloned()
    }

    /// Withdraws a release: from now on no host is offered it (hosts that
    /// run it keep it; they are offered the newest remaining release only
    /// if it is newer, as watchdogs never downgrade). `None`: no such id.
    pub async fn withdraw(&self, id: i64, audit: Audit<'_>) -> StoreResult<Option<Release>> {
        if !self.store.withdraw_release(id, now_ms(), audit).await? {
            return Ok(None);
        }
        if let Some(a) = audit {
            a.log();
        }
        let mut cache = self.releases.write().unwrap();
        let now = rfc3339_millis(now_ms());
        let r = cache.all.iter_mut().find(|r| r.id == id).map(|r| {
            r.withdrawn_at.get_or_insert(now);
            r.clone()
        });
        Self::render_v1_latest(&mut cache);
        drop(cache);
        self.notify_change();
        Ok(r)
    }

    /// The release a host of `platform` running `product` should have: the
    /// newest one published for it and not withdrawn, carrying the newer
    /// versions an operator rolled back (their hosts come down to it).
    pub fn release_for(&self, product: &str, platform: &str) -> Option<Release> {
        let cache = self.releases.read().unwrap();
        let same = |r: &&Release| r.product == product && r.platform == platform;
        let mut offer = cache
            .all
            .iter()
            .filter(same)
            .filter(|r| r.withdrawn_at.is_none() && !r.held)
            .max_by(|a, b| a.version.cmp(&b.version).then(a.id.cmp(&b.id)))
            .cloned()?;
        offer.rollback_from = rolled_back_above(&cache.all, &offer);
        Some(offer)
    }

    /// The release `report`'s host should be offered: the newest one of its
    /// product and platform that its rollouts, pins and maintenance windows
    /// allow (see `Rollouts::offer`), with the rolled-back versions it
    /// brings hosts down from.
    pub fn release_for_host(&self, report: &HostReport) -> Option<Release> {
        let labels = self
            .rollouts
            .labels_of(&report.hostname, Some(&report.labels));
        let cache = self.releases.read().unwrap();
        let same = |r: &&Release| r.product == report.product && r.platform == report.platform;
        let mut candidates: Vec<&Release> = cache
            .all
            .iter()
            .filter(same)
            .filter(|r| r.withdrawn_at.is_none())
            .collect();
        candidates.sort_by(|a, b| b.version.cmp(&a.version).then(b.id.cmp(&a.id)));
        let mut offer = self
            .rollouts
            .offer(&report.hostname, &labels, &candidates)?;
        offer.rollback_from = rolled_back_above(&cache.all, &offer);
        Some(offer)
    }

    /// Which v2 hosts of a release's product can take it now (they are
    /// offered it at their next check-in and are online), and why each
    /// other one cannot (`ReachWhy`): what `palettectl release publish`
    /// and `rollout create` follow, so they wait only on hosts that can
    /// answer.
    pub fn reach(&self, release: &Release) -> v2::Reach {
        let now = now_ms();
        let window_now = self.rollouts.window_now();
        let reports: Vec<(String, v2::HostState, HostReport)> = {
            let hosts = self.hosts.lock().unwrap();
            hosts
                .iter()
                .filter_map(|(n, e)| Some((n.clone(), e.state(now), e.report.clone()?)))
                .filter(|(_, _, r)| release.product == "watchdog" || r.product == release.product)
                .collect()
        };
        let mut out = v2::Reach::default();
        for (name, state, report) in reports {
            let why = if report.platform != release.platform {
                Some(format!("another platform ({})", report.platform))
            } else if report.agent_version.is_some_and(|v| v >= release.version)
                && release.product != "watchdog"
            {
                Some(format!(
                    "already on {}",
                    report.agent_version.expect("checked")
                ))
            } else if release.product == "watchdog"
                && report
                    .watchdog_version
                    .parse::<palette_protocol::Version>()
                    .is_ok_and(|v| v >= release.version)
            {
                Some(format!("already on {}", report.watchdog_version))
            } else {
                let labels = self.rollouts.labels_of(&name, Some(&report.labels));
                let offered = if release.product == "watchdog" {
                    self.release_for("watchdog", &report.platform)
                        .is_some_and(|r| r.id == release.id)
                } else {
                    self.release_for_host(&report)
                        .is_some_and(|r| r.id == release.id)
                };
                let cache = self.rollouts.cache.read().unwrap();
                if offered {
                    let word = match state {
                        v2::HostState::Online => None,
                        v2::HostState::Stale => Some("stale"),
                        v2::HostState::Offline => Some("offline"),
                    };
                    word.map(|w| format!("{w} (it is offered the release when it checks in)"))
                } else if crate::fleet::rollouts::Rollouts::pinned_elsewhere(
                    &cache, &name, &labels, release,
                ) {
                    Some("pinned to another version".into())
                } else if !crate::fleet::rollouts::Rollouts::in_window(
                    &cache, &name, &labels, window_now,
                ) {
                    Some("outside its maintenance window".into())
                } else if release.withdrawn_at.is_some() {
                    Some("the release is withdrawn".into())
                } else {
                    Some("held: not admitted by a rollout yet".into())
                }
            };
            match why {
                None => out.now.push(name),
                Some(reason) => out.later.push(v2::ReachLater {
                    hostname: name,
                    reason,
                }),
            }
        }
        out.now.sort();
        out.later.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        out
    }

    /// A held release whose rollout finished is offered to every host from
    /// now on (legacy v1 hosts included), durably.
    pub async fn release_unhold(&self, id: i64) -> StoreResult<()> {
        self.store.set_release_held(id, false).await?;
        let mut cache = self.releases.write().unwrap();
        if let Some(r) = cache.all.iter_mut().find(|r| r.id == id) {
            r.held = false;
        }
        Self::render_v1_latest(&mut cache);
        drop(cache);
        self.notify_change();
        Ok(())
    }

    /// Rolls release `id` back: withdrawn, and the hosts running it are
    /// offered the newest older release of the same product and platform
    /// (`target`) as a downgrade. `signed` replaces the target's manifest
    /// and signature (re-signed to authorise the downgrade; checked by the
    /// caller). Returns the rolled-back release and the target.
    pub async fn roll_back(
        &self,
        id: i64,
        signed: Option<(String, String)>,
        audit: Audit<'_>,
    ) -> Result<(Release, Release), RollbackError> {
        let (bad, target) = self.rollback_plan(id)?;
        if let Some((m, _)) = &signed {
            check_rollback_manifest(m, &bad, &target)?;
        }
        self.store
            .roll_back_release(
                id,
                target.id,
                signed.as_ref().map(|(m, s)| (m.as_str(), s.as_str())),
                now_ms(),
                audit,
            )
            .await?;
        if let Some(a) = audit {
            a.log();
        }
        let mut cache = self.releases.write().unwrap();
        let now = rfc3339_millis(now_ms());
        for r in cache.all.iter_mut() {
            if r.id == id {
                r.withdrawn_at.get_or_insert(now.clone());
                r.rolled_back_at.get_or_insert(now.clone());
            } else if r.id == target.id {
                if let Some((m, s)) = &signed {
                    r.manifest = Some(m.clone());
                    r.signature = Some(s.clone());
                }
            }
        }
        let out = (
            cache.all.iter().find(|r| r.id == id).cloned(),
            cache.all.iter().find(|r| r.id == target.id).cloned(),
        );
        Self::render_v1_latest(&mut cache);
        drop(cache);
        self.notify_change();
        match out {
            (Some(b), Some(t)) => Ok((b, t)),
            _ => Err(RollbackError::NoSuchRelease(id)),
        }
    }

    /// The release `id` and the one its hosts would come down to.
    pub fn rollback_plan(&self, id: i64) -> Result<(Release, Release), RollbackError> {
        let cache = self.releases.read().unwrap();
        let bad = cache
            .all
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or(RollbackError::NoSuchRelease(id))?;
        if bad.product == "watchdog" {
            return Err(RollbackError::Watchdog);
        }
        if let Some(newer) = cache.all.iter().find(|r| {
            r.product == bad.product
                && r.platform == bad.platform
                && r.withdrawn_at.is_none()
                && r.version > bad.version
        }) {
            return Err(RollbackError::NotNewest {
                version: bad.version,
                newer: newer.version,
            });
        }
        let target = cache
            .all
            .iter()
            .filter(|r| {
                r.product == bad.product
                    && r.platform == bad.platform
                    && r.withdrawn_at.is_none()
                    && r.version < bad.version
            })
            .max_by(|a, b| a.version.cmp(&b.version).then(a.id.cmp(&b.id)))
            .cloned()
            .ok_or_else(|| RollbackError::NothingOlder {
                product: bad.product.clone(),
                version: bad.version,
                platform: bad.platform.clone(),
            })?;
        Ok((bad, target))
    }
}
