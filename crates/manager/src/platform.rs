//! Platform details of unpacking: file modes.

/// The permission bits an unpacked file may keep: no setuid/setgid/sticky,
/// and no write for group or others — the agent runs as root, so a file
/// any local user could write would let them replace it.
pub const KEPT_MODE_BITS: u32 = 0o755;

#[cfg(unix)]
pub fn set_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode & KEPT_MODE_BITS))
}

#[cfg(not(unix))]
pub fn set_mode(_path: &std::path::Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Makes a program started by the manager outlive it: a process group
/// (Unix) or a detached process outside the manager's job (Windows).
#[cfg(unix)]
pub fn detach(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
}

#[cfg(windows)]
pub fn detach(cmd: &mut std::process::Command) {
    use std::os::windows::process::CommandExt;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    const CREATE_BREAKAWAY_FROM_JOB: u32 = 0x0100_0000;
    const DETACHED_PROCESS: u32 = 0x0000_0008;
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_BREAKAWAY_FROM_JOB | DETACHED_PROCESS);
}
