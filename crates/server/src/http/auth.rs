//! Credentials. Agents present a license key (`Authorization: Token KEY`, the
//! legacy header); operators a token (`Authorization: Bearer TOKEN` or
//! `Token TOKEN`). Tokens are kept only as SHA-256 hashes and looked up by
//! hash, so no comparison ever runs over the secret itself.

use axum::http::HeaderMap;

pub use crate::fleet::credentials::{token_hash, TokenHash};
use crate::http::AppState;
use crate::store::TokenKind;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Anonymous,
    /// One host's own token: it acts for that host only, on the v2 API.
    Host,
    /// A license key (enrollment key).
    Agent,
    Operator,
}

/// The token in the `Authorization` header, if any.
pub fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
        let token = token.trim();
        (!token.is_empty()).then_some(token)
    } else {
        None
    }
}

/// The key a credential is counted under (license keys compare
/// case-insensitively, so they are counted that way too).
pub fn credential_key(headers: &HeaderMap) -> Option<TokenHash> {
    presented_token(headers).map(|t| token_hash(&t.to_lowercase()))
}

pub fn role(state: &AppState, headers: &HeaderMap) -> Role {
    match presented_token(headers).and_then(|t| state.credential(t)) {
        Some(c) => match c.kind {
            TokenKind::Operator => Role::Operator,
            TokenKind::Agent => Role::Agent,
            TokenKind::Host => Role::Host,
        },
        None => Role::Anonymous,
    }
}
