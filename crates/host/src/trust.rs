//! Release trust: the publisher keys in the host's **local** settings
//! (`trust.keys`; remote configuration never reaches them) and the check of
//! a release's signed manifest against what the server offers. The check
//! runs before anything is downloaded or stopped; every refusal says why.
//! minisign signatures (`minisign-verify`), see the README.

use palette_protocol::manifest::{Manifest, ManifestError, MAX_SIGNATURE_BYTES};
use palette_protocol::v2::ReleaseKind;
use palette_protocol::Version;

/// The publisher public keys this host trusts (several at once, for a
/// rotation).
#[derive(Clone)]
pub struct TrustedKeys(Vec<(String, minisign_verify::PublicKey)>);

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(s, _)| s))
            .finish()
    }
}

/// A key in `trust.keys` that is not a minisign public key.
#[derive(Debug, thiserror::Error)]
#[error("trust.keys[{index}] is not a minisign public key (the one-line key string of a .pub file): {reason}")]
pub struct BadKey {
    pub index: usize,
    pub reason: String,
}

impl TrustedKeys {
    /// Parses the one-line key strings (as `PREFIX.pub` holds them on its
    /// second line; a whole `.pub` file's text is accepted too).
    pub fn parse(keys: &[String]) -> Result<TrustedKeys, BadKey> {
        keys.iter()
            .enumerate()
            .map(|(index, k)| {
                let line = k
                    .lines()
                    .map(str::trim)
                    .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
                    .unwrap_or("");
                minisign_verify::PublicKey::from_base64(line)
                    .map(|pk| (line.to_string(), pk))
                    .map_err(|e| BadKey {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedKeys)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// What the server offers, and what this host has: the manifest must
/// match all of it.
#[derive(Debug, Clone)]
pub struct Offer<'a> {
    pub product: &'a str,
    pub platform: &'a str,
    pub version: Version,
    pub kind: ReleaseKind,
    /// The server's SHA-256 and size, which the download is checked against.
    pub sha256: &'a str,
    pub size: u64,
    /// The version installed now (`None`: nothing yet).
    pub installed: Option<Version>,
    /// Milliseconds since the Unix epoch.
    pub now_ms: i64,
}

/// Why a release is refused. Nothing was downloaded or stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the release is not signed, and this host trusts only signed releases")]
    Unsigned,
    #[error("the signature is not valid text: {0}")]
    MalformedSignature(String),
    #[error("the signature was not made by a trusted key, or the manifest was altered")]
    BadSignature,
    #[error("the signed manifest is not valid: {0}")]
    MalformedManifest(String),
    #[error("the manifest is for {field} {signed:?}, the release for {offered:?}")]
    Mismatch {
        field: &'static str,
        signed: String,
        offered: String,
    },
    #[error("the manifest expired at {expires}")]
    Expired { expires: String },
    #[error("the manifest was created at {created}, later than this host's clock allows (is its clock behind?)")]
    NotYetValid { created: String },
    #[error("version {offered} is older than the installed {installed}, and the manifest does not authorise that downgrade")]
    Downgrade {
        offered: Version,
        installed: Version,
    },
}

impl Refusal {
    /// Whether the same release may pass once this host changes (a key
    /// added in a rotation, a clock set right): asked again later, not held
    /// against the release.
    pub fn may_pass_later(&self) -> bool {
        matches!(
            self,
            Refusal::BadSignature | Refusal::Expired { .. } | Refusal::NotYetValid { .. }
        )
    }
}

/// How far ahead of this host's clock a manifest's `created` may be.
const CLOCK_SKEW_MS: i64 = 60 * 60 * 1000;

/// Checks the signed manifest of a release against the trusted keys and
/// the offer. `Ok` with the manifest when the host may install it.
pub fn check(
    keys: &TrustedKeys,
    manifest: Option<&str>,
    signature: Option<&str>,
    offer: &Offer<'_>,
) -> Result<Manifest, Refusal> {
    let (Some(text), Some(sig)) = (manifest, signature) else {
        return Err(Refusal::Unsigned);
    };
    if sig.len() > MAX_SIGNATURE_BYTES {
        return Err(Refusal::MalformedSignature("too long".into()));
    }
    if text.len() > palette_protocol::manifest::MAX_MANIFEST_BYTES {
        return Err(Refusal::MalformedManifest(format!(
            "{} bytes, more than allowed",
            text.len()
        )));
    }
    let sig = minisign_verify::Signature::decode(sig)
        .map_err(|e| Refusal::MalformedSignature(e.to_string()))?;
    // Verified before it is parsed: nothing unsigned is interpreted.
    let signed_by_trusted = keys
        .0
        .iter()
        .any(|(_, pk)| pk.verify(text.as_bytes(), &sig, false).is_ok());
    if !signed_by_trusted {
        return Err(Refusal::BadSignature);
    }
    let m = Manifest::parse(text)
        .map_err(|e: ManifestError| Refusal::MalformedManifest(e.to_string()))?;
    let mismatch = |field: &'static str, signed: String, offered: String| {
        if signed == offered {
            Ok(())
        } else {
            Err(Refusal::Mismatch {
                field,
                signed,
                offered,
            })
        }
    };
    mismatch("product", m.product.clone(), offer.product.to_string())?;
    mismatch("platform", m.platform.clone(), offer.platform.to_string())?;
    if m.version != offer.version {
        return Err(Refusal::Mismatch {
            field: "version",
            signed: m.version.to_string(),
            offered: offer.version.to_string(),
        });
    }
    mismatch("kind", m.kind.as_str().into(), offer.kind.as_str().into())?;
    mismatch("size", m.size.to_string(), offer.size.to_string())?;
    mismatch(
        "sha256",
        m.sha256.to_ascii_lowercase(),
        offer.sha256.to_ascii_lowercase(),
    )?;
    let expires = m
        .expires_ms()
        .map_err(|e| Refusal::MalformedManifest(e.to_string()))?;
    if offer.now_ms >= expires {
        return Err(Refusal::Expired {
            expires: m.expires.clone(),
        });
    }
    let created = m
        .created_ms()
        .map_err(|e| Refusal::MalformedManifest(e.to_string()))?;
    if created > offer.now_ms + CLOCK_SKEW_MS {
        return Err(Refusal::NotYetValid {
            created: m.created.clone(),
        });
    }
    if m.allow_downgrade_from.is_some_and(|from| from <= m.version) {
        return Err(Refusal::MalformedManifest(
            "allow_downgrade_from must be newer than the version it authorises".into(),
        ));
    }
    if let Some(installed) = offer.installed {
        if m.version < installed && m.allow_downgrade_from.is_none_or(|from| installed < from) {
            return Err(Refusal::Downgrade {
                offered: m.version,
                installed,
            });
        }
    }
    Ok(m)
}

/// Whether a manifest claims to authorise installing its (older) version
/// over `installed`: read before verification, only to decide whether an
/// older release is worth checking at all.
pub fn claims_downgrade(manifest: Option<&str>, installed: Version) -> bool {
    manifest
        .and_then(|t| Manifest::parse(t).ok())
        .and_then(|m| m.allow_downgrade_from)
        .is_some_and(|from| installed >= from)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A fresh key pair per test (minisign, unencrypted).
    fn keypair() -> minisign::KeyPair {
        minisign::KeyPair::generate_unencrypted_keypair().unwrap()
    }

    fn sign(kp: &minisign::KeyPair, text: &str) -> String {
        minisign::sign(
            Some(&kp.pk),
            &kp.sk,
            std::io::Cursor::new(text.as_bytes()),
            None,
            None,
        )
        .unwrap()
        .to_string()
    }

    fn trusted(kps: &[&minisign::KeyPair]) -> TrustedKeys {
        TrustedKeys::parse(&kps.iter().map(|k| k.pk.to_base64()).collect::<Vec<_>>()).unwrap()
    }

    fn manifest(version: &str) -> Manifest {
        Manifest {
            product: "agent".into(),
            version: version.parse().unwrap(),
            platform: "linux-x86_64".into(),
            kind: ReleaseKind::Archive,
            size: 1234,
            sha256: "ab".repeat(32),
            created: "2026-11-28T00:00:00Z".into(),
            expires: "2027-02-26T00:00:00Z".into(),
            allow_downgrade_from: None,
        }
    }

    fn offer(version: &str, installed: Option<&str>) -> Offer<'static> {
        Offer {
            product: "agent",
            platform: "linux-x86_64",
            version: version.parse().unwrap(),
            kind: ReleaseKind::Archive,
            sha256: Box::leak("ab".repeat(32).into_boxed_str()),
            size: 1234,
            installed: installed.map(|v| v.parse().unwrap()),
            now_ms: palette_protocol::timefmt::parse_rfc3339("2026-12-01T00:00:00Z").unwrap(),
        }
    }

    #[test]
    fn a_good_signature_passes_and_every_refusal_says_why() {
        let kp = keypair();
        let keys = trusted(&[&kp]);
        let good = manifest("2.0.0").to_text();
        let sig = sign(&kp, &good);
        let o = offer("2.0.0", Some("1.0.0"));
        assert!(check(&keys, Some(&good), Some(&sig), &o).is_ok());

        assert_eq!(check(&keys, None, None, &o), Err(Refusal::Unsigned));
        assert_eq!(check(&keys, Some(&good), None, &o), Err(Refusal::Unsigned));
        assert!(matches!(
            check(&keys, Some(&good), Some("garbage"), &o),
            Err(Refusal::MalformedSignature(_))
        ));
        // Another key's signature; an altered manifest.
        let other = keypair();
        assert_eq!(
            check(&keys, Some(&good), Some(&sign(&other, &good)), &o),
            Err(Refusal::BadSignature)
        );
        let altered = good.replace("1234", "1235");
        assert_eq!(
            check(&keys, Some(&altered), Some(&sig), &o),
            Err(Refusal::BadSignature)
        );
        // Signed, but not for this offer.
        for (field, o2) in [
            (
                "product",
                Offer {
                    product: "watchdog",
                    ..o.clone()
                },
            ),
            (
                "platform",
                Offer {
                    platform: "windows-x86_64",
                    ..o.clone()
                },
            ),
            (
                "version",
                Offer {
                    version: "2.0.1".parse().unwrap(),
                    ..o.clone()
                },
            ),
            (
                "kind",
                Offer {
                    kind: ReleaseKind::Msi,
                    ..o.clone()
                },
            ),
            (
                "size",
                Offer {
                    size: 1,
                    ..o.clone()
                },
            ),
            (
                "sha256",
                Offer {
                    sha256: "cd",
                    ..o.clone()
                },
            ),
        ] {
            match check(&keys, Some(&good), Some(&sig), &o2) {
                Err(Refusal::Mismatch { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        // Expired.
        let mut m = manifest("2.0.0");
        m.expires = "2026-11-30T00:00:00Z".into();
        let t = m.to_text();
        assert!(matches!(
            check(&keys, Some(&t), Some(&sign(&kp, &t)), &o),
            Err(Refusal::Expired { .. })
        ));
        // Created in the host's future (its clock is behind): refused, and
        // asked again later, as are a bad signature and an expiry.
        let mut m = manifest("2.0.0");
        m.created = "2026-12-05T00:00:00Z".into();
        let t = m.to_text();
        let r = check(&keys, Some(&t), Some(&sign(&kp, &t)), &o).unwrap_err();
        assert!(matches!(r, Refusal::NotYetValid { .. }) && r.may_pass_later());
        assert!(Refusal::BadSignature.may_pass_later());
        assert!(!Refusal::Unsigned.may_pass_later());
        // A downgrade authorisation that authorises nothing sensible.
        let mut m = manifest("2.0.0");
        m.allow_downgrade_from = Some("2.0.0".parse().unwrap());
        let t = m.to_text();
        assert!(matches!(
            check(&keys, Some(&t), Some(&sign(&kp, &t)), &o),
            Err(Refusal::MalformedManifest(_))
        ));
        // An oversized manifest is refused before its signature is checked.
        let big = " ".repeat(palette_protocol::manifest::MAX_MANIFEST_BYTES + 1);
        assert!(matches!(
            check(&keys, Some(&big), Some(&sig), &o),
            Err(Refusal::MalformedManifest(_))
        ));
        // A signed but malformed manifest.
        let junk = "{\"product\": 1}";
        assert!(matches!(
            check(&keys, Some(junk), Some(&sign(&kp, junk)), &o),
            Err(Refusal::MalformedManifest(_))
        ));
    }

    #[test]
    fn a_downgrade_needs_the_manifests_authorisation() {
        let kp = keypair();
        let keys = trusted(&[&kp]);
        let plain = manifest("1.5.0").to_text();
        let o = offer("1.5.0", Some("2.0.0"));
        assert!(matches!(
            check(&keys, Some(&plain), Some(&sign(&kp, &plain)), &o),
            Err(Refusal::Downgrade { .. })
        ));
        assert!(!claims_downgrade(Some(&plain), "2.0.0".parse().unwrap()));
        let mut m = manifest("1.5.0");
        m.allow_downgrade_from = Some("2.0.0".parse().unwrap());
        let t = m.to_text();
        assert!(check(&keys, Some(&t), Some(&sign(&kp, &t)), &o).is_ok());
        assert!(claims_downgrade(Some(&t), "2.0.0".parse().unwrap()));
        // Not from a version below the one authorised.
        let o = offer("1.5.0", Some("1.9.0"));
        assert!(matches!(
            check(&keys, Some(&t), Some(&sign(&kp, &t)), &o),
            Err(Refusal::Downgrade { .. })
        ));
    }

    #[test]
    fn keys_rotate_and_bad_keys_are_refused() {
        let (old, new) = (keypair(), keypair());
        let t = manifest("2.0.0").to_text();
        let o = offer("2.0.0", None);
        let by_new = sign(&new, &t);
        assert!(check(&trusted(&[&old, &new]), Some(&t), Some(&by_new), &o).is_ok());
        assert!(check(&trusted(&[&new]), Some(&t), Some(&by_new), &o).is_ok());
        assert_eq!(
            check(&trusted(&[&new]), Some(&t), Some(&sign(&old, &t)), &o),
            Err(Refusal::BadSignature)
        );
        // A whole .pub file is accepted; nonsense is refused with its index.
        let file = old.pk.to_box().unwrap().to_string();
        assert_eq!(TrustedKeys::parse(&[file]).unwrap().len(), 1);
        let err = TrustedKeys::parse(&[new.pk.to_base64(), "RWQnope".into()]).unwrap_err();
        assert_eq!(err.index, 1);
    }
}
