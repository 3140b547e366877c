//! palette-server over real HTTP on loopback, with a real SQLite file.

mod support;
mod tls;
mod v1;
mod v2;
