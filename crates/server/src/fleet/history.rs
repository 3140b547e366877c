//! The fleet's version mix over time: sampled at most once a minute by
//! the replica that leads, a day of samples kept in the store. Owns the
//! sampling clock; must not render anything (the dashboard draws it).

use std::collections::BTreeMap;

use palette_protocol::timefmt::Millis;
use palette_protocol::v2::HostInfo;

use super::Fleet;
use crate::clock::now_ms;
use crate::store::StoreResult;

/// Version-mix samples kept (one a minute: a day).
pub const MAX_SAMPLES: usize = 1440;
pub const SAMPLE_EVERY_MS: Millis = 60_000;

impl Fleet {
    /// Notes the fleet's version mix in the store, at most once a minute;
    /// a day of samples is kept. Called by the replica that leads.
    pub async fn sample_versions(&self) {
        let now = now_ms();
        {
            let mut last = self.version_sampled.lock().unwrap();
            if now - *last < SAMPLE_EVERY_MS {
                return;
            }
            *last = now;
        }
        let mix = version_mix(&self.hosts(None));
        let json = serde_json::to_string(&mix).expect("a map of counts serialises");
        let keep_since = now - MAX_SAMPLES as Millis * SAMPLE_EVERY_MS;
        if let Err(e) = self
            .store
            .insert_version_sample(now, &json, keep_since)
            .await
        {
            tracing::warn!(error = %crate::chain::error_chain(&e), "the version mix was not sampled; tried again in a minute");
        }
    }

    /// The samples of the last day, oldest first (an unreadable one
    /// skipped).
    pub async fn version_history(&self) -> StoreResult<Vec<(Millis, BTreeMap<String, u64>)>> {
        let since = now_ms() - MAX_SAMPLES as Millis * SAMPLE_EVERY_MS;
        let rows = self.store.version_samples(since).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(at, json)| Some((at, serde_json::from_str(&json).ok()?)))
            .collect())
    }
}

/// The version a host shows in the mix: its agent's, `none`, or `legacy`.
pub fn version_of(h: &HostInfo) -> String {
    match &h.report {
        Some(r) => r
            .agent_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "none".into()),
        None => "legacy".into(),
    }
}

/// How many hosts run each version.
pub fn version_mix(hosts: &[HostInfo]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for h in hosts {
        *m.entry(version_of(h)).or_default() += 1;
    }
    m
}
