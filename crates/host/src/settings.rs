//! The watchdog's own local settings, `<base>/watchdog.yml`: how to run the
//! agent, intervals, trust. Remote configuration never touches this file.
//! Every key has a default; an unknown key is an error (a typo must not
//! silently fall back to a default).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: Problem },
}

/// What is wrong with settings that parse.
#[derive(Debug, Error)]
pub enum Problem {
    #[error("labels: {0}")]
    Labels(#[from] palette_protocol::selector::SelectorError),
    #[error("agent.command must name the agent program for the process backend")]
    NoCommand,
    #[error("agent.start, agent.stop and agent.status are required for the command backend")]
    NoCommandScripts,
    #[error("agent.service_name is required for the windows_service backend")]
    NoServiceName,
    #[error("agent.health_url {0:?} must be an http:// or https:// URL")]
    HealthUrl(String),
    #[error("server.client_cert and server.client_key go together")]
    HalfClientCert,
    #[error("server.checkin_wait_secs must be at most 300")]
    CheckinWait,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("hostname: {0}")]
    Hostname(#[from] palette_protocol::HostnameError),
    #[error(transparent)]
    TrustKey(#[from] crate::trust::BadKey),
}

/// How the agent is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The watchdog runs the agent as its own child (the default).
    #[default]
    Process,
    /// Operator-given start / stop / status commands (systemd, SysV, ...).
    Command,
    /// A Windows service (`agent.service_name`), through the service
    /// control manager. Windows only.
    WindowsService,
}

/// Which API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// v2, falling back to v1 when the server does not know the v2 API
    /// (a legacy Insight Server answers 404).
    #[default]
    Auto,
    /// Our v2 long-poll check-in.
    V2,
    /// The legacy Insight Server v1 polling.
    V1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    pub backend: Backend,
    /// Process backend: program and arguments. `{base}` is the install
    /// folder, `{current}` the folder of the version `versions/current`
    /// names, `{exe}` the platform's executable suffix.
    pub command: Vec<String>,
    /// Windows-service backend: the agent's service name.
    pub service_name: Option<String>,
    /// MSI releases: `NAME=value` properties given to msiexec (e.g.
    /// `INSTALLFOLDER=C:\Program Files\Palette`).
    pub msi_properties: Vec<String>,
    /// Command backend.
    pub start: Vec<String>,
    pub stop: Vec<String>,
    pub status: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL (process) or the command limit.
    pub stop_timeout_secs: u64,
    /// A new version (or a new `Config.yml`) must keep running this long
    /// after an update to be kept.
    pub health_secs: u64,
    /// Optional probe that must also succeed within `health_secs`: a
    /// command (exit 0; `{base}`, `{current}` and `{exe}` expanded)...
    pub health_command: Vec<String>,
    /// ...and/or an HTTP URL that must answer 2xx.
    pub health_url: Option<String>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            backend: Backend::Process,
            command: vec!["{current}/agent{exe}".into()],
            service_name: None,
            msi_properties: vec![],
            start: vec![],
            stop: vec![],
            status: vec![],
            stop_timeout_secs: 10,
            health_secs: 10,
            health_command: vec![],
            health_url: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub protocol: Protocol,
    /// An extra CA certificate (PEM) trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Switches TLS certificate verification off. Logged loudly; for labs only.
    pub insecure_skip_verify: bool,
    /// A client certificate (PEM) presented to a server that requires one
    /// (mutual TLS), with its private key `client_key` (PEM).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// How long the server may hold a v2 check-in.
    pub checkin_wait_secs: u64,
    /// Per-request timeout (apart from the long poll and downloads).
    pub timeout_secs: u64,
    /// Cap on release downloads, in bytes per second (none by default).
    pub download_rate_bytes_per_sec: Option<u64>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            protocol: Protocol::Auto,
            ca_file: None,
            insecure_skip_verify: false,
            client_cert: None,
            client_key: None,
            checkin_wait_secs: 30,
            timeout_secs: 30,
            download_rate_bytes_per_sec: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Intervals {
    /// Periodic keep-alive check (exits are also seen at once where the
    /// backend can see them).
    pub keepalive_secs: u64,
    /// Legacy v1 command poll.
    pub commands_secs: u64,
    /// Legacy v1 update check.
    pub updates_secs: u64,
    /// First restart delay after an agent exit; doubles up to `restart_max_secs`.
    pub restart_first_ms: u64,
    pub restart_max_secs: u64,
    /// An agent that ran this long resets the restart backoff.
    pub restart_stable_secs: u64,
    /// First wait before retrying a download (or install) that failed for
    /// a passing reason; doubles up to 30 minutes.
    pub download_retry_secs: u64,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            keepalive_secs: 300,
            commands_secs: 120,
            updates_secs: 180,
            restart_first_ms: 200,
            restart_max_secs: 60,
            restart_stable_secs: 60,
            download_retry_secs: 30,
        }
    }
}

/// How the watchdog updates itself (releases of product `watchdog`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfUpdate {
    /// Install newer watchdog releases the server offers.
    pub enabled: bool,
    /// How the manager restarts the watchdog onto the new binary. Empty
    /// (the default): through systemd when the watchdog runs as its unit
    /// (`systemctl restart --no-block palette-watchdog.service`), else the
    /// manager stops the old process and starts the new one itself.
    pub restart: Vec<String>,
    /// The new watchdog must start, pass its self-check and check in to
    /// the server within this many seconds, or the old one is put back.
    pub prove_secs: u64,
}

impl Default for SelfUpdate {
    fn default() -> Self {
        SelfUpdate {
            enabled: true,
            restart: vec![],
            prove_secs: 120,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Trust {
    /// Accept legacy v1 releases, which carry only an MD5 and no signature.
    pub allow_legacy_md5: bool,
    /// Publisher public keys (minisign, the one-line key string of a
    /// `.pub` file). When any is given, only releases whose manifest one of
    /// them signed are installed. Only this local file sets them.
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The name this host reports; the system host name by default.
    pub hostname: Option<String>,
    /// The product whose releases this watchdog installs.
    pub product: String,
    /// The platform whose releases this watchdog installs.
    pub platform: String,
    pub agent: AgentSettings,
    pub server: ServerSettings,
    pub intervals: Intervals,
    pub self_update: SelfUpdate,
    pub trust: Trust,
    /// This host's labels (`role: web`, `site: eu`), reported at every
    /// check-in: operators select hosts by them for commands, rollouts,
    /// pins and maintenance windows.
    pub labels: palette_protocol::selector::Labels,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hostname: None,
            product: "agent".into(),
            platform: default_platform(),
            agent: AgentSettings::default(),
            server: ServerSettings::default(),
            intervals: Intervals::default(),
            self_update: SelfUpdate::default(),
            trust: Trust::default(),
            labels: Default::default(),
        }
    }
}

/// `linux-x86_64`, `windows-x86_64`, ...
pub fn default_platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

impl Settings {
    /// Reads the file; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = match fs_err::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(source) => {
                return Err(SettingsError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates settings text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, SettingsError> {
        let s: Settings = if text.trim().is_empty() {
            Settings::default()
        } else {
            serde_saphyr::from_str(text).map_err(|source| SettingsError::Parse {
                path: path.into(),
                source: Box::new(source),
            })?
        };
        s.validate().map_err(|problem| SettingsError::Invalid {
            path: path.into(),
            problem,
        })?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), Problem> {
        palette_protocol::selector::check_labels(&self.labels)?;
        match self.agent.backend {
            Backend::Process if self.agent.command.is_empty() => return Err(Problem::NoCommand),
            Backend::Command
                if self.agent.start.is_empty()
                    || self.agent.stop.is_empty()
                    || self.agent.status.is_empty() =>
            {
                return Err(Problem::NoCommandScripts)
            }
            Backend::WindowsService
                if self
                    .agent
                    .service_name
                    .as_deref()
                    .is_none_or(|n| n.trim().is_empty()) =>
            {
                return Err(Problem::NoServiceName)
            }
            _ => {}
        }
        if let Some(u) = &self.agent.health_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(Problem::HealthUrl(u.clone()));
            }
        }
        if self.server.client_cert.is_some() != self.server.client_key.is_some() {
            return Err(Problem::HalfClientCert);
        }
        if self.server.checkin_wait_secs > 300 {
            return Err(Problem::CheckinWait);
        }
        for (name, v) in [
            ("intervals.keepalive_secs", self.intervals.keepalive_secs),
            ("intervals.commands_secs", self.intervals.commands_secs),
            ("intervals.updates_secs", self.intervals.updates_secs),
            (
                "intervals.restart_max_secs",
                self.intervals.restart_max_secs,
            ),
            ("server.timeout_secs", self.server.timeout_secs),
            ("self_update.prove_secs", self.self_update.prove_secs),
        ] {
            if v == 0 {
                return Err(Problem::Zero(name));
            }
        }
        if let Some(h) = &self.hostname {
            palette_protocol::validate_hostname(h)?;
        }
        crate::trust::TrustedKeys::parse(&self.trust.keys)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watchdog.yml");
        assert_eq!(Settings::load(&p).unwrap(), Settings::default());
        std::fs::write(&p, "agent:\n  command: ['{current}/a', '--x']\n  health_secs: 1\nintervals:\n  keepalive_secs: 5\n").unwrap();
        let s = Settings::load(&p).unwrap();
        assert_eq!(s.agent.command, vec!["{current}/a", "--x"]);
        assert_eq!(s.agent.health_secs, 1);
        assert_eq!(s.intervals.keepalive_secs, 5);
        assert_eq!(s.intervals.commands_secs, 120);
    }

    #[test]
    fn refuses_typos_and_nonsense() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watchdog.yml");
        for (text, want) in [
            ("agent:\n  comand: [x]\n", "not valid"),
            (
                "agent:\n  backend: command\n",
                "required for the command backend",
            ),
            ("intervals:\n  keepalive_secs: 0\n", "keepalive_secs"),
            ("hostname: ../etc\n", "hostname"),
            ("server:\n  client_cert: /c.pem\n", "go together"),
            ("trust:\n  keys: [nope]\n", "trust.keys[0]"),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = Settings::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}

#[cfg(test)]
mod preset_tests {
    use super::*;

    /// The presets shipped in `dist/` are valid settings files.
    #[test]
    fn shipped_presets_load() {
        let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist");
        let s = Settings::load(&dist.join("watchdog-systemd-agent.yml")).unwrap();
        assert_eq!(s.agent.backend, Backend::Command);
        assert_eq!(
            s.agent.status,
            ["systemctl", "is-active", "--quiet", "agent.service"]
        );
        let p = Settings::load(&dist.join("watchdog-process-agent.yml")).unwrap();
        assert_eq!(p.agent.backend, Backend::Process);
    }
}
