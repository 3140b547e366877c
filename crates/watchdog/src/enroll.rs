//! `palette-watchdog enroll`: bootstraps a host folder in one command —
//! `Config/Config.yml` (the server and the fleet's enrollment key),
//! `watchdog.yml` (this host's name, the CA file if any, how the agent runs:
//! `--preset`, `--agent-command`) and this host's own
//! token in `state/host-token` — after checking that the server answers and
//! takes the key. Nothing is written unless every check passed, and an
//! existing configuration is kept unless `--force`.
//!
//! Must not: run the watchdog or touch an agent; it only writes the
//! host folder's configuration.

use std::path::PathBuf;

use anyhow::{bail, Context};
use palette_host::agent_config::AgentConfig;
use palette_host::settings::ServerSettings;
use palette_host::Layout;
use palette_watchdog::client::{Client, ClientError};

pub struct EnrollOptions {
    pub server: String,
    pub key: String,
    pub hostname: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub force: bool,
    pub agent_command: Option<String>,
    pub preset: Option<Preset>,
    pub agent_service: Option<String>,
}

/// How the agent runs, as `watchdog.yml`'s `agent:` section says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The watchdog runs the agent's command itself.
    Process,
    /// The agent is a systemd unit, driven with systemctl.
    Systemd,
    /// The agent is a Windows service.
    #[value(name = "windows_service")]
    WindowsService,
}

/// The default agent command of the process backend.
const DEFAULT_COMMAND: &str = "{current}/agent{exe} --base {base}";

/// The `agent:` section (and what goes with it) for `o`, and a note for
/// the operator when the default command is assumed.
fn agent_section(o: &EnrollOptions) -> anyhow::Result<(String, Option<String>)> {
    let list = |words: &[&str]| {
        words
            .iter()
            .map(|w| yaml_quoted(w))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match o.preset.unwrap_or(Preset::Process) {
        Preset::Process => {
            if o.agent_service.is_some() {
                bail!("--agent-service is for the systemd and windows_service presets");
            }
            let note = o.agent_command.is_none().then(|| {
                format!(
                    "note: no --agent-command: the agent is started as `{DEFAULT_COMMAND}`; a release whose program has another name needs agent.command in watchdog.yml (or enroll --agent-command)"
                )
            });
            let cmd = o.agent_command.as_deref().unwrap_or(DEFAULT_COMMAND);
            let words: Vec<&str> = cmd.split_whitespace().collect();
            if words.is_empty() {
                bail!("--agent-command is empty");
            }
            Ok((
                format!(
                    "agent:
  backend: process
  command: [{}]
",
                    list(&words)
                ),
                note,
            ))
        }
        Preset::Systemd => {
            if o.agent_command.is_some() {
                bail!("--agent-command is for the process preset; the systemd preset runs --agent-service");
            }
            let unit = o.agent_service.as_deref().unwrap_or("agent.service");
            Ok((
                format!(
                    "agent:
  backend: command
  start: [{}]
  stop: [{}]
  status: [{}]
  stop_timeout_secs: 30
intervals:
  # systemd reports no exits to the watchdog: check the unit every 30 s.
  keepalive_secs: 30
",
                    list(&["systemctl", "start", unit]),
                    list(&["systemctl", "stop", unit]),
                    list(&["systemctl", "is-active", "--quiet", unit]),
                ),
                None,
            ))
        }
        Preset::WindowsService => {
            if o.agent_command.is_some() {
                bail!("--agent-command is for the process preset; the windows_service preset controls --agent-service");
            }
            let Some(name) = &o.agent_service else {
                bail!(
                    "the windows_service preset needs --agent-service NAME (the agent's service)"
                );
            };
            Ok((
                format!(
                    "agent:
  backend: windows_service
  service_name: {}
",
                    yaml_quoted(name)
                ),
                None,
            ))
        }
    }
}

fn yaml_quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

pub async fn enroll(layout: &Layout, o: EnrollOptions) -> anyhow::Result<String> {
    let server = o.server.trim_end_matches('/');
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!(
            "--server {server:?} needs a scheme: https://{server} (or http:// for a test server)"
        );
    }
    let config_text = format!(
        "# Palette Insight Agent configuration (written by palette-watchdog enroll)\nLicenseKey: {}\nWebservice:\n  Endpoint: {}\n  UseProxy: false\n",
        yaml_quoted(&o.key),
        yaml_quoted(server)
    );
    let config = AgentConfig::parse(config_text.as_bytes())
        .context("the server URL and key do not make a valid Config.yml")?;
    let raw_host = match &o.hostname {
        Some(h) => h.clone(),
        None => gethostname::gethostname().to_string_lossy().into_owned(),
    };
    palette_protocol::validate_hostname(&raw_host)
        .with_context(|| format!("host name {raw_host:?} cannot be reported; pass --hostname"))?;
    let (agent, agent_note) = agent_section(&o)?;
    for existing in [layout.config_yml(), layout.settings_file()] {
        if existing.exists() && !o.force {
            bail!(
                "{} exists: this host is set up already (--force replaces its configuration)",
                existing.display()
            );
        }
    }
    // Composed and checked before the server is asked for anything.
    let mut settings = format!(
        "# palette-watchdog settings (written by palette-watchdog enroll)\nhostname: {}\n",
        yaml_quoted(&raw_host)
    );
    if let Some(ca) = &o.ca_file {
        let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
        settings.push_str(&format!(
            "server:\n  ca_file: {}\n",
            yaml_quoted(&ca.display().to_string())
        ));
    }
    settings.push_str(&agent);
    palette_host::settings::Settings::parse(&settings, &layout.settings_file())
        .context("the watchdog.yml enroll would write is not valid")?;
    let server_settings = ServerSettings {
        ca_file: o.ca_file.clone(),
        ..ServerSettings::default()
    };
    let client = Client::new(config, &server_settings).context("cannot set up the HTTP client")?;
    client.check_license().await.map_err(|e| match e {
        ClientError::LicenseInvalid { .. } => {
            anyhow::anyhow!("the server does not accept this enrollment key (--key)")
        }
        ClientError::Status { status, .. } if status == reqwest::StatusCode::UNAUTHORIZED => {
            anyhow::anyhow!("the server does not accept this enrollment key (--key)")
        }
        e => match e.transport_hint() {
            Some(hint) => anyhow::Error::new(e).context(format!("{hint} ({server})")),
            None => anyhow::Error::new(e).context(format!(
                "the server at {server} does not answer as a palette server"
            )),
        },
    })?;
    let token = match client.enroll(&raw_host).await {
        Ok(t) => Some(t),
        Err(ClientError::Status { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("enrolling {raw_host}"))),
    };

    layout.ensure_dirs().context("creating the host folder")?;

    palette_host::fsx::atomic_write(&layout.config_yml(), config_text.as_bytes())
        .with_context(|| format!("writing {}", layout.config_yml().display()))?;
    palette_host::fsx::atomic_write(&layout.settings_file(), settings.as_bytes())
        .with_context(|| format!("writing {}", layout.settings_file().display()))?;
    let token_note = match &token {
        Some(t) => {
            let text = palette_watchdog::identity::token_file_text(t, server);
            palette_host::fsx::atomic_write(&layout.host_token(), text.as_bytes())
                .with_context(|| format!("writing {}", layout.host_token().display()))?;
            format!(
                "enrolled as {raw_host}; its host token is in {}",
                layout.host_token().display()
            )
        }
        None => format!("the server predates enrollment: {raw_host} will use the enrollment key"),
    };
    let manager = layout.manager();
    let manager_note = if manager.exists() {
        String::new()
    } else {
        format!(
            "\nwarning: {} is missing: put the manager beside the watchdog before the first update",
            manager.display()
        )
    };
    // Installed from the package, the unit is there already.
    let packaged = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .any(|d| {
            std::path::Path::new(d)
                .join("palette-watchdog.service")
                .exists()
        });
    let next = if packaged {
        "systemctl enable --now palette-watchdog".to_string()
    } else {
        format!(
            "palette-watchdog --base {} install --start",
            layout.base.display()
        )
    };
    let agent_note = agent_note.map(|n| format!("\n{n}")).unwrap_or_default();
    Ok(format!(
        "{token_note}\nwrote {} and {}{manager_note}{agent_note}\nnext: {next}",
        layout.config_yml().display(),
        layout.settings_file().display(),
    ))
}
