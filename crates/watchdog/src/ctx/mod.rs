//! The context every task of the watchdog shares ([`Ctx`]): the host's
//! folders and settings, its name, the durable state, the agent's
//! supervisor and the trusted publisher keys — and three named parts with
//! the little shared state the tasks hand each other:
//!
//! - [`Transport`] (`transport`): the client for the server `Config.yml`
//!   names, the API in use, this host's token, check-in progress;
//! - [`Updates`] (`updates`): the update job's release, phase and
//!   downloaded bytes, a download's retry schedule, the offer epoch;
//! - [`InFlight`] (`commands`): v2 commands handed to the controller and
//!   not acknowledged yet.
//!
//! Must not: act — no command, update, check-in or agent control is
//! carried out here; only the state they share, each part behind its own
//! methods. It imports only the foundations (client, identity, durable
//! state, supervisor, errors, backoff, offer types), never a module that
//! acts.

mod commands;
mod transport;
mod updates;

use palette_host::settings::Settings;
use palette_host::Layout;

pub use commands::InFlight;
pub use transport::Transport;
pub use updates::{Phase, Updates};

use crate::client::Client;
use crate::durable;
use crate::error::ActionError;
use crate::supervisor::Supervisor;

/// Everything a loop needs, shared.
pub struct Ctx {
    pub layout: Layout,
    pub settings: Settings,
    pub hostname: String,
    pub durable: durable::Store,
    pub supervisor: Supervisor,
    /// The publisher keys of the local settings (`trust.keys`); `None`:
    /// releases are taken on the server's word.
    pub trust: Option<palette_host::trust::TrustedKeys>,
    /// How this host talks to the server.
    pub transport: Transport,
    /// The update job's shared state.
    pub updates: Updates,
    /// Commands the controller has and has not acknowledged yet.
    pub commands: InFlight,
}

impl Ctx {
    pub fn new(
        layout: Layout,
        settings: Settings,
        hostname: String,
        durable: durable::Store,
        supervisor: Supervisor,
    ) -> Self {
        // Validated when the settings were loaded.
        let trust = palette_host::trust::TrustedKeys::parse(&settings.trust.keys)
            .ok()
            .filter(|k| !k.is_empty());
        let transport = Transport::new(settings.server.protocol, layout.host_token());
        Ctx {
            trust,
            transport,
            updates: Updates::default(),
            commands: InFlight::default(),
            layout,
            settings,
            hostname,
            durable,
            supervisor,
        }
    }

    /// A client for the server `Config.yml` names now (see
    /// [`Transport::client`]).
    pub fn client(&self) -> Result<Client, ActionError> {
        self.transport
            .client(&self.layout.config_yml(), &self.settings.server)
    }
}
