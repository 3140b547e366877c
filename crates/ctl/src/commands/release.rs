//! `palettectl release …`: releases, and the hosts installing them.
//!
//! Owns: publishing an artifact (checked, optionally signed, uploaded
//! with a progress bar), listing, withdrawing, rolling back (re-signing
//! the older release's manifest when asked) and retrying releases, each
//! then following the hosts it concerns (`follow`). Must not: decide which
//! host is offered what (the server does, with its pins, windows and
//! rollouts), or keep a secret key anywhere but in memory while signing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use palette_protocol::v2::{CommandKind, CommandStatus, HostInfo, NewCommand, Release, Target};
use reqwest::{header, Method};

use super::command::{hosts_result, watch_acks};
use crate::api::Api;
use crate::cli::{Kind, PublishArgs, ReleaseCmd, RetryArgs, RollbackArgs};
use crate::output::{print_structured, Output};
use crate::signing;

mod follow;

use follow::{follow_retry, hosts_outcome, watch_release, Retried};

pub async fn run(api: &Api, out: Output, cmd: ReleaseCmd) -> anyhow::Result<()> {
    match cmd {
        ReleaseCmd::Publish(a) => publish(api, out, a).await,
        ReleaseCmd::List => list(api, out).await,
        ReleaseCmd::Withdraw {
            version,
            platform,
            product,
        } => withdraw(api, version, platform, product).await,
        ReleaseCmd::Rollback(a) => rollback(api, out, a).await,
        ReleaseCmd::Retry(a) => retry(api, a).await,
    }
}

/// `release publish`: uploads it, then follows the hosts installing it.
async fn publish(api: &Api, out: Output, a: PublishArgs) -> anyhow::Result<()> {
    let (no_wait, wait) = (a.no_wait, a.wait);
    let r = upload(api, a, out != Output::Table).await?;
    if r.held && out == Output::Table {
        outln!(
            "held: no host is offered it until a rollout starts (palettectl rollout create {} ...)",
            r.version
        );
    }
    let hosts = if no_wait || r.held {
        Vec::new()
    } else {
        watch_release(
            api,
            &r,
            None,
            Duration::from_secs(wait),
            out == Output::Table,
        )
        .await?
    };
    if out != Output::Table {
        print_structured(out, &serde_json::json!({ "release": r, "hosts": hosts }))?;
    }
    hosts_outcome(&hosts)
}

/// `release list`: every release, newest version first.
async fn list(api: &Api, out: Output) -> anyhow::Result<()> {
    let list: Vec<Release> = api.json(api.req(Method::GET, "/api/v2/releases")).await?;
    if out != Output::Table {
        return print_structured(out, &list);
    }
    outln!(
        "{:>4}  {:<10} {:<12} {:<16} {:<9} {:>12}  SHA256",
        "ID",
        "PRODUCT",
        "VERSION",
        "PLATFORM",
        "KIND",
        "SIZE"
    );
    for r in list {
        outln!(
            "{:>4}  {:<10} {:<12} {:<16} {:<9} {:>12}  {}{}",
            r.id,
            r.product,
            r.version.to_string(),
            r.platform,
            r.kind.as_str(),
            r.size,
            &r.sha256[..16],
            match (&r.rolled_back_at, &r.withdrawn_at) {
                (Some(t), _) => format!("  rolled back {t}"),
                (None, Some(t)) => format!("  withdrawn {t}"),
                (None, None) => String::new(),
            }
        );
    }
    Ok(())
}

/// `release withdraw`: no host is offered it any more.
async fn withdraw(
    api: &Api,
    version: String,
    platform: String,
    product: String,
) -> anyhow::Result<()> {
    let version: palette_protocol::Version =
        version.parse().context("while reading the version")?;
    let list: Vec<Release> = api.json(api.req(Method::GET, "/api/v2/releases")).await?;
    let matching: Vec<&Release> = list
        .iter()
        .filter(|r| r.version == version && r.platform == platform && r.product == product)
        .collect();
    if matching.is_empty() {
        bail!("no {product} release {version} for {platform}");
    }
    for r in matching {
        let w: Release = api
            .json(api.req(Method::POST, &format!("/api/v2/releases/{}/withdraw", r.id)))
            .await?;
        outln!(
            "withdrew release {}: {} {} {} {} (no host is offered it any more)",
            w.id,
            w.product,
            w.version,
            w.platform,
            w.kind.as_str()
        );
    }
    Ok(())
}

/// `release rollback`: withdraws it, and follows the hosts coming down to
/// the newest older release.
async fn rollback(api: &Api, out: Output, a: RollbackArgs) -> anyhow::Result<()> {
    let RollbackArgs {
        version,
        platform,
        product,
        sign_key,
        expires_days,
        no_wait,
        wait,
    } = a;
    let version: palette_protocol::Version =
        version.parse().context("while reading the version")?;
    let list: Vec<Release> = api.json(api.req(Method::GET, "/api/v2/releases")).await?;
    let Some(bad) = list
        .iter()
        .filter(|r| r.version == version && r.platform == platform && r.product == product)
        .max_by_key(|r| r.id)
    else {
        bail!("no {product} release {version} for {platform}");
    };
    let path = format!("/api/v2/releases/{}/rollback", bad.id);
    let mut rb = api.req(Method::POST, &path);
    if let Some(key) = sign_key {
        // What it would come down to, to sign exactly that.
        let plan: serde_json::Value = api
            .json(api.req(Method::POST, &format!("{path}?dry_run=true")))
            .await?;
        let target: Release = serde_json::from_value(plan["target"].clone())
            .context("while reading the server's rollback plan")?;
        let now = time::OffsetDateTime::now_utc();
        let fmt = &time::format_description::well_known::Rfc3339;
        let manifest = palette_protocol::manifest::Manifest {
            product: target.product.clone(),
            version: target.version,
            platform: target.platform.clone(),
            kind: target.kind,
            size: target.size,
            sha256: target.sha256.clone(),
            created: now.format(fmt)?,
            expires: (now + time::Duration::days(i64::from(expires_days))).format(fmt)?,
            allow_downgrade_from: Some(version),
        };
        let signature = signing::sign(&key, &manifest)?;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        rb = rb
            .header("x-palette-manifest", b64.encode(manifest.to_text()))
            .header("x-palette-signature", b64.encode(signature));
    }
    let done: serde_json::Value = api.json(rb).await?;
    let target: Release = serde_json::from_value(done["target"].clone())
        .context("while reading the server's answer")?;
    if out == Output::Table {
        outln!(
                    "rolled back {product} {version} for {platform} (release {}): withdrawn; hosts running it come down to {} (release {})",
                    bad.id, target.version, target.id
                );
    }
    let hosts = if no_wait {
        Vec::new()
    } else {
        watch_release(
            api,
            &target,
            Some(version),
            Duration::from_secs(wait),
            out == Output::Table,
        )
        .await?
    };
    if out != Output::Table {
        print_structured(
            out,
            &serde_json::json!({ "rolled_back": done["rolled_back"], "target": target, "hosts": hosts }),
        )?;
    }
    hosts_outcome(&hosts)
}

/// `release retry`: clears the hosts' "failed" marks, and follows them
/// installing it again.
async fn retry(api: &Api, a: RetryArgs) -> anyhow::Result<()> {
    let RetryArgs {
        version,
        hosts,
        platform,
        product,
        wait,
    } = a;
    let version: palette_protocol::Version =
        version.parse().context("while reading the version")?;
    let list: Vec<Release> = api.json(api.req(Method::GET, "/api/v2/releases")).await?;
    let ids: Vec<i64> = list
        .iter()
        .filter(|r| r.version == version && r.platform == platform && r.product == product)
        .map(|r| r.id)
        .collect();
    if ids.is_empty() {
        bail!("no {product} release {version} for {platform}");
    }
    let targets: Vec<String> = if hosts.is_empty() {
        let known: Vec<HostInfo> = api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
        known
            .into_iter()
            .filter(|h| {
                h.report.as_ref().is_some_and(|rep| {
                    let last = if product == "watchdog" {
                        &rep.last_watchdog_update
                    } else {
                        &rep.last_update
                    };
                    last.as_ref().is_some_and(|u| {
                        ids.contains(&u.release_id)
                            && u.outcome == palette_protocol::v2::Outcome::Failed
                    })
                })
            })
            .map(|h| h.hostname)
            .collect()
    } else {
        hosts.clone()
    };
    if targets.is_empty() {
        outln!("no host reports a failed update to {product} {version}");
        return Ok(());
    }
    // What each host reported before: a new attempt's outcome
    // differs from it (or the host runs the version).
    let before: Vec<HostInfo> = api.json(api.req(Method::GET, "/api/v2/hosts")).await?;
    let last_of = |h: &HostInfo| {
        h.report.as_ref().and_then(|rep| {
            if product == "watchdog" {
                rep.last_watchdog_update.clone()
            } else {
                rep.last_update.clone()
            }
        })
    };
    let baseline: std::collections::HashMap<String, Option<palette_protocol::v2::UpdateReport>> =
        before
            .iter()
            .filter(|h| targets.contains(&h.hostname))
            .map(|h| (h.hostname.clone(), last_of(h)))
            .collect();
    let body = NewCommand {
        kind: CommandKind::RetryUpdates,
        target: Target::Hosts(targets.clone()),
        ttl_secs: Some(wait.max(60)),
    };
    let st: CommandStatus = api
        .json(api.req(Method::POST, "/api/v2/commands").json(&body))
        .await?;
    outln!(
        "retry-updates command {} sent to {} host(s)",
        st.command.id,
        targets.len()
    );
    let st = watch_acks(
        api,
        st.command.id,
        &targets,
        Duration::from_secs(wait),
        true,
    )
    .await?;
    hosts_result(&st, &targets)?;
    let retry = Retried {
        product: &product,
        version,
        ids: &ids,
        baseline,
    };
    let outcomes = follow_retry(api, &retry, &targets, Duration::from_secs(wait)).await?;
    hosts_outcome(&outcomes)
}

/// How `release publish` signs the manifest.
struct Signing {
    key: PathBuf,
    expires_days: u32,
    allow_downgrade_from: Option<String>,
}

/// The artifact's SHA-256 (hex) and size, read once before the upload.
fn digest(file: &std::path::Path) -> anyhow::Result<(String, u64)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = fs_err::File::open(file)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// Uploads the artifact (signing its manifest first with `--sign-key`);
/// `json`: what it says goes to stderr, stdout holding only the JSON.
async fn upload(api: &Api, a: PublishArgs, json: bool) -> anyhow::Result<Release> {
    let PublishArgs {
        file,
        version,
        platform,
        kind,
        product,
        force,
        sign_key,
        expires_days,
        allow_downgrade_from,
        hold,
        ..
    } = a;
    let signing = sign_key.map(|key| Signing {
        key,
        expires_days,
        allow_downgrade_from,
    });
    // With -o json, stdout holds the JSON only.
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            outln!("{line}");
        }
    };
    // Refuse what the server would refuse before uploading anything.
    match fs_err::metadata(&file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => bail!("{} is not a file: nothing was published", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} does not exist: nothing was published", file.display())
        }
        Err(e) => return Err(anyhow::Error::new(e).context("nothing was published")),
    }
    let version: palette_protocol::Version = version.parse().context("while reading --version")?;
    let kind_v2 = match kind {
        Kind::Archive => palette_protocol::v2::ReleaseKind::Archive,
        Kind::Msi => palette_protocol::v2::ReleaseKind::Msi,
        Kind::Installer => palette_protocol::v2::ReleaseKind::Installer,
    };
    let signed = match signing {
        None => None,
        Some(s) => {
            let (sha256, size) =
                digest(&file).with_context(|| format!("while reading {}", file.display()))?;
            let now = time::OffsetDateTime::now_utc();
            let fmt = &time::format_description::well_known::Rfc3339;
            let manifest = palette_protocol::manifest::Manifest {
                product: product.clone(),
                version,
                platform: platform.clone(),
                kind: kind_v2,
                size,
                sha256,
                created: now.format(fmt)?,
                expires: (now + time::Duration::days(i64::from(s.expires_days))).format(fmt)?,
                allow_downgrade_from: s
                    .allow_downgrade_from
                    .map(|v| v.parse())
                    .transpose()
                    .context("while reading --allow-downgrade-from")?,
            };
            if manifest
                .allow_downgrade_from
                .is_some_and(|from| from <= manifest.version)
            {
                bail!("--allow-downgrade-from must be newer than --version (it names the versions hosts may come down from)");
            }
            let signature = signing::sign(&s.key, &manifest)?;
            Some((manifest.to_text(), signature))
        }
    };

    let size = fs_err::metadata(&file)?.len();
    let f = tokio::fs::File::open(&file)
        .await
        .with_context(|| format!("while opening {}", file.display()))?;
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("uploading {}", file.display()));
    let b2 = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect(move |c| {
        if let Ok(c) = c {
            b2.inc(c.len() as u64);
        }
    });
    let kind = match kind {
        Kind::Archive => "archive",
        Kind::Msi => "msi",
        Kind::Installer => "installer",
    };
    let path = format!(
        "/api/v2/releases?product={product}&version={version}&platform={platform}&kind={kind}&force={force}&hold={hold}"
    );
    let mut rb = api
        .req(Method::POST, &path)
        .header(header::CONTENT_LENGTH, size)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some((manifest, signature)) = &signed {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        rb = rb
            .header("x-palette-manifest", b64.encode(manifest))
            .header("x-palette-signature", b64.encode(signature));
    }
    let rb = rb.body(reqwest::Body::wrap_stream(stream));
    let result: anyhow::Result<Release> = api.json(rb).await;
    bar.finish_and_clear();
    let r = result?;
    if r.manifest.is_some() {
        say("signed manifest attached (hosts with trust.keys verify it)".into());
    }
    say(format!(
        "published release {}: {} {} {} {} ({} bytes, sha256 {})",
        r.id,
        r.product,
        r.version,
        r.platform,
        r.kind.as_str(),
        r.size,
        r.sha256
    ));
    Ok(r)
}
