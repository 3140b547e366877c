//! `palettectl audit`: the server's audit log, newest first.
//!
//! Owns: reading and showing the audit log. Must not: write to it (the
//! server records every action itself).

use reqwest::Method;

use crate::api::Api;
use crate::output::{print_structured, Output};

pub async fn run(api: &Api, out: Output, limit: u32) -> anyhow::Result<()> {
    let list: Vec<serde_json::Value> = api
        .json(api.req(Method::GET, &format!("/api/v2/audit?limit={limit}")))
        .await?;
    if out != Output::Table {
        return print_structured(out, &list);
    }
    outln!(
        "{:<24}  {:<16}  {:<15}  {:<20}  DETAIL",
        "AT",
        "WHO",
        "FROM",
        "ACTION"
    );
    for e in &list {
        let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
        outln!(
            "{:<24}  {:<16}  {:<15}  {:<20}  {}",
            s("at"),
            s("actor"),
            s("source"),
            s("action"),
            s("detail")
        );
    }
    Ok(())
}
