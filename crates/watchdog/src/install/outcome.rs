//! An update's outcome, recorded in the durable state and logged once: a
//! success, a final failure (held against the release until the server
//! offers another), or a failure for a passing reason (the local disk, the
//! network, this host's clock), retried later with backoff.
//!
//! Must not: send the outcome (the check-in loop reports what the durable
//! state holds) or undo anything on disk beyond the download it names.

use std::time::Duration;

use palette_protocol::v2::{Outcome, UpdateReport};
use palette_protocol::Version;

use crate::ctx::Ctx;
use crate::error::{chain, ManagerError};
use crate::offer::{Candidate, Product};

/// How many failed release ids are remembered.
const MAX_FAILED_KEPT: usize = 256;

/// Longest wait before downloading a release again after a passing
/// failure (the first is `intervals.download_retry_secs`).
const RETRY_MAX: Duration = Duration::from_secs(30 * 60);

/// Reports a failure for a passing reason and schedules the next attempt;
/// `msg` gets the delay in seconds.
pub(crate) fn retry_later(
    ctx: &Ctx,
    cand: &Candidate,
    msg: impl FnOnce(u64) -> String,
) -> UpdateReport {
    let first =
        Duration::from_secs(ctx.settings.intervals.download_retry_secs.max(1)).min(RETRY_MAX);
    let delay = ctx
        .updates
        .schedule_retry(cand.release_id, first, RETRY_MAX);
    report_with(
        ctx,
        cand.product,
        cand.release_id,
        cand.version,
        Outcome::Failed,
        msg(delay.as_secs()),
        true,
    )
}

/// Records and logs the outcome. A failure is final for this release
/// (not retried until another is offered) unless `retry` says otherwise.
pub(crate) fn report_with(
    ctx: &Ctx,
    product: Product,
    cand_id: i64,
    version: Version,
    outcome: Outcome,
    message: String,
    retry: bool,
) -> UpdateReport {
    let what = product.as_str();
    match outcome {
        Outcome::Succeeded => tracing::info!(product = what, %version, message, "update succeeded"),
        Outcome::Failed => tracing::error!(product = what, %version, message, "update failed"),
    }
    let r = UpdateReport {
        release_id: cand_id,
        version,
        outcome,
        message,
    };
    ctx.durable.update(|d| {
        match product {
            Product::Agent => d.last_update = Some(r.clone()),
            Product::Watchdog => d.last_watchdog_update = Some(r.clone()),
        }
        if outcome == Outcome::Failed && !retry && !d.failed_releases.contains(&cand_id) {
            d.failed_releases.push(cand_id);
            // Bounded: a server offering ever new bad releases cannot grow
            // the state file without end (the oldest are forgotten).
            let excess = d.failed_releases.len().saturating_sub(MAX_FAILED_KEPT);
            d.failed_releases.drain(..excess);
        }
    });
    r
}

/// A manager step failed: the local disk's trouble is passing (the
/// download is deleted to free the space, retried with backoff), anything
/// else is held against the release.
pub(crate) fn local_trouble_or_fail(
    ctx: &Ctx,
    cand: &Candidate,
    dest: &std::path::Path,
    e: &ManagerError,
    what: &str,
) -> UpdateReport {
    if e.is_local_trouble() {
        let _ = fs_err::remove_file(dest);
        retry_later(ctx, cand, |secs| {
            format!(
                "{what}: a local disk problem ({}); nothing was kept, retrying in {secs} s",
                chain(e)
            )
        })
    } else {
        report_with(
            ctx,
            cand.product,
            cand.release_id,
            cand.version,
            Outcome::Failed,
            format!("{what}: {}", chain(e)),
            false,
        )
    }
}
