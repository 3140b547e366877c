//! The one HTTP client: verified TLS (system roots plus an optional CA
//! file, an optional client certificate), the proxy from `Config.yml`,
//! timeouts, capped answers. Speaks both the v2 API and the legacy v1 API;
//! downloads are in `download`, errors in `error`. The credential (this
//! host's token on v2, else the license key) goes only to the origin this
//! host checks in with.
//!
//! Must not: retry, back off or log a failure as final — the callers
//! decide on the error's variant; no knowledge of the watchdog's state.

mod download;
mod error;

use std::time::Duration;

use futures_util::StreamExt;
use palette_host::agent_config::AgentConfig;
use palette_host::settings::ServerSettings;
use palette_protocol::v1;
use palette_protocol::v2::{CheckinRequest, CheckinResponse, ConfigRevision};
use reqwest::{header, StatusCode};

pub use download::{Downloaded, Expect};
pub use error::{ClientError, TransportHint};

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

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub config: AgentConfig,
    timeout: Duration,
    /// This host's own token (see `enroll`): used on the v2 API in place
    /// of the license key, which the v1 API keeps using.
    host_token: Option<std::sync::Arc<str>>,
}

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
