//! `palette-watchdog enroll`: bootstraps a host folder in one command —
//! `Config/Config.yml` (the server and the fleet's enrollment key),
//! `watchdog.yml` (this host's name, the CA file if any) and this host's own
//! token in `state/host-token` — after checking that the server answers and
//! takes the key. Nothing is written unless every check passed, and an
//! existing configuration is kept unless `--force`.

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
    for existing in [layout.config_yml(), layout.settings_file()] {
        if existing.exists() && !o.force {
            bail!(
                "{} exists: this host is set up already (--force replaces its configuration)",
                existing.display()
            );
        }
    }
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
        e => anyhow::Error::new(e).context(format!(
            "the server at {server} does not answer as a palette server"
        )),
    })?;
    let token = match client.enroll(&raw_host).await {
        Ok(t) => Some(t),
        Err(ClientError::Status { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("enrolling {raw_host}"))),
    };

    layout.ensure_dirs().context("creating the host folder")?;
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
    Ok(format!(
        "{token_note}\nwrote {} and {}{manager_note}\nnext: {next}",
        layout.config_yml().display(),
        layout.settings_file().display(),
    ))
}
