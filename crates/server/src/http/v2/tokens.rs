//! Enrollment, agent and operator tokens (add, list, revoke, rotate) and
//! the audit log.

#[allow(unused_imports)]
use super::*;

#[derive(Deserialize)]
pub(super) struct EnrollBody {
    hostname: String,
}

/// A host's new credential, shown once.
#[derive(Serialize)]
pub(super) struct Enrolled {
    hostname: String,
    host_token: String,
    token_id: i64,
}

/// Enrolls a host: the fleet's enrollment key (or an operator) gets a new
/// host token for a host name that has none. 409 when it has one.
pub(super) async fn enroll(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> V2Result<(StatusCode, Json<Enrolled>)> {
    if let Caller::Host(own) = &caller {
        return Err(V2Error::new(
            StatusCode::FORBIDDEN,
            format!("a host token (of {own}) cannot enroll a host; the fleet's enrollment key can"),
        ));
    }
    let body = read_body(&state, req, 4096).await?;
    let e: EnrollBody = parse_json(&body)?;
    let host = host_param(&e.hostname)?;
    caller.admit(&state, &host)?;
    let audit = match &caller {
        Caller::Operator(op) => {
            Some(op.entry("host.enroll", format!("host {host} (token {{id}})")))
        }
        _ => None,
    };
    let (token_id, host_token) = state.enroll_host(&host, audit.as_ref()).await?;
    tracing::info!(
        host,
        token_id,
        "host enrolled: it has its own host token now"
    );
    state.heartbeat(&host);
    Ok((
        StatusCode::CREATED,
        Json(Enrolled {
            hostname: host,
            host_token,
            token_id,
        }),
    ))
}

#[derive(Deserialize)]
pub(super) struct TokenBody {
    token: String,
    /// What the key is for (shown by `token list`).
    #[serde(default)]
    label: Option<String>,
}

pub(super) async fn add_agent_token(
    State(state): State<AppState>,
    op: Operator,
    req: Request,
) -> V2Result<StatusCode> {
    let body = read_body(&state, req, 4096).await?;
    let t: TokenBody = parse_json(&body)?;
    if t.token.trim().len() < 8 || t.token.contains(char::is_whitespace) {
        return Err(bad(
            "agent token must be at least 8 characters without spaces",
        ));
    }
    let label = t.label.as_deref().unwrap_or("");
    let audit = op.entry(
        "token.add-agent",
        if label.is_empty() {
            "an agent token (license key)".into()
        } else {
            format!("an agent token (license key) labelled '{label}'")
        },
    );
    state.add_agent_token(&t.token, label, Some(&audit)).await?;
    tracing::info!("agent token registered");
    Ok(StatusCode::CREATED)
}

#[derive(Deserialize)]
pub(super) struct LabelBody {
    label: String,
}

#[derive(Serialize)]
pub(super) struct NewToken {
    token: String,
    label: String,
    created_at: String,
}

pub(super) async fn add_operator_token(
    State(state): State<AppState>,
    op: Operator,
    req: Request,
) -> V2Result<(StatusCode, Json<NewToken>)> {
    let body = read_body(&state, req, 4096).await?;
    let l: LabelBody = parse_json(&body)?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("pop_{}", hex::encode(raw));
    let audit = op.entry(
        "token.add-operator",
        format!("operator token '{}'", l.label),
    );
    state
        .add_operator_token(&token, &l.label, Some(&audit))
        .await?;
    tracing::info!(label = l.label, "operator token created");
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            token,
            label: l.label,
            created_at: rfc3339_millis(now_ms()),
        }),
    ))
}

#[derive(Serialize)]
pub(super) struct RotatedToken {
    /// The new token (shown only here).
    token: String,
    label: String,
    created_at: String,
    /// How many live tokens with that label were revoked.
    revoked: u64,
}

/// `token rotate`: a new operator token labelled LABEL and the live ones
/// with that label revoked, in one transaction, audited as `token.rotate`
/// by the caller; 404 when no live operator token has the label.
pub(super) async fn rotate_operator_tokens(
    State(state): State<AppState>,
    op: Operator,
    req: Request,
) -> V2Result<Json<RotatedToken>> {
    let body = read_body(&state, req, 4096).await?;
    let l: LabelBody = parse_json(&body)?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("pop_{}", hex::encode(raw));
    let audit = op.entry(
        "token.rotate",
        format!(
            "operator token '{}': a new one, the old ones revoked",
            l.label
        ),
    );
    let revoked = state
        .rotate_operator_tokens(&token, &l.label, Some(&audit))
        .await?;
    if revoked == 0 {
        return Err(V2Error::new(
            StatusCode::NOT_FOUND,
            format!("no live operator token is labelled '{}'", l.label),
        ));
    }
    tracing::warn!(label = l.label, revoked, "operator token rotated");
    Ok(Json(RotatedToken {
        token,
        label: l.label,
        created_at: rfc3339_millis(now_ms()),
        revoked,
    }))
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<u32>,
}

/// One audit log entry on the wire.
#[derive(Serialize)]
pub(super) struct AuditWire {
    id: i64,
    at: String,
    actor: String,
    source: Option<String>,
    action: String,
    detail: String,
}

/// The newest operator actions, newest first (`limit`, default 100, at
/// most 10,000).
pub(super) async fn audit_log(
    State(state): State<AppState>,
    _op: Operator,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> V2Result<Json<Vec<AuditWire>>> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = state.audit_log(limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, e)| AuditWire {
                id,
                at: rfc3339_millis(e.at),
                actor: e.actor,
                source: e.source,
                action: e.action,
                detail: e.detail,
            })
            .collect(),
    ))
}

/// A token on the wire: never its secret or hash.
#[derive(Serialize)]
pub(super) struct TokenWire {
    kind: crate::store::TokenKind,
    id: i64,
    label: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    /// When it last authenticated a request (up to a minute behind).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_used: Option<String>,
}

impl From<crate::store::TokenRow> for TokenWire {
    fn from(t: crate::store::TokenRow) -> Self {
        TokenWire {
            kind: t.kind,
            id: t.id,
            label: t.label,
            created_at: rfc3339_millis(t.created_at),
            revoked_at: t.revoked_at.map(rfc3339_millis),
            last_used: t.last_used.map(rfc3339_millis),
        }
    }
}

/// Every stored token (the one in PALETTE_ADMIN_TOKEN is not stored: it
/// is changed by changing that variable).
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    _op: Operator,
) -> V2Result<Json<Vec<TokenWire>>> {
    Ok(Json(
        state
            .tokens()
            .await?
            .into_iter()
            .map(TokenWire::from)
            .collect(),
    ))
}

pub(super) async fn revoke_token(
    State(state): State<AppState>,
    op: Operator,
    Path((kind, id)): Path<(String, String)>,
) -> V2Result<Json<TokenWire>> {
    let kind = match kind.as_str() {
        "agent" => crate::store::TokenKind::Agent,
        "operator" => crate::store::TokenKind::Operator,
        "host" => crate::store::TokenKind::Host,
        _ => {
            return Err(bad(format!(
                "token kind {kind:?} must be agent, operator or host"
            )))
        }
    };
    let id: i64 = id
        .parse()
        .map_err(|_| bad(format!("token id {id:?} is not a number")))?;
    let no_such = || {
        V2Error::new(
            StatusCode::NOT_FOUND,
            format!("no live {} token {id}", kind.as_str()),
        )
    };
    let live = state.live_token(kind, id).await?.ok_or_else(no_such)?;
    let audit = op.entry("token.revoke", token_words(&live));
    let row = state
        .revoke_token(kind, id, Some(&audit))
        .await?
        .ok_or_else(no_such)?;
    tracing::warn!(?kind, id, label = row.label, "token revoked");
    Ok(Json(TokenWire::from(row)))
}

/// A token in words, for the audit log (`operator token 2 'ci'`).
pub(crate) fn token_words(t: &crate::store::TokenRow) -> String {
    if t.label.is_empty() {
        format!("{} token {}", t.kind.as_str(), t.id)
    } else {
        format!("{} token {} '{}'", t.kind.as_str(), t.id, t.label)
    }
}
