//! Wire types and pure rules shared by every palette-updater part.
//!
//! Owns: the legacy Insight Server v1 wire types (byte-compatible with the
//! 2017 server and watchdog), our v2 JSON types, agent versions and their
//! ordering, host-name validation, and the time format used on the wire.
//!
//! Must not: do any I/O (files, network, clocks other than formatting a given
//! instant). Everything here is deterministic and unit-tested.

pub mod env;
pub mod hostname;
pub mod manifest;
pub mod selector;
pub mod timefmt;
pub mod v1;
pub mod v2;
pub mod version;

pub use hostname::{validate_hostname, HostnameError};
pub use version::{Version, VersionError};
