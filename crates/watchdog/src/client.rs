//! The one HTTP client: verified TLS (system roots plus an optional CA
//! file), the proxy from `Config.yml`, timeouts, streaming downloads. Speaks
//! both the v2 API and the legacy v1 API.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use md5::Md5;
use palette_host::agent_config::AgentConfig;
use palette_host::settings::ServerSettings;
use palette_protocol::v1;
use palette_protocol::v2::{CheckinRequest, CheckinResponse, ConfigRevision};
use reqwest::{header, StatusCode};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("could not build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("could not read the CA file {path}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the client certificate or key {path}")]
    ClientCertFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the client certificate {cert} and its key are not a usable PEM identity")]
    ClientCert {
        cert: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the CA file {path} holds no usable PEM certificate")]
    CaPem {
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url} answered with a body that could not be read: {reason}")]
    Decode { url: String, reason: String },
    #[error("{url} answered with more than {limit} bytes; refused")]
    TooLarge { url: String, limit: u64 },
    #[error("the license at {url} is not valid")]
    LicenseInvalid { url: String },
    #[error("download {url} stalled: no data for {secs} s")]
    Stalled { url: String, secs: u64 },
    #[error("download {url} has {algo} {actual}, expected {expected}")]
    Checksum {
        url: String,
        algo: &'static str,
        expected: String,
        actual: String,
    },
    #[error("download {url} is {actual} bytes, expected {expected}")]
    Size {
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("could not write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether trying again later may succeed (network trouble, a server
    /// error, a stalled transfer, a local disk problem) — as opposed to an
    /// answer that will not change (bad checksum, refused credentials).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http { .. } | ClientError::Io { .. } | ClientError::Stalled { .. } => true,
            ClientError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// What the operator can do about a request that never got an answer,
    /// read from the error's type (never its text): `None` when there is
    /// no hint to give.
    pub fn transport_hint(&self) -> Option<TransportHint> {
        let ClientError::Http { source, .. } = self else {
            return None;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            std::error::Error::source(source);
        while let Some(e) = next {
            if let Some(tls) = find_rustls(e) {
                return Some(match tls {
                    rustls::Error::InvalidCertificate(_) => TransportHint::UntrustedCertificate,
                    rustls::Error::InvalidMessage(_) => TransportHint::NotTls,
                    _ => TransportHint::TlsHandshake,
                });
            }
            next = e.source();
        }
        if source.is_connect() {
            Some(TransportHint::NothingListens)
        } else {
            None
        }
    }
}

/// Why a request never got an answer, as far as the operator can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportHint {
    /// The server's certificate does not chain to a trusted CA.
    UntrustedCertificate,
    /// The server does not speak TLS at that address.
    NotTls,
    /// The TLS handshake failed for another reason.
    TlsHandshake,
    /// Nothing accepted the connection.
    NothingListens,
}

impl std::fmt::Display for TransportHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportHint::UntrustedCertificate => {
                "the server's certificate is not trusted: pass --ca-file (server.ca_file in watchdog.yml) with the CA that issued it"
            }
            TransportHint::NotTls => {
                "the server does not speak TLS there: use http:// (or give the server --tls-cert/--tls-key)"
            }
            TransportHint::TlsHandshake => "the TLS handshake failed",
            TransportHint::NothingListens => {
                "nothing answers there: is palette-server running, and is the address right?"
            }
        })
    }
}

/// The rustls error inside an error, looking through `std::io::Error`
/// wrappers (hyper and reqwest carry it so).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_rustls(inner)
}

/// The most the watchdog reads of a JSON answer (a check-in, a version).
pub const MAX_JSON_BYTES: u64 = 4 * 1024 * 1024;
/// The most it reads of a `Config.yml`.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// The most it keeps of an error answer's body (for the message).
const MAX_ERROR_BYTES: u64 = 4 * 1024;

/// Reads a body, refusing it beyond `limit` bytes (announced or received):
/// a hostile or broken server cannot make the watchdog hold more.
async fn read_capped(
    res: reqwest::Response,
    url: &str,
    limit: u64,
) -> Result<bytes::Bytes, ClientError> {
    if res.content_length().is_some_and(|n| n > limit) {
        return Err(ClientError::TooLarge {
            url: url.into(),
            limit,
        });
    }
    let mut buf = bytes::BytesMut::new();
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| ClientError::Http {
            url: url.into(),
            source,
        })?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ClientError::TooLarge {
                url: url.into(),
                limit,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

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

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub config: AgentConfig,
    timeout: Duration,
    /// This host's own token (see `enroll`): used on the v2 API in place
    /// of the license key, which the v1 API keeps using.
    host_token: Option<std::sync::Arc<str>>,
}

/// The most redirects a download follows.
const MAX_REDIRECTS: usize = 5;

/// How long an idle kept-alive connection may be reused (below the 20 s a
/// palette-server keeps one).
pub const POOL_IDLE: Duration = Duration::from_secs(10);

impl Client {
    /// Builds a client for the server and credentials in `config`.
    pub fn new(config: AgentConfig, server: &ServerSettings) -> Result<Client, ClientError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            // A kept-alive connection idle longer than this is not reused:
            // servers close idle ones (ours after 20 s, its header timer),
            // and a request written into a connection the server just
            // closed fails with a broken pipe.
            .pool_idle_timeout(POOL_IDLE)
            // Redirects are never followed with a credential: the client
            // follows none itself, and `download` follows them bare.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("palette-watchdog/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &server.ca_file {
            let pem = fs_err::read(ca).map_err(|source| ClientError::CaFile {
                path: ca.display().to_string(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ClientError::CaPem {
                    path: ca.display().to_string(),
                    source,
                }
            })?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let (Some(cert), Some(key)) = (&server.client_cert, &server.client_key) {
            let mut pem = Vec::new();
            for p in [cert, key] {
                pem.extend(
                    fs_err::read(p).map_err(|source| ClientError::ClientCertFile {
                        path: p.display().to_string(),
                        source,
                    })?,
                );
                pem.push(b'\n');
            }
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|source| ClientError::ClientCert {
                    cert: cert.display().to_string(),
                    source,
                })?;
            b = b.identity(identity);
        }
        if server.insecure_skip_verify {
            tracing::warn!("TLS certificate verification is OFF (server.insecure_skip_verify): anyone on the path can impersonate the server");
            b = b.danger_accept_invalid_certs(true);
        }
        // The Config.yml proxy (credentials as `http://user:pass@host:port`),
        // bypassed for the hosts in NO_PROXY; without one, the usual
        // HTTP_PROXY / HTTPS_PROXY / NO_PROXY variables apply.
        if let Some(p) = &config.proxy {
            let proxy = reqwest::Proxy::all(p)
                .map_err(ClientError::Build)?
                .no_proxy(reqwest::NoProxy::from_env());
            b = b.proxy(proxy);
        }
        Ok(Client {
            http: b.build().map_err(ClientError::Build)?,
            config,
            timeout: Duration::from_secs(server.timeout_secs),
            host_token: None,
        })
    }

    /// This client, acting with `token` (this host's own) on the v2 API.
    pub fn with_host_token(mut self, token: Option<std::sync::Arc<str>>) -> Client {
        self.host_token = token;
        self
    }

    pub fn has_host_token(&self) -> bool {
        self.host_token.is_some()
    }

    /// The credential for `url`: the host token on the v2 API when this
    /// host has one, else the license key (the only one v1 knows) — and
    /// only for the origin (scheme, host, port) this host checks in with.
    /// A release URL naming another origin gets no credential at all.
    fn auth(&self, url: &str) -> Option<String> {
        if !self.same_origin(url) {
            return None;
        }
        Some(match &self.host_token {
            Some(t) if url.contains("/api/v2/") => format!("Bearer {t}"),
            _ => format!("Token {}", self.config.license_key),
        })
    }

    /// Whether `url` has the scheme, host and port of `Webservice.Endpoint`.
    pub fn same_origin(&self, url: &str) -> bool {
        match (url::Url::parse(url), url::Url::parse(&self.config.endpoint)) {
            (Ok(a), Ok(b)) => a.origin().is_tuple() && a.origin() == b.origin(),
            _ => false,
        }
    }

    /// A request with this client's token and the per-request timeout.
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, url).timeout(self.timeout);
        match self.auth(url) {
            Some(a) => rb.header(header::AUTHORIZATION, a),
            None => rb,
        }
    }

    /// Enrolls this host with the fleet's enrollment key (the license key):
    /// the server answers its own host token, shown once.
    pub async fn enroll(&self, hostname: &str) -> Result<String, ClientError> {
        #[derive(serde::Deserialize)]
        struct Enrolled {
            host_token: String,
        }
        let url = self.url("/api/v2/enroll");
        let rb = self
            .http
            .post(&url)
            .header(
                header::AUTHORIZATION,
                format!("Token {}", self.config.license_key),
            )
            .timeout(self.timeout)
            .json(&serde_json::json!({ "hostname": hostname }));
        let res = self.send(rb, &url).await?;
        let e: Enrolled = Self::json(res, &url).await?;
        Ok(e.host_token)
    }

    fn url(&self, path: &str) -> String {
        self.config.url(path)
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let res = rb.send().await.map_err(|source| ClientError::Http {
            url: url.into(),
            source,
        })?;
        Self::check(res, url).await
    }

    /// A success answer, or its status and the start of its body.
    async fn check(res: reqwest::Response, url: &str) -> Result<reqwest::Response, ClientError> {
        if res.status().is_success() {
            Ok(res)
        } else {
            let status = res.status();
            // Only the start of an error body is kept, and only that much read.
            let mut head = Vec::new();
            let mut stream = res.bytes_stream();
            while let Some(Ok(chunk)) = stream.next().await {
                let room = MAX_ERROR_BYTES as usize - head.len();
                head.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if head.len() >= MAX_ERROR_BYTES as usize {
                    break;
                }
            }
            let body = String::from_utf8_lossy(&head);
            Err(ClientError::Status {
                url: url.into(),
                status,
                body: body.trim().chars().take(300).collect(),
            })
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        res: reqwest::Response,
        url: &str,
    ) -> Result<T, ClientError> {
        let bytes = read_capped(res, url, MAX_JSON_BYTES).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: url.into(),
            reason: e.to_string(),
        })
    }

    // ---- v2 -------------------------------------------------------------

    pub async fn checkin(
        &self,
        req: &CheckinRequest,
        wait: Duration,
    ) -> Result<CheckinResponse, ClientError> {
        let url = format!("{}?wait={}", self.url("/api/v2/checkin"), wait.as_secs());
        // The long poll may take `wait` longer than any other request.
        let rb = self
            .request(reqwest::Method::POST, &url)
            .json(req)
            .timeout(wait + self.timeout);
        let res = self.send(rb, &url).await?;
        Self::json(res, &url).await
    }

    /// The newest desired config for `host`: (revision, bytes).
    pub async fn desired_config(&self, host: &str) -> Result<(Option<i64>, Vec<u8>), ClientError> {
        let url = self.url(&format!(
            "/api/v2/hosts/{host}/configs/latest?source=desired"
        ));
        self.get_config(url).await
    }

    pub async fn report_config(
        &self,
        host: &str,
        body: Vec<u8>,
    ) -> Result<ConfigRevision, ClientError> {
        let url = self.url(&format!("/api/v2/hosts/{host}/configs/reported"));
        let rb = self.request(reqwest::Method::POST, &url).body(body);
        let res = self.send(rb, &url).await?;
        Self::json(res, &url).await
    }

    // ---- v1 -------------------------------------------------------------

    /// `GET /command?hostname=H`; `None` on 204.
    pub async fn v1_command(&self, host: &str) -> Result<Option<v1::Command>, ClientError> {
        let url = format!("{}?hostname={host}", self.url("/command"));
        let rb = self.request(reqwest::Method::GET, &url);
        let res = self.send(rb, &url).await?;
        if res.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Self::json(res, &url).await.map(Some)
    }

    /// `GET /agent/version`; `None` on 404. The `platform` parameter lets
    /// our server offer what this platform installs (a legacy server
    /// ignores it and offers its MSI, which the update refuses by content).
    pub async fn v1_agent_version(
        &self,
        platform: &str,
    ) -> Result<Option<v1::AgentVersion>, ClientError> {
        let url = format!(
            "{}?platform={}",
            self.url("/agent/version"),
            url::form_urlencoded::byte_serialize(platform.as_bytes()).collect::<String>()
        );
        let rb = self.request(reqwest::Method::GET, &url);
        match self.send(rb, &url).await {
            Ok(res) => Self::json(res, &url).await.map(Some),
            Err(ClientError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /config?hostname=H`.
    pub async fn v1_config(&self, host: &str) -> Result<(Option<i64>, Vec<u8>), ClientError> {
        let url = format!("{}?hostname={host}", self.url("/config"));
        self.get_config(url).await
    }

    /// A config file and the revision the server gives it (header
    /// `X-Config-Revision`, sent by our server only).
    async fn get_config(&self, url: String) -> Result<(Option<i64>, Vec<u8>), ClientError> {
        let rb = self.request(reqwest::Method::GET, &url);
        let res = self.send(rb, &url).await?;
        let rev = res
            .headers()
            .get("x-config-revision")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let bytes = read_capped(res, &url, MAX_CONFIG_BYTES).await?;
        Ok((rev, bytes.to_vec()))
    }

    /// `PUT /config?hostname=H`, multipart field `uploadfile`.
    pub async fn v1_put_config(&self, host: &str, body: Vec<u8>) -> Result<(), ClientError> {
        let url = format!("{}?hostname={host}", self.url("/config"));
        let part = reqwest::multipart::Part::bytes(body).file_name("Config.yml");
        let form = reqwest::multipart::Form::new()
            .text("hostname", host.to_string())
            .part("uploadfile", part);
        let rb = self.request(reqwest::Method::PUT, &url).multipart(form);
        self.send(rb, &url).await.map(|_| ())
    }

    /// `GET /license` with this client's token: does the server accept it?
    pub async fn check_license(&self) -> Result<(), ClientError> {
        let url = self.url("/license");
        let rb = self.request(reqwest::Method::GET, &url);
        let res = self.send(rb, &url).await?;
        let lic: v1::License = Self::json(res, &url).await?;
        if lic.valid {
            Ok(())
        } else {
            Err(ClientError::LicenseInvalid { url })
        }
    }

    // ---- downloads ------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoint: &str) -> Client {
        let config = AgentConfig {
            license_key: "fleet-key".into(),
            endpoint: endpoint.into(),
            proxy: None,
        };
        Client::new(config, &ServerSettings::default())
            .unwrap()
            .with_host_token(Some("host-token".into()))
    }

    #[test]
    fn credentials_go_only_to_the_check_in_origin() {
        let c = client("https://palette.example:8443");
        let v2 = "https://palette.example:8443/api/v2/releases/1/download";
        assert_eq!(c.auth(v2).as_deref(), Some("Bearer host-token"));
        assert_eq!(
            c.auth("https://palette.example:8443/api/v1/license")
                .as_deref(),
            Some("Token fleet-key")
        );
        for other in [
            "http://palette.example:8443/api/v2/releases/1/download", // scheme
            "https://palette.example/api/v2/releases/1/download",     // port
            "https://evil.example:8443/api/v2/releases/1/download",   // host
            "https://palette.example.evil:8443/api/v2/x",
            "not a url",
        ] {
            assert_eq!(c.auth(other), None, "{other}");
        }
        // The default port is the scheme's.
        let c = client("https://palette.example/");
        assert!(c
            .auth("https://palette.example:443/api/v2/checkin")
            .is_some());
    }
}
