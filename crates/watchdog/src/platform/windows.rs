//! Windows: the service-control-manager glue goes here (windows-service);
//! in the foreground, Ctrl-C stops the watchdog.

pub fn notify_ready() {}

pub fn notify_stopping() {}

pub async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
