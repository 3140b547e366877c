//! Exclusive locks on files under `state/`: one watchdog per install folder
//! (`watchdog.lock`), one manager at a time (`manager.lock`). The operating
//! system releases a lock when its holder exits, however it exits, so a
//! crash never leaves a stale lock behind. The holder's pid is written into
//! the file for the error message of whoever finds it held.

// std's File: its `lock`/`try_lock` are what this module is for.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("{path} is held by another process (pid {pid})", pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()))]
    Held { path: PathBuf, pid: Option<u32> },
    #[error("cannot lock {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn holder_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

fn claimed(mut file: File, path: &Path) -> Lock {
    // Best effort: the pid is for messages only.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    Lock {
        _file: file,
        path: path.to_path_buf(),
    }
}

/// Takes the lock at `path` or says who holds it, at once.
pub fn try_lock(path: &Path) -> Result<Lock, LockError> {
    let mut file = open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(claimed(file, path)),
        Err(TryLockError::WouldBlock) => Err(LockError::Held {
            path: path.to_path_buf(),
            pid: holder_pid(&mut file),
        }),
        Err(TryLockError::Error(source)) => Err(LockError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Takes the lock at `path`, waiting as long as another process holds it
/// (blocking: run it off async worker threads). `waiting` is called once,
/// with the holder's pid, if the lock was held when asked.
pub fn lock_waiting(path: &Path, waiting: impl FnOnce(Option<u32>)) -> Result<Lock, LockError> {
    match try_lock(path) {
        Ok(l) => return Ok(l),
        Err(LockError::Held { pid, .. }) => waiting(pid),
        Err(e) => return Err(e),
    }
    let file = open(path)?;
    file.lock().map_err(|source| LockError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(claimed(file, path))
}

/// Whether someone holds the lock at `path` now (without taking it for
/// longer than the check).
pub fn is_held(path: &Path) -> bool {
    holder(path).is_some()
}

/// Who holds the lock at `path` now: `None` when it is free, else the
/// holder's pid as it wrote it (if it could be read). A free lock is taken
/// only for the check and its file left as it was: the pid in it stays
/// the last holder's, never the checker's.
pub fn holder(path: &Path) -> Option<Option<u32>> {
    let mut file = open(path).ok()?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(TryLockError::WouldBlock) => Some(holder_pid(&mut file)),
        Err(TryLockError::Error(_)) => None,
    }
}

/// How often a waiter logs that it is still waiting.
pub const WAIT_REPORT: Duration = Duration::from_secs(60);

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = try_lock(&path).unwrap();
        // Locks are per open file description: a second open in the same
        // process conflicts like another process would.
        match try_lock(&path) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        assert!(is_held(&path));
        drop(first);
        assert!(!is_held(&path));
        let _again = try_lock(&path).unwrap();
    }
}
