//! palette-server over real HTTP on loopback, with a real SQLite file.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs

mod audited;
mod backup;
#[cfg(unix)]
mod durability;
#[cfg(unix)]
mod hardening;
mod hostile;
mod hosts_tokens;
mod objects;
mod ops;
mod replicas;
mod rollouts;
mod store_contract;
mod support;
mod takeover;
mod tls;
mod ui_sessions;
mod v1;
mod v2;
