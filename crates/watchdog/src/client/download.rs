//! Downloads: streamed into a `.part` file (never the whole file in
//! memory), hashed on the way, resumed with `Range` after a cut (re-hashing
//! what is there, so the whole file is verified), capped in rate, renamed
//! into place only when it matches what the release record says.
//! Redirects are followed bare: the credential goes only with the first
//! request, and only to the check-in origin.
//!
//! Must not: judge the file beyond its size and hash (what kind of file it
//! is, and whether it may be installed, the update decides).

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use md5::Md5;
use reqwest::{header, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Client, ClientError};

/// Feeds a file already on disk to the hashers (a resumed download is
/// verified whole).
async fn hash_file(path: &Path, sha: &mut Sha256, md5: &mut Md5) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        sha.update(&buf[..n]);
        md5.update(&buf[..n]);
    }
}

/// A verified download.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub sha256: String,
    pub md5: String,
    pub size: u64,
}

/// What a download must match.
pub enum Expect<'a> {
    Sha256 { hex: &'a str, size: Option<u64> },
    Md5(&'a str),
}

/// The most redirects a download follows.
const MAX_REDIRECTS: usize = 5;

impl Client {
    /// `GET url` (from byte `from` on), following up to
    /// `MAX_REDIRECTS` redirects. The credential goes only with the first
    /// request, and only to the check-in origin: a redirect is followed
    /// bare, wherever it points.
    async fn get_following(&self, url: &str, from: u64) -> Result<reqwest::Response, ClientError> {
        let mut at = url.to_string();
        let mut hops = 0;
        loop {
            let mut rb = self.http.get(&at);
            if hops == 0 {
                if let Some(a) = self.auth(&at) {
                    rb = rb.header(header::AUTHORIZATION, a);
                }
            }
            if from > 0 {
                rb = rb.header(header::RANGE, format!("bytes={from}-"));
            }
            let res = rb.send().await.map_err(|source| ClientError::Http {
                url: at.clone(),
                source,
            })?;
            let next = res
                .status()
                .is_redirection()
                .then(|| res.headers().get(header::LOCATION))
                .flatten()
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url::Url::parse(&at).ok()?.join(l).ok());
            match next {
                Some(next) if hops < MAX_REDIRECTS => {
                    tracing::info!(from = at, to = %next, "the download is redirected; following it without credentials");
                    at = next.to_string();
                    hops += 1;
                }
                _ => return Self::check(res, &at).await,
            }
        }
    }

    /// Streams `path_or_url` into `dest` (never the whole file in memory),
    /// hashing on the way; the file is renamed into place only when it
    /// matches `expect`. It is written to `dest.part` first: a transfer cut
    /// short (network, stall, a watchdog restart) leaves the part, and the
    /// next call resumes it with `Range`, re-hashing what it already has so
    /// the whole file is verified. A local disk error or a mismatch deletes
    /// the part. `rate` caps the transfer in bytes per second.
    pub async fn download(
        &self,
        path_or_url: &str,
        dest: &Path,
        expect: Expect<'_>,
        rate: Option<u64>,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<Downloaded, ClientError> {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            self.url(path_or_url)
        };
        let part = dest.with_extension("part");
        let ioerr = |source| ClientError::Io {
            path: part.display().to_string(),
            source,
        };
        let limit = match expect {
            Expect::Sha256 { size: Some(s), .. } => Some(s),
            _ => None,
        };
        let mut sha = Sha256::new();
        let mut md5 = Md5::new();
        let mut have = tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if limit.is_some_and(|l| have >= l) {
            // Complete or too long: start over (a complete part would have
            // been renamed).
            let _ = tokio::fs::remove_file(&part).await;
            have = 0;
        }
        if have > 0 {
            if let Err(e) = hash_file(&part, &mut sha, &mut md5).await {
                tracing::warn!(error = %e, "cannot read the partial download; starting over");
                let _ = tokio::fs::remove_file(&part).await;
                have = 0;
                sha = Sha256::new();
                md5 = Md5::new();
            }
        }
        if !self.same_origin(&url) {
            tracing::warn!(url, endpoint = self.config.endpoint, "the release is served from another origin than the server's: downloaded without credentials (its sha256 decides)");
        }
        let res = match self.get_following(&url, have).await {
            Err(ClientError::Status { status, .. })
                if status == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 =>
            {
                let _ = tokio::fs::remove_file(&part).await;
                tracing::warn!("the server cannot resume the download; starting over");
                have = 0;
                sha = Sha256::new();
                md5 = Md5::new();
                self.get_following(&url, 0).await?
            }
            other => other?,
        };
        let resumed = have > 0 && res.status() == StatusCode::PARTIAL_CONTENT;
        let mut file = if resumed {
            tracing::info!(offset = have, "resuming the download where it stopped");
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(&part)
                .await
                .map_err(ioerr)?
        } else {
            if have > 0 {
                tracing::info!("the server sent the whole file; starting the download over");
                sha = Sha256::new();
                md5 = Md5::new();
            }
            have = 0;
            tokio::fs::File::create(&part).await.map_err(ioerr)?
        };
        let mut size = have;
        progress.store(size, std::sync::atomic::Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let mut stream = res.bytes_stream();
        let idle = Duration::from_secs(60);
        loop {
            let chunk = match tokio::time::timeout(idle, stream.next()).await {
                // The part stays: the next attempt resumes it.
                Err(_) => {
                    return Err(ClientError::Stalled {
                        url,
                        secs: idle.as_secs(),
                    });
                }
                Ok(None) => break,
                Ok(Some(c)) => c.map_err(|source| ClientError::Http {
                    url: url.clone(),
                    source,
                })?,
            };
            size += chunk.len() as u64;
            if let Some(l) = limit {
                if size > l {
                    drop(file);
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(ClientError::Size {
                        url,
                        expected: l,
                        actual: size,
                    });
                }
            }
            sha.update(&chunk);
            md5.update(&chunk);
            progress.store(size, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = file.write_all(&chunk).await {
                // A full or failing disk: leave nothing behind.
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(ioerr(e));
            }
            if let Some(rate) = rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64((size - have) as f64 / rate as f64);
                let elapsed = started.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
        }
        file.sync_all().await.map_err(ioerr)?;
        drop(file);
        let got = Downloaded {
            sha256: hex::encode(sha.finalize()),
            md5: hex::encode(md5.finalize()),
            size,
        };
        let mismatch = match expect {
            Expect::Sha256 { hex, size: want } => {
                if let Some(w) = want.filter(|w| *w != got.size) {
                    Some(ClientError::Size {
                        url: url.clone(),
                        expected: w,
                        actual: got.size,
                    })
                } else if !hex.eq_ignore_ascii_case(&got.sha256) {
                    Some(ClientError::Checksum {
                        url: url.clone(),
                        algo: "sha256",
                        expected: hex.into(),
                        actual: got.sha256.clone(),
                    })
                } else {
                    None
                }
            }
            Expect::Md5(hex) => {
                (!hex.eq_ignore_ascii_case(&got.md5)).then(|| ClientError::Checksum {
                    url: url.clone(),
                    algo: "md5",
                    expected: hex.into(),
                    actual: got.md5.clone(),
                })
            }
        };
        if let Some(e) = mismatch {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|source| ClientError::Io {
                path: dest.display().to_string(),
                source,
            })?;
        Ok(got)
    }
}
