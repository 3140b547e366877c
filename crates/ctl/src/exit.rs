//! The exit codes, and the errors that choose them.
//!
//! Owns: 0 all good, 1 an error, 2 a usage error (clap's own, or
//! `UsageError`), 3 some targeted host failed or did not answer in time
//! (`HostsFailed`); `code` turns a command's result into one. Must not:
//! know any command, or print more than the one line that says why.

use crate::output::Output;

/// Exit codes: 0 all good, 1 an error, 2 a usage error (clap), 3 some
/// targeted host failed or did not answer in time.
const EXIT_USAGE: i32 = 2;
const EXIT_HOSTS: i32 = 3;

/// The exit code of a command's result (`Ok`: 0, 2 or 3, having said why
/// on stderr); `Err` for any other error (exit code 1, printed by `main`).
pub fn code(result: anyhow::Result<()>, out: Output) -> anyhow::Result<i32> {
    result
        .map(|()| 0)
        .or_else(|e| match e.downcast::<HostsFailed>() {
            Ok(h) => {
                if out == Output::Table {
                    eprintln!("palettectl: {h}");
                }
                Ok(EXIT_HOSTS)
            }
            Err(e) => match e.downcast::<UsageError>() {
                Ok(u) => {
                    eprintln!("palettectl: {u}");
                    Ok(EXIT_USAGE)
                }
                Err(e) => Err(e),
            },
        })
}

/// The command line asks for something impossible (exit code 2, as clap's
/// own usage errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Some targeted hosts failed or did not answer in time (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{failed} host(s) failed, {missing} did not answer in time")]
pub struct HostsFailed {
    pub failed: usize,
    pub missing: usize,
}
