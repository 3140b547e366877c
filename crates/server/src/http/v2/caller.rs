//! Who is calling on the v2 API: the `Operator` and `Caller` extractors,
//! refusals with the failed-authentication limiter, and the source address
//! audit entries carry.

#[allow(unused_imports)]
use super::*;

/// The answer to a caller below `min`: 401 without a known token, 403 with
/// one of too low a role. Counted and logged (never the secret).
pub(super) fn refuse(state: &AppState, parts: &Parts, have: Role, min: Role) -> V2Error {
    state.metrics.auth_failures.increment(1);
    // An unknown secret is a guess: counted against its address.
    if have == Role::Anonymous && crate::http::auth::presented_token(&parts.headers).is_some() {
        if let Some(ip) = source_ip(parts) {
            if state.auth_limiter.failed(ip) {
                tracing::warn!(
                    source = %ip,
                    failures = state.http.auth_limit.failures,
                    block_secs = state.http.auth_limit.block.as_secs(),
                    "too many failed authentications: this address is refused for a while"
                );
            }
        }
    }
    tracing::warn!(
        path = %parts.uri.path(),
        source = source_of(parts).unwrap_or_default(),
        role = ?have,
        needed = ?min,
        "request refused: credentials"
    );
    if have == Role::Anonymous {
        V2Error::new(StatusCode::UNAUTHORIZED, "missing or unknown token")
    } else {
        V2Error::new(StatusCode::FORBIDDEN, "an operator token is required")
    }
}

/// The caller's address, when the server knows it.
pub(super) fn source_of(parts: &Parts) -> Option<String> {
    source_ip(parts).map(|ip| ip.to_string())
}

pub(super) fn source_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Before any credential is checked: an address blocked for failing too
/// often is answered 429 while it presents credentials.
pub(super) fn not_blocked(state: &AppState, parts: &Parts) -> V2Result<()> {
    let (Some(ip), Some(token)) = (
        source_ip(parts),
        crate::http::auth::presented_token(&parts.headers),
    ) else {
        return Ok(());
    };
    // Limit what fails, not what succeeds: a credential that verifies is
    // served even from a blocked address (behind a load balancer, the
    // whole fleet may share one).
    if state.credential(token).is_some() {
        return Ok(());
    }
    match state.auth_limiter.blocked(ip) {
        None => Ok(()),
        Some(secs) => {
            let mut e = V2Error::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed authentications from {ip}; try again in {secs} s"),
            );
            e.retry_after_secs = Some(secs);
            Err(e)
        }
    }
}

/// An operator, authenticated once per request by this extractor (every
/// other caller is refused before the handler runs): the token's label and
/// the caller's address, for the audit log.
pub(crate) struct Operator {
    pub label: String,
    pub source: Option<String>,
}

impl axum::extract::FromRequestParts<AppState> for Operator {
    type Rejection = V2Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, V2Error> {
        not_blocked(state, parts)?;
        let cred =
            crate::http::auth::presented_token(&parts.headers).and_then(|t| state.credential(t));
        match cred.filter(|c| c.kind == TokenKind::Operator) {
            Some(c) => Ok(Operator {
                label: c.label.clone(),
                source: source_of(parts),
            }),
            None => Err(refuse(
                state,
                parts,
                role(state, &parts.headers),
                Role::Operator,
            )),
        }
    }
}

impl Operator {
    /// The audit entry of what this operator is about to do: it goes with
    /// the write, in its transaction (`store::Audit`).
    pub(crate) fn entry(&self, action: &str, detail: String) -> AuditEntry {
        AuditEntry::now(&self.label, self.source.as_deref(), action, detail)
    }
}

/// A command's target in words, for the audit log.
pub(crate) fn target_words(t: &Target) -> String {
    match t {
        Target::All => "every host".into(),
        Target::Hosts(h) => format!("host {}", h.join(", ")),
    }
}

/// Who may act for a host, authenticated once per request (anyone else is
/// refused before the handler runs): an operator, the fleet's enrollment
/// key (a license key), or one host's own token.
pub(crate) enum Caller {
    Operator(Operator),
    /// A license key; the hash the new-host budget is counted under.
    Enrollment(TokenHash),
    /// A host token: it acts for this host name only.
    Host(String),
}

impl axum::extract::FromRequestParts<AppState> for Caller {
    type Rejection = V2Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, V2Error> {
        not_blocked(state, parts)?;
        let cred =
            crate::http::auth::presented_token(&parts.headers).and_then(|t| state.credential(t));
        match cred.as_deref().map(|c| c.kind) {
            Some(TokenKind::Operator) => Ok(Caller::Operator(Operator {
                label: cred.expect("matched").label.clone(),
                source: source_of(parts),
            })),
            Some(TokenKind::Host) => Ok(Caller::Host(cred.expect("matched").label.clone())),
            Some(TokenKind::Agent) => Ok(Caller::Enrollment(
                credential_key(&parts.headers).expect("a token was presented"),
            )),
            None => Err(refuse(state, parts, Role::Anonymous, Role::Host)),
        }
    }
}

impl Caller {
    /// Refuses a caller that may not act for `host`: a host token for any
    /// other host; the enrollment key for a host that has enrolled (only
    /// its own token may act for it then), or for any host when the server
    /// requires host tokens.
    pub(super) fn act_for(&self, state: &AppState, host: &str) -> V2Result<()> {
        let refusal = match self {
            Caller::Operator(_) => return Ok(()),
            Caller::Host(own) if own == host => return Ok(()),
            Caller::Host(own) => format!("this host token belongs to {own}; it may not act for {host}"),
            Caller::Enrollment(_) if state.is_enrolled(host) => format!(
                "{host} has enrolled: only its own host token may act for it (an enrollment key may not)"
            ),
            Caller::Enrollment(_) if state.settings.require_host_tokens => format!(
                "this server requires host tokens: {host} must enroll first (POST /api/v2/enroll)"
            ),
            Caller::Enrollment(_) => return Ok(()),
        };
        state.metrics.auth_failures.increment(1);
        tracing::warn!(
            host,
            reason = refusal,
            "request refused: not this caller's host"
        );
        Err(V2Error::new(StatusCode::FORBIDDEN, refusal))
    }

    /// Refuses the enrollment key where the server requires host tokens:
    /// it may enroll, nothing else (listing releases, downloads included).
    pub(super) fn beyond_enrolling(&self, state: &AppState) -> V2Result<()> {
        if matches!(self, Caller::Enrollment(_)) && state.settings.require_host_tokens {
            state.metrics.auth_failures.increment(1);
            return Err(V2Error::new(
                StatusCode::FORBIDDEN,
                "this server requires host tokens: the enrollment key may only enroll (POST /api/v2/enroll)",
            ));
        }
        Ok(())
    }

    /// Counts a new host name against an enrollment key's budget.
    pub(super) fn admit(&self, state: &AppState, host: &str) -> V2Result<()> {
        match self {
            Caller::Enrollment(key) => Ok(state.admit_host(host, key)?),
            _ => Ok(()),
        }
    }
}
