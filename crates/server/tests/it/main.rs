//! palette-server over real HTTP on loopback, with a real SQLite file.

mod durability;
mod support;
mod takeover;
mod tls;
mod v1;
mod v2;
