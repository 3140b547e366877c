//! Archive entry names come from release archives (hostile until
//! verified): whatever is accepted stays inside the target folder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Component;

fuzz_target!(|name: &str| {
    if let Ok(p) = palette_manager::extract::safe_relative(name) {
        for c in p.components() {
            assert!(matches!(c, Component::Normal(_)), "{name:?} -> {p:?}");
        }
    }
});
