//! Windows: the service-control-manager glue goes here (windows-service);
//! in the foreground, Ctrl-C stops the watchdog.

pub fn notify_ready() {}

/// The service control manager has no watchdog timer to ping.
pub fn watchdog_ping_interval() -> Option<std::time::Duration> {
    None
}

pub fn watchdog_ping() {}

pub fn notify_stopping() {}

pub async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Not measured on Windows yet: the check is skipped (the Windows issue
/// adds GetDiskFreeSpaceExW).
pub fn available_space(_path: &std::path::Path) -> Option<u64> {
    None
}

/// The Windows service restart goes with the Windows-service work; until
/// then the manager restarts the watchdog itself.
pub fn service_restart_command() -> Option<Vec<String>> {
    None
}
