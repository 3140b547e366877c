//! Signed release manifests come from the server (untrusted until
//! verified): parsing never panics, and what parses round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palette_protocol::manifest::Manifest;

fuzz_target!(|text: &str| {
    if let Ok(m) = Manifest::parse(text) {
        let again = Manifest::parse(&m.to_text()).expect("a manifest's own text parses");
        assert_eq!(again, m);
    }
});
