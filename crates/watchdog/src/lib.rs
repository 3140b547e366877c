//! palette-watchdog: the long-running service on each host.
//!
//! Owns: keeping the agent alive (`supervisor`: desired state, restart
//! backoff), talking to the server (`client`; v2 long poll in `v2loop`,
//! legacy v1 polling in `v1loop`), carrying out commands and remote
//! configuration (`actions`), updates through the manager (`update`), its
//! durable state (`durable`) and its systemd unit (`systemd`).
//!
//! Must not: install anything itself (the manager does), touch the agent's
//! `Config.yml` except through a validated atomic replace, or let the server
//! being unreachable affect the running agent.

pub mod actions;
pub mod backoff;
pub mod client;
pub mod controller;
pub mod durable;
pub mod error;
mod platform;
pub mod run;
pub mod supervisor;
pub mod systemd;
pub mod update;
pub mod v1loop;
pub mod v2loop;

/// This watchdog's version, reported to the server.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch (the unit of every wire timestamp).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
