//! palette-watchdog: the long-running service on each host.
//!
//! How it runs (`run`): one **controller** task (`controller`) owns the
//! agent (through the `supervisor`: desired state, restart backoff), the
//! command bookkeeping of the durable state (`durable`) and the update job
//! (`update`, which has the manager do the risky steps). It takes typed
//! messages: `Perform` and `Offer` from the transport tasks — the v2 long
//! poll (`v2loop`) or legacy v1 polling (`v1loop`), both over the one HTTP
//! client (`client`) — and `Ping` from the liveness pinger that feeds
//! systemd's watchdog timer. Transports never wait for the controller: they
//! keep checking in while an update downloads or installs, and the
//! controller wakes the v2 transport when an acknowledgement is ready. The
//! keep-alive runs in its own task. Everything stops through one
//! `CancellationToken`. Commands and remote configuration are carried out in
//! `actions`; failures are typed (`error`); the systemd unit is `systemd`;
//! the watchdog's update of itself is `selfupdate`.
//!
//! Must not: install anything itself (the manager does), touch the agent's
//! `Config.yml` except through a validated atomic replace, or let the server
//! being unreachable affect the running agent.

pub mod actions;
pub(crate) mod backoff;
pub mod client;
pub(crate) mod controller;
pub mod durable;
pub mod error;
pub(crate) mod health;
pub mod identity;
pub mod os_service;
mod platform;
pub mod run;
pub(crate) mod selfupdate;
pub mod supervisor;
pub mod systemd;
pub(crate) mod update;
pub(crate) mod v1loop;
pub(crate) mod v2loop;

/// This watchdog's version, reported to the server: its binary's stamp
/// (`palette_host::stamp`).
pub fn version() -> &'static str {
    palette_host::stamp::version()
}

/// Milliseconds since the Unix epoch (the unit of every wire timestamp).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
