//! Windows Installer releases through the real msiexec: packages built
//! with Debian's `wixl` by `scripts/wine-test.sh` (which sets
//! `PALETTE_TEST_MSI_DIR`), installed, upgraded, rolled back, and a broken
//! package refused. Runs under Wine in `.ci/run`, and on Windows.
#![cfg(windows)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the manager; its console output goes to a file, not a pipe (a
/// process msiexec starts under Wine may hold a pipe open).
fn manager(base: &Path, args: &[&str]) -> (bool, String) {
    let console = base.join("manager-console.txt");
    let file = std::fs::File::create(&console).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_palette-manager"))
        .arg("--base")
        .arg(base)
        .args(args)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    (status.success(), read(&console))
}

fn install(base: &Path, msi: &Path, version: &str) -> (bool, String) {
    let sha = palette_manager::ops::sha256_file(msi).unwrap();
    manager(
        base,
        &[
            "install-msi",
            &msi.display().to_string(),
            "--version",
            version,
            "--sha256",
            &sha,
        ],
    )
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn msi_releases_install_upgrade_and_roll_back_through_msiexec() {
    let Some(dir) = std::env::var_os("PALETTE_TEST_MSI_DIR").map(PathBuf::from) else {
        println!("skipped: PALETTE_TEST_MSI_DIR is not set (scripts/wine-test.sh builds the packages with wixl)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let app = base.join("app");
    std::fs::write(
        base.join("watchdog.yml"),
        format!(
            "agent:\n  msi_properties: ['INSTALLFOLDER={}']\n",
            app.display()
        ),
    )
    .unwrap();

    let (ok, out) = install(base, &dir.join("agent-2.0.0.msi"), "2.0.0");
    assert!(ok, "install 2.0.0: {out}");
    assert_eq!(read(&app.join("VERSION")), "2.0.0");
    assert!(app.join("palette-sample-agent.exe").exists());
    assert!(base.join("Logs").join("installer.log").exists());
    assert_eq!(read(&base.join("versions").join("current")).trim(), "2.0.0");
    let (ok, out) = manager(base, &["commit"]);
    assert!(ok, "commit: {out}");

    // An upgrade, then its rollback: the previous package is installed again.
    let (ok, out) = install(base, &dir.join("agent-3.0.0.msi"), "3.0.0");
    assert!(ok, "install 3.0.0: {out}");
    assert_eq!(read(&app.join("VERSION")), "3.0.0");
    let (ok, out) = manager(base, &["rollback"]);
    assert!(ok, "rollback: {out}");
    assert_eq!(read(&app.join("VERSION")), "2.0.0");
    assert_eq!(read(&base.join("versions").join("current")).trim(), "2.0.0");
    assert!(!base.join("state").join("update-journal.json").exists());

    // Not a package: msiexec refuses it, nothing changes, the reason says so.
    let broken = base.join("broken.msi");
    std::fs::write(&broken, b"this is not a Windows Installer package").unwrap();
    let (ok, out) = install(base, &broken, "4.0.0");
    assert!(!ok, "a broken package was installed: {out}");
    let result = read(&base.join("state").join("manager-result.json"));
    assert!(result.contains("msiexec /i"), "{result}");
    assert_eq!(read(&app.join("VERSION")), "2.0.0");
    assert_eq!(read(&base.join("versions").join("current")).trim(), "2.0.0");
    assert!(!base.join("versions").join("4.0.0").exists());
}
