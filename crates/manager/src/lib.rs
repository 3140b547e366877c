//! palette-manager: the short-lived program that does the risky work.
//!
//! Owns: verifying an artifact, unpacking it safely (`extract`), switching
//! `versions/current` under the update journal, rolling back and
//! recovering after a crash (`ops`); Windows Installer packages (`msi`); replacing the watchdog and itself
//! (`selfupdate`).
//!
//! Must not: decide whether the agent runs (the watchdog supervises it), nor
//! talk to the server. It runs as a copy (`manager_in_action`) so an update
//! may replace the manager itself, and in its own process group so it
//! outlives a watchdog that is stopped mid-update.

pub mod extract;
pub mod fault;
pub mod msi;
pub mod ops;
pub mod platform;
pub mod selfupdate;
