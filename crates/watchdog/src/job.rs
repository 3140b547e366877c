//! The update job: one offered release, an agent update (`update`) or a
//! self-update (`selfupdate`), run beside the controller. This is where the
//! two meet: whether an offer is wanted here at all, and running the job —
//! its phase for the host report from the first byte to the end, and how
//! it ended.
//!
//! Must not: carry out a step of either kind of update (they do, on the
//! shared half in `install`), or know about the controller's queue and
//! commands — the controller starts, cancels and awaits the job.

use std::sync::atomic::AtomicBool;

use palette_protocol::v2::{UpdatePhase, UpdateReport};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::ctx::{Ctx, Phase};
use crate::offer::{Candidate, Product};
use crate::{selfupdate, update};

/// Whether `cand` should be installed: one its product takes now (see
/// `update::wanted` and `selfupdate::wanted`), not waiting for a retry of
/// its download, and not already failed here.
pub fn wanted(ctx: &Ctx, cand: &Candidate) -> bool {
    let newer = match cand.product {
        Product::Agent => update::wanted(ctx, cand),
        Product::Watchdog => selfupdate::wanted(ctx, cand),
    };
    let waiting = ctx.updates.waiting(cand.release_id);
    newer && !waiting && !ctx.durable.get().failed_releases.contains(&cand.release_id)
}

/// How an update job ended.
#[derive(Debug)]
pub enum Ended {
    /// It ran to an outcome, which was recorded and logged.
    Reported(UpdateReport),
    /// Its download was cancelled (a stop, a newer release, shutdown):
    /// nothing was installed and nothing is held against the release.
    Cancelled,
}

/// Runs the whole update; never panics, always reports unless cancelled
/// while downloading. `installing` is set once nothing can cancel it any
/// more (the agent is about to be stopped).
pub async fn run(
    ctx: &Ctx,
    client: &Client,
    cand: Candidate,
    cancel: &CancellationToken,
    installing: &AtomicBool,
) -> Ended {
    ctx.updates.begin(Phase {
        product: cand.product,
        release_id: cand.release_id,
        version: cand.version,
        step: UpdatePhase::Downloading,
        total: cand.integrity.size(),
    });
    let ended = match cand.product {
        Product::Agent => update::install(ctx, client, cand, cancel, installing).await,
        Product::Watchdog => selfupdate::install(ctx, client, cand, cancel, installing).await,
    };
    ctx.updates.end();
    match ended {
        Some(r) => Ended::Reported(r),
        None => Ended::Cancelled,
    }
}
