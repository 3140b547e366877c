//! The agent's `Config.yml` arrives from the server (PUT/GET-CONFIG): any
//! bytes give a config or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = palette_host::agent_config::AgentConfig::parse(bytes);
});
