//! palette-watchdog: the long-running service on each host.
//!
//! How it runs (`run`): one **controller** task (`controller`) owns the
//! agent (through the `supervisor`: desired state, restart backoff), the
//! command bookkeeping of the durable state (`durable`) and the update job
//! (`job`). It takes typed messages: `Perform` and `Offer` from the
//! transport tasks — the v2 long poll (`v2loop`) or legacy v1 polling
//! (`v1loop`), both over the one HTTP client (`client`) — and `Ping` from
//! the liveness pinger that feeds systemd's watchdog timer. Transports never
//! wait for the controller: they keep checking in while an update downloads
//! or installs, and the controller wakes the v2 transport when an
//! acknowledgement is ready. The keep-alive runs in its own task.
//! Everything stops through one `CancellationToken`.
//!
//! The modules, from the top down; each imports only modules listed after
//! it, so no two import each other, and nothing imports `run`:
//!
//! - `run` — wires the tasks together and stops them.
//! - `v2loop`, `v1loop` — the transports: check in (or poll), hand
//!   commands and offers to the controller, deliver acknowledgements.
//! - `controller` — the actor: performs commands, queues their
//!   acknowledgements, starts, supersedes and cancels the update job.
//! - `job` — the update job: whether an offer is wanted, its phase, and
//!   which kind runs.
//! - `update` (the agent's), `selfupdate` (the watchdog's own) — the two
//!   kinds of update; `actions` — commands and remote configuration.
//! - `install` — the half both kinds of update share: signature check and
//!   download, the manager, the recorded outcome; `health` — whether the
//!   agent is healthy after an update or a new `Config.yml`.
//! - `ctx` — the shared context, in named parts (transport, updates,
//!   in-flight commands); `os_service` — the watchdog as the OS's service.
//! - `agent` — the agent's service backend, command line and `current`
//!   pointer; `supervisor` — keep-alive and desired state; `identity` —
//!   this host's token; `error` — the typed failures; `platform` — the only
//!   code that says `cfg` by OS.
//! - `client` — the HTTP client; `durable` — `state/watchdog.json`;
//!   `offer` — the offer types; `backoff`; `systemd` — the unit file.
//!
//! Must not: install anything itself (the manager does), touch the agent's
//! `Config.yml` except through a validated atomic replace, or let the server
//! being unreachable affect the running agent.

pub mod actions;
pub(crate) mod agent;
pub(crate) mod backoff;
pub mod client;
pub(crate) mod controller;
pub mod ctx;
pub mod durable;
pub mod error;
pub(crate) mod health;
pub mod identity;
pub(crate) mod install;
pub(crate) mod job;
pub mod offer;
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

/// This watchdog's version as a `Version` (0.0.0 when its stamp is not
/// one): what a watchdog release is compared with.
pub(crate) fn own_version() -> palette_protocol::Version {
    palette_host::stamp::version()
        .parse()
        .unwrap_or(palette_protocol::Version::new(0, 0, 0))
}

/// Milliseconds since the Unix epoch (the unit of every wire timestamp).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
