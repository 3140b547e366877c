//! Logs: one line per event on stderr and in `Logs/<name>.log`, rotated by
//! size (10 MiB × 10 files). With `PALETTE_LOG_FORMAT=json` the file gets
//! one JSON object a line (stderr stays text).

use std::path::Path;
use std::sync::Mutex;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::ContentLimit;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

pub const ROTATE_BYTES: usize = 10 * 1024 * 1024;
pub const ROTATE_KEEP: usize = 10;

/// The environment variable that sets the log filter (`info` by default).
pub const LOG_ENV: &str = palette_protocol::env::LOG;

/// Sends logs to stderr and to `logs_dir/<name>.log`.
pub fn init(logs_dir: &Path, name: &str) -> std::io::Result<()> {
    fs_err::create_dir_all(logs_dir)?;
    let file = crate::platform::rotating_file(
        logs_dir.join(format!("{name}.log")),
        AppendCount::new(ROTATE_KEEP),
        ContentLimit::BytesSurpassed(ROTATE_BYTES),
        Compression::None,
    );
    let filter = || EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var(palette_protocol::env::LOG_FORMAT).is_ok_and(|f| f == "json");
    let writer = Mutex::new(file);
    let (json_file, text_file) = if json {
        (
            Some(
                fmt::layer()
                    .json()
                    .with_writer(writer)
                    .with_filter(filter()),
            ),
            None,
        )
    } else {
        (
            None,
            Some(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(writer)
                    .with_filter(filter()),
            ),
        )
    };
    let _ = tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .with_filter(filter()),
        )
        .with(json_file)
        .with(text_file)
        .try_init();
    Ok(())
}
