//! The legacy Insight Server v1 wire types, byte-compatible with the 2017
//! server: capitalised version keys, lower-case command keys, the license
//! object's dashed key, and the trailing newline Go's JSON encoder writes.

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// The command words a legacy watchdog understands, case as written.
pub const COMMAND_WORDS: [&str; 4] = ["start", "stop", "GET-CONFIG", "PUT-CONFIG"];

/// `GET /api/v1/agent/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentVersion {
    #[serde(rename = "Major")]
    pub major: u64,
    #[serde(rename = "Minor")]
    pub minor: u64,
    #[serde(rename = "Patch")]
    pub patch: u64,
    #[serde(rename = "Product")]
    pub product: String,
    #[serde(rename = "Md5")]
    pub md5: String,
    #[serde(rename = "Url")]
    pub url: String,
}

impl AgentVersion {
    pub fn version(&self) -> Version {
        Version::new(self.major, self.minor, self.patch)
    }
}

/// `GET /api/v1/command` and the answer of `PUT /api/v1/command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// RFC 3339 UTC, whole seconds.
    pub ts: String,
    pub command: String,
}

/// `GET /api/v1/license`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    pub trial: bool,
    #[serde(rename = "expiration-time")]
    pub expiration_time: String,
    pub id: i64,
    pub stage: String,
    pub owner: String,
    pub name: String,
    pub valid: bool,
}

impl License {
    /// The license the legacy server answers for any valid key.
    pub fn unlimited() -> Self {
        License {
            trial: false,
            expiration_time: "9999-12-31 23:59:59.999999".into(),
            id: 0,
            stage: "Free".into(),
            owner: "none".into(),
            name: "none".into(),
            valid: true,
        }
    }
}

/// Serialises like Go's `json.NewEncoder(w).Encode(v)`: compact, then `\n`.
pub fn encode<T: Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string(v).expect("v1 types always serialise");
    s.push('\n');
    s
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn byte_compatible_bodies() {
        assert_eq!(
            encode(&License::unlimited()),
            "{\"trial\":false,\"expiration-time\":\"9999-12-31 23:59:59.999999\",\"id\":0,\"stage\":\"Free\",\"owner\":\"none\",\"name\":\"none\",\"valid\":true}\n"
        );
        let v = AgentVersion {
            major: 2,
            minor: 3,
            patch: 4,
            product: "Agent".into(),
            md5: "0123456789abcdef0123456789abcdef".into(),
            url: "/api/v1/agent".into(),
        };
        assert_eq!(
            encode(&v),
            "{\"Major\":2,\"Minor\":3,\"Patch\":4,\"Product\":\"Agent\",\"Md5\":\"0123456789abcdef0123456789abcdef\",\"Url\":\"/api/v1/agent\"}\n"
        );
        let c = Command {
            ts: "2026-11-27T08:20:26Z".into(),
            command: "stop".into(),
        };
        assert_eq!(
            encode(&c),
            "{\"ts\":\"2026-11-27T08:20:26Z\",\"command\":\"stop\"}\n"
        );
    }
}
