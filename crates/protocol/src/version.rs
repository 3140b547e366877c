//! Agent and watchdog versions: `1.2.3`, `v1.2.3` and four-part Windows file
//! versions `1.2.3.4`. Ordered numerically, never lexically; a missing fourth
//! part counts as 0, so `1.2.3 == 1.2.3.0`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Why a version string was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("version {0:?} is not of the form MAJOR.MINOR.PATCH or MAJOR.MINOR.PATCH.BUILD")]
    Shape(String),
    #[error("version {input:?} has a part that is not a number: {part:?}")]
    NotANumber { input: String, part: String },
}

/// A numeric version of three or four parts.
#[derive(Debug, Clone, Copy)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// The fourth part of a Windows file version, when there is one.
    pub build: Option<u64>,
}

impl Version {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Self {
            major,
            minor,
            patch,
            build: None,
        }
    }

    fn key(&self) -> (u64, u64, u64, u64) {
        (self.major, self.minor, self.patch, self.build.unwrap_or(0))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Version {}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}
impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
        let parts: Vec<&str> = s.split('.').collect();
        if !(3..=4).contains(&parts.len()) {
            return Err(VersionError::Shape(input.to_string()));
        }
        let mut nums = [0u64; 4];
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(VersionError::NotANumber {
                    input: input.to_string(),
                    part: part.to_string(),
                });
            }
            nums[i] = part.parse().map_err(|_| VersionError::NotANumber {
                input: input.to_string(),
                part: part.to_string(),
            })?;
        }
        Ok(Version {
            major: nums[0],
            minor: nums[1],
            patch: nums[2],
            build: (parts.len() == 4).then_some(nums[3]),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(b) = self.build {
            write!(f, ".{b}")?;
        }
        Ok(())
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn parses_all_forms() {
        assert_eq!(v("1.2.3"), Version::new(1, 2, 3));
        assert_eq!(v("v1.2.3"), Version::new(1, 2, 3));
        assert_eq!(v("1.2.3.4").build, Some(4));
        assert_eq!(v("1.2.3.4").to_string(), "1.2.3.4");
        assert_eq!(v("V10.0.1").to_string(), "10.0.1");
    }

    #[test]
    fn orders_numerically() {
        assert!(v("1.10.0") > v("1.9.0"));
        assert!(v("2.0.0") > v("1.99.99"));
        assert!(v("1.2.3.1") > v("1.2.3"));
        assert_eq!(v("1.2.3.0"), v("1.2.3"));
        assert!(v("1.2.10") > v("1.2.9"));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4.5",
            "a.b.c",
            "1.2.x",
            "1..3",
            "1.2.-3",
            "1.2.3-beta",
            "99999999999999999999.0.0",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            "1.2.x".parse::<Version>().unwrap_err().to_string(),
            "version \"1.2.x\" has a part that is not a number: \"x\""
        );
    }

    #[test]
    fn serde_round_trip() {
        let s = serde_json::to_string(&v("v3.1.4")).unwrap();
        assert_eq!(s, "\"3.1.4\"");
        assert!(serde_json::from_str::<Version>("\"nope\"").is_err());
    }
}
