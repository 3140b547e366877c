//! Our v2 API (JSON under `/api/v2`): check-in long poll, targeted commands
//! with ids and acknowledgements, releases, config revisions, hosts.
//! Documented for operators in `docs/api-v2.md`.

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// What a command asks a watchdog to do. The legacy words are kept on the
/// wire so one command table serves v1 and v2 hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandKind {
    #[serde(rename = "start")]
    Start,
    #[serde(rename = "stop")]
    Stop,
    #[serde(rename = "restart")]
    Restart,
    #[serde(rename = "GET-CONFIG")]
    GetConfig,
    #[serde(rename = "PUT-CONFIG")]
    PutConfig,
    /// Forget which releases failed on the host, so the ones offered are
    /// tried again (`palettectl release retry`). Not a legacy word.
    #[serde(rename = "retry-updates")]
    RetryUpdates,
    /// A word this version does not know (sent by a newer server). Never
    /// issued; a watchdog reports it as failed.
    #[serde(other)]
    Unknown,
}

impl CommandKind {
    pub const ALL: [CommandKind; 6] = [
        CommandKind::Start,
        CommandKind::Stop,
        CommandKind::Restart,
        CommandKind::GetConfig,
        CommandKind::PutConfig,
        CommandKind::RetryUpdates,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Start => "start",
            CommandKind::Stop => "stop",
            CommandKind::Restart => "restart",
            CommandKind::GetConfig => "GET-CONFIG",
            CommandKind::PutConfig => "PUT-CONFIG",
            CommandKind::RetryUpdates => "retry-updates",
            CommandKind::Unknown => "unknown",
        }
    }

    /// Parses a command word exactly as written (the legacy words are
    /// case-sensitive).
    pub fn parse(word: &str) -> Option<CommandKind> {
        CommandKind::ALL.into_iter().find(|k| k.as_str() == word)
    }

    /// Whether a legacy v1 watchdog knows this word.
    pub fn is_legacy(self) -> bool {
        !matches!(
            self,
            CommandKind::Restart | CommandKind::RetryUpdates | CommandKind::Unknown
        )
    }
}

/// Who a command is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    All,
    Hosts(Vec<String>),
}

/// `POST /api/v2/commands`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewCommand {
    pub kind: CommandKind,
    pub target: Target,
    /// Seconds until the command expires; default 600.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A command as a watchdog receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: i64,
    pub kind: CommandKind,
    /// RFC 3339, milliseconds.
    pub issued_at: String,
    pub expires_at: String,
}

/// A command as an operator sees it, with every host's acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandStatus {
    #[serde(flatten)]
    pub command: Command,
    pub target: Target,
    pub results: Vec<CommandAck>,
}

/// How a host finished a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// One host's acknowledgement of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandAck {
    pub id: i64,
    #[serde(default)]
    pub hostname: String,
    pub outcome: Outcome,
    pub message: String,
    #[serde(default)]
    pub at: String,
}

/// Whether the agent process is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Running,
    Stopped,
    #[default]
    Unknown,
}

/// What an operator wants the agent to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    #[default]
    Running,
    Stopped,
}

/// The outcome of the last update attempt, reported by the watchdog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    pub release_id: i64,
    pub version: Version,
    pub outcome: Outcome,
    pub message: String,
}

/// One update outcome a host reported, as the server's history of that
/// host keeps it (`GET /api/v2/hosts/{host}/history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostUpdate {
    /// `agent` (or the supervised product) or `watchdog`.
    pub product: String,
    pub release_id: i64,
    pub version: Version,
    pub outcome: Outcome,
    pub message: String,
    /// When the server first heard of it.
    pub at: String,
}

/// The state a watchdog reports at each check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub hostname: String,
    /// The product the watchdog supervises (`agent` by default).
    #[serde(default = "default_product")]
    pub product: String,
    pub platform: String,
    pub watchdog_version: String,
    pub agent_version: Option<Version>,
    pub agent_state: AgentState,
    pub desired_state: DesiredState,
    /// The config revision last applied from the server, if any.
    pub config_revision: Option<i64>,
    #[serde(default)]
    pub last_update: Option<UpdateReport>,
    /// The outcome of the last watchdog self-update attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_watchdog_update: Option<UpdateReport>,
    /// An update in progress: its phase and, while downloading, how far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_progress: Option<UpdateProgress>,
    /// A local problem the operator should know of (the watchdog cannot
    /// save its state: a full or failing disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_trouble: Option<String>,
    /// The host's own labels (the watchdog's `labels:` setting), for
    /// selectors; operators may assign more on the server.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: crate::selector::Labels,
}

/// Where an update in progress stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProgress {
    /// `agent`, or `watchdog` for a self-update.
    #[serde(default = "default_product")]
    pub product: String,
    pub release_id: i64,
    pub version: Version,
    pub phase: UpdatePhase,
    /// Bytes downloaded so far (including a resumed part).
    pub bytes: u64,
    /// The download's size, when known.
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    Downloading,
    /// The agent is stopped and the manager installs.
    Installing,
    /// The new version runs and must prove itself.
    HealthChecking,
}

fn default_product() -> String {
    "agent".into()
}

/// `POST /api/v2/checkin?wait=N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckinRequest {
    pub host: HostReport,
    /// The store the `results` belong to (from an earlier answer's
    /// `store_id`): a server with another store ignores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    /// Acknowledgements of commands performed since the last check-in.
    #[serde(default)]
    pub results: Vec<CommandAck>,
    /// The release id the watchdog got in its last answer; the long poll
    /// returns early when the server's choice differs.
    #[serde(default)]
    pub seen_release: Option<i64>,
    /// The config revision the watchdog got in its last answer.
    #[serde(default)]
    pub seen_config: Option<i64>,
    /// The watchdog release id the watchdog got in its last answer:
    /// `Some(None)` (sent as `null`) when it got none. Absent (`None`) from
    /// watchdogs that do not update themselves: for them a watchdog
    /// release is never news that ends the long poll early.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub seen_watchdog_release: Option<Option<i64>>,
}

/// A field that is present (even as `null`) deserializes to `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The answer to a check-in: what this host must do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinResponse {
    /// The identity of the server's store (a UUID made when it was
    /// created): command ids are unique only within one store, so a
    /// watchdog keys what it performed by (store, id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    pub commands: Vec<Command>,
    pub release: Option<Release>,
    pub config_revision: Option<i64>,
    /// The newest release of product `watchdog` for the host's platform:
    /// the watchdog installs it on itself when it is newer than it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_release: Option<Release>,
}

/// How a release is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseKind {
    /// tar.gz or zip unpacked into `versions/<v>`.
    Archive,
    /// A Windows installer package (what legacy watchdogs install).
    Msi,
    /// A package run by a generic installer command (.deb, ...).
    Installer,
}

impl ReleaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseKind::Archive => "archive",
            ReleaseKind::Msi => "msi",
            ReleaseKind::Installer => "installer",
        }
    }

    pub fn parse(s: &str) -> Option<ReleaseKind> {
        [
            ReleaseKind::Archive,
            ReleaseKind::Msi,
            ReleaseKind::Installer,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A published release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub id: i64,
    pub product: String,
    pub version: Version,
    pub platform: String,
    pub kind: ReleaseKind,
    pub sha256: String,
    pub md5: String,
    pub size: u64,
    /// The minisign signature over `manifest` (absent on unsigned
    /// releases).
    pub signature: Option<String>,
    /// The signed release manifest, exactly as signed
    /// (`palette_protocol::manifest::Manifest` as JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Where to download the artifact (server-relative).
    pub url: String,
    pub created_at: String,
    /// Set when an operator withdrew it: no host is offered it any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_at: Option<String>,
    /// Set when an operator rolled it back (it is withdrawn too): its hosts
    /// are offered the newest older release as a downgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<String>,
    /// In an offer: installed versions rolled back by an operator, from
    /// which a host should come down to this (older) release. A host that
    /// verifies signatures also needs the signed manifest to authorise it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback_from: Vec<Version>,
    /// Held: offered to no host until a rollout starts (`hold=true` at
    /// publish, or every release under `--default-rollout manual`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// Where a config revision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// Pushed by an operator: what the host should have.
    Desired,
    /// Uploaded by the host: what it has.
    Reported,
}

impl ConfigSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::Desired => "desired",
            ConfigSource::Reported => "reported",
        }
    }
}

/// One revision of a host's `Config.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRevision {
    pub revision: i64,
    pub hostname: String,
    pub source: ConfigSource,
    pub sha256: String,
    pub size: u64,
    pub created_at: String,
}

/// A host in the inventory, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub last_seen: String,
    /// Online, stale or offline, judged against the host's own check-in
    /// interval (absent from servers before 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<HostState>,
    /// How often the host contacts the server (a v2 host: the long-poll
    /// wait it asks for; a legacy host: every two minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkin_interval_secs: Option<u64>,
    /// Its labels: its own (in its report) overlaid with those operators
    /// assigned.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: crate::selector::Labels,
    /// The last v2 report, absent for legacy (v1) hosts.
    pub report: Option<HostReport>,
}

/// Whether a host keeps in touch, from the age of its last contact and its
/// check-in interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Seen within two of its intervals and a grace of 30 seconds: at
    /// most one check-in missed.
    Online,
    /// Missed check-ins, but heard from within a day: a watchdog that
    /// died, a network down, a machine off for the night.
    Stale,
    /// Silent for more than a day.
    Offline,
}

impl HostState {
    /// A day, in milliseconds: silent longer, a host is offline.
    pub const OFFLINE_AFTER_MS: i64 = 24 * 3600 * 1000;
    /// Grace on top of two intervals (network, a busy server, a host
    /// answering commands between check-ins).
    pub const GRACE_MS: i64 = 30 * 1000;

    /// The state of a host last seen `age_ms` ago that checks in every
    /// `interval_ms`.
    pub fn judge(age_ms: i64, interval_ms: i64) -> HostState {
        if age_ms <= 2 * interval_ms.max(0) + Self::GRACE_MS {
            HostState::Online
        } else if age_ms <= Self::OFFLINE_AFTER_MS {
            HostState::Stale
        } else {
            HostState::Offline
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Online => "online",
            HostState::Stale => "stale",
            HostState::Offline => "offline",
        }
    }
}

/// Every JSON error body of the v2 API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn command_words_round_trip() {
        for k in CommandKind::ALL {
            assert_eq!(CommandKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(CommandKind::parse("STOP"), None);
        assert_eq!(CommandKind::parse("unknown"), None);
        // A newer server's word does not break a check-in answer.
        let c: Command = serde_json::from_str(
            r#"{"id":7,"kind":"reboot","issued_at":"2026-11-27T08:20:26.000Z","expires_at":"2026-11-27T08:30:26.000Z"}"#,
        )
        .unwrap();
        assert_eq!(c.kind, CommandKind::Unknown);
        assert_eq!(CommandKind::parse("get-config"), None);
    }

    #[test]
    fn seen_watchdog_release_tells_absent_from_null() {
        let host = r#"{"hostname":"h","platform":"p","watchdog_version":"0.1.0","agent_version":null,"agent_state":"running","desired_state":"running","config_revision":null}"#;
        let old: CheckinRequest = serde_json::from_str(&format!(r#"{{"host":{host}}}"#)).unwrap();
        assert_eq!(old.seen_watchdog_release, None);
        let none: CheckinRequest = serde_json::from_str(&format!(
            r#"{{"host":{host},"seen_watchdog_release":null}}"#
        ))
        .unwrap();
        assert_eq!(none.seen_watchdog_release, Some(None));
        let json = serde_json::to_string(&none).unwrap();
        assert!(json.contains(r#""seen_watchdog_release":null"#), "{json}");
    }

    #[test]
    fn host_state_follows_the_hosts_own_interval() {
        let min = 60 * 1000;
        // A host that long-polls for a minute: one missed poll is fine...
        assert_eq!(HostState::judge(2 * min, min), HostState::Online);
        // ...two are not.
        assert_eq!(HostState::judge(3 * min, min), HostState::Stale);
        // A legacy host polls every two minutes: three minutes is nothing.
        assert_eq!(HostState::judge(3 * min, 2 * min), HostState::Online);
        // A host that asks every 5 s is stale after 45 s.
        assert_eq!(HostState::judge(45_000, 5_000), HostState::Stale);
        assert_eq!(HostState::judge(39_000, 5_000), HostState::Online);
        assert_eq!(
            HostState::judge(HostState::OFFLINE_AFTER_MS + 1, min),
            HostState::Offline
        );
        assert_eq!(
            serde_json::to_string(&HostState::Stale).unwrap(),
            "\"stale\""
        );
        // A server before 0.2 sends neither field.
        let old: HostInfo =
            serde_json::from_str(r#"{"hostname":"h","last_seen":"x","report":null}"#).unwrap();
        assert_eq!(old.state, None);
    }

    #[test]
    fn target_shapes() {
        assert_eq!(serde_json::to_string(&Target::All).unwrap(), "\"all\"");
        assert_eq!(
            serde_json::to_string(&Target::Hosts(vec!["a".into()])).unwrap(),
            "{\"hosts\":[\"a\"]}"
        );
    }
}

/// Which hosts can take a release now (`GET /api/v2/releases/{id}/reach`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// Online and offered it at their next check-in.
    pub now: Vec<String>,
    /// The others of its product, each with why not now.
    pub later: Vec<ReachLater>,
}

/// A host that cannot take a release now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachLater {
    pub hostname: String,
    /// `pinned to another version`, `outside its maintenance window`,
    /// `held: not admitted by a rollout yet`, `another platform (...)`,
    /// `already on ...`, `offline (...)`.
    pub reason: String,
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
