//! Free disk space, for the checks before a download and an unpack.

use std::path::Path;

/// Bytes free for this user on the filesystem holding `path`; `None` when
/// it cannot be told.
#[cfg(unix)]
pub fn available_space(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// Bytes free for this user on the volume holding `path`
/// (GetDiskFreeSpaceExW); `None` when it cannot be told.
#[cfg(windows)]
#[allow(unsafe_code)]
pub fn available_space(path: &Path) -> Option<u64> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
    let mut free = 0u64;
    // SAFETY: `wide` is a NUL-terminated UTF-16 path that outlives the
    // call; the out-pointer is a valid u64; the other outputs are optional
    // (null).
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            wide.as_ptr(),
            &mut free,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then_some(free)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_real_folder_has_some_free_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::available_space(dir.path()).is_some_and(|b| b > 0));
        assert_eq!(
            super::available_space(&dir.path().join("no/such/folder")),
            None
        );
    }
}
