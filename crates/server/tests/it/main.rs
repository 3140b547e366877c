//! palette-server over real HTTP on loopback, with a real SQLite file.

#[cfg(unix)]
mod durability;
#[cfg(unix)]
mod hostile;
mod support;
mod takeover;
mod tls;
mod v1;
mod v2;
