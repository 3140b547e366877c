//! The watchdog's local settings: any text gives settings or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = palette_host::settings::Settings::parse(text, std::path::Path::new("watchdog.yml"));
});
