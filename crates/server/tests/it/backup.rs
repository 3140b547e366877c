//! `palette-server backup` / `restore` as processes: a backup taken while
//! the server runs restores into a server that serves the same hosts,
//! releases (artifacts byte for byte) and configs, under a new store
//! identity; a damaged or foreign backup, or a folder that holds a
//! database, is refused and changes nothing.

use std::path::Path;
use std::process::Command;

use crate::support::*;

fn server_cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palette-server"))
        .args(args)
        .env_remove("PALETTE_DATA_DIR")
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

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_the_same_fleet() {
    if on_postgres() {
        eprintln!("SKIPPED on PostgreSQL: this is about the embedded SQLite store's own file");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_with(&data, |_| {}).await;
    let artifact = b"release bytes for the backup test".repeat(1000);
    let rel = publish(&s, "2.0.0", "linux-x86_64", "archive", &artifact).await;
    let r = http()
        .post(s.u("/api/v2/hosts/web-1/configs?apply=false"))
        .admin()
        .body("desired: yes\n")
        .go()
        .await;
    assert_eq!(r.status(), 201);
    // (A check-in, as a host named store-id-probe.)
    let before = s.store_id().await;
    // Last-seen times and reports are written in batches every second: a
    // backup holds what was written, so wait for the check-in's to be.
    let db = palette_server::store::SqlStore::open_sqlite(&data.join("palette.db"))
        .await
        .unwrap();
    wait_until(
        "the check-in is written",
        std::time::Duration::from_secs(10),
        || async {
            use palette_server::store::Store;
            db.load_hosts()
                .await
                .unwrap()
                .iter()
                .any(|h| h.hostname == "store-id-probe" && h.report.is_some())
        },
    )
    .await;
    drop(db);
    let hosts_before: Vec<serde_json::Value> =
        http().get(s.u("/api/v2/hosts")).admin().json_of().await;

    // While the server runs.
    let file = tmp.path().join("fleet.backup");
    let (ok, out) = server_cmd(&["backup", "--data-dir", p(&data), "--to", p(&file)]);
    assert!(ok, "{out}");
    assert!(out.contains("1 artifact(s)"), "{out}");
    drop(s.stop().await);

    let restored = tmp.path().join("restored");
    let (ok, out) = server_cmd(&["restore", "--data-dir", p(&restored), "--from", p(&file)]);
    assert!(ok, "{out}");
    let s = TestServer::start_with(&restored, |_| {}).await;
    let hosts_after: Vec<serde_json::Value> =
        http().get(s.u("/api/v2/hosts")).admin().json_of().await;
    let names = |h: &[serde_json::Value]| {
        let mut v: Vec<String> = h.iter().map(|x| x["hostname"].to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&hosts_before), names(&hosts_after));
    let releases: Vec<serde_json::Value> =
        http().get(s.u("/api/v2/releases")).agent().json_of().await;
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0]["sha256"], rel["sha256"]);
    let bytes = http()
        .get(s.u(releases[0]["url"].as_str().unwrap()))
        .agent()
        .go()
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..], &artifact[..]);
    let r = http()
        .get(s.u("/api/v2/hosts/web-1/configs/latest?source=desired"))
        .admin()
        .go()
        .await;
    assert_eq!(r.text().await.unwrap(), "desired: yes\n");
    assert_ne!(
        s.store_id().await,
        before,
        "a restored store keeps the old identity"
    );

    // Into a folder that holds a database: refused, nothing touched.
    let (ok, out) = server_cmd(&["restore", "--data-dir", p(&restored), "--from", p(&file)]);
    assert!(!ok && out.contains("already holds a database"), "{out}");
    drop(s.stop().await);
}

#[tokio::test]
async fn damaged_or_foreign_backups_are_refused_and_change_nothing() {
    if on_postgres() {
        eprintln!("SKIPPED on PostgreSQL: this is about the embedded SQLite store's own file");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_with(&data, |_| {}).await;
    publish(
        &s,
        "2.0.0",
        "linux-x86_64",
        "archive",
        b"some artifact bytes",
    )
    .await;
    let file = tmp.path().join("fleet.backup");
    let (ok, out) = server_cmd(&["backup", "--data-dir", p(&data), "--to", p(&file)]);
    assert!(ok, "{out}");
    drop(s.stop().await);

    // One artifact byte changed.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(19)
        .position(|w| w == b"some artifact bytes")
        .unwrap();
    bytes[at] ^= 1;
    let damaged = tmp.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let target = tmp.path().join("t1");
    let (ok, out) = server_cmd(&["restore", "--data-dir", p(&target), "--from", p(&damaged)]);
    assert!(!ok && out.contains("damaged"), "{out}");
    assert!(!target.join("palette.db").exists());
    assert!(!target.join("artifacts").exists());

    // A tar that is not a palette backup (a path escaping the folder).
    let foreign = tmp.path().join("foreign.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&foreign).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "palette.db", &b"junk"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &b"evil"[..]).unwrap();
        b.finish().unwrap();
    }
    let target = tmp.path().join("t2");
    let (ok, out) = server_cmd(&["restore", "--data-dir", p(&target), "--from", p(&foreign)]);
    assert!(!ok && out.contains("never holds"), "{out}");
    assert!(!target.join("palette.db").exists());
    assert!(!tmp.path().join("escape").exists());

    // Nothing to back up.
    let (ok, out) = server_cmd(&[
        "backup",
        "--data-dir",
        p(&tmp.path().join("nothing")),
        "--to",
        p(&tmp.path().join("x")),
    ]);
    assert!(!ok && out.contains("no database"), "{out}");
    assert!(!tmp.path().join("x").exists());
}

/// The backup holds every token hash and every host's config: only its
/// owner may read it (issue 21.15).
#[cfg(unix)]
#[tokio::test]
async fn the_backup_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    if on_postgres() {
        eprintln!("SKIPPED on PostgreSQL: this is about the embedded SQLite store's own file");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_with(&data, |_| {}).await;
    drop(s.stop().await);
    let file = tmp.path().join("fleet.backup");
    let (ok, out) = server_cmd(&["backup", "--data-dir", p(&data), "--to", p(&file)]);
    assert!(ok, "{out}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup is mode {mode:o}");
}

/// A file that is not a backup at all (text, or shorter than one tar
/// block) is named as such, not "failed to read entire block" (issue 21.15).
#[tokio::test]
async fn restoring_a_file_that_is_not_a_backup_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("notes.txt", b"just some notes\n".to_vec()),
        ("empty", Vec::new()),
        ("big.bin", vec![7u8; 4096]),
    ] {
        let file = tmp.path().join(name);
        std::fs::write(&file, body).unwrap();
        let target = tmp.path().join(format!("into-{name}"));
        let (ok, out) = server_cmd(&["restore", "--data-dir", p(&target), "--from", p(&file)]);
        assert!(!ok, "{out}");
        assert!(
            out.contains("is not a palette-server backup") && out.contains(p(&file)),
            "{out}"
        );
        assert!(!out.contains("entire block"), "{out}");
        assert!(!target.join("palette.db").exists());
    }
}
