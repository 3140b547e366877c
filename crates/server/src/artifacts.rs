//! Release artifacts on disk, content-addressed by SHA-256:
//! `<data>/artifacts/<first two hex>/<sha256>`. Uploads stream into a
//! temporary file in the same folder tree, hashed on the way, and are renamed
//! into place only when complete and within limits: nothing is half-written.

use std::path::{Path, PathBuf};

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
    #[error("could not write artifact {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was stored.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub sha256: String,
    pub md5: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        fs_err::create_dir_all(root.join("tmp"))?;
        Ok(ArtifactStore { root })
    }

    /// The file for `sha256`, which must be 64 lower-case hex digits.
    pub fn path_for(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| self.root.join(&sha256[..2]).join(sha256))
    }

    pub async fn ingest<S>(
        &self,
        mut body: S,
        limit: u64,
        expected_sha256: Option<&str>,
    ) -> Result<Ingested, IngestError>
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
        let (std_file, tmp_path_guard) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut sha = Sha256::new();
        let mut md5 = Md5::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
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
        let dest = self.path_for(&sha256).expect("hex digest is a valid name");
        let dir = dest.parent().expect("artifact path has a folder");
        fs_err::create_dir_all(dir).map_err(|e| IngestError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        tmp_path_guard.persist(&dest).map_err(|e| IngestError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(Ingested {
            sha256,
            md5: hex::encode(md5.finalize()),
            size,
        })
    }
}
