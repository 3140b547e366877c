//! Signed releases, end to end: keys made by `palettectl keys generate`,
//! releases signed by `palettectl release publish --sign-key`, a watchdog
//! with `trust.keys` that installs only what a trusted key signed — and
//! refuses, before downloading or stopping anything, every release a
//! compromised server (or a careless publisher) could offer instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use palette_e2e::*;
use palette_protocol::manifest::Manifest;
use palette_protocol::v2::{CommandKind, Outcome};

use super::T;

fn ctl(server: &Server, args: &[&str]) -> String {
    let out = Command::new(bin("palettectl"))
        .args(["--server", &server.url, "--token", ADMIN])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "palettectl {args:?}: {text}");
    text
}

/// A publisher key pair from `palettectl keys generate`: (secret key path,
/// the public key line hosts trust).
fn keypair(server: &Server, dir: &Path, name: &str) -> (PathBuf, String) {
    let prefix = dir.join(name);
    ctl(
        server,
        &[
            "keys",
            "generate",
            "--out",
            &prefix.display().to_string(),
            "--no-password",
        ],
    );
    let public = std::fs::read_to_string(prefix.with_extension("pub")).unwrap();
    let line = public.lines().nth(1).unwrap().trim().to_string();
    (prefix.with_extension("key"), line)
}

fn publish_signed(server: &Server, archive: &Path, version: &str, key: &Path, extra: &[&str]) {
    let mut args = vec![
        "release".to_string(),
        "publish".into(),
        archive.display().to_string(),
        "--version".into(),
        version.into(),
        "--sign-key".into(),
        key.display().to_string(),
        // The hosts' refusals are what these tests look at.
        "--no-wait".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ctl(server, &args);
    assert!(out.contains("signed manifest attached"), "{out}");
}

/// Publishes `archive` with a manifest and signature made here, as a
/// compromised server could serve them.
async fn publish_crafted(
    server: &Server,
    archive: &Path,
    version: &str,
    manifest: &Manifest,
    key: &Path,
) {
    use base64::Engine as _;
    let sk = minisign::SecretKeyBox::from_string(&std::fs::read_to_string(key).unwrap())
        .unwrap()
        .into_unencrypted_secret_key()
        .unwrap();
    let text = manifest.to_text();
    let sig = minisign::sign(None, &sk, std::io::Cursor::new(text.as_bytes()), None, None)
        .unwrap()
        .to_string();
    let b64 = base64::engine::general_purpose::STANDARD;
    let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
    let res = reqwest::Client::new()
        .post(format!(
            "{}/api/v2/releases?version={version}&platform={platform}&kind=archive",
            server.url
        ))
        .bearer_auth(ADMIN)
        .header("x-palette-manifest", b64.encode(&text))
        .header("x-palette-signature", b64.encode(&sig))
        .body(std::fs::read(archive).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

fn manifest_for(archive: &Path, version: &str) -> Manifest {
    use sha2::Digest;
    let bytes = std::fs::read(archive).unwrap();
    Manifest {
        product: "agent".into(),
        version: version.parse().unwrap(),
        platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        kind: palette_protocol::v2::ReleaseKind::Archive,
        size: bytes.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        created: "2026-11-28T00:00:00Z".into(),
        expires: "2099-01-01T00:00:00Z".into(),
        allow_downgrade_from: None,
    }
}

/// Waits until the host reports an update outcome for `version`; returns
/// its message.
async fn outcome_of(server: &Server, host: &Host, version: &str, want: Outcome) -> String {
    let deadline = std::time::Instant::now() + T;
    loop {
        let info = server.api().host(&host.name).await;
        if let Some(u) = info.and_then(|i| i.report?.last_update) {
            if u.version.to_string() == version && u.outcome == want {
                return u.message;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not report {version} {want:?}\n{}",
            host.name,
            host.diagnostics()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn set_trusted(host: &Host, keys: &[&str]) {
    let path = host.base.join("watchdog.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = text.split("trust:\n").next().unwrap().to_string();
    let list: String = keys.iter().map(|k| format!("    - {k}\n")).collect();
    std::fs::write(&path, format!("{head}trust:\n  keys:\n{list}")).unwrap();
}

#[tokio::test]
async fn only_releases_signed_by_a_trusted_key_are_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let (key1, pub1) = keypair(&server, tmp.path(), "publisher1");
    let (key2, pub2) = keypair(&server, tmp.path(), "publisher2");
    let mut host = Host::new(
        "signed",
        &server.url,
        "v2",
        &format!("  download_retry_secs: 1\ntrust:\n  keys:\n    - {pub1}\n"),
    );
    host.start();
    let agent = host.wait_agent_running(T).await.unwrap();
    host.wait_log("only releases signed by a trusted key", T)
        .await
        .unwrap();
    let api = server.api();

    // Every refusal: reported with its reason, nothing downloaded, the
    // agent never stopped.
    let a = release_archive(tmp.path(), "2.0.0", false);
    api.publish(&a, "2.0.0", "archive").await;
    let m = outcome_of(&server, &host, "2.0.0", Outcome::Failed).await;
    assert!(m.contains("not signed"), "{m}");

    let a = release_archive(tmp.path(), "2.0.1", false);
    publish_signed(&server, &a, "2.0.1", &key2, &[]);
    let m = outcome_of(&server, &host, "2.0.1", Outcome::Failed).await;
    assert!(m.contains("not made by a trusted key"), "{m}");

    let a = release_archive(tmp.path(), "2.0.2", false);
    publish_signed(&server, &a, "2.0.2", &key1, &["--expires-days", "0"]);
    let m = outcome_of(&server, &host, "2.0.2", Outcome::Failed).await;
    assert!(m.contains("expired"), "{m}");

    // Signed by the trusted key, but for other bytes than the server serves.
    let a = release_archive(tmp.path(), "2.0.3", false);
    let mut wrong = manifest_for(&a, "2.0.3");
    wrong.sha256 = "00".repeat(32);
    publish_crafted(&server, &a, "2.0.3", &wrong, &key1).await;
    let m = outcome_of(&server, &host, "2.0.3", Outcome::Failed).await;
    assert!(m.contains("sha256"), "{m}");

    // Signed for another product.
    let a = release_archive(tmp.path(), "2.0.4", false);
    let mut other = manifest_for(&a, "2.0.4");
    other.product = "something-else".into();
    publish_crafted(&server, &a, "2.0.4", &other, &key1).await;
    let m = outcome_of(&server, &host, "2.0.4", Outcome::Failed).await;
    assert!(m.contains("product"), "{m}");

    assert_eq!(
        host.running_agent().map(|a| a.pid),
        Some(agent.pid),
        "a refused release stopped the agent\n{}",
        host.diagnostics()
    );
    assert!(
        !host.base.join("versions/2.0.0").exists() && !host.base.join("versions/2.0.4").exists(),
        "a refused release was unpacked"
    );
    let log = host.log();
    assert!(
        !log.contains("downloading update"),
        "a refused release was downloaded:\n{log}"
    );

    // Each publish is in the audit log, signed or not, with who did it.
    let audit = ctl(&server, &["audit", "--limit", "10"]);
    assert!(
        audit.contains("release.publish")
            && audit.contains(", signed")
            && audit.contains(", unsigned")
            && audit.contains("admin"),
        "{audit}"
    );

    // Properly signed: installed.
    let a = release_archive(tmp.path(), "2.1.0", false);
    publish_signed(&server, &a, "2.1.0", &key1, &[]);
    outcome_of(&server, &host, "2.1.0", Outcome::Succeeded).await;
    assert_eq!(host.wait_agent_running(T).await.unwrap().version, "2.1.0");

    // Key rotation: both keys trusted, a release signed by the new one
    // installs; then the old key is dropped, and only the new one counts.
    host.stop();
    set_trusted(&host, &[&pub1, &pub2]);
    host.start();
    let a = release_archive(tmp.path(), "2.2.0", false);
    publish_signed(&server, &a, "2.2.0", &key2, &[]);
    outcome_of(&server, &host, "2.2.0", Outcome::Succeeded).await;
    host.stop();
    set_trusted(&host, &[&pub2]);
    host.start();
    let a = release_archive(tmp.path(), "2.3.0", false);
    publish_signed(&server, &a, "2.3.0", &key1, &[]);
    let m = outcome_of(&server, &host, "2.3.0", Outcome::Failed).await;
    assert!(m.contains("not made by a trusted key"), "{m}");
    let a = release_archive(tmp.path(), "2.4.0", false);
    publish_signed(&server, &a, "2.4.0", &key2, &[]);
    outcome_of(&server, &host, "2.4.0", Outcome::Succeeded).await;

    // A signed downgrade: only with the manifest's authorisation.
    let a = release_archive(tmp.path(), "2.3.5", false);
    publish_signed(
        &server,
        &a,
        "2.3.5",
        &key2,
        &["--force", "--allow-downgrade-from", "2.4.0"],
    );
    // The server offers the newest release: 2.4.0 is withdrawn first.
    ctl(&server, &["release", "withdraw", "2.4.0"]);
    outcome_of(&server, &host, "2.3.5", Outcome::Succeeded).await;
    assert_eq!(host.wait_agent_running(T).await.unwrap().version, "2.3.5");

    // Watchdog releases follow the same rules: an unsigned one is refused
    // and the running watchdog stays.
    let w = watchdog_release_archive(tmp.path(), "9.0.0", WatchdogBuild::Good);
    api.publish_product(&w, "watchdog", "9.0.0", "archive")
        .await;
    let deadline = std::time::Instant::now() + T;
    loop {
        let info = api.host(&host.name).await;
        if let Some(u) = info.and_then(|i| i.report?.last_watchdog_update) {
            assert_eq!(u.outcome, Outcome::Failed);
            assert!(u.message.contains("not signed"), "{}", u.message);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            host.diagnostics()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        host.installed_watchdog_version().as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn a_bad_trust_key_in_the_settings_is_a_clear_error_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let host = Host::new(
        "badkey",
        "http://127.0.0.1:9",
        "v2",
        "trust:\n  keys:\n    - RWQnot-a-key\n",
    );
    let out = Command::new(bin("palette-watchdog"))
        .args(["run", "--base", &host.base.display().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("trust.keys[0] is not a minisign public key"),
        "{err}"
    );
    drop(tmp);
}

fn ctl_as(server: &Server, token: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("palettectl"))
        .args(["--server", &server.url, "--token", token])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn palettectl_lists_revokes_and_rotates_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    // The key is the positional argument, the operator token the global one.
    ctl(
        &server,
        &["token", "add-agent", "eu-license-key-1", "--label", "eu"],
    );
    let list = ctl(&server, &["token", "list"]);
    assert!(list.contains("agent:") && list.contains("eu"), "{list}");

    let carol = ctl(&server, &["token", "new-operator", "carol"]);
    let carol = carol.lines().next().unwrap().trim().to_string();
    assert!(ctl_as(&server, &carol, &["hosts"]).0);
    let (ok, rotated) = ctl_as(&server, &carol, &["token", "rotate", "carol"]);
    assert!(ok, "{rotated}");
    let new = rotated.lines().next().unwrap().trim().to_string();
    assert_ne!(new, carol);
    let (ok, err) = ctl_as(&server, &carol, &["hosts"]);
    assert!(!ok, "the rotated-out token still works: {err}");
    assert!(ctl_as(&server, &new, &["hosts"]).0);

    let out = ctl(&server, &["token", "revoke", "eu"]);
    assert!(out.contains("1 token(s) revoked"), "{out}");
    let (ok, err) = ctl_as(&server, ADMIN, &["token", "revoke", "no-such-label"]);
    assert!(!ok && err.contains("no live token"), "{err}");
    let audit = ctl(&server, &["audit"]);
    assert!(
        audit.contains("token.revoke") && audit.contains("carol"),
        "{audit}"
    );
}

/// Per-host credentials with the real binaries: the watchdog enrolls at its
/// first check-in and keeps its host token in `state/` (owner-only, never in
/// `Config.yml`); revoked by an operator, the token is refused at once and
/// the watchdog enrolls again by itself, with commands still reaching it.
#[tokio::test]
async fn a_watchdog_enrolls_once_and_again_after_its_token_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let mut host = Host::new("enr-1", &server.url, "v2", "");
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let path = host.base.join("state/host-token");
    // The token, on the first line (the second names the server).
    let read = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    wait_for("the host token stored", T, || async {
        read().starts_with("pht_")
    })
    .await
    .unwrap();
    let first = read();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "host token readable by others: {mode:o}");
    }
    assert!(!host.config_yml().contains(&first));
    let list = ctl(&server, &["token", "list"]);
    assert!(list.contains("host:") && list.contains("enr-1"), "{list}");

    let out = ctl(&server, &["token", "revoke", "enr-1"]);
    assert!(out.contains("1 token(s) revoked"), "{out}");
    wait_for("enrolled again with a new token", T, || async {
        let now = read();
        now.starts_with("pht_") && now != first
    })
    .await
    .unwrap();
    host.wait_log("enrolling again", T).await.unwrap();
    let id = server.api().command(CommandKind::Restart, "enr-1").await;
    let (outcome, message) = server.api().ack(id, T).await;
    assert_eq!(outcome, Outcome::Succeeded, "{message}");
    assert!(host.running_agent().is_some(), "{}", host.diagnostics());
}

/// `palette-watchdog enroll` sets up a host folder in one step: refused
/// with a clear error and nothing written for a URL without a scheme, a
/// wrong key or an existing setup; then the watchdog runs on what it wrote,
/// checking in with its own host token.
#[tokio::test]
async fn palette_watchdog_enroll_bootstraps_a_host_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let base = tmp.path().join("host");
    std::fs::create_dir_all(&base).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin("palette-watchdog"))
            .arg("--base")
            .arg(&base)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let bare = server.url.trim_start_matches("http://").to_string();
    let written = || {
        ["Config/Config.yml", "watchdog.yml", "state/host-token"]
            .iter()
            .filter(|p| base.join(p).exists())
            .count()
    };
    let (ok, out) = run(&[
        "enroll",
        "--server",
        &bare,
        "--key",
        AGENT_KEY,
        "--hostname",
        "boot-1",
    ]);
    assert!(!ok && out.contains("needs a scheme"), "{out}");
    let (ok, out) = run(&[
        "enroll",
        "--server",
        &server.url,
        "--key",
        "not-the-key-1",
        "--hostname",
        "boot-1",
    ]);
    assert!(
        !ok && out.contains("does not accept this enrollment key"),
        "{out}"
    );
    assert_eq!(written(), 0, "a refused enroll wrote files");

    let (ok, out) = run(&[
        "enroll",
        "--server",
        &server.url,
        "--key",
        AGENT_KEY,
        "--hostname",
        "boot-1",
    ]);
    assert!(ok && out.contains("enrolled as boot-1"), "{out}");
    assert_eq!(written(), 3);
    let token = std::fs::read_to_string(base.join("state/host-token")).unwrap();
    assert!(token.starts_with("pht_"), "{token}");
    let (ok, out) = run(&[
        "enroll",
        "--server",
        &server.url,
        "--key",
        AGENT_KEY,
        "--hostname",
        "boot-1",
    ]);
    assert!(!ok && out.contains("set up already"), "{out}");

    // The enrollment key no longer acts for boot-1; the watchdog, started on
    // what enroll wrote, checks in with the host token.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/command?hostname=boot-1", server.url))
        .header("Authorization", format!("Token {AGENT_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let mut child = Command::new(bin("palette-watchdog"))
        .arg("--base")
        .arg(&base)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let api = server.api();
    let seen = wait_for("boot-1 checks in", T, || async {
        api.host("boot-1").await.is_some_and(|h| h.report.is_some())
    })
    .await;
    // No release installed yet: the host says so plainly in its status.
    let trouble = api
        .host("boot-1")
        .await
        .and_then(|h| h.report?.local_trouble)
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    seen.unwrap();
    assert!(trouble.contains("no agent installed"), "{trouble:?}");
    assert_eq!(
        std::fs::read_to_string(base.join("state/host-token")).unwrap(),
        token,
        "the watchdog enrolled again instead of using the token enroll wrote"
    );
}

/// A rollback on a host that verifies signatures: the server's word alone
/// does not bring it down (a compromised server could roll a fleet back to
/// a vulnerable release); the older release's manifest re-signed by
/// `release rollback --sign-key` does.
#[tokio::test]
async fn a_signed_host_comes_down_only_with_a_re_signed_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server")).await;
    let (key, public) = keypair(&server, tmp.path(), "publisher");
    let mut host = Host::new(
        "signed-rollback",
        &server.url,
        "v2",
        &format!("trust:\n  keys:\n    - {public}\n"),
    );
    host.start();
    host.wait_agent_running(T).await.unwrap();
    let a = release_archive(tmp.path(), "2.0.0", false);
    publish_signed(&server, &a, "2.0.0", &key, &[]);
    outcome_of(&server, &host, "2.0.0", Outcome::Succeeded).await;
    let b = release_archive(tmp.path(), "3.0.0", false);
    publish_signed(&server, &b, "3.0.0", &key, &[]);
    outcome_of(&server, &host, "3.0.0", Outcome::Succeeded).await;

    // Unsigned rollback: the host is offered 2.0.0 but stays on 3.0.0.
    let out = Command::new(bin("palettectl"))
        .args(["--server", &server.url, "--token", ADMIN])
        .args(["release", "rollback", "3.0.0", "--wait", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(host.wait_agent_running(T).await.unwrap().version, "3.0.0");

    // Re-signed: it comes down.
    let out = ctl(
        &server,
        &[
            "release",
            "rollback",
            "3.0.0",
            "--sign-key",
            &key.display().to_string(),
            "--wait",
            "120",
        ],
    );
    assert!(
        out.contains("signed-rollback") && out.contains("Succeeded"),
        "{out}"
    );
    assert_eq!(host.wait_agent_running(T).await.unwrap().version, "2.0.0");
    let r: Vec<palette_protocol::v2::Release> =
        serde_json::from_str(&ctl(&server, &["-o", "json", "release", "list"])).unwrap();
    let two = r.iter().find(|r| r.version.to_string() == "2.0.0").unwrap();
    let m = Manifest::parse(two.manifest.as_deref().unwrap()).unwrap();
    assert_eq!(
        m.allow_downgrade_from.map(|v| v.to_string()).as_deref(),
        Some("3.0.0")
    );
}
