//! Property test of archive entry names (untrusted: they come from the
//! release): whatever is accepted stays inside the target folder.

use std::path::{Component, Path};

use palette_manager::extract::safe_relative;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn accepted_entry_names_stay_inside(name in prop_oneof![
        "\\PC{0,80}",
        "(\\.\\.|\\.|[a-z]{1,4}|/|\\\\|C:|~){0,8}",
    ]) {
        if let Ok(rel) = safe_relative(&name) {
            prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))), "{name:?} -> {rel:?}");
            let root = Path::new("/target/root");
            prop_assert!(root.join(&rel).starts_with(root), "{name:?} escapes");
            prop_assert!(!name.contains('\\'));
        }
    }
}

/// The cases that escaped once (Windows: a drive-relative component).
#[test]
fn drive_letters_and_streams_are_refused() {
    for name in [
        "~/C:",
        "a/C:b",
        "C:",
        "file:stream",
        "x/../y",
        "/etc/passwd",
        "a\\b",
    ] {
        assert!(safe_relative(name).is_err(), "{name:?} accepted");
    }
    assert!(safe_relative("bin/agent").is_ok());
}
