//! The download of a release, checked before anything is stopped: with
//! `trust.keys` its signed manifest must verify and match the offer; the
//! kind must be one this host installs; there must be room for it and its
//! unpacking. It streams into `Updates/` (a part of the same file is
//! resumed, everything else there is cleaned out), is verified by SHA-256
//! and size (or a legacy MD5), and must be a tar.gz, a zip or, where
//! msiexec is, an agent's MSI.
//!
//! Must not: stop the agent, run the manager or install anything; a
//! refusal is recorded (`outcome`) before anything is stopped.

use palette_protocol::v2::{Outcome, ReleaseKind, UpdateReport};
use palette_protocol::Version;

use super::outcome::{report_with, retry_later};
use crate::client::{Client, Expect};
use crate::ctx::Ctx;
use crate::error::chain;
use crate::offer::{Candidate, Integrity, Product};

/// Free space kept beyond what a download and its unpacking need.
const SPACE_MARGIN: u64 = 64 * 1024 * 1024;

/// An older release whose manifest claims a downgrade from `installed` is
/// authorised: considered only when this host verifies signatures.
pub(crate) fn signed_downgrade(ctx: &Ctx, cand: &Candidate, installed: Version) -> bool {
    cand.version < installed
        && ctx.trust.is_some()
        && palette_host::trust::claims_downgrade(cand.manifest.as_deref(), installed)
}

/// With `trust.keys` set: the release's signed manifest must verify and
/// match the offer, before anything is downloaded or stopped.
fn check_trust(ctx: &Ctx, cand: &Candidate) -> Result<(), palette_host::trust::Refusal> {
    let Some(keys) = &ctx.trust else {
        return Ok(());
    };
    let (sha256, size) = match &cand.integrity {
        Integrity::Sha256 { hex, size } => (hex.as_str(), *size),
        Integrity::Md5(_) => ("", 0),
    };
    let (product, installed) = match cand.product {
        Product::Agent => (ctx.settings.product.as_str(), ctx.layout.current_version()),
        Product::Watchdog => ("watchdog", Some(crate::own_version())),
    };
    let offer = palette_host::trust::Offer {
        product,
        platform: &ctx.settings.platform,
        version: cand.version,
        kind: cand.kind,
        sha256,
        size,
        installed,
        now_ms: crate::now_ms(),
    };
    palette_host::trust::check(
        keys,
        cand.manifest.as_deref(),
        cand.signature.as_deref(),
        &offer,
    )
    .map(drop)
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Gzip,
    Zip,
    /// An OLE compound file: a Windows Installer package.
    Msi,
    Unknown,
}

/// Recognises a download by its magic bytes.
fn sniff(path: &std::path::Path) -> std::io::Result<Content> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut f = fs_err::File::open(path)?;
    let n = f.read(&mut head)?;
    let head = &head[..n];
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Content::Gzip
    } else if head.starts_with(b"PK\x03\x04") {
        Content::Zip
    } else if head.starts_with(&[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1]) {
        Content::Msi
    } else {
        Content::Unknown
    })
}

/// A verified download, or how the attempt ended.
pub(crate) enum Fetched {
    Got {
        path: std::path::PathBuf,
        sha256: String,
        size: u64,
        /// A Windows Installer package (installed by msiexec), not an archive.
        msi: bool,
    },
    /// Reported (a failure), or `None`: cancelled.
    Ended(Option<UpdateReport>),
}

/// Downloads `cand` into `Updates/` (resuming a part of the same file),
/// after checking there is room for it and its unpacking; verifies it and
/// checks it is an archive. Nothing is stopped here.
pub(crate) async fn fetch(
    ctx: &Ctx,
    client: &Client,
    cand: &Candidate,
    cancel: &tokio_util::sync::CancellationToken,
) -> Fetched {
    let fail = |msg: String| {
        Fetched::Ended(Some(report_with(
            ctx,
            cand.product,
            cand.release_id,
            cand.version,
            Outcome::Failed,
            msg,
            false,
        )))
    };
    let installable = match cand.kind {
        ReleaseKind::Archive => true,
        ReleaseKind::Msi => crate::platform::installs_msi(),
        ReleaseKind::Installer => false,
    };
    if !installable {
        return fail(format!(
            "release kind {} cannot be installed on {} yet",
            cand.kind.as_str(),
            ctx.settings.platform
        ));
    }
    if let Err(refusal) = check_trust(ctx, cand) {
        tracing::error!(product = cand.product.as_str(), version = %cand.version, release = cand.release_id, %refusal, "release refused: its signed manifest does not verify; nothing was downloaded or stopped");
        // What this host may fix (its keys, its clock) is asked again
        // later; what the release is (unsigned, for something else) is not.
        return if refusal.may_pass_later() {
            Fetched::Ended(Some(retry_later(ctx, cand, |secs| {
                format!("refused (signature check): {refusal}; checked again in {secs} s")
            })))
        } else {
            fail(format!("refused (signature check): {refusal}"))
        };
    }
    if let Integrity::Sha256 { hex, .. } = &cand.integrity {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return fail(format!("the server gave a malformed sha256 {hex:?}"));
        }
    }
    tracing::info!(product = cand.product.as_str(), version = %cand.version, release = cand.release_id, "downloading update");
    let updates = ctx.layout.updates();
    // Named by content: a part of this very file is kept and resumed;
    // everything else in Updates/ is left over from earlier attempts.
    let content_id = match &cand.integrity {
        Integrity::Sha256 { hex, .. } => hex.to_ascii_lowercase(),
        Integrity::Md5(hex) => format!("md5-{}", hex.to_ascii_lowercase()),
    };
    let dest = updates.join(format!("{}-{content_id}", cand.product.as_str()));
    let keep = dest.with_extension("part");
    if let Ok(entries) = fs_err::read_dir(&updates) {
        for e in entries.flatten() {
            if e.path() == keep {
                continue;
            }
            let _ = if e.path().is_dir() {
                fs_err::remove_dir_all(e.path())
            } else {
                fs_err::remove_file(e.path())
            };
        }
    }
    let _ = fs_err::create_dir_all(&updates);
    // Room for the download and its unpacking, checked before starting.
    if let Integrity::Sha256 { size, .. } = &cand.integrity {
        let have_part = fs_err::metadata(&keep).map(|m| m.len()).unwrap_or(0);
        let need = size.saturating_sub(have_part) + size.saturating_mul(2) + SPACE_MARGIN;
        if let Some(free) = palette_host::disk::available_space(&updates) {
            if free < need {
                return Fetched::Ended(Some(retry_later(ctx, cand, |secs| {
                    format!(
                        "not enough free disk space for the update: {} MiB needed (download, unpacking and a margin), {} MiB free in {}; nothing was stopped; retrying in {secs} s",
                        need >> 20,
                        free >> 20,
                        updates.display(),
                    )
                })));
            }
        }
    }
    let expect = match &cand.integrity {
        Integrity::Sha256 { hex, size } => Expect::Sha256 {
            hex,
            size: Some(*size),
        },
        Integrity::Md5(hex) => Expect::Md5(hex),
    };
    let downloaded = tokio::select! {
        r = client.download(&cand.url, &dest, expect, ctx.settings.server.download_rate_bytes_per_sec, ctx.updates.download_bytes()) => r,
        _ = cancel.cancelled() => {
            let _ = fs_err::remove_file(dest.with_extension("part"));
            tracing::info!(version = %cand.version, "download cancelled; nothing installed");
            return Fetched::Ended(None);
        }
    };
    let got = match downloaded {
        Ok(g) => g,
        Err(e) if e.is_transient() => {
            return Fetched::Ended(Some(retry_later(ctx, cand, |secs| {
                format!(
                    "download failed, nothing installed; retrying in {secs} s: {}",
                    chain(&e)
                )
            })));
        }
        Err(e) => {
            return fail(format!(
                "download refused, nothing installed: {}",
                chain(&e)
            ))
        }
    };
    ctx.updates.clear_retry();
    tracing::info!(version = %cand.version, bytes = got.size, sha256 = got.sha256, "download verified");

    // What the file is decides what can install it: refused here, before
    // anything is stopped.
    let msi = match sniff(&dest) {
        Ok(Content::Gzip | Content::Zip) => false,
        Ok(Content::Msi) if crate::platform::installs_msi() && cand.product == Product::Agent => {
            true
        }
        Ok(Content::Msi) => {
            let _ = fs_err::remove_file(&dest);
            return fail(format!(
                "the release is a Windows Installer (MSI) package, which cannot be installed on {}; the agent was not stopped",
                ctx.settings.platform
            ));
        }
        Ok(Content::Unknown) => {
            let _ = fs_err::remove_file(&dest);
            return fail(
                "the release is neither a tar.gz nor a zip archive; the agent was not stopped"
                    .into(),
            );
        }
        Err(e) => return fail(format!("cannot read the download: {e}")),
    };
    Fetched::Got {
        path: dest,
        sha256: got.sha256,
        size: got.size,
        msi,
    }
}
