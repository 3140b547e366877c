//! The manager's steps on real folders and real (also hostile) archives.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs

use std::io::Write;
use std::path::{Path, PathBuf};

use palette_host::journal::{Journal, Step};
use palette_host::Layout;
use palette_manager::extract::{extract, ExtractError, Limits};
use palette_manager::ops::{self, OpError, Recovery, UpdateRequest};
use palette_protocol::Version;

/// A tar.gz whose entries are written with raw names (so hostile ones can
/// be made), `kind` per entry: b'0' file, b'2' symlink, b'1' hard link.
/// (name, tar entry type, data, link target)
type RawEntry<'a> = (&'a str, u8, &'a [u8], &'a str);

fn raw_tar_gz(path: &Path, entries: &[RawEntry]) {
    let f = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_old();
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

fn good_tar(path: &Path, marker: &str) {
    raw_tar_gz(
        path,
        &[
            ("bin/agent", b'0', b"#!/bin/sh\n", ""),
            ("VERSION", b'0', marker.as_bytes(), ""),
        ],
    );
}

fn zip_with(path: &Path, names: &[&str]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    for n in names {
        z.start_file(*n, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"x").unwrap();
    }
    z.finish().unwrap();
}

fn sha(path: &Path) -> String {
    ops::sha256_file(path).unwrap()
}

fn req(path: &Path, v: &str) -> UpdateRequest {
    UpdateRequest {
        artifact: path.into(),
        version: v.parse().unwrap(),
        sha256: sha(path),
        release_id: 1,
    }
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<RawEntry>)> = vec![
        ("dotdot", vec![("../evil", b'0', b"x", "")]),
        ("nested-dotdot", vec![("a/../../evil", b'0', b"x", "")]),
        ("absolute", vec![("/tmp/evil", b'0', b"x", "")]),
        ("symlink-out", vec![("link", b'2', b"", "/etc/passwd")]),
        ("hardlink", vec![("hl", b'1', b"", "/etc/passwd")]),
        ("fifo", vec![("fifo", b'6', b"", "")]),
        ("backslash", vec![("..\\evil", b'0', b"x", "")]),
    ];
    for (name, entries) in cases {
        let archive = dir.path().join(format!("{name}.tar.gz"));
        raw_tar_gz(&archive, &entries);
        let dest = dir.path().join(format!("out-{name}"));
        let err = extract(&archive, &dest, Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                ExtractError::UnsafePath(_) | ExtractError::Link(_) | ExtractError::Special(_)
            ),
            "{name}: {err:?}"
        );
    }
    assert!(!dir.path().join("evil").exists() && !Path::new("/tmp/evil").exists());

    let z = dir.path().join("slip.zip");
    zip_with(&z, &["ok.txt", "../../zip-slip"]);
    assert!(matches!(
        extract(&z, &dir.path().join("zout"), Limits::default()),
        Err(ExtractError::UnsafePath(_))
    ));

    let big = dir.path().join("big.tar.gz");
    raw_tar_gz(&big, &[("big", b'0', &vec![0u8; 100_000], "")]);
    let err = extract(
        &big,
        &dir.path().join("bout"),
        Limits {
            max_bytes: 1000,
            max_entries: 10,
            space_bound: false,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ExtractError::TooLarge { limit: 1000, .. }),
        "{err:?}"
    );

    let many = dir.path().join("many.zip");
    zip_with(&many, &["a", "b", "c"]);
    let err = extract(
        &many,
        &dir.path().join("mout"),
        Limits {
            max_bytes: 1000,
            max_entries: 2,
            space_bound: false,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ExtractError::TooManyEntries { limit: 2 }),
        "{err:?}"
    );

    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"this is not an archive").unwrap();
    assert!(matches!(
        extract(&junk, &dir.path().join("jout"), Limits::default()),
        Err(ExtractError::UnknownFormat)
    ));
}

#[test]
fn good_archives_unpack_with_modes() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("good.tar.gz");
    good_tar(&t, "1.0.0");
    let out = dir.path().join("out");
    let listing = extract(&t, &out, Limits::default()).unwrap();
    assert_eq!(listing.len(), 2);
    assert_eq!(
        std::fs::read_to_string(out.join("VERSION")).unwrap(),
        "1.0.0"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(out.join("bin/agent"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }
    let z = dir.path().join("good.zip");
    zip_with(&z, &["a/b.txt", "c.txt"]);
    extract(&z, &dir.path().join("zout"), Limits::default()).unwrap();
    assert!(dir.path().join("zout/a/b.txt").exists());
}

/// Issue 22, item 6: world- or group-writable (and setuid) modes in a
/// tar or a zip are not kept: the installed files are at most 0755.
#[cfg(unix)]
#[test]
fn writable_by_others_modes_are_cleared_on_extraction() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("wide.tar.gz");
    {
        let f = std::fs::File::create(&t).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, mode) in [("agent", 0o777), ("data", 0o666), ("suid", 0o4777)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(mode);
            h.set_cksum();
            b.append_data(&mut h, name, &b"x"[..]).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }
    let z = dir.path().join("wide.zip");
    {
        let f = std::fs::File::create(&z).unwrap();
        let mut w = zip::ZipWriter::new(f);
        for (name, mode) in [("agent", 0o4777), ("data", 0o666)] {
            w.start_file(
                name,
                zip::write::SimpleFileOptions::default().unix_permissions(mode),
            )
            .unwrap();
            w.write_all(b"x").unwrap();
        }
        w.finish().unwrap();
    }
    for (archive, want) in [
        (
            &t,
            &[("agent", 0o755), ("data", 0o644), ("suid", 0o755)][..],
        ),
        (&z, &[("agent", 0o755), ("data", 0o644)][..]),
    ] {
        let out = dir.path().join(format!("out-{}", want.len()));
        extract(archive, &out, Limits::default()).unwrap();
        for (name, mode) in want {
            let got = std::fs::metadata(out.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777;
            assert_eq!(got, *mode, "{}: {name} is {got:o}", archive.display());
        }
    }
}

fn layout_with(dir: &Path) -> Layout {
    let l = Layout::new(dir);
    l.ensure_dirs().unwrap();
    l
}

#[test]
fn update_commit_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout_with(dir.path());
    let a1 = dir.path().join("a1.tar.gz");
    good_tar(&a1, "one");
    ops::install_archive(&l, &req(&a1, "1.0.0"), Limits::default()).unwrap();
    assert_eq!(Journal::load(&l).unwrap().unwrap().step, Step::Switched);
    assert_eq!(l.current_version(), Some(Version::new(1, 0, 0)));
    ops::commit(&l).unwrap();
    assert!(Journal::load(&l).unwrap().is_none());

    let a2 = dir.path().join("a2.tar.gz");
    good_tar(&a2, "two");
    ops::install_archive(&l, &req(&a2, "2.0.0"), Limits::default()).unwrap();
    assert_eq!(l.current_version(), Some(Version::new(2, 0, 0)));
    assert_eq!(ops::rollback(&l).unwrap(), Some(Version::new(1, 0, 0)));
    assert_eq!(l.current_version(), Some(Version::new(1, 0, 0)));
    assert!(!l.version_dir(&Version::new(2, 0, 0)).exists());
    assert_eq!(
        std::fs::read_to_string(l.version_dir(&Version::new(1, 0, 0)).join("VERSION")).unwrap(),
        "one"
    );
    assert!(matches!(ops::commit(&l), Err(OpError::NoJournal)));
}

#[test]
fn wrong_checksum_or_bad_archive_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout_with(dir.path());
    let a1 = dir.path().join("a1.tar.gz");
    good_tar(&a1, "one");
    ops::install_archive(&l, &req(&a1, "1.0.0"), Limits::default()).unwrap();
    ops::commit(&l).unwrap();

    let mut bad = req(&a1, "2.0.0");
    bad.sha256 = "0".repeat(64);
    let err = ops::install_archive(&l, &bad, Limits::default()).unwrap_err();
    assert!(matches!(err, OpError::ChecksumFailed { .. }), "{err}");
    assert!(err.to_string().contains("nothing was installed"));

    let evil = dir.path().join("evil.tar.gz");
    raw_tar_gz(
        &evil,
        &[("ok", b'0', b"x", ""), ("../../escape", b'0', b"x", "")],
    );
    let err = ops::install_archive(&l, &req(&evil, "3.0.0"), Limits::default()).unwrap_err();
    assert!(matches!(err, OpError::Extract { .. }), "{err}");

    assert_eq!(l.current_version(), Some(Version::new(1, 0, 0)));
    assert!(Journal::load(&l).unwrap().is_none());
    let names: Vec<PathBuf> = std::fs::read_dir(l.versions())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names.len(), 2, "only 1.0.0 and current remain: {names:?}");
}

#[test]
fn recovery_after_a_crash_at_each_step() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout_with(dir.path());
    let a1 = dir.path().join("a1.tar.gz");
    good_tar(&a1, "one");
    ops::install_archive(&l, &req(&a1, "1.0.0"), Limits::default()).unwrap();
    ops::commit(&l).unwrap();
    let v1 = Version::new(1, 0, 0);
    let v2 = Version::new(2, 0, 0);

    // Crash after unpacking, before the switch: discarded, 1.0.0 stays.
    std::fs::create_dir_all(l.version_dir(&v2)).unwrap();
    let j = Journal {
        release_id: 2,
        version: v2,
        previous: Some(v1),
        artifact: a1.clone(),
        sha256: "x".into(),
        step: Step::Extracted,
        msi: false,
        staged: false,
    };
    j.save(&l).unwrap();
    assert_eq!(
        ops::recover(&l).unwrap(),
        Recovery::Discarded { version: v2 }
    );
    assert_eq!(l.current_version(), Some(v1));
    assert!(!l.version_dir(&v2).exists());

    // Crash after the switch: the caller must health-check.
    let a2 = dir.path().join("a2.tar.gz");
    good_tar(&a2, "two");
    ops::install_archive(&l, &req(&a2, "2.0.0"), Limits::default()).unwrap();
    assert_eq!(
        ops::recover(&l).unwrap(),
        Recovery::NeedsHealthCheck {
            version: v2,
            previous: Some(v1)
        }
    );
    assert_eq!(
        ops::recover(&l).unwrap(),
        Recovery::NeedsHealthCheck {
            version: v2,
            previous: Some(v1)
        }
    );

    // A new update while one awaits its check rolls the unchecked one back first.
    let a3 = dir.path().join("a3.tar.gz");
    good_tar(&a3, "three");
    ops::install_archive(&l, &req(&a3, "3.0.0"), Limits::default()).unwrap();
    let j = Journal::load(&l).unwrap().unwrap();
    assert_eq!(j.previous, Some(v1));
    assert_eq!(l.current_version(), Some(Version::new(3, 0, 0)));
    assert_eq!(
        ops::recover(&Layout::new(dir.path().join("elsewhere"))).unwrap(),
        Recovery::Nothing
    );
}

/// A small archive that expands enormously (a "zip bomb" of zeros) is
/// refused by the ratio limit long before the fixed cap, and the limits
/// never exceed the free space.
#[test]
fn expansion_is_bounded_by_ratio_and_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.tar.gz");
    let zeros = vec![0u8; 96 * 1024 * 1024];
    raw_tar_gz(&bomb, &[("big.bin", b'0', &zeros, "")]);
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 1024 * 1024, "the bomb is small: {size} bytes");
    let limits = Limits::for_archive(size, None);
    assert!(limits.max_bytes < 96 * 1024 * 1024);
    let out = dir.path().join("out");
    assert!(matches!(
        extract(&bomb, &out, limits),
        Err(ExtractError::TooLarge { .. })
    ));
    // Free space bounds it too.
    let l = Limits::for_archive(1 << 30, Some(100 << 20));
    assert_eq!(
        l.max_bytes,
        (100 << 20) - palette_manager::extract::FREE_MARGIN
    );
}
