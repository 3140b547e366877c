//! Crash points for the fault-injection tests: with the cargo feature
//! `fault-injection` (debug builds only — a release build with it does not
//! compile), the manager aborts at the point named by `PALETTE_CRASH_AT`,
//! like a `kill -9` there: no cleanup, nothing flushed. Without the feature
//! every point is a no-op.

#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!("the fault-injection feature is for tests only; release builds refuse it");

/// The crash points, in the order an update passes them.
pub const POINTS: &[&str] = &[
    "update:verified",
    "update:unpacked",
    "update:extracted",
    "update:current-set",
    "update:switched",
    "commit:before-clear",
    "commit:cleared",
];

/// Dies here when the environment names this point.
pub fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    if std::env::var(palette_protocol::env::CRASH_AT).is_ok_and(|v| v == name) {
        eprintln!("fault injection: dying at {name}");
        std::process::abort();
    }
    let _ = name;
}
