//! Publisher keys and release signing (minisign). The secret key stays with
//! the publisher — on the operator's machine or in a CI secret — and never
//! reaches the server; hosts trust the public key in their local settings.
//!
//! Owns: writing a new key pair (`generate`, never over an existing file)
//! and signing a release manifest (`sign`), with the key's password from
//! the terminal or `PALETTE_SIGN_KEY_PASSWORD`. Must not: send a key
//! anywhere, build the manifest (the `release` command does), or print.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use palette_protocol::manifest::Manifest;

/// The password of an encrypted secret key, when given in the environment
/// (automation); otherwise it is asked for on the terminal.
pub const PASSWORD_ENV: &str = "PALETTE_SIGN_KEY_PASSWORD";

/// The password from the environment; an empty one is refused rather
/// than silently protecting a key with nothing.
fn password_from_env() -> anyhow::Result<Option<String>> {
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if p.is_empty() => bail!("{PASSWORD_ENV} is set but empty"),
        Ok(p) => Ok(Some(p)),
        Err(_) => Ok(None),
    }
}

/// Writes `PREFIX.pub` (the public key; its second line is what hosts list
/// in `trust.keys`) and `PREFIX.key` (the secret key, password-protected
/// unless `no_password`). Refuses to overwrite either.
pub fn generate(prefix: &Path, no_password: bool) -> anyhow::Result<(PathBuf, String)> {
    let with = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (pub_path, key_path) = (with(".pub"), with(".key"));
    for p in [&pub_path, &key_path] {
        if p.exists() {
            bail!("{} exists already; not overwriting a key", p.display());
        }
    }
    let kp = if no_password {
        minisign::KeyPair::generate_unencrypted_keypair()
    } else {
        minisign::KeyPair::generate_encrypted_keypair(password_from_env()?)
    }
    .context("while generating the key pair")?;
    let pk_box = kp.pk.to_box().context("while encoding the public key")?;
    let sk_box = kp
        .sk
        .to_box(Some("palette-updater release signing key"))
        .context("while encoding the secret key")?;
    write_new(&key_path, sk_box.to_string().as_bytes(), true)?;
    if let Err(e) = write_new(&pub_path, pk_box.to_string().as_bytes(), false) {
        let _ = fs_err::remove_file(&key_path);
        return Err(e);
    }
    Ok((pub_path, kp.pk.to_base64()))
}

fn write_new(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = fs_err::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use fs_err::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Signs the manifest text with the secret key at `key_path`; returns the
/// minisign signature text.
pub fn sign(key_path: &Path, manifest: &Manifest) -> anyhow::Result<String> {
    let text = fs_err::read_to_string(key_path)?;
    let sk_box = minisign::SecretKeyBox::from_string(&text)
        .with_context(|| format!("{} is not a minisign secret key", key_path.display()))?;
    let sk = match sk_box.clone().into_unencrypted_secret_key() {
        Ok(sk) if !sk.is_encrypted() => sk,
        _ => sk_box.into_secret_key(password_from_env()?).with_context(|| {
            format!(
                "could not open the secret key {} (wrong password? {PASSWORD_ENV} gives it to scripts)",
                key_path.display()
            )
        })?,
    };
    let body = manifest.to_text();
    let trusted = format!(
        "palette release {} {} {}",
        manifest.product, manifest.version, manifest.platform
    );
    let sig = minisign::sign(
        None,
        &sk,
        std::io::Cursor::new(body.as_bytes()),
        Some(&trusted),
        None,
    )
    .context("while signing the manifest")?;
    Ok(sig.to_string())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_what_its_public_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("publisher");
        let (pub_path, line) = generate(&prefix, true).unwrap();
        let pub_text = std::fs::read_to_string(&pub_path).unwrap();
        assert_eq!(pub_text.lines().nth(1).unwrap().trim(), line);
        assert!(generate(&prefix, true).is_err(), "overwrote a key");
        let m = Manifest {
            product: "agent".into(),
            version: "2.0.0".parse().unwrap(),
            platform: "linux-x86_64".into(),
            kind: palette_protocol::v2::ReleaseKind::Archive,
            size: 3,
            sha256: "ab".repeat(32),
            created: "2026-11-28T00:00:00Z".into(),
            expires: "2027-11-28T00:00:00Z".into(),
            allow_downgrade_from: None,
        };
        let sig = sign(&dir.path().join("publisher.key"), &m).unwrap();
        let pk = minisign_verify::PublicKey::from_base64(&line).unwrap();
        let sig = minisign_verify::Signature::decode(&sig).unwrap();
        pk.verify(m.to_text().as_bytes(), &sig, false).unwrap();
    }
}
