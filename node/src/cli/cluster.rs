use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use custos_node::client::ApiClient;
use reqwest::Method;
use serde_json::{json, Value};

use super::output::{print, text};
use super::{client, Global};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Initialise a pristine node (--addr) as a one-member cluster; prints the admin token once.
    Init,
    /// Add the node at --addr to the cluster through a member, as a learner and then a voter.
    Join {
        /// API address of any current member.
        #[arg(long)]
        via: String,
    },
    /// Remove a node from the cluster (default: the node at --addr).
    Leave {
        #[arg(long)]
        node_id: Option<u64>,
    },
    /// Members, leader, term, commit and applied index, per-node lag.
    Status,
}

pub async fn run(global: &Global, command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Init => {
            let api = client(global, false)?;
            let init = api.request(Method::POST, "/v1/cluster/init", None).await?;
            print(global.output, &init, |v| {
                format!(
                    "cluster initialised on node {}\nadmin token (shown once, store it now):\n  {}",
                    text(&v["node_id"]),
                    text(&v["admin_token"])
                )
            });
        }
        ClusterCommand::Join { via } => {
            let joining = client(global, false)?;
            let me = joining.get("/v1/cluster/self").await?;
            let token = global.token.clone().context("no admin token: pass --token or set CUSTOS_TOKEN")?;
            let member = ApiClient::new(&via, global.ca_cert.as_deref(), Some(token))?;
            let body = json!({ "node_id": me["node_id"], "raft_addr": me["raft_addr"], "api_addr": me["api_addr"] });
            let joined = member.request(Method::POST, "/v1/cluster/members", Some(body)).await?;
            print(global.output, &joined, |_| format!("node {} joined as a voter", text(&me["node_id"])));
        }
        ClusterCommand::Leave { node_id } => {
            let api = client(global, true)?;
            let id = match node_id {
                Some(id) => id,
                None => api.get("/v1/cluster/self").await?["node_id"].as_u64().context("node reported no id")?,
            };
            let left = api.request(Method::DELETE, &format!("/v1/cluster/members/{id}"), None).await?;
            print(global.output, &left, |_| format!("node {id} removed from the cluster"));
        }
        ClusterCommand::Status => {
            let api = client(global, true)?;
            let status = api.get("/v1/cluster/status").await?;
            print(global.output, &status, human_status);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human_status(v: &Value) -> String {
    let node = &v["node"];
    let mut lines = vec![format!(
        "this node: {} ({}), term {}, last log {}, committed {}, applied {}, fsyncs {}",
        text(&node["id"]),
        text(&node["state"]),
        text(&node["term"]),
        text(&node["last_log_index"]),
        text(&node["committed_index"]),
        text(&node["applied_index"]),
        text(&node["fsyncs"])
    )];
    match v["cluster"].as_object() {
        Some(c) => {
            lines.push(format!(
                "leader: {}, term {}, committed {}",
                text(&c["leader_id"]),
                text(&c["term"]),
                text(&c["committed_index"])
            ));
            lines.push(format!("{:<6} {:<8} {:<22} {:<22} {:<10} {}", "id", "role", "api", "raft", "matched", "lag"));
            for m in c["members"].as_array().into_iter().flatten() {
                let role = if m["voter"].as_bool() == Some(true) { "voter" } else { "learner" };
                lines.push(format!(
                    "{:<6} {:<8} {:<22} {:<22} {:<10} {}",
                    text(&m["id"]),
                    role,
                    text(&m["api_addr"]),
                    text(&m["raft_addr"]),
                    text(&m["matched_index"]),
                    text(&m["lag"])
                ));
            }
        }
        None => lines.push(format!("cluster view unavailable: {}", text(&v["cluster_error"]))),
    }
    lines.join("\n")
}
