//! How this host talks to the server, as the transports, the commands and
//! the self-update's probation share it: the client built from
//! `Config.yml` (rebuilt when the file changes), the API in use, this
//! host's own token, when a transport last made progress and how many
//! check-ins the server answered.
//!
//! Must not: send anything — the check-in loops and the commands do; this
//! only hands them a client and keeps count.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use palette_host::agent_config::AgentConfig;
use palette_host::settings::{Protocol, ServerSettings};
use tokio::sync::watch;

use crate::client::Client;
use crate::error::ActionError;
use crate::identity::Identity;

/// The size and modification time of the `Config.yml` a client was built
/// from: the file is read again only when they change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConfigStamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// The client last built, and the stamp of the file it came from.
struct CachedClient {
    client: Client,
    stamp: Option<ConfigStamp>,
}

pub struct Transport {
    client: Mutex<Option<CachedClient>>,
    /// The API in use: the setting, or what `auto` found out.
    protocol: Mutex<Protocol>,
    /// When a transport last made progress (ms since the epoch): a check-in
    /// answered or failed, a poll made.
    progress: AtomicI64,
    /// Successful check-ins (or v1 polls) since start; a new watchdog on
    /// probation proves itself with the first.
    checkins: watch::Sender<u64>,
    /// This host's own token (`state/host-token`), once enrolled.
    pub(crate) identity: Identity,
}

impl Transport {
    /// `protocol` is the setting (`auto` starts with v2); the host token is
    /// read from `host_token`.
    pub(crate) fn new(protocol: Protocol, host_token: PathBuf) -> Transport {
        let protocol = match protocol {
            Protocol::V1 => Protocol::V1,
            Protocol::V2 | Protocol::Auto => Protocol::V2,
        };
        Transport {
            client: Mutex::new(None),
            protocol: Mutex::new(protocol),
            progress: AtomicI64::new(crate::now_ms()),
            checkins: watch::Sender::new(0),
            identity: Identity::load(host_token),
        }
    }

    /// The server answered a check-in (or a v1 poll).
    pub(crate) fn checked_in(&self) {
        self.checkins.send_modify(|n| *n += 1);
    }

    /// Follows the count of answered check-ins.
    pub(crate) fn checkins(&self) -> watch::Receiver<u64> {
        self.checkins.subscribe()
    }

    /// A transport made progress now.
    pub fn progressed(&self) {
        self.progress.store(crate::now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since a transport last made progress.
    pub fn since_progress_ms(&self) -> i64 {
        crate::now_ms() - self.progress.load(Ordering::Relaxed)
    }

    /// `V1` or `V2`: the API this watchdog speaks now.
    pub fn protocol(&self) -> Protocol {
        *self.protocol.lock().unwrap()
    }

    /// `auto` found a legacy-only server.
    pub fn use_legacy_protocol(&self) {
        *self.protocol.lock().unwrap() = Protocol::V1;
    }

    /// A client for the server the `Config.yml` at `path` names now;
    /// rebuilt when the file's endpoint, key or proxy change. The file is
    /// read again only when its size or modification time changed.
    pub fn client(&self, path: &Path, server: &ServerSettings) -> Result<Client, ActionError> {
        let stamp = fs_err::metadata(path).ok().map(|m| ConfigStamp {
            len: m.len(),
            modified: m.modified().ok(),
        });
        let mut cached = self.client.lock().unwrap();
        if let Some(c) = cached.as_ref() {
            if stamp.is_some() && c.stamp == stamp {
                return Ok(self.with_token(c.client.clone()));
            }
        }
        let bytes = fs_err::read(path).map_err(|source| ActionError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = AgentConfig::parse(&bytes).map_err(|source| ActionError::BadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(c) = cached.as_mut() {
            if c.client.config == cfg {
                c.stamp = stamp;
                return Ok(self.with_token(c.client.clone()));
            }
        }
        let client = Client::new(cfg, server).map_err(ActionError::Client)?;
        *cached = Some(CachedClient {
            client: client.clone(),
            stamp,
        });
        Ok(self.with_token(client))
    }

    /// `client` with this host's token for its server.
    fn with_token(&self, client: Client) -> Client {
        let token = self.identity.token_for(&client.config.endpoint);
        client.with_host_token(token)
    }
}
