//! Host names arrive in every request (v1 query strings, v2 bodies and
//! paths) and name folders and rows: an accepted one is never a path.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|name: &str| {
    if let Ok(h) = palette_protocol::validate_hostname(name) {
        assert!(!h.is_empty());
        assert!(!h.contains(['/', '\\', '\0', ':', ' ']), "{h:?}");
        assert!(h != "." && h != ".." && !h.contains(".."), "{h:?}");
        // Idempotent: what was accepted is accepted again unchanged.
        assert_eq!(
            palette_protocol::validate_hostname(&h).as_deref(),
            Ok(h.as_str())
        );
    }
});
