//! The HTTP client of the server's v2 API.
//!
//! Owns: the connection (`--server`, `--token`, `--ca-file`), the bearer
//! token on every request, and turning a request that failed into one
//! readable error: the server's own reason, a refused token, a `--server`
//! with a path, and for a request that never got an answer what to do
//! about it (`transport_hint`, from the error's type, never its text).
//! Must not: know any command or what an endpoint's answer means, or print.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{header, Method, StatusCode};

use crate::exit::UsageError;

/// The v2 API of one server, called with one operator token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A client for the server at `server` (a `UsageError` without an
    /// `http://` or `https://` scheme), trusting the CA certificates in
    /// `ca_file` besides the system's.
    pub fn connect(
        server: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Api> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            // Below the 20 s the server keeps an idle connection (`command send`
            // polls for minutes on one client).
            .pool_idle_timeout(Duration::from_secs(10));
        if let Some(ca) = ca_file {
            let pem = fs_err::read(ca)?;
            for c in
                reqwest::Certificate::from_pem_bundle(&pem).context("while reading the CA file")?
            {
                b = b.add_root_certificate(c);
            }
        }
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(UsageError(format!(
                "--server {:?} needs a scheme: http://{0} or https://{0}",
                server
            ))
            .into());
        }
        Ok(Api {
            http: b.build()?,
            base: server.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// A request to `path` (below the server's base URL), with the token.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            rb = rb.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        rb
    }

    /// Sends the request; an answer other than a success becomes an error
    /// that says why.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let res = rb.send().await.map_err(|e| {
            let hint = transport_hint(&e, &self.base);
            anyhow::Error::new(e).context(format!("{}{hint}", self.unreachable()))
        })?;
        if res.status().is_success() {
            return Ok(res);
        }
        if res.status() == StatusCode::NOT_FOUND
            && res
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"))
        {
            bail!(
                "{} answered 404 for {}: check --server (the server's base URL, without a path)",
                self.base,
                res.url().path()
            );
        }
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(text);
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "the server refused the token ({status}): {reason}; set --token or PALETTE_TOKEN"
            );
        }
        bail!("the server answered {status}: {}", reason.trim())
    }

    fn unreachable(&self) -> String {
        format!("while contacting {}", self.base)
    }

    /// Sends the request and reads the answer's JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let res = self.send(rb).await?;
        res.json()
            .await
            .context("while reading the server's answer")
    }

    /// Sends the request as it is: any answer the server gives is `Ok`
    /// (only a request that got none is an error).
    pub async fn execute(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let req = rb.build()?;
        self.http
            .execute(req)
            .await
            .with_context(|| self.unreachable())
    }

    /// GETs `path`: `None` when the server answers 404, the answer when it
    /// succeeds; any other answer is an error that says why (asked again
    /// through `send` for its readable error).
    pub async fn get_unless_missing(
        &self,
        path: &str,
    ) -> anyhow::Result<Option<reqwest::Response>> {
        let res = self.execute(self.req(Method::GET, path)).await?;
        match res.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(res)),
            _ => self.send(self.req(Method::GET, path)).await.map(Some),
        }
    }
}

/// The TLS error inside `e`, looking through io::Errors (whose source()
/// skips the error they wrap).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_rustls(inner)
}

/// What to do about a request that never got an answer, from the error's
/// type (never its text): TLS trouble, a refused connection, a timeout.
fn transport_hint(e: &reqwest::Error, base: &str) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        let tls = find_rustls(s);
        if let Some(tls) = tls {
            return match tls {
                rustls::Error::InvalidCertificate(_) => {
                    ": the server's certificate is not trusted — pass --ca-file with the CA that issued it (the server must present a certificate issued by that CA, not the CA itself)"
                }
                rustls::Error::InvalidMessage(_) => {
                    ": the server does not speak TLS there — use http:// (or give the server --tls-cert/--tls-key)"
                }
                _ => ": the TLS handshake failed",
            };
        }
        source = s.source();
    }
    if e.is_timeout() {
        ": no answer in time"
    } else if e.is_connect() {
        ": nothing answers there — is palette-server running, and is --server right?"
    } else if base.starts_with("http://") {
        ": the connection broke — if the server uses TLS, use https://"
    } else {
        ""
    }
}
