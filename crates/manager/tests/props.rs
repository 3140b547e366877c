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
