//! Property tests of the parsers that read untrusted input: host names,
//! versions, signed manifests, v2 request bodies. Nothing panics, whatever
//! arrives; what is accepted is what the rest of the code assumes.

use palette_protocol::manifest::Manifest;
use palette_protocol::v2::{CheckinRequest, ReleaseKind};
use palette_protocol::{validate_hostname, Version};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn host_names_are_never_paths(name in "\\PC{0,300}") {
        if let Ok(h) = validate_hostname(&name) {
            prop_assert!(!h.is_empty() && h.len() <= 253);
            prop_assert!(!h.contains('/') && !h.contains('\\') && !h.contains("..") && !h.contains('%'));
            // Kept exactly as written: the original server compares names
            // case-sensitively (issue 21.7).
            prop_assert_eq!(h.as_str(), name.as_str());
            prop_assert!(h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
        }
    }

    #[test]
    fn host_names_of_the_usual_shape_are_accepted(name in "[a-zA-Z0-9]([a-zA-Z0-9-]{0,18}[a-zA-Z0-9])?(\\.[a-z0-9]{1,10}){0,3}") {
        prop_assert!(validate_hostname(&name).is_ok(), "{name}");
    }

    #[test]
    fn versions_parse_or_refuse_and_round_trip(text in "\\PC{0,40}", parts in prop::collection::vec(0u32..100_000, 1..5)) {
        let _ = text.parse::<Version>();
        let s = parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(".");
        if let Ok(v) = s.parse::<Version>() {
            prop_assert_eq!(v.to_string().parse::<Version>().unwrap(), v);
        }
    }

    #[test]
    fn manifests_never_panic_and_round_trip(
        junk in "\\PC{0,600}",
        product in "[a-z][a-z0-9-]{0,20}",
        (a, b, c) in (0u32..1000, 0u32..1000, 0u32..1000),
        size in any::<u64>(),
        sha in "[0-9a-f]{64}",
        kind in prop_oneof![Just(ReleaseKind::Archive), Just(ReleaseKind::Msi), Just(ReleaseKind::Installer)],
    ) {
        let _ = Manifest::parse(&junk);
        let m = Manifest {
            product,
            version: format!("{a}.{b}.{c}").parse().unwrap(),
            platform: "linux-x86_64".into(),
            kind,
            size,
            sha256: sha,
            created: "2026-11-28T00:00:00Z".into(),
            expires: "2027-11-28T00:00:00Z".into(),
            allow_downgrade_from: None,
        };
        prop_assert_eq!(Manifest::parse(&m.to_text()).unwrap(), m);
    }

    #[test]
    fn checkin_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), text in "\\PC{0,300}") {
        let _ = serde_json::from_slice::<CheckinRequest>(&body);
        let _ = serde_json::from_str::<CheckinRequest>(&text);
    }
}
