//! Helpers shared by the Windows tests (service, end to end, benchmark):
//! binaries built beside the test, `sc`, the sample agent's status file,
//! and whether this runs under Wine.
#![allow(dead_code)] // each test file uses some of them

use std::path::{Path, PathBuf};
use std::process::Command;

/// A binary built beside this test's binaries (the Windows build of the
/// workspace, as `scripts/wine-test.sh` makes it).
pub fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it for this target first",
        p.display()
    );
    p
}

/// A file's text, or nothing.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// `sc` with its console captured (it starts nothing that could hold the
/// pipe open): whether it succeeded, and what it said.
pub fn sc(args: &[&str]) -> (bool, String) {
    let out = Command::new("sc").args(args).output().expect("sc runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Whether `sc query NAME` shows the state `want` (e.g. `RUNNING`).
pub fn service_state_is(name: &str, want: &str) -> bool {
    sc(&["query", name]).1.contains(want)
}

/// The pid in the sample agent's status file under `base`, when that
/// process runs.
pub fn live_agent_pid(base: &Path) -> Option<u32> {
    let text = read(&base.join("state").join("sample-agent.json"));
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = v["pid"].as_u64()? as u32;
    palette_service::process_alive(pid).then_some(pid)
}

/// Whether this runs under Wine (its ntdll exports `wine_get_version`).
#[allow(unsafe_code)]
pub fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: looking up an export by name in a loaded module.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
    }
}
