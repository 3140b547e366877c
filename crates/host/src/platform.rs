//! The only place in this crate that knows which OS it is on.

use std::path::PathBuf;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};

/// A size-rotated log file (on Unix created with mode 0640).
#[cfg(unix)]
pub fn rotating_file(
    path: PathBuf,
    suffix: AppendCount,
    limit: ContentLimit,
    compression: Compression,
) -> FileRotate<AppendCount> {
    FileRotate::new(path, suffix, limit, compression, Some(0o640))
}

#[cfg(not(unix))]
pub fn rotating_file(
    path: PathBuf,
    suffix: AppendCount,
    limit: ContentLimit,
    compression: Compression,
) -> FileRotate<AppendCount> {
    FileRotate::new(path, suffix, limit, compression)
}
