//! Release artifacts on disk, content-addressed by SHA-256:
//! `<data>/artifacts/<first two hex>/<sha256>`. Uploads stream into a
//! temporary file under `tmp/`, hashed on the way, and are renamed into place
//! only when complete, within limits and about to be recorded: nothing is
//! half-written. A temporary is deleted when its upload fails or is dropped
//! (the client went away); what a crash leaves in `tmp/` is deleted at the
//! next start, and artifact files no release names are collected then too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use md5::Md5;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Error)]
pub enum IngestError {
    #[error("artifact is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("artifact is empty")]
    Empty,
    #[error("artifact sha256 is {actual}, the request said {expected}")]
    ShaMismatch { expected: String, actual: String },
    #[error("upload was interrupted")]
    Body(#[source] axum::Error),
    #[error("upload stalled: no data for {secs} s")]
    Stalled { secs: u64 },
    #[error("could not write artifact {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IngestError {
    /// The disk holding the artifacts is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, IngestError::Io { source, .. } if crate::store::is_enospc(source))
    }
}

/// What was received.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub sha256: String,
    pub md5: String,
    pub size: u64,
}

/// A complete, verified upload still in `tmp/`: deleted when dropped
/// unless `ArtifactStore::place` moved it into the store.
pub struct Staged {
    tmp: tempfile::TempPath,
    pub ingested: Ingested,
}

impl Staged {
    /// The complete upload, still in `tmp/`.
    pub fn path(&self) -> &Path {
        &self.tmp
    }
}

#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    /// Opens the store, deleting the temporaries of uploads a crash cut
    /// short.
    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        let tmp = root.join("tmp");
        fs_err::create_dir_all(&tmp)?;
        let mut removed = 0u64;
        let mut bytes = 0u64;
        for entry in fs_err::read_dir(&tmp)? {
            let entry = entry?;
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs_err::remove_file(entry.path())?;
            removed += 1;
        }
        if removed > 0 {
            tracing::warn!(
                files = removed,
                bytes,
                "deleted the temporaries of uploads interrupted by a crash"
            );
        }
        Ok(ArtifactStore { root })
    }

    /// Every artifact file's sha256.
    pub fn list(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for dir in fs_err::read_dir(&self.root)? {
            let dir = dir?;
            let name = dir.file_name();
            let name = name.to_string_lossy();
            if name.len() != 2 || !dir.file_type()?.is_dir() {
                continue;
            }
            for f in fs_err::read_dir(dir.path())? {
                let f = f?;
                let sha = f.file_name().to_string_lossy().into_owned();
                if self.path_for(&sha).is_some() && sha.starts_with(name.as_ref()) {
                    out.push(sha);
                }
            }
        }
        Ok(out)
    }

    /// Deletes an artifact file (one no release names).
    pub fn remove(&self, sha256: &str) -> std::io::Result<()> {
        match self.path_for(sha256) {
            Some(p) => match fs_err::remove_file(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    /// Moves a staged upload into the store (durably: file and folder
    /// synced).
    pub fn place(&self, staged: Staged) -> Result<Ingested, IngestError> {
        let dest = self
            .path_for(&staged.ingested.sha256)
            .expect("hex digest is a valid name");
        let dir = dest.parent().expect("artifact path has a folder");
        fs_err::create_dir_all(dir).map_err(|e| IngestError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        staged.tmp.persist(&dest).map_err(|e| IngestError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        if let Ok(d) = fs_err::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(staged.ingested)
    }

    /// The file for `sha256`, which must be 64 lower-case hex digits.
    pub fn path_for(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| self.root.join(&sha256[..2]).join(sha256))
    }

    /// Streams an upload into `tmp/`, hashing it, within `limit` bytes and
    /// never pausing longer than `stall`.
    pub async fn ingest<S>(
        &self,
        mut body: S,
        limit: u64,
        expected_sha256: Option<&str>,
        stall: Duration,
    ) -> Result<Staged, IngestError>
    where
        S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    {
        let tmp_dir = self.root.join("tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IngestError::Io { path, source }
        };
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io(&tmp_dir))?;
        let tmp_path = tmp.path().to_path_buf();
        let (std_file, tmp_guard) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut sha = Sha256::new();
        let mut md5 = Md5::new();
        let mut size: u64 = 0;
        loop {
            let next = tokio::time::timeout(stall, body.next())
                .await
                .map_err(|_| IngestError::Stalled {
                    secs: stall.as_secs(),
                })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(IngestError::Body)?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(IngestError::TooLarge { limit });
            }
            sha.update(&chunk);
            md5.update(&chunk);
            file.write_all(&chunk).await.map_err(io(&tmp_path))?;
        }
        if size == 0 {
            return Err(IngestError::Empty);
        }
        file.sync_all().await.map_err(io(&tmp_path))?;
        drop(file);
        let sha256 = hex::encode(sha.finalize());
        if let Some(expected) = expected_sha256 {
            if !expected.eq_ignore_ascii_case(&sha256) {
                return Err(IngestError::ShaMismatch {
                    expected: expected.to_string(),
                    actual: sha256,
                });
            }
        }
        Ok(Staged {
            tmp: tmp_guard,
            ingested: Ingested {
                sha256,
                md5: hex::encode(md5.finalize()),
                size,
            },
        })
    }
}
