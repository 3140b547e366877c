//! `palette-server backup` and `restore`: the whole server state in one
//! file — a consistent copy of the database taken while the server runs
//! (SQLite `VACUUM INTO`, one read transaction) and every artifact file —
//! as an uncompressed tar (artifacts are compressed already).
//!
//! A restore refuses anything it did not write: only `palette.db` and
//! `artifacts/<2 hex>/<sha256>` entries, each artifact's content matching
//! its name, into a data folder that holds no database yet. It gives the
//! restored store a new identity: hosts then forget the command ids they
//! performed under the old one, so a command made after the backup is never
//! skipped as "already performed" because an older one had its id.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

const DB: &str = "palette.db";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no database at {0} (is --data-dir the server's data folder?)")]
    NoDatabase(PathBuf),
    #[error("{0} already holds a database: restore into a new, empty data folder")]
    NotEmpty(PathBuf),
    #[error("the backup has an entry {0:?} that a palette-server backup never holds")]
    UnexpectedEntry(String),
    #[error("the backup's artifact {name} has the content of {actual}: the file is damaged")]
    DamagedArtifact { name: String, actual: String },
    #[error("the backup holds no database")]
    MissingDatabase,
    #[error("{0} is not a palette-server backup (a tar file written by `palette-server backup`)")]
    NotABackup(PathBuf),
    #[error("database")]
    Db(#[from] sqlx::Error),
    #[error("database store")]
    Store(#[from] crate::store::StoreError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { what, path, source }
}

/// What a backup or restore holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub database_bytes: u64,
    pub artifacts: usize,
    pub artifact_bytes: u64,
}

/// Writes the backup of `data_dir` to `to` (atomically: a crash leaves no
/// half-written file under that name).
pub async fn backup(data_dir: &Path, to: &Path) -> Result<Summary, BackupError> {
    let db = data_dir.join(DB);
    if !db.is_file() {
        return Err(BackupError::NoDatabase(db));
    }
    let dir = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".palette-backup-")
        .tempdir_in(dir)
        .map_err(io("cannot make a temporary folder in", dir))?;
    let copy = work.path().join(DB);
    let mut conn = SqliteConnectOptions::new()
        .filename(&db)
        .read_only(true)
        .connect()
        .await?;
    sqlx::query("VACUUM INTO ?")
        .bind(copy.display().to_string())
        .execute(&mut conn)
        .await?;
    conn.close().await?;

    // Readable by its owner only (0600 on Unix; tempfile creates it so):
    // it holds every token hash and every host's config.
    let (file, tmp_tar) = tempfile::Builder::new()
        .prefix("backup")
        .suffix(".tar")
        .tempfile_in(work.path())
        .map_err(io("cannot create a file in", work.path()))?
        .into_parts();
    let tmp_tar = tmp_tar
        .keep()
        .map_err(|e| io("cannot create a file in", work.path())(e.error))?;
    let file = fs_err::File::from_parts(file, &tmp_tar);
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut summary = Summary {
        database_bytes: fs_err::metadata(&copy)
            .map_err(io("cannot read", &copy))?
            .len(),
        ..Summary::default()
    };
    tar.append_path_with_name(&copy, DB)
        .map_err(io("cannot write", &tmp_tar))?;
    let artifacts = data_dir.join("artifacts");
    if artifacts.is_dir() {
        for shard in fs_err::read_dir(&artifacts).map_err(io("cannot list", &artifacts))? {
            let shard = shard.map_err(io("cannot list", &artifacts))?;
            let shard_name = shard.file_name().to_string_lossy().to_string();
            if shard_name == "tmp" || !shard.path().is_dir() {
                continue; // uploads in progress are not releases yet
            }
            for f in fs_err::read_dir(shard.path()).map_err(io("cannot list", &shard.path()))? {
                let f = f.map_err(io("cannot list", &shard.path()))?;
                let name = f.file_name().to_string_lossy().to_string();
                if !is_sha256(&name) {
                    continue;
                }
                let path = f.path();
                summary.artifacts += 1;
                summary.artifact_bytes += fs_err::metadata(&path)
                    .map_err(io("cannot read", &path))?
                    .len();
                tar.append_path_with_name(&path, format!("artifacts/{shard_name}/{name}"))
                    .map_err(io("cannot write", &tmp_tar))?;
            }
        }
    }
    let writer = tar.into_inner().map_err(io("cannot write", &tmp_tar))?;
    let file = writer
        .into_inner()
        .map_err(|e| io("cannot write", &tmp_tar)(e.into_error()))?;
    file.sync_all().map_err(io("cannot write", &tmp_tar))?;
    drop(file);
    fs_err::rename(&tmp_tar, to).map_err(io("cannot move the backup to", to))?;
    Ok(summary)
}

/// Whether `file` starts with a tar header (the "ustar" magic of the GNU
/// and POSIX formats, which `backup` writes); the file is rewound.
fn looks_like_tar(file: &mut fs_err::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek};
    let mut head = [0u8; 512];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    file.rewind()?;
    Ok(filled == head.len() && &head[257..262] == b"ustar")
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Restores `from` into `data_dir`, which must not hold a database.
pub async fn restore(from: &Path, data_dir: &Path) -> Result<Summary, BackupError> {
    if data_dir.join(DB).exists() {
        return Err(BackupError::NotEmpty(data_dir.to_path_buf()));
    }
    fs_err::create_dir_all(data_dir).map_err(io("cannot create", data_dir))?;
    // Unpacked beside the target first: nothing lands in `data_dir` until
    // every entry has been checked.
    let work = tempfile::Builder::new()
        .prefix(".palette-restore-")
        .tempdir_in(data_dir)
        .map_err(io("cannot make a temporary folder in", data_dir))?;
    let mut file = fs_err::File::open(from).map_err(io("cannot open", from))?;
    if !looks_like_tar(&mut file).map_err(io("cannot read", from))? {
        return Err(BackupError::NotABackup(from.to_path_buf()));
    }
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut summary = Summary::default();
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    for entry in archive.entries().map_err(io("cannot read", from))? {
        let mut entry = entry.map_err(io("cannot read", from))?;
        let name = entry
            .path()
            .map_err(io("cannot read", from))?
            .to_string_lossy()
            .to_string();
        if !entry.header().entry_type().is_file() {
            return Err(BackupError::UnexpectedEntry(name));
        }
        let parts: Vec<&str> = name.split('/').collect();
        let staged = work.path().join(format!("{}", moves.len()));
        let mut out = fs_err::File::create(&staged).map_err(io("cannot write", &staged))?;
        match parts.as_slice() {
            [DB] => {
                summary.database_bytes =
                    std::io::copy(&mut entry, &mut out).map_err(io("cannot write", &staged))?;
                moves.push((staged.clone(), data_dir.join(DB)));
            }
            ["artifacts", shard, sha]
                if is_sha256(sha) && sha.starts_with(shard) && shard.len() == 2 =>
            {
                let mut hasher = Sha256::new();
                let mut tee = HashingWriter {
                    out: &mut out,
                    hasher: &mut hasher,
                };
                summary.artifact_bytes +=
                    std::io::copy(&mut entry, &mut tee).map_err(io("cannot write", &staged))?;
                let actual = hex::encode(hasher.finalize());
                if actual != *sha {
                    return Err(BackupError::DamagedArtifact {
                        name: name.clone(),
                        actual,
                    });
                }
                summary.artifacts += 1;
                moves.push((
                    staged.clone(),
                    data_dir.join("artifacts").join(shard).join(sha),
                ));
            }
            _ => return Err(BackupError::UnexpectedEntry(name)),
        }
        out.sync_all().map_err(io("cannot write", &staged))?;
    }
    let Some(db_index) = moves.iter().position(|(_, to)| to.ends_with(DB)) else {
        return Err(BackupError::MissingDatabase);
    };
    // A new identity (see the module doc): the server makes one at its next
    // start (and brings an older schema up to date then).
    {
        let mut conn = SqliteConnectOptions::new()
            .filename(&moves[db_index].0)
            .connect()
            .await?;
        sqlx::query("DELETE FROM store_meta WHERE key = 'store_id'")
            .execute(&mut conn)
            .await?;
        // Dashboard sessions of the backed-up server end (a backup of an
        // older schema has no such table).
        let _ = sqlx::query("DELETE FROM ui_sessions")
            .execute(&mut conn)
            .await;
        conn.close().await?;
    }
    // Artifacts first, the database last: a server never starts on a
    // database whose artifacts are missing.
    let db_move = moves.remove(db_index);
    for (staged, to) in moves.into_iter().chain(std::iter::once(db_move)) {
        if let Some(parent) = to.parent() {
            fs_err::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        fs_err::rename(&staged, &to).map_err(io("cannot move into place", &to))?;
    }
    if let Ok(d) = fs_err::File::open(data_dir) {
        let _ = d.sync_all();
    }
    Ok(summary)
}

struct HashingWriter<'a, W> {
    out: &'a mut W,
    hasher: &'a mut Sha256,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
