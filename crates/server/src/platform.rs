//! The server's OS-specific pieces, one function per concern, with a `cfg`
//! module per platform so the rest of the server never branches on the OS.

pub use imp::raise_nofile_limit;

#[cfg(unix)]
mod imp {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    /// Raises the soft limit on open files to the hard one and returns the
    /// limit now in force (`None` when it cannot be read).
    pub fn raise_nofile_limit() -> Option<u64> {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            return Some(hard);
        }
        Some(soft)
    }
}

#[cfg(not(unix))]
mod imp {
    /// Windows has no per-process descriptor limit to raise for sockets.
    pub fn raise_nofile_limit() -> Option<u64> {
        None
    }
}
