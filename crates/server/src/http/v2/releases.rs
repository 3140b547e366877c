//! `/api/v2/releases`: publish (streamed, verified, signed or not),
//! check, reach, withdraw, roll back, list, and artifact downloads.

#[allow(unused_imports)]
use super::*;

#[derive(Deserialize)]
pub(super) struct PublishQuery {
    product: Option<String>,
    version: String,
    platform: String,
    kind: String,
    sha256: Option<String>,
    /// Publish even a version lower than the newest offered one.
    force: Option<bool>,
    /// Offer it to no host until a rollout starts.
    #[serde(default)]
    hold: bool,
}

pub(super) fn plain_name(what: &str, s: &str) -> V2Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{what} {s:?} must be 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The signed manifest and its signature from the publish request's
/// `X-Palette-Manifest` / `X-Palette-Signature` headers (each base64): both
/// or neither, each bounded, the manifest well-formed. The signature is
/// not verified here — the server holds no key and is not trusted; hosts
/// verify against their own keys.
pub(super) fn signed_manifest(headers: &HeaderMap) -> V2Result<(Option<String>, Option<String>)> {
    use base64::Engine as _;
    use palette_protocol::manifest::{Manifest, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES};
    let get = |name: &str, max: usize| -> V2Result<Option<String>> {
        let Some(v) = headers.get(name) else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(|_| bad(format!("{name} must be base64")))?;
        if bytes.len() > max {
            return Err(bad(format!("{name} is longer than {max} bytes")));
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| bad(format!("{name} must be UTF-8 text")))
    };
    let manifest = get(HEADER_MANIFEST, MAX_MANIFEST_BYTES)?;
    let signature = get(HEADER_SIGNATURE, MAX_SIGNATURE_BYTES)?;
    match (&manifest, &signature) {
        (Some(m), Some(_)) => {
            Manifest::parse(m).map_err(|e| bad(e.to_string()))?;
        }
        (None, None) => {}
        _ => {
            return Err(bad(format!(
                "{HEADER_MANIFEST} and {HEADER_SIGNATURE} go together"
            )))
        }
    }
    Ok((manifest, signature))
}

pub(super) const HEADER_MANIFEST: &str = "x-palette-manifest";
pub(super) const HEADER_SIGNATURE: &str = "x-palette-signature";

pub(super) async fn publish_release(
    State(state): State<AppState>,
    op: Operator,
    q: Result<Query<PublishQuery>, QueryRejection>,
    req: Request,
) -> V2Result<(StatusCode, Json<Release>)> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let product = q.product.unwrap_or_else(|| "agent".into());
    plain_name("product", &product)?;
    plain_name("platform", &q.platform)?;
    let version: Version = q.version.parse().map_err(|e| bad(format!("{e}")))?;
    let kind = ReleaseKind::parse(&q.kind).ok_or_else(|| {
        bad(format!(
            "kind {:?} must be one of archive, msi, installer",
            q.kind
        ))
    })?;
    // Refused before a byte is read: a lower version than the newest one
    // offered is almost always a mistake (hosts never downgrade to it).
    if let Some(newest) = state.release_for(&product, &q.platform) {
        if version < newest.version && !q.force.unwrap_or(false) {
            return Err(V2Error::new(
                StatusCode::CONFLICT,
                format!(
                    "version {version} is lower than {}, the newest {product} release offered for {}; hosts never downgrade to it. Withdraw the newer one first, or publish with force=true",
                    newest.version, q.platform
                ),
            ));
        }
    }
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > state.settings.max_artifact_bytes {
            return Err(V2Error::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "artifact is larger than the limit of {} bytes",
                    state.settings.max_artifact_bytes
                ),
            ));
        }
    }
    let (manifest, signature) = signed_manifest(req.headers())?;
    let stream = req.into_body().into_data_stream();
    let staged = state
        .artifacts
        .ingest(
            stream,
            state.settings.max_artifact_bytes,
            q.sha256.as_deref(),
            state.http.limits.upload_stall_timeout,
        )
        .await
        .map_err(ingest_error)?;
    let force = q.force.unwrap_or(false);
    if let Err(problem) = check_release(&staged, &product, &q.platform, kind, &version).await {
        if matches!(problem, ReleaseProblem::BinaryOtherVersion { .. }) {
            return Err(V2Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                problem.to_string(),
            ));
        }
        if !force {
            return Err(V2Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{problem} (to publish it all the same: palettectl release publish --force, or ?force=true)"),
            ));
        }
        tracing::warn!(%problem, version = %version, "release published with force despite a problem");
    }
    let audit = op.entry(
        "release.publish",
        format!(
            "release {{id}} {} {} {} {} sha256 {}{}",
            product,
            version,
            q.platform,
            kind.as_str(),
            staged.ingested.sha256,
            if signature.is_some() {
                ", signed"
            } else {
                ", unsigned"
            }
        ),
    );
    let release = state
        .publish(
            staged,
            NewRelease {
                product,
                version,
                platform: q.platform,
                kind,
                sha256: String::new(),
                md5: String::new(),
                size: 0,
                signature,
                manifest,
                created_at: now_ms(),
                withdrawn_at: None,
                rolled_back_at: None,
                held: q.hold
                    || state.default_rollout() == crate::fleet::rollouts::DefaultRollout::Manual,
            },
            Some(&audit),
        )
        .await?;
    tracing::info!(id = release.id, product = release.product, version = %release.version, platform = release.platform, kind = release.kind.as_str(), size = release.size, "release published");
    Ok((StatusCode::CREATED, Json(release)))
}

/// Platforms hosts report: `{os}-{arch}` as Rust names them.
pub(super) const KNOWN_OS: &[&str] = &["linux", "windows", "macos", "freebsd"];
pub(super) const KNOWN_ARCH: &[&str] = &[
    "x86_64",
    "aarch64",
    "x86",
    "arm",
    "riscv64",
    "powerpc64",
    "s390x",
];

/// What is wrong with a release a host could never use.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReleaseProblem {
    #[error("platform {0:?} is none a host reports (they look like linux-x86_64, windows-x86_64, linux-aarch64)")]
    UnknownPlatform(String),
    #[error("the archive could not be checked: {0}")]
    Uncheckable(String),
    #[error("the archive cannot be installed: {0}")]
    Uninstallable(String),
    #[error("the archive's VERSION file says {said:?}, not {version}")]
    OtherVersion { said: String, version: Version },
    /// A watchdog release whose binary says another version: the new
    /// watchdog would take itself for the old one and the self-update
    /// could only time out. Never published, not even with force.
    #[error("the release is version {version}, but its {file} says it is {said} (its version slot): build or stamp the binaries with {version}")]
    BinaryOtherVersion {
        file: String,
        said: String,
        version: Version,
    },
}

/// What is wrong with a release a host could never use: a platform no host
/// reports, an archive that does not unpack (with every check a host
/// makes: paths, links, limits), or one whose `VERSION` says another
/// version.
pub(super) async fn check_release(
    staged: &crate::artifacts::Staged,
    product: &str,
    platform: &str,
    kind: ReleaseKind,
    version: &Version,
) -> Result<(), ReleaseProblem> {
    let known = platform
        .split_once('-')
        .is_some_and(|(os, arch)| KNOWN_OS.contains(&os) && KNOWN_ARCH.contains(&arch));
    if !known {
        return Err(ReleaseProblem::UnknownPlatform(platform.to_string()));
    }
    if kind != ReleaseKind::Archive {
        return Ok(());
    }
    let path = staged.path().to_path_buf();
    let size = staged.ingested.size;
    let inspected = tokio::task::spawn_blocking(move || {
        palette_manager::extract::inspect(
            &path,
            palette_manager::extract::Limits::for_archive(size, None),
        )
    })
    .await
    .map_err(|e| ReleaseProblem::Uncheckable(e.to_string()))?;
    match inspected {
        Err(e) => Err(ReleaseProblem::Uninstallable(e.to_string())),
        Ok(i) => {
            if product == "watchdog" {
                if let Some((file, said)) = i
                    .stamps
                    .iter()
                    .find(|(_, v)| v.parse::<Version>().ok().as_ref() != Some(version))
                {
                    return Err(ReleaseProblem::BinaryOtherVersion {
                        file: file.clone(),
                        said: said.clone(),
                        version: *version,
                    });
                }
            }
            match i.version {
                Some(v) if v.parse::<Version>().ok().as_ref() != Some(version) => {
                    Err(ReleaseProblem::OtherVersion {
                        said: v,
                        version: *version,
                    })
                }
                _ => Ok(()),
            }
        }
    }
}

/// `GET /api/v2/releases/{id}/reach`: the hosts that can take the release
/// now, and why each other host of its product cannot.
pub(super) async fn release_reach(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> V2Result<Json<palette_protocol::v2::Reach>> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("release id {id:?} is not a number")))?;
    let release = state
        .releases()
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no release {id}")))?;
    Ok(Json(state.reach(&release)))
}

pub(super) async fn withdraw_release(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> V2Result<Json<Release>> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("release id {id:?} is not a number")))?;
    let audit = op.entry("release.withdraw", release_words(&state, id));
    let r = state
        .withdraw(id, Some(&audit))
        .await?
        .ok_or_else(|| V2Error::new(StatusCode::NOT_FOUND, format!("no release {id}")))?;
    tracing::warn!(id, product = r.product, version = %r.version, platform = r.platform, "release withdrawn: no host is offered it any more");
    Ok(Json(r))
}

/// The answer to a rollback: the release rolled back and the one its hosts
/// come down to.
#[derive(Serialize)]
pub(super) struct RolledBack {
    rolled_back: Release,
    target: Release,
}

/// `POST /api/v2/releases/{id}/rollback`: withdraws release `id` and offers
/// the hosts running it the newest older release as a downgrade. With
/// `X-Palette-Manifest` / `X-Palette-Signature`, the target's manifest is
/// replaced by one re-signed to authorise that downgrade (needed by hosts
/// that verify signatures). `?dry_run=true` only answers what would happen.
pub(super) async fn rollback_release(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    q: Result<Query<DryRunQuery>, QueryRejection>,
    headers: HeaderMap,
) -> V2Result<Json<RolledBack>> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("release id {id:?} is not a number")))?;
    if q.dry_run {
        let (rolled_back, target) = state.rollback_plan(id)?;
        return Ok(Json(RolledBack {
            rolled_back,
            target,
        }));
    }
    let signed = match signed_manifest(&headers)? {
        (Some(m), Some(s)) => Some((m, s)),
        _ => None,
    };
    let resigned = signed.is_some();
    let (plan_bad, plan_target) = state.rollback_plan(id)?;
    let audit = op.entry(
        "release.rollback",
        format!(
            "release {id} {} {} {} rolled back to {} (release {}){}",
            plan_bad.product,
            plan_bad.version,
            plan_bad.platform,
            plan_target.version,
            plan_target.id,
            if resigned {
                ", target manifest re-signed"
            } else {
                ""
            }
        ),
    );
    let (bad_r, target) = state.roll_back(id, signed, Some(&audit)).await?;
    tracing::warn!(id, product = bad_r.product, version = %bad_r.version, platform = bad_r.platform, to = %target.version, resigned, "release rolled back: withdrawn, its hosts are offered the older release");
    Ok(Json(RolledBack {
        rolled_back: bad_r,
        target,
    }))
}

#[derive(Deserialize)]
pub(super) struct DryRunQuery {
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn list_releases(
    State(state): State<AppState>,
    caller: Caller,
) -> V2Result<Json<Vec<Release>>> {
    caller.beyond_enrolling(&state)?;
    let mut all = state.releases();
    all.sort_by(|a, b| b.version.cmp(&a.version).then(b.id.cmp(&a.id)));
    Ok(Json(all))
}

pub(super) async fn download_artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
    req: Request,
) -> Response {
    if let Err(e) = caller.beyond_enrolling(&state) {
        return e.into_response();
    }
    if state.artifacts.path_for(&sha256).is_none() {
        return bad("artifact id must be 64 lower-case hex digits").into_response();
    }
    if !state.has_artifact(&sha256) {
        return V2Error::new(StatusCode::NOT_FOUND, format!("no artifact {sha256}"))
            .into_response();
    }
    crate::http::v1::serve_artifact(&state, &sha256, req).await
}

/// A release in words, for the audit log (`release 3 agent 2.0.0
/// linux-x86_64`, or just `release 3` when there is none).
pub(crate) fn release_words(state: &AppState, id: i64) -> String {
    match state.releases().into_iter().find(|r| r.id == id) {
        Some(r) => format!("release {id} {} {} {}", r.product, r.version, r.platform),
        None => format!("release {id}"),
    }
}
