//! This host's own credential: the host token the server gave it at
//! enrollment, kept in `state/host-token` (never in the shared
//! `Config.yml`), readable by the watchdog's user only. The v2 API is
//! spoken with it; the license key only enrolls (and speaks v1).
//!
//! A token that could not be written is used from memory and written again
//! at the next check-in: losing it would leave the name enrolled with a
//! token nobody holds, which only an operator can free.
//!
//! Must not: send a token to a server other than the one that issued it,
//! or write it into `Config.yml`; it knows only the client.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::client::{Client, ClientError};

pub(crate) struct Identity {
    path: PathBuf,
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    token: Option<Arc<str>>,
    /// The server that issued it (`Webservice.Endpoint`).
    endpoint: Option<String>,
    /// Written to `path` (false after a failed write).
    saved: bool,
    /// The server answered 404 to enrollment (it predates it): check in
    /// with the license key until the watchdog restarts.
    unsupported: bool,
}

/// The longest token accepted from the file (a server's are 68 bytes).
const MAX_TOKEN: usize = 1024;

/// The file's text: the token, then the server it was issued by.
fn file_text(token: &str, endpoint: Option<&str>) -> String {
    format!("{token}\n{}\n", endpoint.unwrap_or_default())
}

impl Identity {
    pub(crate) fn load(path: PathBuf) -> Identity {
        let (token, endpoint) = match fs_err::read_to_string(&path) {
            Ok(text) => {
                let mut lines = text.lines().map(str::trim);
                let t = lines.next().unwrap_or_default();
                let endpoint = lines.next().filter(|e| !e.is_empty()).map(String::from);
                if t.is_empty() || t.len() > MAX_TOKEN || t.contains(char::is_whitespace) {
                    tracing::warn!(path = %path.display(), "the host token file is not a token; enrolling again");
                    (None, None)
                } else {
                    (Some(Arc::from(t)), endpoint)
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the host token; enrolling again");
                (None, None)
            }
        };
        Identity {
            path,
            inner: Mutex::new(State {
                saved: token.is_some(),
                token,
                endpoint,
                unsupported: false,
            }),
        }
    }

    /// This host's token for the server at `endpoint`: a token is only ever
    /// sent to the server that issued it (a config pointing the host at
    /// another server makes it enroll there).
    pub(crate) fn token_for(&self, endpoint: &str) -> Option<Arc<str>> {
        let s = self.inner.lock().unwrap();
        match &s.endpoint {
            Some(e) if e.trim_end_matches('/') != endpoint.trim_end_matches('/') => None,
            _ => s.token.clone(),
        }
    }

    /// Keeps a new token: in memory at once, on disk when it can.
    fn adopt(&self, token: &str, endpoint: &str) {
        let mut s = self.inner.lock().unwrap();
        s.token = Some(Arc::from(token));
        s.endpoint = Some(endpoint.to_string());
        s.saved = false;
        drop(s);
        self.retry_save();
    }

    /// Writes a token not yet on disk (a no-op when it is).
    pub(crate) fn retry_save(&self) {
        let mut s = self.inner.lock().unwrap();
        let Some(token) = s.token.clone().filter(|_| !s.saved) else {
            return;
        };
        let text = file_text(&token, s.endpoint.as_deref());
        match palette_host::fsx::atomic_write(&self.path, text.as_bytes()) {
            Ok(()) => s.saved = true,
            Err(e) => tracing::error!(
                error = %e,
                path = %self.path.display(),
                "cannot store this host's token; using it from memory and trying again at the next check-in"
            ),
        }
    }

    /// The server refused the token (revoked, or a server that never
    /// issued it): forgotten, so the next check-in enrolls again.
    pub(crate) fn forget(&self) {
        let mut s = self.inner.lock().unwrap();
        s.token = None;
        s.endpoint = None;
        s.saved = false;
        drop(s);
        match fs_err::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(error = %e, "cannot remove the refused host token"),
        }
    }

    /// The token a client made by `Ctx::client` lacks: a new one when this
    /// host has none and enrolls now (`None` when it already has one, or
    /// the server does not know enrollment and the license key is used, as
    /// before).
    pub(crate) async fn ensure(
        &self,
        client: &Client,
        hostname: &str,
    ) -> Result<Option<Arc<str>>, ClientError> {
        if client.has_host_token() || self.inner.lock().unwrap().unsupported {
            return Ok(None);
        }
        match client.enroll(hostname).await {
            Ok(token) => {
                self.adopt(&token, &client.config.endpoint);
                tracing::info!(
                    host = hostname,
                    path = %self.path.display(),
                    "enrolled: this host speaks to the server with its own host token now"
                );
                Ok(Some(Arc::from(token)))
            }
            // A server that predates enrollment (no such route), or one whose
            // answer has no token: the license key, as before — sent to the
            // same server either way, so nothing is given away.
            Err(ClientError::Status { status, .. })
                if status == reqwest::StatusCode::NOT_FOUND
                    || status == reqwest::StatusCode::METHOD_NOT_ALLOWED =>
            {
                self.inner.lock().unwrap().unsupported = true;
                tracing::info!("the server does not know enrollment (no /api/v2/enroll): using the license key");
                Ok(None)
            }
            Err(e @ ClientError::Decode { .. }) => {
                self.inner.lock().unwrap().unsupported = true;
                tracing::warn!(error = %e, "the server's enrollment answer holds no host token: using the license key");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The text `palette-watchdog enroll` writes for a token `endpoint` issued.
pub fn token_file_text(token: &str, endpoint: &str) -> String {
    file_text(token, Some(endpoint))
}

/// Whether a failed request shows the server refusing this host's token.
pub(crate) fn token_refused(client: &Client, err: &ClientError) -> bool {
    client.has_host_token()
        && matches!(err, ClientError::Status { status, .. } if *status == reqwest::StatusCode::UNAUTHORIZED)
}
