//! Failed authentications, counted per source address: an address that
//! fails more than `limit` times within a window is answered 429 (with
//! `Retry-After`) on every credentialed request until its block ends,
//! before any credential is checked — so guessing stops, while every other
//! address, and every correct credential from it, is untouched. Bounded:
//! at most `MAX_TRACKED` addresses are remembered (the stalest go first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_TRACKED: usize = 100_000;

/// How failed authentications are limited.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimit {
    /// Failures allowed per address within `window`.
    pub failures: u32,
    pub window: Duration,
    /// How long an address that went over is refused.
    pub block: Duration,
}

impl Default for AuthLimit {
    fn default() -> Self {
        AuthLimit {
            failures: 30,
            window: Duration::from_secs(60),
            block: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    since: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

pub struct AuthLimiter {
    limit: AuthLimit,
    by_source: Mutex<HashMap<IpAddr, Entry>>,
    /// When the latest block ends (ms after `epoch`): while none is in
    /// force, `blocked` answers without taking the lock (the hot path of
    /// every credentialed request).
    last_block_end: AtomicU64,
    epoch: Instant,
}

impl AuthLimiter {
    pub fn new(limit: AuthLimit) -> Self {
        AuthLimiter {
            limit,
            by_source: Mutex::new(HashMap::new()),
            last_block_end: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// `Some(seconds to wait)` while `source` is blocked.
    pub fn blocked(&self, source: IpAddr) -> Option<u64> {
        let now = Instant::now();
        if self.last_block_end.load(Ordering::Relaxed) < self.ms(now) {
            return None;
        }
        let map = self.by_source.lock().unwrap();
        let until = map.get(&source)?.blocked_until?;
        (until > now).then(|| (until - now).as_secs().max(1))
    }

    /// Counts one failed authentication from `source`; true when this one
    /// started a block (logged once per block by the caller).
    pub fn failed(&self, source: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.by_source.lock().unwrap();
        if map.len() >= MAX_TRACKED && !map.contains_key(&source) {
            let window = self.limit.window;
            map.retain(|_, e| {
                now.duration_since(e.since) < window || e.blocked_until.is_some_and(|u| u > now)
            });
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.since).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let e = map.entry(source).or_insert(Entry {
            since: now,
            failures: 0,
            blocked_until: None,
        });
        if now.duration_since(e.since) >= self.limit.window
            && e.blocked_until.is_none_or(|u| u <= now)
        {
            *e = Entry {
                since: now,
                failures: 0,
                blocked_until: None,
            };
        }
        e.failures += 1;
        if e.failures > self.limit.failures && e.blocked_until.is_none_or(|u| u <= now) {
            e.blocked_until = Some(now + self.limit.block);
            self.last_block_end
                .fetch_max(self.ms(now + self.limit.block) + 1, Ordering::Relaxed);
            e.since = now;
            e.failures = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_releases_after_the_block() {
        let l = AuthLimiter::new(AuthLimit {
            failures: 3,
            window: Duration::from_secs(60),
            block: Duration::from_millis(50),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!l.failed(a));
            assert!(l.blocked(a).is_none());
        }
        assert!(l.failed(a), "the 4th failure starts a block");
        assert!(l.blocked(a).is_some());
        assert!(l.blocked(b).is_none(), "another address is untouched");
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.blocked(a).is_some() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
