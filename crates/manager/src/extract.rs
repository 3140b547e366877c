//! Unpacking release archives (tar.gz or zip, told apart by their first
//! bytes) without trusting them: every entry's path is checked (no absolute
//! paths, no `..`, no drive prefixes), links are refused (a link could point
//! anywhere), devices and FIFOs are refused, and the number of entries and
//! the bytes written are limited. Files go into a fresh folder; the caller
//! moves it into place only when everything succeeded.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExtractError {
    #[error("archive entry {0:?} has an unsafe path (absolute, '..' or a drive prefix)")]
    UnsafePath(String),
    #[error("archive entry {0:?} is a link; links are not allowed in releases")]
    Link(String),
    #[error("archive entry {0:?} is a device, FIFO or other special file")]
    Special(String),
    #[error("archive unpacks to more than {limit} bytes{}", if *.space { " (the free space on this disk, less a margin)" } else { "" })]
    TooLarge {
        limit: u64,
        /// The limit was the disk's free space: a passing local problem
        /// (retried once there is room), not the archive's fault.
        space: bool,
    },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("archive is neither tar.gz nor zip")]
    UnknownFormat,
    #[error("archive is empty")]
    Empty,
    #[error("archive is corrupt")]
    Corrupt(#[source] std::io::Error),
    #[error("archive is corrupt")]
    Zip(#[source] zip::result::ZipError),
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Limits on what an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: usize,
    /// `max_bytes` is the disk's free space (less a margin), tighter than
    /// the archive's own limits.
    pub space_bound: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 8 * 1024 * 1024 * 1024,
            max_entries: 100_000,
            space_bound: false,
        }
    }
}

/// How much an archive may expand, at most: this many times its own size...
pub const MAX_RATIO: u64 = 100;
/// ...but never less than this (small archives of a few large files).
pub const RATIO_FLOOR: u64 = 64 * 1024 * 1024;
/// Free space left on the disk after unpacking.
pub const FREE_MARGIN: u64 = 32 * 1024 * 1024;

impl ExtractError {
    /// Not enough free space here: passing, and no fault of the archive.
    pub fn is_lack_of_space(&self) -> bool {
        matches!(self, ExtractError::TooLarge { space: true, .. })
    }
}

impl Limits {
    /// The limits for an archive of `archive_bytes` unpacked onto a disk
    /// with `free` bytes available (when known): the fixed cap, a ratio to
    /// the archive's size (a tiny archive cannot expand into gigabytes) and
    /// the free space minus a margin (unpacking never fills the disk).
    pub fn for_archive(archive_bytes: u64, free: Option<u64>) -> Limits {
        let mut l = Limits::default();
        l.max_bytes = l
            .max_bytes
            .min(archive_bytes.saturating_mul(MAX_RATIO).max(RATIO_FLOOR));
        if let Some(free) = free {
            let room = free.saturating_sub(FREE_MARGIN);
            if room < l.max_bytes {
                l.max_bytes = room;
                l.space_bound = true;
            }
        }
        l
    }
}

/// Checks an entry path and returns it relative to the target folder.
/// Refused: absolute paths, `..`, backslashes, NUL, and any `:` — on
/// Windows `x/C:y` would push a drive-relative path that replaces the
/// target folder (found by the property test under Wine), and `a:b` names
/// an NTFS alternate data stream.
pub fn safe_relative(name: &str) -> Result<PathBuf, ExtractError> {
    let unsafe_path = || ExtractError::UnsafePath(name.to_string());
    if name.contains('\\') || name.contains('\0') || name.contains(':') {
        return Err(unsafe_path());
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path())
            }
        }
    }
    Ok(out)
}

struct Sink<'a> {
    /// Where files go; `None`: only read through (see `inspect`).
    dest: Option<&'a Path>,
    /// The first bytes of a top-level `VERSION` file.
    version: Option<String>,
    /// The version slots of the watchdog's and manager's binaries.
    stamps: Vec<(String, String)>,
    limits: Limits,
    written: u64,
    entries: usize,
    /// One line per unpacked file, for `Logs/installer.log`.
    listing: Vec<String>,
}

impl Sink<'_> {
    fn entry(&mut self) -> Result<(), ExtractError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ExtractError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn dir(&mut self, rel: &Path) -> Result<(), ExtractError> {
        let Some(dest) = self.dest else {
            return Ok(());
        };
        let path = dest.join(rel);
        fs_err::create_dir_all(&path).map_err(|source| ExtractError::Write { path, source })
    }

    fn file(
        &mut self,
        rel: &Path,
        mut data: impl Read,
        mode: Option<u32>,
    ) -> Result<(), ExtractError> {
        let Some(dest) = self.dest else {
            return self.read_through(rel, data);
        };
        let path = dest.join(rel);
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent).map_err(|source| ExtractError::Write {
                path: parent.into(),
                source,
            })?;
        }
        let werr = |source| ExtractError::Write {
            path: path.clone(),
            source,
        };
        let mut out = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(werr)?;
        let size = self.copy(&mut data, |chunk| out.write_all(chunk).map_err(werr))?;
        out.sync_all().map_err(werr)?;
        if let Some(m) = mode {
            crate::platform::set_mode(&path, m).map_err(werr)?;
        }
        self.listing
            .push(format!("{} ({size} bytes)", rel.display()));
        Ok(())
    }
}

impl Sink<'_> {
    /// Reads `data` to its end in chunks handed to `each`, counting every
    /// byte against the limit; returns the entry's size.
    fn copy(
        &mut self,
        data: &mut impl Read,
        mut each: impl FnMut(&[u8]) -> Result<(), ExtractError>,
    ) -> Result<u64, ExtractError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = data.read(&mut buf).map_err(ExtractError::Corrupt)?;
            if n == 0 {
                return Ok(size);
            }
            self.written += n as u64;
            size += n as u64;
            if self.written > self.limits.max_bytes {
                return Err(ExtractError::TooLarge {
                    limit: self.limits.max_bytes,
                    space: self.limits.space_bound,
                });
            }
            each(&buf[..n])?;
        }
    }

    /// An entry read, counted and checked like an unpacked one, written
    /// nowhere (a top-level `VERSION` is kept).
    fn read_through(&mut self, rel: &Path, mut data: impl Read) -> Result<(), ExtractError> {
        let mut head = Vec::new();
        let binary = rel
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| STAMPED_BINARIES.contains(&n));
        let mut scanner = binary.then(palette_host::stamp::SlotScanner::default);
        let size = self.copy(&mut data, |chunk| {
            if head.len() < 64 {
                head.extend_from_slice(&chunk[..chunk.len().min(64 - head.len())]);
            }
            if let Some(s) = scanner.as_mut() {
                s.feed(chunk);
            }
            Ok(())
        })?;
        if rel == Path::new("VERSION") {
            self.version = Some(String::from_utf8_lossy(&head).trim().to_string());
        }
        if let Some(v) = scanner.and_then(|s| s.version()) {
            self.stamps.push((rel.display().to_string(), v));
        }
        self.listing
            .push(format!("{} ({size} bytes)", rel.display()));
        Ok(())
    }
}

/// What an archive holds, found by reading it through with every check of
/// `extract` (paths, links, special files, limits) and writing nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub files: usize,
    pub bytes: u64,
    /// The content of a top-level `VERSION` file (trimmed, first 64 bytes).
    pub version: Option<String>,
    /// (path, version) of each watchdog or manager binary with a version
    /// slot: what it will say it is when run.
    pub stamps: Vec<(String, String)>,
}

/// The binaries whose version slot `inspect` reads.
const STAMPED_BINARIES: &[&str] = &[
    "palette-watchdog",
    "palette-watchdog.exe",
    "palette-manager",
    "palette-manager.exe",
];

/// Reads `archive` through as `extract` would unpack it, writing nothing:
/// the server checks a release with it at publish.
pub fn inspect(archive: &Path, limits: Limits) -> Result<Inspection, ExtractError> {
    let mut sink = Sink {
        dest: None,
        version: None,
        stamps: Vec::new(),
        limits,
        written: 0,
        entries: 0,
        listing: Vec::new(),
    };
    unpack(archive, sniff(archive)?, &mut sink)?;
    Ok(Inspection {
        files: sink.listing.len(),
        bytes: sink.written,
        version: sink.version,
        stamps: sink.stamps,
    })
}

#[derive(Clone, Copy)]
enum Format {
    TarGz,
    Zip,
}

/// The archive's format, from its first bytes.
fn sniff(archive: &Path) -> Result<Format, ExtractError> {
    let mut magic = [0u8; 4];
    let mut f = fs_err::File::open(archive).map_err(ExtractError::Corrupt)?;
    let n = f.read(&mut magic).map_err(ExtractError::Corrupt)?;
    if n == 4 && magic[..2] == [0x1f, 0x8b] {
        Ok(Format::TarGz)
    } else if n == 4 && magic == *b"PK\x03\x04" {
        Ok(Format::Zip)
    } else {
        Err(ExtractError::UnknownFormat)
    }
}

fn unpack(archive: &Path, format: Format, sink: &mut Sink) -> Result<(), ExtractError> {
    match format {
        Format::TarGz => extract_tar_gz(archive, sink)?,
        Format::Zip => extract_zip(archive, sink)?,
    }
    if sink.listing.is_empty() {
        return Err(ExtractError::Empty);
    }
    Ok(())
}

/// Unpacks `archive` into `dest` (which must not exist yet). Returns a line
/// per unpacked file.
pub fn extract(archive: &Path, dest: &Path, limits: Limits) -> Result<Vec<String>, ExtractError> {
    let format = sniff(archive)?;
    fs_err::create_dir_all(dest).map_err(|source| ExtractError::Write {
        path: dest.into(),
        source,
    })?;
    let mut sink = Sink {
        dest: Some(dest),
        version: None,
        stamps: Vec::new(),
        limits,
        written: 0,
        entries: 0,
        listing: Vec::new(),
    };
    unpack(archive, format, &mut sink)?;
    Ok(sink.listing)
}

fn extract_tar_gz(archive: &Path, sink: &mut Sink) -> Result<(), ExtractError> {
    let f = fs_err::File::open(archive).map_err(ExtractError::Corrupt)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
    for entry in tar.entries().map_err(ExtractError::Corrupt)? {
        let entry = entry.map_err(ExtractError::Corrupt)?;
        sink.entry()?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = safe_relative(&raw)?;
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Directory => sink.dir(&rel)?,
            T::Regular | T::Continuous | T::GNUSparse => {
                if rel.as_os_str().is_empty() {
                    return Err(ExtractError::UnsafePath(raw));
                }
                let mode = entry.header().mode().ok();
                sink.file(&rel, entry, mode)?
            }
            T::Symlink | T::Link => return Err(ExtractError::Link(raw)),
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            _ => return Err(ExtractError::Special(raw)),
        }
    }
    Ok(())
}

fn extract_zip(archive: &Path, sink: &mut Sink) -> Result<(), ExtractError> {
    let f = fs_err::File::open(archive).map_err(ExtractError::Corrupt)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(ExtractError::Zip)?;
    if zip.len() > sink.limits.max_entries {
        return Err(ExtractError::TooManyEntries {
            limit: sink.limits.max_entries,
        });
    }
    for i in 0..zip.len() {
        let file = zip.by_index(i).map_err(ExtractError::Zip)?;
        sink.entry()?;
        let raw = file.name().to_string();
        let rel = safe_relative(&raw)?;
        if file.is_symlink() {
            return Err(ExtractError::Link(raw));
        }
        if file.is_dir() {
            sink.dir(&rel)?;
        } else {
            if rel.as_os_str().is_empty() {
                return Err(ExtractError::UnsafePath(raw));
            }
            let mode = file.unix_mode();
            sink.file(&rel, file, mode)?;
        }
    }
    Ok(())
}
