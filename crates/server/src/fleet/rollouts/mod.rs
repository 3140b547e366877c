//! Rollouts, pins, maintenance windows and operator-assigned labels, as the
//! server keeps them: durable in the store, mirrored in memory for the
//! check-in path, and driven by one task (`driver`) that steps every active
//! rollout (see `crate::rollout` for the rules) when something changes and
//! at least every second. Owns: who is offered which release. Must not:
//! decide anything from message text, or block a check-in on the store.

mod driver;
mod shaping;

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

pub use palette_protocol::v2::{Pin, WindowInfo};

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
