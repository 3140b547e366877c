//! Staged rollouts: the plan (which host is in which wave, chosen
//! deterministically and spread across label groups) and the step that moves
//! a rollout on from what the hosts report — admitting hosts within their
//! wave under the concurrency cap and their maintenance windows, noting who
//! finished, halting when a wave fails past its threshold, and starting the
//! next wave once the current one has soaked. Pure: no I/O and no clock of
//! its own (`now` and the hosts are passed in), so every rule is tested
//! here; `crate::fleet::rollouts` stores and drives it.

use std::collections::BTreeMap;

use palette_protocol::selector::Labels;
use palette_protocol::timefmt::Millis;
use palette_protocol::v2::{HostState, Outcome};
use palette_protocol::Version;
use serde::{Deserialize, Serialize};

/// How many hosts a wave reaches, counted from the start of the rollout
/// (cumulative): `1` host, or `25%` of the rollout's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Hosts(u32),
    Percent(u32),
}

impl Size {
    pub fn parse(s: &str) -> Option<Size> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(Size::Percent),
            None => s.parse().ok().filter(|n| *n >= 1).map(Size::Hosts),
        }
    }

    /// How many of `n` hosts this reaches (a percentage rounds up, so a
    /// wave of 10% of 5 hosts is one host, never none).
    pub fn of(self, n: usize) -> usize {
        match self {
            Size::Hosts(h) => (h as usize).min(n),
            Size::Percent(p) => (n * p as usize).div_ceil(100).min(n),
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Hosts(h) => write!(f, "{h}"),
            Size::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Why a wave list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavesError {
    #[error("{0:?} is not a wave size (a host count like 1, or a percentage like 25%)")]
    Size(String),
    #[error("between 1 and 20 waves, not {0}")]
    Count(usize),
}

/// Parses a wave list such as `1,25%,100%` (each at least as large as the
/// one before; the last reaches every host whatever it says).
pub fn parse_waves(s: &str) -> Result<Vec<Size>, WavesError> {
    let waves: Vec<Size> = s
        .split(',')
        .map(|w| Size::parse(w).ok_or_else(|| WavesError::Size(w.to_string())))
        .collect::<Result<_, _>>()?;
    if waves.is_empty() || waves.len() > 20 {
        return Err(WavesError::Count(waves.len()));
    }
    Ok(waves)
}

/// Cumulative host counts at the end of each wave, for `n` hosts: never
/// decreasing, and the last is `n`.
pub fn wave_ends(waves: &[Size], n: usize) -> Vec<usize> {
    let mut ends = Vec::with_capacity(waves.len());
    let mut last = 0;
    for w in waves {
        last = last.max(w.of(n));
        ends.push(last);
    }
    if let Some(e) = ends.last_mut() {
        *e = n;
    }
    ends
}

/// Orders hosts for a rollout: hosts are grouped by their label set, each
/// group ordered by a hash of `seed` (the rollout's creation time) and the
/// host name (stable, but not alphabetical), and the groups interleaved —
/// so the first hosts (the canaries) come from as many different groups as
/// there are.
pub fn order_hosts(seed: i64, hosts: &[(String, Labels)]) -> Vec<String> {
    let mut groups: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (name, labels) in hosts {
        let key = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        groups
            .entry(key)
            .or_default()
            .push((fnv(seed, name), name.clone()));
    }
    let mut lists: Vec<Vec<String>> = groups
        .into_values()
        .map(|mut g| {
            g.sort();
            g.into_iter().map(|(_, n)| n).collect()
        })
        .collect();
    // Larger groups first within each round, so a small odd group does not
    // always provide the canary.
    lists.sort_by_key(|l| std::cmp::Reverse(l.len()));
    let mut out = Vec::with_capacity(hosts.len());
    let mut i = 0;
    while out.len() < hosts.len() {
        for l in &lists {
            if let Some(h) = l.get(i) {
                out.push(h.clone());
            }
        }
        i += 1;
    }
    out
}

/// FNV-1a over the rollout id and the name: stable across versions and
/// platforms (unlike std's hasher).
fn fnv(seed: i64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// When a wave halts the rollout: more than this many of its hosts failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Hosts(u32),
    Percent(u32),
}

impl Threshold {
    /// `1` (halt at the first failure), `0` is refused: every failure
    /// halts a rollout, at the latest once it passes the threshold; `10%`.
    pub fn parse(s: &str) -> Option<Threshold> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(Threshold::Percent),
            None => s.parse().ok().filter(|n| *n >= 1).map(Threshold::Hosts),
        }
    }

    /// Whether `failed` of a wave of `n` hosts reaches the threshold.
    pub fn reached(self, failed: usize, n: usize) -> bool {
        match self {
            Threshold::Hosts(h) => failed >= h as usize,
            Threshold::Percent(p) => failed > 0 && failed * 100 >= n * p as usize,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Hosts(h) => write!(f, "{h}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Admitting hosts, wave by wave.
    Running,
    /// Paused by an operator: no host is admitted; hosts already admitted
    /// go on.
    Paused,
    /// Stopped by itself: a wave failed past the threshold.
    Halted,
    /// Stopped by an operator: the release is offered to no host that has
    /// not taken it.
    Aborted,
    /// Every wave finished.
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Halted => "halted",
            Phase::Aborted => "aborted",
            Phase::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "running" => Phase::Running,
            "paused" => Phase::Paused,
            "halted" => Phase::Halted,
            "aborted" => Phase::Aborted,
            "done" => Phase::Done,
            _ => return None,
        })
    }

    /// Whether hosts already admitted may still be offered the release.
    pub fn offers(self) -> bool {
        !matches!(self, Phase::Aborted)
    }
}

/// One host of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub hostname: String,
    /// Index of its wave.
    pub wave: usize,
    /// When it was allowed to take the release.
    pub admitted_at: Option<Millis>,
    /// How it ended, and when.
    pub outcome: Option<(Outcome, Millis)>,
    pub message: String,
}

/// What the step needs to know about a host now.
#[derive(Debug, Clone)]
pub struct HostView {
    pub state: HostState,
    /// The version it runs.
    pub installed: Option<Version>,
    /// Its report's last update of this release: outcome and message.
    pub result: Option<(Outcome, String)>,
    /// Whether it is inside a maintenance window (or has none).
    pub in_window: bool,
    /// Whether its report shows it working on this release (downloading,
    /// installing, checking health).
    pub progressing: bool,
}

/// A rollout as the step sees it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub version: Version,
    pub waves: Vec<Size>,
    pub soak_ms: Millis,
    pub halt_after: Threshold,
    /// Most hosts admitted and not finished at once (0: no cap).
    pub max_concurrent: u32,
    pub phase: Phase,
    pub wave: usize,
    pub wave_started_at: Millis,
    pub reason: Option<String>,
    pub members: Vec<Member>,
    /// When each admitted host last showed progress on the release (in
    /// memory: after a restart the deadline counts from then).
    pub signs: std::collections::HashMap<String, Millis>,
}

/// What a step changed (for the log and to know what to store).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub admitted: Vec<String>,
    pub finished: Vec<(String, Outcome)>,
    /// The phase or the wave changed.
    pub moved: bool,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.moved || !self.admitted.is_empty() || !self.finished.is_empty()
    }
}

impl Plan {
    /// Members in waves up to and including the current one.
    fn current(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.wave <= self.wave)
    }

    /// Moves the rollout on: notes finished hosts; halts on failures;
    /// admits waiting hosts of the current wave (online, within their
    /// window, under the cap); starts the next wave once every admitted
    /// host of this one succeeded (at least one did) and `soak` has passed
    /// since the last of them did.
    ///
    /// An admitted host must show it is taking the release: one with no
    /// outcome and no progress for `host_timeout_ms` (from its admission or
    /// its last progress; 0: no deadline) counts as failed, so a rollout
    /// never waits forever on a host that is not updating.
    pub fn step(
        &mut self,
        now: Millis,
        host_timeout_ms: Millis,
        view: impl Fn(&str) -> Option<HostView>,
    ) -> Changes {
        let mut ch = Changes::default();
        // 1. Outcomes, in every phase but aborted (a paused rollout still
        //    notes who finished).
        if self.phase != Phase::Aborted {
            for m in self.members.iter_mut() {
                if m.admitted_at.is_none() || m.outcome.is_some() {
                    continue;
                }
                let Some(v) = view(&m.hostname) else { continue };
                let mut done = match &v.result {
                    Some((Outcome::Failed, msg)) => Some((Outcome::Failed, msg.clone())),
                    _ if v.installed == Some(self.version) && !v.progressing => {
                        Some((Outcome::Succeeded, format!("running {}", self.version)))
                    }
                    _ => None,
                };
                if done.is_none() {
                    if v.progressing {
                        self.signs.insert(m.hostname.clone(), now);
                    }
                    let admitted = m.admitted_at.unwrap_or(now);
                    let since = self
                        .signs
                        .get(&m.hostname)
                        .copied()
                        .unwrap_or(admitted)
                        .max(admitted);
                    if host_timeout_ms > 0 && now - since > host_timeout_ms {
                        done = Some((
                            Outcome::Failed,
                            format!(
                                "admitted {} s ago and no sign of it taking {} for {} s (its reports show neither progress nor the version); counted as failed",
                                (now - admitted) / 1000,
                                self.version,
                                (now - since) / 1000
                            ),
                        ));
                    }
                }
                if let Some((o, msg)) = done {
                    self.signs.remove(&m.hostname);
                    m.outcome = Some((o, now));
                    m.message = msg;
                    ch.finished.push((m.hostname.clone(), o));
                }
            }
        }
        if self.phase != Phase::Running {
            return ch;
        }
        // 2. Halt when the current wave failed past the threshold.
        let in_wave: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.wave == self.wave)
            .collect();
        let failed: Vec<&&Member> = in_wave
            .iter()
            .filter(|m| matches!(m.outcome, Some((Outcome::Failed, _))))
            .collect();
        if self.halt_after.reached(failed.len(), in_wave.len()) {
            let first = failed
                .first()
                .map(|m| format!(" (first: {}: {})", m.hostname, m.message))
                .unwrap_or_default();
            self.phase = Phase::Halted;
            self.reason = Some(format!(
                "{} of {} host(s) in wave {} failed, the threshold is {}{first}; the hosts of later waves were not touched",
                failed.len(),
                in_wave.len(),
                self.wave + 1,
                self.halt_after
            ));
            ch.moved = true;
            return ch;
        }
        // 3. Admit.
        let mut in_flight = self
            .members
            .iter()
            .filter(|m| m.admitted_at.is_some() && m.outcome.is_none())
            .count();
        let cap = if self.max_concurrent == 0 {
            usize::MAX
        } else {
            self.max_concurrent as usize
        };
        for m in self.members.iter_mut().filter(|m| m.wave <= self.wave) {
            if in_flight >= cap {
                break;
            }
            if m.admitted_at.is_some() {
                continue;
            }
            let Some(v) = view(&m.hostname) else { continue };
            if v.installed == Some(self.version) {
                // Already there (installed before the rollout): done.
                m.admitted_at = Some(now);
                m.outcome = Some((Outcome::Succeeded, now));
                m.message = format!("already running {}", self.version);
                ch.finished.push((m.hostname.clone(), Outcome::Succeeded));
                continue;
            }
            if v.state != HostState::Online || !v.in_window {
                continue;
            }
            m.admitted_at = Some(now);
            in_flight += 1;
            ch.admitted.push(m.hostname.clone());
        }
        // 4. The next wave, once this one has finished and soaked. Hosts
        //    not admitted (offline, outside their window) do not hold the
        //    rollout up: they take the release when they can.
        let admitted: Vec<&Member> = self.current().filter(|m| m.admitted_at.is_some()).collect();
        let finished = admitted.iter().all(|m| m.outcome.is_some());
        let succeeded: Vec<Millis> = admitted
            .iter()
            .filter_map(|m| match m.outcome {
                Some((Outcome::Succeeded, at)) => Some(at),
                _ => None,
            })
            .collect();
        let wave_empty = self.members.iter().all(|m| m.wave != self.wave);
        let proven = !succeeded.is_empty() || wave_empty;
        let waiting = self.current().any(|m| m.admitted_at.is_none());
        if finished && proven {
            let last = succeeded
                .iter()
                .copied()
                .max()
                .unwrap_or(self.wave_started_at);
            if now >= last + self.soak_ms {
                if self.wave + 1 < self.waves.len() {
                    self.wave += 1;
                    self.wave_started_at = now;
                    ch.moved = true;
                } else if !waiting {
                    self.phase = Phase::Done;
                    ch.moved = true;
                }
            }
        }
        ch
    }

    /// Assigns the waves of `ordered` hosts (the first ones form the first
    /// wave).
    pub fn assign(waves: &[Size], ordered: Vec<String>) -> Vec<Member> {
        let ends = wave_ends(waves, ordered.len());
        ordered
            .into_iter()
            .enumerate()
            .map(|(i, hostname)| Member {
                hostname,
                wave: ends.iter().position(|e| i < *e).unwrap_or(waves.len() - 1),
                admitted_at: None,
                outcome: None,
                message: String::new(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn plan(n: usize, waves: &str, soak_ms: Millis, halt: &str, cap: u32) -> Plan {
        let waves = parse_waves(waves).unwrap();
        let names: Vec<String> = (0..n).map(|i| format!("h{i:02}")).collect();
        Plan {
            version: v("2.0.0"),
            members: Plan::assign(&waves, names),
            waves,
            soak_ms,
            halt_after: Threshold::parse(halt).unwrap(),
            max_concurrent: cap,
            phase: Phase::Running,
            wave: 0,
            wave_started_at: 0,
            reason: None,
            signs: HashMap::new(),
        }
    }

    #[derive(Default)]
    struct Fleet {
        hosts: HashMap<String, HostView>,
    }

    impl Fleet {
        fn new(n: usize) -> Fleet {
            let mut f = Fleet::default();
            for i in 0..n {
                f.hosts.insert(
                    format!("h{i:02}"),
                    HostView {
                        state: HostState::Online,
                        installed: Some(v("1.0.0")),
                        result: None,
                        in_window: true,
                        progressing: false,
                    },
                );
            }
            f
        }
        fn view(&self) -> impl Fn(&str) -> Option<HostView> + '_ {
            |h| self.hosts.get(h).cloned()
        }
        /// Every admitted host installs the release.
        fn install(&mut self, p: &Plan) {
            for m in p.members.iter().filter(|m| m.admitted_at.is_some()) {
                self.hosts.get_mut(&m.hostname).unwrap().installed = Some(p.version);
            }
        }
    }

    #[test]
    fn sizes_and_waves() {
        assert_eq!(parse_waves("1,25%,100%").unwrap().len(), 3);
        assert!(parse_waves("0").is_err());
        assert!(parse_waves("1,abc").is_err());
        assert!(parse_waves("101%").is_err());
        let w = parse_waves("1,10%,50%,100%").unwrap();
        assert_eq!(wave_ends(&w, 100), [1, 10, 50, 100]);
        assert_eq!(wave_ends(&w, 3), [1, 1, 2, 3]);
        // The last wave reaches every host, whatever it says.
        assert_eq!(wave_ends(&parse_waves("1,5").unwrap(), 12), [1, 12]);
        assert!(Threshold::parse("0").is_none());
        assert!(Threshold::Percent(10).reached(1, 10));
        assert!(!Threshold::Percent(20).reached(1, 10));
        assert!(Threshold::Hosts(1).reached(1, 50));
    }

    #[test]
    fn canaries_are_deterministic_and_spread_across_label_groups() {
        let mut hosts = Vec::new();
        for (site, n) in [("eu", 6), ("us", 5), ("ap", 1)] {
            for i in 0..n {
                let mut l = Labels::new();
                l.insert("site".into(), site.into());
                hosts.push((format!("{site}-{i}"), l));
            }
        }
        let a = order_hosts(7, &hosts);
        assert_eq!(a, order_hosts(7, &hosts), "deterministic");
        assert_eq!(a.len(), 12);
        let first3: Vec<&str> = a[..3].iter().map(|h| &h[..2]).collect();
        let mut sites = first3.clone();
        sites.sort();
        assert_eq!(sites, ["ap", "eu", "us"], "{a:?}");
        // Another rollout picks other canaries within the groups.
        let others: Vec<_> = (1..20)
            .map(|id| order_hosts(id, &hosts)[0].clone())
            .collect();
        assert!(others.iter().any(|h| h != &others[0]), "{others:?}");
    }

    #[test]
    fn waves_advance_after_soak_and_the_rollout_ends() {
        let mut p = plan(10, "1,50%,100%", 1000, "1", 0);
        let mut f = Fleet::new(10);
        let ch = p.step(0, 0, f.view());
        assert_eq!(ch.admitted.len(), 1, "the canary only");
        f.install(&p);
        let ch = p.step(10, 0, f.view());
        assert_eq!(ch.finished.len(), 1);
        assert_eq!(p.wave, 0, "soaking");
        p.step(500, 0, f.view());
        assert_eq!(p.wave, 0, "still soaking");
        p.step(1010, 0, f.view());
        assert_eq!(p.wave, 1);
        let ch = p.step(1020, 0, f.view());
        assert_eq!(ch.admitted.len(), 4, "up to 50%");
        f.install(&p);
        p.step(1030, 0, f.view());
        p.step(2030, 0, f.view());
        assert_eq!(p.wave, 2);
        p.step(2040, 0, f.view());
        f.install(&p);
        p.step(2050, 0, f.view());
        assert_eq!(p.phase, Phase::Running, "the last wave soaks too");
        p.step(3050, 0, f.view());
        assert_eq!(p.phase, Phase::Done);
        assert!(p
            .members
            .iter()
            .all(|m| matches!(m.outcome, Some((Outcome::Succeeded, _)))));
    }

    #[test]
    fn a_failing_canary_halts_with_the_rest_untouched() {
        let mut p = plan(10, "1,100%", 0, "1", 0);
        let mut f = Fleet::new(10);
        p.step(0, 0, f.view());
        let canary = p
            .members
            .iter()
            .find(|m| m.admitted_at.is_some())
            .unwrap()
            .hostname
            .clone();
        f.hosts.get_mut(&canary).unwrap().result = Some((
            Outcome::Failed,
            "health check failed; rolled back to 1.0.0".into(),
        ));
        let ch = p.step(10, 0, f.view());
        assert!(ch.moved);
        assert_eq!(p.phase, Phase::Halted);
        let why = p.reason.clone().unwrap();
        assert!(
            why.contains("1 of 1") && why.contains(&canary) && why.contains("health check"),
            "{why}"
        );
        // Nothing more is admitted, whatever time passes.
        let ch = p.step(1_000_000, 0, f.view());
        assert!(ch.admitted.is_empty());
        assert_eq!(
            p.members.iter().filter(|m| m.admitted_at.is_some()).count(),
            1
        );
    }

    #[test]
    fn the_cap_pause_offline_hosts_and_windows() {
        let mut p = plan(6, "100%", 0, "50%", 2);
        let mut f = Fleet::new(6);
        f.hosts.get_mut(&p.members[5].hostname).unwrap().state = HostState::Offline;
        f.hosts.get_mut(&p.members[4].hostname).unwrap().in_window = false;
        let ch = p.step(0, 0, f.view());
        assert_eq!(ch.admitted.len(), 2, "the cap");
        p.phase = Phase::Paused;
        f.install(&p);
        let ch = p.step(10, 0, f.view());
        assert_eq!(ch.finished.len(), 2, "a paused rollout notes who finished");
        assert!(ch.admitted.is_empty(), "and admits nobody");
        p.phase = Phase::Running;
        let ch = p.step(20, 0, f.view());
        assert_eq!(ch.admitted.len(), 2);
        f.install(&p);
        p.step(30, 0, f.view());
        assert_eq!(
            p.phase,
            Phase::Running,
            "two hosts still wait (offline, outside their window)"
        );
        f.hosts
            .get_mut(&p.members[4].hostname.clone())
            .unwrap()
            .in_window = true;
        let ch = p.step(40, 0, f.view());
        assert_eq!(ch.admitted, [p.members[4].hostname.clone()]);
        f.install(&p);
        f.hosts
            .get_mut(&p.members[5].hostname.clone())
            .unwrap()
            .state = HostState::Online;
        p.step(50, 0, f.view());
        f.install(&p);
        p.step(60, 0, f.view());
        assert_eq!(p.phase, Phase::Done);
    }

    #[test]
    fn an_admitted_host_that_shows_no_sign_of_updating_fails_after_its_deadline() {
        let mut p = plan(3, "1,100%", 0, "1", 0);
        let mut f = Fleet::new(3);
        let ch = p.step(0, 1000, f.view());
        assert_eq!(ch.admitted.len(), 1);
        let canary = ch.admitted[0].clone();
        // Progress keeps it alive past the deadline...
        f.hosts.get_mut(&canary).unwrap().progressing = true;
        assert!(p.step(900, 1000, f.view()).finished.is_empty());
        assert!(p.step(1800, 1000, f.view()).finished.is_empty());
        // ...silence does not: it fails, and the rollout halts (it does not
        // wait forever in wave 1).
        f.hosts.get_mut(&canary).unwrap().progressing = false;
        assert!(p.step(2700, 1000, f.view()).finished.is_empty());
        let ch = p.step(2900, 1000, f.view());
        assert_eq!(ch.finished, vec![(canary.clone(), Outcome::Failed)]);
        assert_eq!(p.phase, Phase::Halted);
        let m = p.members.iter().find(|m| m.hostname == canary).unwrap();
        assert!(
            m.message.contains("no sign of it taking 2.0.0"),
            "{}",
            m.message
        );
    }

    /// A host health-checks the release with it already current: it has
    /// not succeeded until it stops taking it, and a failed check after
    /// that counts as failed (a canary counted early let the next wave in).
    #[test]
    fn a_host_still_health_checking_the_version_has_not_succeeded() {
        let mut p = plan(3, "1,100%", 0, "1", 0);
        let mut f = Fleet::new(3);
        let canary = p.step(0, 0, f.view()).admitted[0].clone();
        let h = f.hosts.get_mut(&canary).unwrap();
        h.installed = Some(v("2.0.0"));
        h.progressing = true;
        assert!(p.step(1, 0, f.view()).finished.is_empty());
        let h = f.hosts.get_mut(&canary).unwrap();
        h.installed = Some(v("1.0.0"));
        h.progressing = false;
        h.result = Some((Outcome::Failed, "health check failed; rolled back".into()));
        let ch = p.step(2, 0, f.view());
        assert_eq!(ch.finished, vec![(canary, Outcome::Failed)]);
        assert_eq!(p.phase, Phase::Halted);
    }

    #[test]
    fn hosts_already_on_the_version_count_as_done() {
        let mut p = plan(3, "1,100%", 0, "1", 0);
        let mut f = Fleet::new(3);
        for h in f.hosts.values_mut() {
            h.installed = Some(v("2.0.0"));
        }
        p.step(0, 0, f.view());
        p.step(1, 0, f.view());
        p.step(2, 0, f.view());
        assert_eq!(p.phase, Phase::Done);
    }
}
