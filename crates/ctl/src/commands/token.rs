//! `palettectl token …`: the credentials the server accepts.
//!
//! Owns: registering agent tokens (enrollment keys), creating, listing,
//! revoking and rotating operator tokens, and revoking host tokens. Must
//! not: print a secret except the new one, once, on stdout (what it says
//! about it goes to stderr), or keep any token itself.

use anyhow::bail;
use reqwest::Method;

use crate::api::Api;
use crate::cli::TokenCmd;
use crate::output::{print_structured, Output};

pub async fn run(api: &Api, out: Output, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::AddAgent { key, label } => {
            api.send(
                api.req(Method::POST, "/api/v2/agent-tokens")
                    .json(&serde_json::json!({ "token": key, "label": label })),
            )
            .await?;
            outln!("agent token registered");
            Ok(())
        }
        TokenCmd::List => {
            let list: Vec<serde_json::Value> =
                api.json(api.req(Method::GET, "/api/v2/tokens")).await?;
            if out != Output::Table {
                return print_structured(out, &list);
            }
            outln!(
                "{:<16}  {:<24}  {:<24}  {:<24}  REVOKED",
                "ID",
                "LABEL",
                "CREATED",
                "LAST USED"
            );
            for t in &list {
                let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
                outln!(
                    "{:<16}  {:<24}  {:<24}  {:<24}  {}",
                    format!("{}:{}", s("kind"), t["id"]),
                    s("label"),
                    s("created_at"),
                    s("last_used"),
                    s("revoked_at")
                );
            }
            Ok(())
        }
        TokenCmd::Revoke { which } => {
            let n = revoke_tokens(api, &which).await?;
            outln!("{n} token(s) revoked");
            Ok(())
        }
        TokenCmd::Rotate { label } => {
            // One action on the server: the new token and the old ones
            // revoked in one transaction, audited as token.rotate.
            let v: serde_json::Value = api
                .json(
                    api.req(Method::POST, "/api/v2/tokens/operator/rotate")
                        .json(&serde_json::json!({ "label": label })),
                )
                .await?;
            let Some(new_token) = v["token"].as_str() else {
                bail!("the server's answer holds no token: {v}");
            };
            outln!("{new_token}");
            eprintln!(
                "operator token {label:?} rotated: the new one is above (shown only once); {} old one(s) revoked",
                v["revoked"]
            );
            Ok(())
        }
        TokenCmd::NewOperator { label } => {
            let v: serde_json::Value = api
                .json(
                    api.req(Method::POST, "/api/v2/operator-tokens")
                        .json(&serde_json::json!({ "label": label })),
                )
                .await?;
            outln!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!("operator token {label:?} created; it is shown only once");
            Ok(())
        }
    }
}

/// Revokes `agent:ID`, `operator:ID`, `host:ID`, or every live token
/// labelled `which` (a host token's label is its host name); returns how
/// many.
async fn revoke_tokens(api: &Api, which: &str) -> anyhow::Result<usize> {
    let targets: Vec<(String, String)> = match which.split_once(':') {
        Some((kind @ ("agent" | "operator" | "host"), id)) if id.parse::<i64>().is_ok() => {
            vec![(kind.to_string(), id.to_string())]
        }
        _ => api
            .json::<Vec<serde_json::Value>>(api.req(Method::GET, "/api/v2/tokens"))
            .await?
            .into_iter()
            .filter(|t| t["label"] == which && t["revoked_at"].is_null())
            .map(|t| {
                (
                    t["kind"].as_str().unwrap_or_default().to_string(),
                    t["id"].to_string(),
                )
            })
            .collect(),
    };
    if targets.is_empty() {
        bail!("no live token is labelled {which:?} (ids look like agent:3 or operator:5; see `token list`)");
    }
    for (kind, id) in &targets {
        api.send(api.req(Method::POST, &format!("/api/v2/tokens/{kind}/{id}/revoke")))
            .await?;
    }
    Ok(targets.len())
}
