//! `palettectl window …`: weekly maintenance windows, when the hosts
//! matching a selector may start an update.
//!
//! Owns: adding, listing and removing windows. Must not: parse a schedule
//! or a time zone (the server checks them, and judges them at every
//! check-in).

use reqwest::Method;
use serde_json::Value;

use crate::api::Api;
use crate::cli::WindowCmd;
use crate::output::{print_structured, Output};

pub async fn run(api: &Api, out: Output, cmd: WindowCmd) -> anyhow::Result<()> {
    match cmd {
        WindowCmd::Add {
            selector,
            schedule,
            tz,
        } => {
            let r: Value = api
                .json(
                    api.req(Method::POST, "/api/v2/windows")
                        .json(&serde_json::json!({
                            "selector": selector, "schedule": schedule, "tz": tz,
                        })),
                )
                .await?;
            if out != Output::Table {
                return print_structured(out, &r);
            }
            outln!(
                "window {}: hosts matching '{}' start updates only {} ({})",
                r["id"],
                selector,
                schedule,
                tz
            );
            Ok(())
        }
        WindowCmd::List => {
            let list: Vec<Value> = api.json(api.req(Method::GET, "/api/v2/windows")).await?;
            if out != Output::Table {
                return print_structured(out, &list);
            }
            for w in &list {
                outln!(
                    "{:>4}  {:<24} {:<16} {}",
                    w["id"],
                    w["schedule"].as_str().unwrap_or("?"),
                    w["tz"].as_str().unwrap_or("?"),
                    w["selector"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        WindowCmd::Remove { id } => {
            api.send(api.req(Method::DELETE, &format!("/api/v2/windows/{id}")))
                .await?;
            outln!("window {id} removed");
            Ok(())
        }
    }
}
