//! `palettectl pin …`: hold the hosts matching a selector on one version.
//!
//! Owns: adding, listing and removing pins. Must not: judge which hosts a
//! pin holds (the server does, at every check-in).

use reqwest::Method;
use serde_json::Value;

use crate::api::Api;
use crate::cli::PinCmd;
use crate::output::{print_structured, Output};

pub async fn run(api: &Api, out: Output, cmd: PinCmd) -> anyhow::Result<()> {
    match cmd {
        PinCmd::Add {
            version,
            selector,
            product,
        } => {
            let r: Value = api
                .json(
                    api.req(Method::POST, "/api/v2/pins")
                        .json(&serde_json::json!({
                            "selector": selector, "product": product, "version": version,
                        })),
                )
                .await?;
            if out != Output::Table {
                return print_structured(out, &r);
            }
            outln!(
                "pin {}: hosts matching '{}' are offered {} {} and nothing else",
                r["id"],
                selector,
                product,
                version
            );
            Ok(())
        }
        PinCmd::List => {
            let list: Vec<Value> = api.json(api.req(Method::GET, "/api/v2/pins")).await?;
            if out != Output::Table {
                return print_structured(out, &list);
            }
            for p in &list {
                outln!(
                    "{:>4}  {:<10} {:<12} {}",
                    p["id"],
                    p["product"].as_str().unwrap_or("?"),
                    p["version"].as_str().unwrap_or("?"),
                    p["selector"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        PinCmd::Remove { id } => {
            api.send(api.req(Method::DELETE, &format!("/api/v2/pins/{id}")))
                .await?;
            outln!("pin {id} removed");
            Ok(())
        }
    }
}
