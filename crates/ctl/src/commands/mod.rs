//! The commands of `palettectl`, one module per top-level command.
//!
//! Owns: what each command does, from its parsed arguments (`cli`) to the
//! API calls (`api::Api`) and what it prints (tables, or
//! `output::print_structured`) and its outcome (`exit`'s errors). Must not:
//! parse the command line or build the HTTP client; a module reaches
//! into another only for the helpers named `pub(crate)` (acknowledgements,
//! `command::watch_acks`).

pub mod audit;
pub mod command;
pub mod config;
pub mod hosts;
pub mod keys;
pub mod pin;
pub mod release;
pub mod rollout;
pub mod token;
pub mod window;

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
