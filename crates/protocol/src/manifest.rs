//! The signed release manifest: what a publisher vouches for, signed with a
//! key that never lives on the server (minisign, see the README). Hosts
//! verify the exact bytes the publisher signed, so the manifest travels as
//! text beside its signature (`Release.manifest`, `Release.signature`).
//! Parsing only; verification is the host's (`palette_host::trust`).

use serde::{Deserialize, Serialize};

use crate::v2::ReleaseKind;
use crate::Version;

/// Longest manifest accepted anywhere (a real one is ~300 bytes).
pub const MAX_MANIFEST_BYTES: usize = 4096;
/// Longest minisign signature text accepted anywhere.
pub const MAX_SIGNATURE_BYTES: usize = 1024;

/// What the publisher signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub product: String,
    pub version: Version,
    pub platform: String,
    pub kind: ReleaseKind,
    pub size: u64,
    /// Lowercase hex SHA-256 of the artifact.
    pub sha256: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339: no host installs it after this instant.
    pub expires: String,
    /// A host whose installed version is at least this may install this
    /// (older) release: the one way a signed downgrade is authorised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_downgrade_from: Option<Version>,
}

/// Why a manifest text is not a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge(usize),
    #[error("the manifest is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error("the manifest's {field} is not an RFC 3339 instant: {value:?}")]
    BadTime { field: &'static str, value: String },
}

impl Manifest {
    /// Parses manifest text (JSON), bounded.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(text.len()));
        }
        let m: Manifest = serde_json::from_str(text)?;
        m.expires_ms()?;
        m.created_ms()?;
        Ok(m)
    }

    /// The canonical text to sign (compact JSON).
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a manifest serialises")
    }

    pub fn expires_ms(&self) -> Result<crate::timefmt::Millis, ManifestError> {
        crate::timefmt::parse_rfc3339(&self.expires).map_err(|_| ManifestError::BadTime {
            field: "expires",
            value: self.expires.clone(),
        })
    }

    pub fn created_ms(&self) -> Result<crate::timefmt::Millis, ManifestError> {
        crate::timefmt::parse_rfc3339(&self.created).map_err(|_| ManifestError::BadTime {
            field: "created",
            value: self.created.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            product: "agent".into(),
            version: "2.0.0".parse().unwrap(),
            platform: "linux-x86_64".into(),
            kind: ReleaseKind::Archive,
            size: 10,
            sha256: "ab".repeat(32),
            created: "2026-11-28T00:00:00Z".into(),
            expires: "2027-02-26T00:00:00Z".into(),
            allow_downgrade_from: None,
        }
    }

    #[test]
    fn round_trips_and_refuses_nonsense() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_text()).unwrap(), m);
        assert!(!m.to_text().contains("allow_downgrade_from"));
        let mut extra: serde_json::Value = serde_json::from_str(&m.to_text()).unwrap();
        extra["surprise"] = 1.into();
        assert!(Manifest::parse(&extra.to_string()).is_err());
        let bad_time = m.to_text().replace("2027-02-26T00:00:00Z", "tomorrow");
        assert!(matches!(
            Manifest::parse(&bad_time),
            Err(ManifestError::BadTime {
                field: "expires",
                ..
            })
        ));
        assert!(matches!(
            Manifest::parse(&" ".repeat(MAX_MANIFEST_BYTES + 1)),
            Err(ManifestError::TooLarge(_))
        ));
        assert!(Manifest::parse("not json").is_err());
    }
}
