use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::output::{page_lines, print, tenant_line};
use super::{client, Global};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        id: String,
        #[arg(long)]
        name: String,
        /// Residency or region label, e.g. eu-central.
        #[arg(long)]
        region: String,
    },
    /// List tenants.
    List {
        #[arg(long)]
        include_deleted: bool,
        /// Read this node's state without a linearizable barrier.
        #[arg(long)]
        stale: bool,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one tenant.
    Get {
        id: String,
        #[arg(long)]
        stale: bool,
    },
    /// Suspend a tenant.
    Suspend { id: String },
    /// Resume a suspended tenant.
    Resume { id: String },
    /// Delete a tenant (a tombstone: its id is never reused).
    Delete { id: String },
}

fn consistency(stale: bool) -> &'static str {
    if stale {
        "stale"
    } else {
        "linearizable"
    }
}

pub async fn run(global: &Global, command: TenantCommand) -> anyhow::Result<ExitCode> {
    let api = client(global, true)?;
    match command {
        TenantCommand::Create { id, name, region } => {
            let body = json!({ "id": id, "display_name": name, "region": region });
            let tenant = api.request(Method::POST, "/v1/tenants", Some(body)).await?;
            print(global.output, &tenant, |t| format!("created {}", tenant_line(t)));
        }
        TenantCommand::List { include_deleted, stale, limit, after } => {
            let mut path = format!("/v1/tenants?consistency={}&include_deleted={include_deleted}", consistency(stale));
            if let Some(limit) = limit {
                path.push_str(&format!("&limit={limit}"));
            }
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            let list = api.get(&path).await?;
            print(global.output, &list, |l| page_lines(l, "tenants", "no tenants", tenant_line));
        }
        TenantCommand::Get { id, stale } => {
            let tenant = api.get(&format!("/v1/tenants/{id}?consistency={}", consistency(stale))).await?;
            print(global.output, &tenant, tenant_line);
        }
        TenantCommand::Suspend { id } => {
            let tenant = api.request(Method::POST, &format!("/v1/tenants/{id}/suspend"), None).await?;
            print(global.output, &tenant, |t| format!("suspended {}", tenant_line(t)));
        }
        TenantCommand::Resume { id } => {
            let tenant = api.request(Method::POST, &format!("/v1/tenants/{id}/resume"), None).await?;
            print(global.output, &tenant, |t| format!("resumed {}", tenant_line(t)));
        }
        TenantCommand::Delete { id } => {
            let tenant = api.request(Method::DELETE, &format!("/v1/tenants/{id}"), None).await?;
            print(global.output, &tenant, |t| format!("deleted {}", tenant_line(t)));
        }
    }
    Ok(ExitCode::SUCCESS)
}
