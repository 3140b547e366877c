//! The only place in the watchdog that knows which OS it is on: service
//! manager notifications and shutdown signals.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;
