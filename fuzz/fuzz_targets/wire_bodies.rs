//! Request and answer bodies of both APIs, as either side parses them:
//! v2 check-ins (server side), check-in answers and releases (watchdog
//! side), v1 answers (a legacy server's, watchdog side).
#![no_main]
use libfuzzer_sys::fuzz_target;
use palette_protocol::{v1, v2};

fuzz_target!(|bytes: &[u8]| {
    let _ = serde_json::from_slice::<v2::CheckinRequest>(bytes);
    let _ = serde_json::from_slice::<v2::CheckinResponse>(bytes);
    let _ = serde_json::from_slice::<v2::NewCommand>(bytes);
    let _ = serde_json::from_slice::<Vec<v2::Release>>(bytes);
    let _ = serde_json::from_slice::<v1::Command>(bytes);
    let _ = serde_json::from_slice::<v1::AgentVersion>(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(v) = text.parse::<palette_protocol::Version>() {
            assert_eq!(
                v.to_string().parse::<palette_protocol::Version>().unwrap(),
                v
            );
        }
    }
});
