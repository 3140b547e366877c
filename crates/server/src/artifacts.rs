//! Release artifacts, content-addressed by SHA-256:
//! `<data>/artifacts/<first two hex>/<sha256>`. Uploads stream into a
//! temporary file under `tmp/`, hashed on the way, and are renamed into place
//! only when complete, within limits and about to be recorded: nothing is
//! half-written. A temporary is deleted when its upload fails or is dropped
//! (the client went away); what a crash leaves in `tmp/` is deleted at the
//! next start, and artifact files no release names are collected then too.
//!
//! With `--artifacts s3://bucket/prefix` (any S3-compatible storage) the
//! bucket holds the artifacts, under `<prefix>/<first two hex>/<sha256>`,
//! so that several replicas serve the same ones, and the local folder is a
//! read-through cache: a publish is stored in the bucket before its release
//! is recorded; a download the cache lacks is fetched once (however many
//! hosts ask at once), verified against its name and kept. What the bucket
//! holds is never trusted further than its SHA-256.
//!
//! Owns the artifact files and objects; knows nothing of releases (the
//! caller says which artifacts are still named).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use md5::Md5;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
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
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("upload stalled: no data for {secs} s")]
    Stalled { secs: u64 },
    #[error("could not write artifact {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not store the artifact in {storage}")]
    Remote {
        storage: String,
        #[source]
        source: object_store::Error,
    },
}

impl IngestError {
    /// The disk holding the artifacts is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, IngestError::Io { source, .. } if crate::store::is_enospc(source))
    }
}

/// Why an artifact could not be had for a download.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("no artifact {sha256} in {storage}")]
    Missing { sha256: String, storage: String },
    #[error("the artifact {sha256} in {storage} is corrupt: its content hashes to {actual}")]
    Corrupt {
        sha256: String,
        storage: String,
        actual: String,
    },
    #[error("the artifact {sha256} in {storage} is larger than the limit of {limit} bytes")]
    TooLarge {
        sha256: String,
        storage: String,
        limit: u64,
    },
    #[error("fetching {sha256} from {storage} stalled: no data for {secs} s")]
    Stalled {
        sha256: String,
        storage: String,
        secs: u64,
    },
    #[error("could not fetch {sha256} from {storage}")]
    Remote {
        sha256: String,
        storage: String,
        #[source]
        source: object_store::Error,
    },
    #[error("could not write the cached artifact {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Worth retrying later: storage unreachable or slow, or a full disk.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Remote { .. } | FetchError::Stalled { .. } | FetchError::Io { .. }
        )
    }
}

/// Why `--artifacts` was not understood.
#[derive(Debug, Error)]
pub enum RemoteError {
    #[error(
        "--artifacts must be s3://BUCKET[/PREFIX] (leave it out for the data folder), not {0:?}"
    )]
    Url(String),
    #[error("could not set up the S3 client for {storage}")]
    Client {
        storage: String,
        #[source]
        source: object_store::Error,
    },
}

/// The object storage holding the artifacts, when not the local folder.
#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: Option<String>,
    /// `s3://bucket/prefix`, for logs and errors.
    shown: String,
}

/// Longest pause in an object storage download before it is given up.
const FETCH_STALL: Duration = Duration::from_secs(60);

/// A remote object no release names is deleted only when older than this:
/// a publish on another replica stores its artifact before recording it.
const REMOTE_ORPHAN_GRACE_MS: i64 = 60 * 60 * 1000;

impl Remote {
    /// `s3://bucket/prefix` on AWS S3 or any S3-compatible storage, with
    /// the usual `AWS_*` settings from the environment: credentials
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`),
    /// `AWS_REGION`, `AWS_ENDPOINT_URL` for another storage, and
    /// `AWS_ALLOW_HTTP=true` for one without TLS.
    pub fn s3(url: &str) -> Result<Remote, RemoteError> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        use object_store::ClientOptions;
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| RemoteError::Url(url.to_string()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let valid_bucket = !bucket.is_empty()
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !valid_bucket || prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(RemoteError::Url(url.to_string()));
        }
        let shown = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        // Whole requests may be long (a large artifact); a stalled one is
        // caught chunk by chunk instead.
        let mut builder = AmazonS3Builder::new().with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(30 * 60)),
        );
        for (key, value) in std::env::vars() {
            if key.starts_with("AWS_") {
                if let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(k, value);
                }
            }
        }
        // A few retries with backoff (the default gives up after three
        // minutes: too long to hold a publish or a download).
        let retry = object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let store = builder
            .with_retry(retry)
            .with_bucket_name(bucket)
            .build()
            .map_err(|source| RemoteError::Client {
                storage: shown.clone(),
                source,
            })?;
        Ok(Remote {
            store: Arc::new(store),
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            shown,
        })
    }

    fn key(&self, sha256: &str) -> ObjectPath {
        match &self.prefix {
            Some(p) => ObjectPath::from(format!("{p}/{}/{sha256}", &sha256[..2])),
            None => ObjectPath::from(format!("{}/{sha256}", &sha256[..2])),
        }
    }

    /// Stores a file under its sha256 (unless an object of that size is
    /// there already: the name is its content).
    async fn upload(&self, sha256: &str, file: &Path, size: u64) -> Result<(), IngestError> {
        use tokio::io::AsyncWriteExt;
        let key = self.key(sha256);
        let remote = |source| IngestError::Remote {
            storage: self.shown.clone(),
            source,
        };
        match self.store.head(&key).await {
            Ok(meta) if meta.size == size => return Ok(()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(remote(e)),
        }
        let io = |source| IngestError::Io {
            path: file.to_path_buf(),
            source,
        };
        let mut src = tokio::fs::File::open(file).await.map_err(io)?;
        // Small ones in one request, large ones in 8 MiB parts.
        let mut w = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            key,
            8 * 1024 * 1024,
        );
        let copied = async {
            tokio::io::copy(&mut src, &mut w).await?;
            w.shutdown().await
        }
        .await;
        if let Err(e) = copied {
            let _ = w.abort().await;
            // The writer reports storage failures as io errors wrapping
            // the object_store error.
            let storage_failed = e.get_ref().is_some_and(|i| i.is::<object_store::Error>());
            return Err(if storage_failed {
                let inner = e.into_inner().expect("checked above");
                remote(
                    *inner
                        .downcast::<object_store::Error>()
                        .expect("checked above"),
                )
            } else {
                io(e)
            });
        }
        tracing::info!(sha256, bytes = size, storage = %self.shown, "artifact stored in object storage");
        Ok(())
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
    /// The artifacts, or with `remote` the cache of them.
    root: PathBuf,
    remote: Option<Remote>,
    /// One fetch per artifact at a time: the others wait for it.
    fetching: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl ArtifactStore {
    /// Opens the store, deleting the temporaries of uploads a crash cut
    /// short.
    pub fn open(root: PathBuf, remote: Option<Remote>) -> std::io::Result<Self> {
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
        if let Some(r) = &remote {
            tracing::info!(storage = %r.shown, cache = %root.display(), "artifacts: object storage, with a local read-through cache");
        }
        Ok(ArtifactStore {
            root,
            remote,
            fetching: Default::default(),
        })
    }

    /// Where the artifacts live, for messages.
    pub fn storage(&self) -> String {
        match &self.remote {
            Some(r) => r.shown.clone(),
            None => self.root.display().to_string(),
        }
    }

    /// Whether artifacts live in object storage (the local folder a cache).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Every artifact file's sha256 in the local folder.
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

    /// Deletes an artifact file from the local folder (one no release
    /// names). Objects in the bucket are left to `collect_remote`.
    pub fn remove(&self, sha256: &str) -> std::io::Result<()> {
        match self.path_for(sha256) {
            Some(p) => match fs_err::remove_file(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    /// Deletes the bucket's objects that `named` does not name and that
    /// are older than an hour (a publish on another replica stores its
    /// artifact a moment before recording it). Returns how many went.
    pub async fn collect_remote(
        &self,
        named: impl Fn(&str) -> bool,
    ) -> Result<usize, object_store::Error> {
        let Some(r) = &self.remote else {
            return Ok(0);
        };
        let prefix = r.prefix.as_deref().map(ObjectPath::from);
        let now = crate::clock::now_ms();
        let mut removed = 0;
        let mut list = r.store.list(prefix.as_ref());
        let mut old = Vec::new();
        while let Some(meta) = list.try_next().await? {
            let Some(sha) = meta.location.filename() else {
                continue;
            };
            if self.path_for(sha).is_none() || named(sha) {
                continue;
            }
            if now - meta.last_modified.timestamp_millis() >= REMOTE_ORPHAN_GRACE_MS {
                old.push(meta.location.clone());
            }
        }
        for key in old {
            match r.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Moves a staged upload into the store (durably: file and folder
    /// synced; with object storage, stored there first).
    pub async fn place(&self, staged: Staged) -> Result<Ingested, IngestError> {
        if let Some(r) = &self.remote {
            r.upload(&staged.ingested.sha256, staged.path(), staged.ingested.size)
                .await?;
        }
        self.persist(staged)
            .map_err(|(path, source)| IngestError::Io { path, source })
    }

    /// Renames a complete temporary into place, durably (file and folder
    /// synced); on failure, the path and the error.
    fn persist(&self, staged: Staged) -> Result<Ingested, (PathBuf, std::io::Error)> {
        let dest = self
            .path_for(&staged.ingested.sha256)
            .expect("hex digest is a valid name");
        let dir = dest.parent().expect("artifact path has a folder");
        fs_err::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
        staged
            .tmp
            .persist(&dest)
            .map_err(|e| (dest.clone(), e.error))?;
        if let Ok(d) = fs_err::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(staged.ingested)
    }

    /// The local file holding `sha256`, fetched from object storage into
    /// the cache first when it is not there (at most `limit` bytes, and
    /// only if its content has that sha256).
    pub async fn local_file(&self, sha256: &str, limit: u64) -> Result<PathBuf, FetchError> {
        let path = self.path_for(sha256).ok_or_else(|| FetchError::Missing {
            sha256: sha256.to_string(),
            storage: self.storage(),
        })?;
        let Some(remote) = &self.remote else {
            return Ok(path);
        };
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let gate = self
            .fetching
            .lock()
            .unwrap()
            .entry(sha256.to_string())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path); // fetched while this one waited
        }
        let t = std::time::Instant::now();
        let size = self.fetch(remote, sha256, limit).await?;
        tracing::info!(
            sha256,
            bytes = size,
            storage = %remote.shown,
            ms = t.elapsed().as_millis() as u64,
            "artifact fetched from object storage into the cache"
        );
        Ok(path)
    }

    async fn fetch(&self, remote: &Remote, sha256: &str, limit: u64) -> Result<u64, FetchError> {
        let storage = || remote.shown.clone();
        let failed = |source| match source {
            object_store::Error::NotFound { .. } => FetchError::Missing {
                sha256: sha256.to_string(),
                storage: storage(),
            },
            source => FetchError::Remote {
                sha256: sha256.to_string(),
                storage: storage(),
                source,
            },
        };
        let got = remote
            .store
            .get(&remote.key(sha256))
            .await
            .map_err(failed)?;
        if got.meta.size > limit {
            return Err(FetchError::TooLarge {
                sha256: sha256.to_string(),
                storage: storage(),
                limit,
            });
        }
        let staged = self
            .spool(got.into_stream(), limit, FETCH_STALL)
            .await
            .map_err(|e| match e {
                Spool::TooLarge => FetchError::TooLarge {
                    sha256: sha256.to_string(),
                    storage: storage(),
                    limit,
                },
                Spool::Stalled => FetchError::Stalled {
                    sha256: sha256.to_string(),
                    storage: storage(),
                    secs: FETCH_STALL.as_secs(),
                },
                Spool::Body(e) => failed(e),
                Spool::Io { path, source } => FetchError::Io { path, source },
            })?;
        if staged.ingested.sha256 != sha256 {
            return Err(FetchError::Corrupt {
                sha256: sha256.to_string(),
                storage: storage(),
                actual: staged.ingested.sha256.clone(),
            });
        }
        let ingested = self
            .persist(staged)
            .map_err(|(path, source)| FetchError::Io { path, source })?;
        Ok(ingested.size)
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
    pub async fn ingest<S, E>(
        &self,
        body: S,
        limit: u64,
        expected_sha256: Option<&str>,
        stall: Duration,
    ) -> Result<Staged, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let staged = self.spool(body, limit, stall).await.map_err(|e| match e {
            Spool::TooLarge => IngestError::TooLarge { limit },
            Spool::Stalled => IngestError::Stalled {
                secs: stall.as_secs(),
            },
            Spool::Body(e) => IngestError::Body(Box::new(e)),
            Spool::Io { path, source } => IngestError::Io { path, source },
        })?;
        if staged.ingested.size == 0 {
            return Err(IngestError::Empty);
        }
        if let Some(expected) = expected_sha256 {
            if !expected.eq_ignore_ascii_case(&staged.ingested.sha256) {
                return Err(IngestError::ShaMismatch {
                    expected: expected.to_string(),
                    actual: staged.ingested.sha256.clone(),
                });
            }
        }
        Ok(staged)
    }

    /// Streams `body` into a temporary file under `tmp/`, hashing it (both
    /// digests), within `limit` bytes and never pausing longer than
    /// `stall`; synced when complete. Uploads and cache fills alike.
    async fn spool<S, E>(
        &self,
        mut body: S,
        limit: u64,
        stall: Duration,
    ) -> Result<Staged, Spool<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let tmp_dir = self.root.join("tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Spool::Io { path, source }
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
                .map_err(|_| Spool::Stalled)?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(Spool::Body)?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(Spool::TooLarge);
            }
            sha.update(&chunk);
            md5.update(&chunk);
            file.write_all(&chunk).await.map_err(io(&tmp_path))?;
        }
        file.sync_all().await.map_err(io(&tmp_path))?;
        drop(file);
        Ok(Staged {
            tmp: tmp_guard,
            ingested: Ingested {
                sha256: hex::encode(sha.finalize()),
                md5: hex::encode(md5.finalize()),
                size,
            },
        })
    }
}

/// Why streaming into a temporary file stopped.
enum Spool<E> {
    TooLarge,
    Stalled,
    Body(E),
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
