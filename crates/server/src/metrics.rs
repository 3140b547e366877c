//! Prometheus metrics (`GET /metrics`, operator credential): a recorder of
//! this server's own (not the process-global one, so several servers in one
//! process never mix), with handles kept for the hot paths.
//!
//! Owns: the metric names and their meaning. Must not: block a request.

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

static META: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Seconds buckets for the command issue → acknowledgement latency.
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub struct Metrics {
    recorder: PrometheusRecorder,
    /// v2 check-ins received.
    pub checkins: Counter,
    /// v2 check-ins waiting in a long poll now.
    pub long_polls: Gauge,
    /// Requests refused for a missing, unknown or insufficient credential.
    pub auth_failures: Counter,
    /// Artifact bytes sent (as announced by each answer).
    pub artifact_bytes: Counter,
    /// Command issue → each host's first acknowledgement, in seconds.
    pub ack_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let c = |name: &'static str| recorder.register_counter(&Key::from_name(name), &META);
        Metrics {
            checkins: c("palette_checkins_total"),
            long_polls: recorder
                .register_gauge(&Key::from_name("palette_long_polls_in_flight"), &META),
            auth_failures: c("palette_auth_failures_total"),
            artifact_bytes: c("palette_artifact_bytes_served_total"),
            ack_latency: recorder.register_histogram(
                &Key::from_name("palette_command_ack_latency_seconds"),
                &META,
            ),
            recorder,
        }
    }

    /// An update outcome a host reported (`succeeded`, `failed`).
    pub fn update_outcome(&self, outcome: &'static str) {
        self.recorder
            .register_counter(
                &Key::from_parts(
                    "palette_update_outcomes_total",
                    vec![Label::new("outcome", outcome)],
                ),
                &META,
            )
            .increment(1);
    }

    /// Sets a gauge with labels to `v` (used just before rendering).
    pub fn set(&self, name: &'static str, labels: Vec<(&'static str, String)>, v: f64) {
        let labels: Vec<Label> = labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &META)
            .set(v);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}
