//! Dashboard sessions: the login and logout, the session cookie and its
//! CSRF token, and the `UiSession` extractor every page takes. Sessions
//! live in the store as hashes only.

#[allow(unused_imports)]
use super::*;

/// A logged-in operator, found once per request from the session cookie.
/// Without one: a page redirects to the login, a form post is refused.
pub(crate) struct UiSession {
    pub(super) label: String,
    pub(super) csrf: String,
    source: Option<String>,
}

pub(crate) enum NoSession {
    Login,
    Refused,
    /// The store could not be asked (its public reason).
    Store(String),
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::Login => Redirect::to("/ui/login").into_response(),
            NoSession::Refused => page_error(
                StatusCode::FORBIDDEN,
                "no session: log in first (nothing was changed)",
            ),
            NoSession::Store(why) => page_error(StatusCode::SERVICE_UNAVAILABLE, &why),
        }
    }
}

pub(super) fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

impl FromRequestParts<AppState> for UiSession {
    type Rejection = NoSession;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, NoSession> {
        let reject = if parts.method == axum::http::Method::GET {
            NoSession::Login
        } else {
            NoSession::Refused
        };
        let Some(sid) = cookie_value(&parts.headers) else {
            return Err(reject);
        };
        let id_hash = session_hash(&sid);
        let row = match state.ui_session(&id_hash).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(reject),
            Err(e) => return Err(NoSession::Store(e.public_reason())),
        };
        let live = row.expires_at > now_ms();
        let cred = hex::decode(&row.token_hash)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .and_then(|h| state.credential_by_hash(&h));
        match cred {
            Some(c) if live && c.kind == TokenKind::Operator => Ok(UiSession {
                label: c.label.clone(),
                csrf: row.csrf,
                source: parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip().to_string()),
            }),
            _ => {
                // Expired, or its token revoked: gone for every replica.
                if let Err(e) = state.end_ui_session(&id_hash).await {
                    tracing::warn!(error = %crate::chain::error_chain(&e), "could not delete an ended dashboard session; it is deleted at a later login");
                }
                Err(reject)
            }
        }
    }
}

/// What the store keeps of a session cookie: its SHA-256 (a read of the
/// database gives nobody a usable cookie).
pub(super) fn session_hash(sid: &str) -> String {
    hex::encode(crate::http::auth::token_hash(sid))
}

impl UiSession {
    /// Refuses a form whose CSRF token is not this session's.
    pub(super) fn check(&self, form: &HashMap<String, String>) -> Result<(), UiError> {
        let given = form.get("csrf").map(String::as_bytes).unwrap_or_default();
        let want = self.csrf.as_bytes();
        let same = given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            tracing::warn!(
                operator = self.label,
                "dashboard form refused: wrong CSRF token"
            );
            Err(UiError::Csrf)
        }
    }

    /// The audit entry of what this operator is about to do, stored with
    /// the write (`store::Audit`).
    pub(super) fn entry(&self, action: &str, detail: String) -> crate::store::AuditEntry {
        crate::store::AuditEntry::now(&self.label, self.source.as_deref(), action, detail)
    }
}

/// Why a dashboard write was refused or failed.
pub(crate) enum UiError {
    /// The form's CSRF token is not the session's: nothing changed.
    Csrf,
    /// The store failed (its public reason).
    Store(String),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::Csrf => page_error(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is not this session's (reload the page); nothing was changed",
            ),
            UiError::Store(why) => page_error(StatusCode::SERVICE_UNAVAILABLE, &why),
        }
    }
}

// ---- login --------------------------------------------------------------

pub(super) async fn login_page() -> Response {
    html_response(StatusCode::OK, login_form(None))
}

pub(super) fn login_form(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            @if let Some(e) = error { p.error #login-error { (e) } }
            form.card method="post" action="/ui/login" {
                label for="token" { "Operator token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button #login type="submit" { "Log in" }
            }
            p.hint { "An operator token (" code { "palettectl token new-operator LABEL" } ", or the server's admin token)." }
        },
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

/// The caller's address, when the server knows it.
pub(crate) struct SourceIp(Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for SourceIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(SourceIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

pub(super) async fn login(
    State(state): State<AppState>,
    SourceIp(ip): SourceIp,
    Form(f): Form<LoginForm>,
) -> Response {
    let ok = state
        .credential(f.token.trim())
        .is_some_and(|c| c.kind == TokenKind::Operator);
    // Limit what fails, not what succeeds: a token that verifies logs in
    // even from a blocked address.
    if let Some(secs) = ip
        .filter(|_| !ok)
        .and_then(|ip| state.auth_limiter.blocked(ip))
    {
        let mut res = html_response(
            StatusCode::TOO_MANY_REQUESTS,
            login_form(Some(&format!(
                "too many failed logins from this address; try again in {secs} s"
            ))),
        );
        res.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, secs.into());
        return res;
    }
    if !ok {
        state.metrics.auth_failures.increment(1);
        if let Some(ip) = ip {
            state.auth_limiter.failed(ip);
        }
        tracing::warn!(source = ?ip, "dashboard login refused");
        return html_response(
            StatusCode::UNAUTHORIZED,
            login_form(Some("that is not a live operator token")),
        );
    }
    let sid = random_hex();
    let row = crate::store::UiSessionRow {
        id_hash: session_hash(&sid),
        token_hash: hex::encode(crate::http::auth::token_hash(f.token.trim())),
        csrf: random_hex(),
        expires_at: now_ms() + SESSION_TTL.as_millis() as Millis,
    };
    if let Err(e) = state.open_ui_session(&row, now_ms()).await {
        tracing::error!(error = %crate::chain::error_chain(&e), "dashboard login failed: the session could not be stored");
        return html_response(
            StatusCode::SERVICE_UNAVAILABLE,
            login_form(Some(&e.public_reason())),
        );
    }
    let label = state
        .credential(f.token.trim())
        .map(|c| c.label.clone())
        .unwrap_or_default();
    tracing::info!(operator = label, source = ?ip, "dashboard login");
    let cookie = format!(
        "{COOKIE}={sid}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if state.http.tls { "; Secure" } else { "" }
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/".to_string()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

pub(super) async fn logout(
    State(state): State<AppState>,
    s: UiSession,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(&form) {
        return r.into_response();
    }
    if let Some(sid) = cookie_value(&headers) {
        if let Err(e) = state.end_ui_session(&session_hash(&sid)).await {
            return UiError::Store(e.public_reason()).into_response();
        }
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/login".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

// ---- pages --------------------------------------------------------------
