//! Property tests of what a host parses from untrusted places: the agent's
//! Config.yml (pushed remotely), its local settings, and signed manifests
//! from the server. Nothing panics; nothing unsigned is ever trusted.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs

use palette_host::agent_config::AgentConfig;
use palette_host::settings::Settings;
use palette_host::trust::{check, Offer, TrustedKeys};
use palette_protocol::v2::ReleaseKind;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn config_yml_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), text in "(\\PC|\\n|:| |-){0,300}") {
        let _ = AgentConfig::parse(&bytes);
        let _ = AgentConfig::parse(text.as_bytes());
    }

    #[test]
    fn settings_never_panic(text in "(\\PC|\\n|:| |-|\\[|\\]){0,300}") {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watchdog.yml");
        std::fs::write(&p, &text).unwrap();
        let _ = Settings::load(&p);
    }

    #[test]
    fn nothing_unsigned_is_trusted(manifest in "\\PC{0,400}", signature in "(\\PC|\\n){0,300}") {
        let keys = TrustedKeys::parse(&[minisign_key()]).unwrap();
        let offer = Offer {
            product: "agent",
            platform: "linux-x86_64",
            version: "1.0.0".parse().unwrap(),
            kind: ReleaseKind::Archive,
            sha256: "ab",
            size: 1,
            installed: None,
            now_ms: 0,
        };
        prop_assert!(check(&keys, Some(&manifest), Some(&signature), &offer).is_err());
    }
}

/// A public key nobody holds the secret of (any valid key will do: the
/// inputs are random, so no signature can verify).
fn minisign_key() -> String {
    minisign::KeyPair::generate_unencrypted_keypair()
        .unwrap()
        .pk
        .to_base64()
}
