//! The half of installing a release that agent updates (`update`) and the
//! watchdog's self-updates (`selfupdate`) share: the signature check and
//! the verified, resumable download into `Updates/` (`download`), putting
//! the manager in place and running it (`manager`), and recording an
//! outcome — final, or a passing failure retried with backoff (`outcome`).
//!
//! Must not: stop, start or health-check the agent, or decide which
//! product's steps follow the download — the two kinds of update do that
//! on top of this; nothing here imports them.

mod download;
mod manager;
mod outcome;

pub(crate) use download::{fetch, signed_downgrade, Fetched};
pub(crate) use manager::{copy_manager, run_manager};
pub(crate) use outcome::{local_trouble_or_fail, report_with, retry_later};
