//! Whatever manifest and signature a hostile server sends, nothing is
//! trusted without the secret key (none exists for this public key).
#![no_main]
use libfuzzer_sys::fuzz_target;
use palette_host::trust::{check, Offer, TrustedKeys};
use palette_protocol::v2::ReleaseKind;

const KEY: &str = "RWT77vxCiGJwvEFv8qM2kloZ6E6/kmuwRxWRzK5bK7FG72ohoix2ozyI";

fuzz_target!(|input: (&str, &str)| {
    let (manifest, signature) = input;
    let keys = TrustedKeys::parse(&[KEY.to_string()]).expect("a valid key");
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
    assert!(check(&keys, Some(manifest), Some(signature), &offer).is_err());
});
