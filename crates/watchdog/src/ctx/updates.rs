//! The update job's state as others see it: which release it works on
//! (the check-in loops do not offer that one again), the phase it is in
//! and the bytes downloaded (for the host report), when a release whose
//! download failed for a passing reason may be tried again, and the offer
//! epoch — bumped whenever the transports should forget which offers they
//! already passed on (an update ended, a retry is due, an operator asked).
//!
//! Must not: run or decide anything about an update (the update job and
//! the controller do); this is the state they leave for the transports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use palette_protocol::v2::{UpdatePhase, UpdateProgress};
use palette_protocol::Version;

use crate::offer::Product;

/// Where an update job stands.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub product: Product,
    pub release_id: i64,
    pub version: Version,
    pub step: UpdatePhase,
    /// The download's size, when known.
    pub total: Option<u64>,
}

/// A release whose download failed for a passing reason.
#[derive(Debug, Clone, Copy)]
struct Retry {
    release_id: i64,
    not_before: Instant,
    /// The delay this wait was (doubled for the next).
    delay: Duration,
}

#[derive(Default)]
pub struct Updates {
    /// The release an update job is working on (set by the controller).
    active: Mutex<Option<i64>>,
    /// The update in progress (set by the update job).
    phase: Mutex<Option<Phase>>,
    /// Its downloaded bytes (the download writes them).
    download_bytes: AtomicU64,
    retry: Mutex<Option<Retry>>,
    /// Bumped when the check-in loops should forget which offers they
    /// already passed on, so they are passed on again at once.
    offer_epoch: AtomicU64,
}

impl Updates {
    /// The update job entered `phase` (or ended, with `None`).
    pub(crate) fn set_phase(&self, phase: Option<Phase>) {
        if let Some(p) = &phase {
            tracing::debug!(version = %p.version, phase = ?p.step, "update phase");
        }
        *self.phase.lock().unwrap() = phase;
    }

    /// The update job in progress moved on to `step` (nothing when none is).
    pub(crate) fn enter(&self, step: UpdatePhase) {
        let phase = *self.phase.lock().unwrap();
        if let Some(p) = phase {
            self.set_phase(Some(Phase { step, ..p }));
        }
    }

    /// An update job starts, in `phase`: no bytes downloaded yet.
    pub(crate) fn begin(&self, phase: Phase) {
        self.download_bytes.store(0, Ordering::Relaxed);
        self.set_phase(Some(phase));
    }

    /// The update job ended.
    pub(crate) fn end(&self) {
        self.set_phase(None);
    }

    /// The counter a download writes its bytes to.
    pub(crate) fn download_bytes(&self) -> &AtomicU64 {
        &self.download_bytes
    }

    /// Where an update in progress stands, for the host report.
    pub fn progress(&self) -> Option<UpdateProgress> {
        let p = (*self.phase.lock().unwrap())?;
        Some(UpdateProgress {
            product: p.product.as_str().into(),
            release_id: p.release_id,
            version: p.version,
            phase: p.step,
            bytes: self.download_bytes.load(Ordering::Relaxed),
            total: p.total,
        })
    }

    pub fn set_active(&self, release_id: i64) {
        *self.active.lock().unwrap() = Some(release_id);
    }

    pub fn clear_active(&self) {
        *self.active.lock().unwrap() = None;
        // A release offered while this update ran was not taken (one update
        // at a time): the check-in loops offer what the server offers again
        // at their next answer, not only after their minute of offer memory
        // (a canary admitted to a new rollout while it finished the last
        // one waited that long, or for good).
        self.offer_again();
    }

    /// The release an update job is working on now.
    pub fn active(&self) -> Option<i64> {
        *self.active.lock().unwrap()
    }

    /// Whether `release_id` waits for its next download attempt.
    pub(crate) fn waiting(&self, release_id: i64) -> bool {
        self.retry
            .lock()
            .unwrap()
            .is_some_and(|r| r.release_id == release_id && Instant::now() < r.not_before)
    }

    /// Schedules another download attempt of `release_id`: `first` after
    /// the first failure, doubling up to `max`, jittered. Returns the delay.
    pub(crate) fn schedule_retry(
        &self,
        release_id: i64,
        first: Duration,
        max: Duration,
    ) -> Duration {
        let mut slot = self.retry.lock().unwrap();
        let delay = match *slot {
            Some(r) if r.release_id == release_id => (r.delay * 2).min(max),
            _ => first,
        };
        let delay = crate::backoff::jittered(delay);
        *slot = Some(Retry {
            release_id,
            not_before: Instant::now() + delay,
            delay,
        });
        // The check-in loops offer a release again as soon as its retry is
        // due (not only after their minute of offer memory): the delay logged
        // is the delay kept.
        self.offer_again();
        delay
    }

    /// A download succeeded: no retry is pending.
    pub(crate) fn clear_retry(&self) {
        *self.retry.lock().unwrap() = None;
    }

    /// The transports pass on what the server offers again at once.
    pub(crate) fn offer_again(&self) {
        self.offer_epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes whenever offers should be passed on again.
    pub(crate) fn offer_epoch(&self) -> u64 {
        self.offer_epoch.load(Ordering::Relaxed)
    }
}
