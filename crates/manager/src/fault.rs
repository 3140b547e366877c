//! Crash points for the fault-injection tests: with the cargo feature
//! `fault-injection` (debug builds only — a release build with it does not
//! compile), the manager aborts at the point named by `PALETTE_CRASH_AT`,
//! like a `kill -9` there: no cleanup, nothing flushed. At the point named
//! by `PALETTE_KILL_WATCHDOG_AT` it SIGKILLs the watchdog instead (the
//! process holding `state/watchdog.lock`) and carries on. Without the
//! feature every point is a no-op.

#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!("the fault-injection feature is for tests only; release builds refuse it");

/// The crash points of an agent update, in the order it passes them.
pub const POINTS: &[&str] = &[
    "update:verified",
    "update:unpacked",
    "update:extracted",
    "update:current-set",
    "update:switched",
    "commit:before-clear",
    "commit:cleared",
];

/// The crash points of a rollback (a new version that failed its health
/// check), in order.
pub const ROLLBACK_POINTS: &[&str] = &[
    "rollback:started",
    "rollback:current-restored",
    "rollback:removed",
];

/// The crash points of a watchdog self-update that succeeds, in order.
pub const SELF_POINTS: &[&str] = &[
    "self:staged",
    "self:manager-swapped",
    "self:swapped",
    "self:restarting",
    "self:restarted",
    "self:proven",
];

#[cfg(feature = "fault-injection")]
static WATCHDOG_LOCK: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
#[cfg(feature = "fault-injection")]
static STATE_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Where the watchdog's lock is (for `PALETTE_KILL_WATCHDOG_AT`).
pub fn set_layout(layout: &palette_host::Layout) {
    #[cfg(feature = "fault-injection")]
    let _ = WATCHDOG_LOCK.set(layout.watchdog_lock());
    #[cfg(feature = "fault-injection")]
    let _ = STATE_DIR.set(layout.state());
    let _ = layout;
}

/// Dies here, or kills the watchdog here, when the environment says so.
pub fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    {
        if std::env::var(palette_protocol::env::CRASH_AT).is_ok_and(|v| v == name) {
            if std::env::var_os(palette_protocol::env::CRASH_ONCE).is_some() {
                let marker = STATE_DIR
                    .get()
                    .map(|d| d.join(format!("fault-crashed-{}", name.replace(':', "-"))));
                if let Some(m) = marker {
                    if m.exists() {
                        return;
                    }
                    let _ = fs_err::write(&m, name);
                }
            }
            eprintln!("fault injection: dying at {name}");
            std::process::abort();
        }
        if std::env::var(palette_protocol::env::KILL_WATCHDOG_AT).is_ok_and(|v| v == name) {
            // A watchdog just started may not hold its lock yet: a moment.
            let holder = || {
                WATCHDOG_LOCK
                    .get()
                    .and_then(|l| palette_host::lock::holder(l))
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !matches!(holder(), Some(Some(_))) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if let Some(Some(pid)) = holder() {
                tracing::warn!(pid, "fault injection: killing the watchdog at {name}");
                palette_service::kill_process(pid);
                // Until it is really gone (a zombie has no start time).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while palette_service::start_time(pid).is_some()
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }
    let _ = name;
}
