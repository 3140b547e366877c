//! Rollouts, pins, maintenance windows and operator-assigned labels, as the
//! server keeps them: durable in the store, mirrored in memory for the
//! check-in path, and driven by one task (`driver`) that steps every active
//! rollout (see `crate::rollout` for the rules) when something changes and
//! at least every second. Owns: who is offered which release. Must not:
//! decide anything from message text, or block a check-in on the store.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use palette_protocol::selector::{Labels, Selector};
use palette_protocol::timefmt::{rfc3339_millis, Millis};
use palette_protocol::v2::{Outcome, Release};
use palette_protocol::Version;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::fleet::Fleet;
use crate::rollout::window::Window;
use crate::rollout::{parse_waves, Changes, Member, Phase, Plan, Threshold};
use crate::store::{Audit, MemberRecord, RolloutRecord, StoreResult};

/// What happens to a release published without a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DefaultRollout {
    /// Offered to every host at once (the legacy server's behaviour).
    #[default]
    Immediate,
    /// Held: offered to no host until an operator starts a rollout.
    Manual,
}

/// A rollout in memory.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub id: i64,
    pub release: Release,
    pub selector: Selector,
    pub plan: Plan,
    pub created_at: Millis,
    /// Members changed in memory and not yet stored (a failed write is
    /// tried again at the next step, never forgotten).
    pub(crate) unsaved: std::collections::BTreeSet<String>,
    /// The rollout's own record (phase, wave) is not yet stored.
    pub(crate) unsaved_record: bool,
}

/// A pin: the hosts matching `selector` are offered `version` of `product`
/// and nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    pub id: i64,
    pub selector: String,
    pub product: String,
    pub version: Version,
    pub created_at: String,
}

/// A maintenance window for the hosts matching `selector`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowInfo {
    pub id: i64,
    pub selector: String,
    pub schedule: String,
    pub tz: String,
    pub created_at: String,
}

#[derive(Default)]
pub struct Cache {
    pub rollouts: Vec<Rollout>,
    pub pins: Vec<(Pin, Selector)>,
    pub windows: Vec<(WindowInfo, Selector, Window)>,
    /// Labels operators assigned, per host.
    pub assigned: HashMap<String, Labels>,
}

/// The in-memory side, held by `Fleet`.
#[derive(Default)]
pub struct Rollouts {
    pub cache: RwLock<Cache>,
    /// Where the test clock lives (`PALETTE_TEST_CLOCK_FILE`): an RFC 3339
    /// instant that maintenance windows are judged at instead of now.
    pub clock_file: Option<std::path::PathBuf>,
    pub default: DefaultRollout,
    /// One operator action (pause, resume, abort) at a time: each is
    /// stored before the view takes it.
    pub action_lock: tokio::sync::Mutex<()>,
}

impl Rollouts {
    /// The instant maintenance windows are judged at.
    pub fn window_now(&self) -> Millis {
        if let Some(f) = &self.clock_file {
            if let Ok(t) = fs_err::read_to_string(f) {
                if let Ok(ms) = palette_protocol::timefmt::parse_rfc3339(t.trim()) {
                    return ms;
                }
            }
        }
        now_ms()
    }

    /// A host's labels: its own, overlaid with the ones operators assigned.
    pub fn labels_of(&self, host: &str, own: Option<&Labels>) -> Labels {
        let mut l = own.cloned().unwrap_or_default();
        if let Some(a) = self.cache.read().unwrap().assigned.get(host) {
            l.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        l
    }

    /// Whether a pin holds the host on another version of `release`'s
    /// product (it is left out of the release's rollouts).
    pub fn pinned_elsewhere(cache: &Cache, host: &str, labels: &Labels, release: &Release) -> bool {
        cache
            .pins
            .iter()
            .find(|(p, s)| p.product == release.product && s.matches(host, labels))
            .is_some_and(|(p, _)| p.version != release.version)
    }

    /// Whether a host may start an update now: no window names it, or one
    /// that does is open.
    pub fn in_window(cache: &Cache, host: &str, labels: &Labels, at: Millis) -> bool {
        let mine: Vec<&Window> = cache
            .windows
            .iter()
            .filter(|(_, s, _)| s.matches(host, labels))
            .map(|(_, _, w)| w)
            .collect();
        mine.is_empty() || mine.iter().any(|w| w.is_open(at))
    }

    /// The release a host should be offered, among `candidates` (the
    /// product's releases for its platform, not withdrawn, newest first):
    /// nothing outside its maintenance window; with a pin, the pinned
    /// version only; otherwise the newest release its rollout admits it
    /// to (a release without a rollout: at once unless it is held).
    pub fn offer(&self, host: &str, labels: &Labels, candidates: &[&Release]) -> Option<Release> {
        let cache = self.cache.read().unwrap();
        if !Self::in_window(&cache, host, labels, self.window_now()) {
            return None;
        }
        let product = candidates.first()?.product.clone();
        if let Some((pin, _)) = cache
            .pins
            .iter()
            .find(|(p, s)| p.product == product && s.matches(host, labels))
        {
            return candidates
                .iter()
                .find(|r| r.version == pin.version)
                .map(|r| (*r).clone());
        }
        for r in candidates {
            let rollout = cache.rollouts.iter().rev().find(|o| o.release.id == r.id);
            let allowed = match rollout {
                None => !r.held,
                Some(o) => match o.plan.phase {
                    Phase::Aborted => false,
                    Phase::Done => o.selector.matches(host, labels),
                    _ => o
                        .plan
                        .members
                        .iter()
                        .any(|m| m.hostname == host && m.admitted_at.is_some()),
                },
            };
            if allowed {
                return Some((*r).clone());
            }
        }
        None
    }

    /// Whether a release may be offered to legacy (v1) hosts, which are all
    /// offered one release: not held, and its rollout (if any) done.
    pub fn v1_may_offer(&self, r: &Release) -> bool {
        let cache = self.cache.read().unwrap();
        match cache.rollouts.iter().rev().find(|o| o.release.id == r.id) {
            None => !r.held,
            Some(o) => o.plan.phase == Phase::Done,
        }
    }
}

/// The wire shape of a rollout (`GET /api/v2/rollouts/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub id: i64,
    pub release_id: i64,
    pub product: String,
    pub version: Version,
    pub platform: String,
    pub selector: String,
    pub waves: Vec<String>,
    pub soak_secs: u64,
    pub halt_after: String,
    pub max_concurrent: u32,
    pub phase: Phase,
    /// The current wave, from 1.
    pub wave: usize,
    pub wave_started_at: String,
    pub reason: Option<String>,
    pub created_at: String,
    /// Per wave: hosts, admitted, succeeded, failed.
    pub wave_progress: Vec<WaveProgress>,
    pub hosts: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaveProgress {
    pub wave: usize,
    pub hosts: usize,
    pub admitted: usize,
    pub succeeded: usize,
    pub failed: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub hostname: String,
    pub wave: usize,
    pub admitted_at: Option<String>,
    pub outcome: Option<Outcome>,
    pub finished_at: Option<String>,
    pub message: String,
}

impl Rollout {
    pub fn status(&self) -> RolloutStatus {
        let p = &self.plan;
        let wave_progress = (0..p.waves.len())
            .map(|w| {
                let ms: Vec<&Member> = p.members.iter().filter(|m| m.wave == w).collect();
                WaveProgress {
                    wave: w + 1,
                    hosts: ms.len(),
                    admitted: ms.iter().filter(|m| m.admitted_at.is_some()).count(),
                    succeeded: ms
                        .iter()
                        .filter(|m| matches!(m.outcome, Some((Outcome::Succeeded, _))))
                        .count(),
                    failed: ms
                        .iter()
                        .filter(|m| matches!(m.outcome, Some((Outcome::Failed, _))))
                        .count(),
                }
            })
            .collect();
        RolloutStatus {
            id: self.id,
            release_id: self.release.id,
            product: self.release.product.clone(),
            version: self.release.version,
            platform: self.release.platform.clone(),
            selector: self.selector.to_string(),
            waves: p.waves.iter().map(|w| w.to_string()).collect(),
            soak_secs: (p.soak_ms / 1000) as u64,
            halt_after: p.halt_after.to_string(),
            max_concurrent: p.max_concurrent,
            phase: p.phase,
            wave: p.wave + 1,
            wave_started_at: rfc3339_millis(p.wave_started_at),
            reason: p.reason.clone(),
            created_at: rfc3339_millis(self.created_at),
            wave_progress,
            hosts: p
                .members
                .iter()
                .map(|m| MemberStatus {
                    hostname: m.hostname.clone(),
                    wave: m.wave + 1,
                    admitted_at: m.admitted_at.map(rfc3339_millis),
                    outcome: m.outcome.map(|(o, _)| o),
                    finished_at: m.outcome.map(|(_, t)| rfc3339_millis(t)),
                    message: m.message.clone(),
                })
                .collect(),
        }
    }

    pub fn record(&self) -> RolloutRecord {
        let p = &self.plan;
        RolloutRecord {
            id: self.id,
            release_id: self.release.id,
            selector: self.selector.to_string(),
            waves: p
                .waves
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(","),
            soak_ms: p.soak_ms,
            halt_after: p.halt_after.to_string(),
            max_concurrent: p.max_concurrent,
            phase: p.phase.as_str().to_string(),
            wave: p.wave as i64,
            wave_started_at: p.wave_started_at,
            reason: p.reason.clone(),
            created_at: self.created_at,
        }
    }

    /// Rebuilds a rollout from its stored rows; `None` for a row this
    /// version cannot read (logged by the caller).
    pub fn from_records(
        r: RolloutRecord,
        members: Vec<MemberRecord>,
        release: Release,
    ) -> Option<Rollout> {
        let waves = parse_waves(&r.waves).ok()?;
        let mut members: Vec<MemberRecord> = members;
        members.sort_by_key(|m| m.position);
        Some(Rollout {
            id: r.id,
            selector: Selector::parse(&r.selector).ok()?,
            created_at: r.created_at,
            unsaved: Default::default(),
            unsaved_record: false,
            plan: Plan {
                version: release.version,
                soak_ms: r.soak_ms,
                halt_after: Threshold::parse(&r.halt_after)?,
                max_concurrent: r.max_concurrent,
                phase: Phase::parse(&r.phase)?,
                wave: (r.wave.max(0) as usize).min(waves.len().saturating_sub(1)),
                wave_started_at: r.wave_started_at,
                reason: r.reason,
                members: members
                    .into_iter()
                    .map(|m| Member {
                        hostname: m.hostname,
                        wave: m.wave.max(0) as usize,
                        admitted_at: m.admitted_at,
                        outcome: match (m.outcome.as_deref(), m.finished_at) {
                            (Some("succeeded"), Some(t)) => Some((Outcome::Succeeded, t)),
                            (Some("failed"), Some(t)) => Some((Outcome::Failed, t)),
                            _ => None,
                        },
                        message: m.message,
                    })
                    .collect(),
                waves,
                signs: Default::default(),
            },
            release,
        })
    }
}

/// A member as stored.
pub fn member_record(position: usize, m: &Member) -> MemberRecord {
    MemberRecord {
        hostname: m.hostname.clone(),
        position: position as i64,
        wave: m.wave as i64,
        admitted_at: m.admitted_at,
        outcome: m.outcome.map(|(o, _)| match o {
            Outcome::Succeeded => "succeeded".to_string(),
            Outcome::Failed => "failed".to_string(),
        }),
        finished_at: m.outcome.map(|(_, t)| t),
        message: m.message.clone(),
    }
}

/// What an operator asks for.
#[derive(Debug, Clone, Deserialize)]
pub struct NewRollout {
    pub release_id: i64,
    #[serde(default)]
    pub selector: String,
    /// `["1", "25%", "100%"]`; default one wave of every host.
    #[serde(default)]
    pub waves: Vec<String>,
    #[serde(default)]
    pub soak_secs: u64,
    /// `"1"` or `"10%"`; default 1 (the first failure halts).
    #[serde(default)]
    pub halt_after: Option<String>,
    #[serde(default)]
    pub max_concurrent: u32,
}

/// Why a rollout was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no release {0}")]
    NoRelease(i64),
    #[error("release {0} is withdrawn")]
    Withdrawn(i64),
    #[error("watchdog releases are not rolled out in waves (a watchdog proves itself and reverts by itself)")]
    Watchdog,
    #[error("rollout {0} of this release is still {1}: abort it first")]
    Active(i64, &'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("no rollout {0}")]
    NotFound(i64),
    #[error("rollout {id} is {phase}: it cannot be {action}")]
    Phase {
        id: i64,
        phase: &'static str,
        action: &'static str,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

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
    async fn step_if_leading(&self) {
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

/// Pins, windows and assigned labels: each stored (with its audit entry)
/// and then mirrored in the cache the check-in path reads.
impl Fleet {
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
