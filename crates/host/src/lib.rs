//! The host side's shared ground: the install folder and what lives in it.
//!
//! Owns: the folder layout (`layout`), atomic file writes (`fsx`), the
//! watchdog's local settings (`settings`, never changed remotely), the
//! agent's shared `Config/Config.yml` (`agent_config`), the `current`
//! version pointer (`layout`), the update journal (`journal`), the
//! manager's result file (`manager_result`), the single-instance and
//! manager locks (`lock`), the self-update journal (`self_journal`), the
//! binaries' version slot (`stamp`) and log set-up (`logging`). Used by both the watchdog and the manager.
//!
//! Must not: talk to the network or control processes.

pub mod agent_config;
pub mod disk;
pub mod fsx;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod logging;
pub mod manager_result;
mod platform;
pub mod self_journal;
pub mod settings;
pub mod stamp;
pub mod trust;

pub use layout::{Layout, Pointer};
