//! The offer types: what a release the server offers this host is
//! ([`Candidate`]: its [`Product`], version, kind, URL, [`Integrity`] and
//! signed manifest), made from a v2 check-in answer or a legacy v1
//! `/agent/version` answer, and the transports' memory of what they already
//! passed on to the controller ([`OfferMemory`]).
//!
//! Must not: decide whether an offer is installed (the update job does,
//! `job::wanted`), touch the context, the durable state or the network —
//! these are plain values.

use std::time::{Duration, Instant};

use palette_protocol::v2::{self, ReleaseKind};
use palette_protocol::{v1, Version};

/// How a download is checked.
#[derive(Debug, Clone)]
pub enum Integrity {
    /// v2: SHA-256 and size from the release record.
    Sha256 { hex: String, size: u64 },
    /// Legacy v1: MD5 only (accepted only with `trust.allow_legacy_md5`).
    Md5(String),
}

impl Integrity {
    /// The announced size, when the release record gives one.
    pub fn size(&self) -> Option<u64> {
        match self {
            Integrity::Sha256 { size, .. } => Some(*size),
            Integrity::Md5(_) => None,
        }
    }
}

/// What a release installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// The supervised agent (`versions/<v>`).
    Agent,
    /// The watchdog and manager themselves (a self-update).
    Watchdog,
}

impl Product {
    pub fn as_str(self) -> &'static str {
        match self {
            Product::Agent => "agent",
            Product::Watchdog => "watchdog",
        }
    }
}

/// A release this host should install.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub product: Product,
    pub release_id: i64,
    pub version: Version,
    pub kind: ReleaseKind,
    pub url: String,
    pub integrity: Integrity,
    /// The signed manifest and its signature, as the server passed them on.
    pub manifest: Option<String>,
    pub signature: Option<String>,
    /// Installed versions an operator rolled back to this release.
    pub rollback_from: Vec<Version>,
}

impl Candidate {
    /// The release a v2 check-in answer offers for `product`.
    pub fn from_v2(product: Product, r: &v2::Release) -> Candidate {
        Candidate {
            product,
            release_id: r.id,
            version: r.version,
            kind: r.kind,
            url: r.url.clone(),
            integrity: Integrity::Sha256 {
                hex: r.sha256.clone(),
                size: r.size,
            },
            manifest: r.manifest.clone(),
            signature: r.signature.clone(),
            rollback_from: r.rollback_from.clone(),
        }
    }

    /// The agent release a legacy `/agent/version` answer offers: an
    /// archive checked by MD5, with an id made from its content.
    pub fn from_v1(v: &v1::AgentVersion) -> Candidate {
        Candidate {
            product: Product::Agent,
            release_id: legacy_release_id(&v.md5, &v.version()),
            version: v.version(),
            kind: ReleaseKind::Archive,
            url: v.url.clone(),
            integrity: Integrity::Md5(v.md5.clone()),
            // Legacy releases are never signed.
            manifest: None,
            signature: None,
            rollback_from: Vec::new(),
        }
    }
}

/// A legacy release has no id: one made from its content (MD5 and
/// version), so a fixed file re-published under the same version is a new
/// release, and two versions never collide.
pub fn legacy_release_id(md5: &str, version: &Version) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{}|{version}", md5.to_ascii_lowercase()).as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    // Negative: never equal to a v2 release id.
    -((i64::from_be_bytes(b) & i64::MAX) | 1)
}

/// How long an offer passed on is not passed on again unchanged (the
/// controller may have been busy with another).
const OFFER_MEMORY: Duration = Duration::from_secs(60);

/// An offer passed on to the controller.
#[derive(Debug, Clone, Copy)]
struct Sent {
    release_id: i64,
    at: Instant,
}

/// The last offer sent per product, and when.
#[derive(Default)]
pub struct OfferMemory {
    agent: Option<Sent>,
    watchdog: Option<Sent>,
}

impl OfferMemory {
    /// Whether offering `id` now is news (and notes it as sent).
    pub fn fresh(&mut self, product: Product, id: i64) -> bool {
        let slot = match product {
            Product::Agent => &mut self.agent,
            Product::Watchdog => &mut self.watchdog,
        };
        let fresh = slot.is_none_or(|s| s.release_id != id || s.at.elapsed() > OFFER_MEMORY);
        if fresh {
            *slot = Some(Sent {
                release_id: id,
                at: Instant::now(),
            });
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_ids_follow_the_content() {
        let v: Version = "1.0.1000".parse().unwrap();
        let w: Version = "1.1.0".parse().unwrap();
        let a = legacy_release_id("aa", &v);
        assert!(a < 0);
        assert_eq!(a, legacy_release_id("AA", &v));
        assert_ne!(
            a,
            legacy_release_id("bb", &v),
            "a fixed file is a new release"
        );
        assert_ne!(a, legacy_release_id("aa", &w), "versions never collide");
    }

    #[test]
    fn an_offer_is_news_once_per_release_and_minute() {
        let mut m = OfferMemory::default();
        assert!(m.fresh(Product::Agent, 1));
        assert!(!m.fresh(Product::Agent, 1));
        assert!(m.fresh(Product::Watchdog, 1), "per product");
        assert!(m.fresh(Product::Agent, 2), "another release is news");
    }
}
