//! What the watchdog does on a command: start, stop, restart, GET-CONFIG
//! (download, validate, check the new endpoint accepts the new token,
//! replace `Config.yml` atomically, upload the applied copy, restart the
//! agent if it ran) and PUT-CONFIG (upload the current file). Each returns
//! a one-line outcome for the operator.

use std::sync::Mutex;

use palette_host::agent_config::AgentConfig;
use palette_host::settings::{Protocol, Settings};
use palette_host::Layout;
use palette_protocol::v2::{CommandKind, DesiredState, UpdatePhase, UpdateProgress};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::durable;
use crate::error::ActionError;
use crate::supervisor::Supervisor;

type ConfigStamp = Option<(u64, Option<std::time::SystemTime>)>;
/// An update job's phase: product, release id, version, phase, download size.
pub(crate) type Phase = (
    crate::update::Product,
    i64,
    palette_protocol::Version,
    UpdatePhase,
    Option<u64>,
);

/// Everything a loop needs, shared.
pub struct Ctx {
    pub layout: Layout,
    pub settings: Settings,
    pub hostname: String,
    pub durable: durable::Store,
    pub supervisor: Supervisor,
    /// The client, and the size and mtime of the `Config.yml` it was
    /// built from.
    client: Mutex<Option<(Client, ConfigStamp)>>,
    /// The API in use: the setting, or what `auto` found out.
    protocol: Mutex<Protocol>,
    /// A release whose download failed for a passing reason: (release id,
    /// not before, current delay).
    pub download_retry: Mutex<Option<(i64, std::time::Instant, std::time::Duration)>>,
    /// The release an update job is working on (set by the controller).
    active_update: Mutex<Option<i64>>,
    /// v2 command ids handed to the controller and not acknowledged yet: a
    /// redelivery meanwhile is neither performed nor acknowledged.
    in_flight: Mutex<std::collections::HashSet<i64>>,
    /// When a transport last made progress (ms since the epoch): a check-in
    /// answered or failed, a poll made.
    progress: std::sync::atomic::AtomicI64,
    /// The update in progress (set by the update job) and its downloaded
    /// bytes, for the host report.
    update_phase: Mutex<Option<Phase>>,
    pub(crate) download_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Successful check-ins (or v1 polls) since start; a new watchdog on
    /// probation proves itself with the first.
    pub(crate) checkins: tokio::sync::watch::Sender<u64>,
    /// The publisher keys of the local settings (`trust.keys`); `None`:
    /// releases are taken on the server's word.
    pub trust: Option<palette_host::trust::TrustedKeys>,
    /// This host's own token (`state/host-token`), once enrolled.
    pub(crate) identity: crate::identity::Identity,
    /// Bumped by a retry-updates command: the check-in loop forgets which
    /// offers it already passed on, so they are passed on again at once.
    pub(crate) retry_offers: std::sync::atomic::AtomicU64,
}

impl Ctx {
    pub fn new(
        layout: Layout,
        settings: Settings,
        hostname: String,
        durable: durable::Store,
        supervisor: Supervisor,
    ) -> Self {
        let protocol = match settings.server.protocol {
            Protocol::V1 => Protocol::V1,
            Protocol::V2 | Protocol::Auto => Protocol::V2,
        };
        // Validated when the settings were loaded.
        let trust = palette_host::trust::TrustedKeys::parse(&settings.trust.keys)
            .ok()
            .filter(|k| !k.is_empty());
        let identity = crate::identity::Identity::load(layout.host_token());
        Ctx {
            identity,
            retry_offers: Default::default(),
            trust,
            layout,
            settings,
            hostname,
            durable,
            supervisor,
            client: Mutex::new(None),
            protocol: Mutex::new(protocol),
            download_retry: Mutex::new(None),
            active_update: Mutex::new(None),
            in_flight: Mutex::new(std::collections::HashSet::new()),
            progress: std::sync::atomic::AtomicI64::new(crate::now_ms()),
            update_phase: Mutex::new(None),
            download_bytes: Default::default(),
            checkins: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The update job entered `phase` (or ended, with `None`).
    pub(crate) fn set_update_phase(&self, phase: Option<Phase>) {
        if let Some((_, _, v, p, _)) = &phase {
            tracing::debug!(version = %v, phase = ?p, "update phase");
        }
        *self.update_phase.lock().unwrap() = phase;
    }

    /// Where an update in progress stands, for the host report.
    pub fn update_progress(&self) -> Option<UpdateProgress> {
        let phase = (*self.update_phase.lock().unwrap())?;
        let (product, release_id, version, phase, total) = phase;
        Some(UpdateProgress {
            product: product.as_str().into(),
            release_id,
            version,
            phase,
            bytes: self
                .download_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            total,
        })
    }

    pub fn set_active_update(&self, release_id: i64) {
        *self.active_update.lock().unwrap() = Some(release_id);
    }

    pub fn clear_active_update(&self) {
        *self.active_update.lock().unwrap() = None;
        // A release offered while this update ran was not taken (one update
        // at a time): the check-in loops offer what the server offers again
        // at their next answer, not only after their minute of offer memory
        // (a canary admitted to a new rollout while it finished the last
        // one waited that long, or for good).
        self.retry_offers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The release an update job is working on now.
    pub fn active_update(&self) -> Option<i64> {
        *self.active_update.lock().unwrap()
    }

    /// Marks `id` as handed to the controller; `false` if it already was.
    pub fn start_command(&self, id: i64) -> bool {
        self.in_flight.lock().unwrap().insert(id)
    }

    pub fn finished_command(&self, id: i64) {
        self.in_flight.lock().unwrap().remove(&id);
    }

    /// How many commands the controller is performing or has queued.
    pub fn commands_in_flight(&self) -> usize {
        self.in_flight.lock().unwrap().len()
    }

    pub fn command_in_flight(&self, id: i64) -> bool {
        self.in_flight.lock().unwrap().contains(&id)
    }

    /// The server answered a check-in (or a v1 poll).
    pub(crate) fn checked_in(&self) {
        self.checkins.send_modify(|n| *n += 1);
    }

    /// A transport made progress now.
    pub fn progressed(&self) {
        self.progress
            .store(crate::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Milliseconds since a transport last made progress.
    pub fn since_progress_ms(&self) -> i64 {
        crate::now_ms() - self.progress.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `V1` or `V2`: the API this watchdog speaks now.
    pub fn protocol(&self) -> Protocol {
        *self.protocol.lock().unwrap()
    }

    /// `auto` found a legacy-only server.
    pub fn use_legacy_protocol(&self) {
        *self.protocol.lock().unwrap() = Protocol::V1;
    }

    /// A client for the server `Config.yml` names now; rebuilt when the
    /// file's endpoint, key or proxy change.
    /// A client for the server `Config.yml` names now; rebuilt when the
    /// file's endpoint, key or proxy change. The file is read again only
    /// when its size or modification time changed.
    pub fn client(&self) -> Result<Client, ActionError> {
        let path = self.layout.config_yml();
        let stamp = fs_err::metadata(&path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()));
        let mut cached = self.client.lock().unwrap();
        if let Some((c, s)) = cached.as_ref() {
            if stamp.is_some() && *s == stamp {
                return Ok(c
                    .clone()
                    .with_host_token(self.identity.token_for(&c.config.endpoint)));
            }
        }
        let bytes = fs_err::read(&path).map_err(|source| ActionError::ReadConfig {
            path: path.clone(),
            source,
        })?;
        let cfg =
            AgentConfig::parse(&bytes).map_err(|source| ActionError::BadConfig { path, source })?;
        if let Some((c, s)) = cached.as_mut() {
            if c.config == cfg {
                *s = stamp;
                return Ok(c
                    .clone()
                    .with_host_token(self.identity.token_for(&c.config.endpoint)));
            }
        }
        let c = Client::new(cfg, &self.settings.server).map_err(ActionError::Client)?;
        *cached = Some((c.clone(), stamp));
        let token = self.identity.token_for(&c.config.endpoint);
        Ok(c.with_host_token(token))
    }
}

pub use crate::error::chain;

/// Performs one command; `Ok` carries the message for the operator.
pub async fn perform(ctx: &Ctx, kind: CommandKind) -> Result<String, ActionError> {
    let sup = &ctx.supervisor;
    match kind {
        CommandKind::Start => {
            sup.set_desired(DesiredState::Running).await?;
            Ok("agent started".into())
        }
        CommandKind::Stop => {
            sup.set_desired(DesiredState::Stopped).await?;
            Ok("agent stopped; it stays stopped until a start or restart command".into())
        }
        CommandKind::Restart => {
            sup.restart().await?;
            Ok("agent restarted".into())
        }
        CommandKind::GetConfig => get_config(ctx).await,
        CommandKind::RetryUpdates => {
            let cleared = ctx
                .durable
                .update(|d| std::mem::take(&mut d.failed_releases));
            *ctx.download_retry.lock().unwrap() = None;
            ctx.retry_offers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                ?cleared,
                "failed-release marks cleared by an operator: offered releases are tried again"
            );
            Ok(format!(
                "{} failed release mark(s) cleared; offered releases are tried again",
                cleared.len()
            ))
        }
        CommandKind::Unknown => Err(ActionError::UnknownCommand {
            version: palette_host::stamp::version(),
        }),
        CommandKind::PutConfig => {
            let client = ctx.client()?;
            let path = ctx.layout.config_yml();
            let bytes = read_file(&path)
                .await
                .map_err(|source| ActionError::ReadConfig { path, source })?;
            upload_config(ctx, &client, bytes).await?;
            Ok("Config.yml uploaded".into())
        }
    }
}

/// Reads a small file off the async worker threads.
async fn read_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    tokio::fs::read(path).await
}

/// Uploads `bytes` as the config this host has.
pub async fn upload_config(ctx: &Ctx, client: &Client, bytes: Vec<u8>) -> Result<(), ActionError> {
    let sha = hex::encode(Sha256::digest(&bytes));
    match ctx.protocol() {
        Protocol::V1 => client.v1_put_config(&ctx.hostname, bytes).await,
        _ => client.report_config(&ctx.hostname, bytes).await.map(|_| ()),
    }
    .map_err(ActionError::Upload)?;
    ctx.durable.update(|d| d.reported_config_sha = Some(sha));
    Ok(())
}

async fn get_config(ctx: &Ctx) -> Result<String, ActionError> {
    let client = ctx.client()?;
    let (rev, bytes) = match ctx.protocol() {
        Protocol::V1 => client.v1_config(&ctx.hostname).await,
        _ => client.desired_config(&ctx.hostname).await,
    }
    .map_err(ActionError::Download)?;
    let applied = apply_config(ctx, bytes, rev).await;
    // As the original watchdog does: after a refused GET-CONFIG the file
    // in place is uploaded, so the legacy server shows what the host runs,
    // not the file it refused.
    if applied.is_err() && ctx.protocol() == Protocol::V1 {
        match read_file(&ctx.layout.config_yml()).await {
            Ok(current) => match upload_config(ctx, &client, current).await {
                Ok(()) => tracing::info!(
                    "the Config.yml in place was uploaded after the refused GET-CONFIG"
                ),
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "could not upload the Config.yml in place after the refused GET-CONFIG")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Config.yml in place to upload it")
            }
        }
    }
    applied
}

/// Validates and applies a new `Config.yml`. On any refusal the old file
/// stays untouched.
pub async fn apply_config(
    ctx: &Ctx,
    bytes: Vec<u8>,
    rev: Option<i64>,
) -> Result<String, ActionError> {
    let target = ctx.layout.config_yml();
    if read_file(&target).await.is_ok_and(|cur| cur == bytes) {
        ctx.durable.update(|d| {
            if rev.is_some() {
                d.config_revision = rev;
            }
        });
        tracing::info!(revision = ?rev, "GET-CONFIG delivered the Config.yml already in place; nothing to do");
        return Ok(format!(
            "Config.yml unchanged{}; agent not restarted",
            rev.map(|r| format!(" (revision {r})")).unwrap_or_default()
        ));
    }
    let scratch = ctx.layout.updates().join("Config.yml.new");
    palette_host::fsx::atomic_write(&scratch, &bytes).map_err(ActionError::Stage)?;
    let new = AgentConfig::parse(&bytes).map_err(ActionError::Refused)?;
    let probe =
        Client::new(new.clone(), &ctx.settings.server).map_err(ActionError::RefusedClient)?;
    probe
        .check_license()
        .await
        .map_err(|source| ActionError::LicenseRefused {
            endpoint: new.endpoint.clone(),
            source,
        })?;
    let previous = read_file(&target).await.ok();
    if let Some(old) = &previous {
        let _ = palette_host::fsx::atomic_write(
            &ctx.layout.config_dir().join("Config.yml.previous"),
            old,
        );
    }
    // Subscribed before the restart: an agent that dies at once on the new
    // file is seen.
    let events = ctx.supervisor.service().events();
    palette_host::fsx::atomic_write(&target, &bytes).map_err(|source| ActionError::Replace {
        path: target.clone(),
        source,
    })?;
    let _ = fs_err::remove_file(&scratch);
    tracing::info!(revision = ?rev, endpoint = new.endpoint, "new Config.yml in place");
    let mut msg = format!(
        "Config.yml applied{}",
        rev.map(|r| format!(" (revision {r})")).unwrap_or_default()
    );
    let restarted = match ctx.supervisor.restart_if_running().await {
        Ok(r) => r,
        Err(source) => {
            return Err(ActionError::RestartAfterApply {
                applied: msg,
                source,
            })
        }
    };
    if restarted {
        // The agent must stay up (and pass its probe) on the new file, or
        // the previous file comes back.
        if let Err(why) = crate::health::watch(ctx, events).await {
            let why = chain(&why);
            let log = crate::health::agent_log_tail(ctx, 5);
            let restart = match &previous {
                Some(old) => {
                    palette_host::fsx::atomic_write(&target, old).map_err(|source| {
                        ActionError::Replace {
                            path: target.clone(),
                            source,
                        }
                    })?;
                    match ctx.supervisor.restart_if_running().await {
                        Ok(_) => String::new(),
                        Err(e) => format!(" but restarting the agent on it failed: {}", chain(&e)),
                    }
                }
                None => " (there was none; the new file stays)".into(),
            };
            tracing::error!(revision = ?rev, why, "new Config.yml rolled back: the agent was not healthy on it");
            // Make sure a start after a crash-exit uses the restored file.
            let _ = ctx.supervisor.set_desired(ctx.supervisor.desired()).await;
            return Err(ActionError::ConfigRolledBack { why, restart, log });
        }
        msg.push_str("; agent restarted and healthy");
    } else {
        msg.push_str("; agent was not running, left stopped");
    }
    ctx.durable.update(|d| {
        if rev.is_some() {
            d.config_revision = rev;
        }
    });
    tracing::info!(revision = ?rev, "new Config.yml applied");
    let probe = probe.with_host_token(ctx.identity.token_for(&new.endpoint));
    if let Err(e) = upload_config(ctx, &probe, bytes).await {
        tracing::warn!(
            error = %chain(&e),
            "applied config could not be uploaded; it will be reported at the next check-in"
        );
        msg.push_str("; upload of the applied copy failed, will retry");
    }
    Ok(msg)
}
