//! Human and JSON rendering of API answers.

use serde_json::Value;

use super::Output;
use custos_node::dev::DevCluster;

pub fn print(output: Output, value: &Value, human: impl FnOnce(&Value) -> String) {
    match output {
        // Value always serialises.
        Output::Json => println!("{}", serde_json::to_string_pretty(value).expect("JSON value serialises")),
        Output::Human => println!("{}", human(value)),
    }
}

pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// One page of a list answer: a line per item of `field`, `none` when empty, and how to get
/// the next page.
pub fn page_lines(page: &Value, field: &str, none: &str, line: impl Fn(&Value) -> String) -> String {
    let mut lines: Vec<String> = page[field].as_array().into_iter().flatten().map(line).collect();
    if lines.is_empty() {
        lines.push(none.into());
    }
    if let Some(next) = page["next_after"].as_str() {
        lines.push(format!("(more: --after {next})"));
    }
    lines.join("\n")
}

pub fn tenant_line(t: &Value) -> String {
    format!(
        "{:<24} {:<10} {:<16} rev {:<8} {}",
        text(&t["id"]),
        text(&t["status"]),
        text(&t["region"]),
        text(&t["revision"]),
        text(&t["display_name"])
    )
}

pub fn dev_banner(cluster: &DevCluster) {
    let first = &cluster.nodes[0].api_url;
    let ca = cluster.ca_file.display();
    let exe = cluster.binary.display();
    println!();
    println!(
        "Custos dev cluster is running ({} node(s)). Ctrl-C stops it; the next run reuses its data.",
        cluster.nodes.len()
    );
    for node in &cluster.nodes {
        println!("  node {}: {}  pid {}  log {}", node.id, node.api_url, node.pid, node.log.display());
    }
    println!();
    println!("Admin token (kept in the dev data dir only because this is dev mode):");
    println!("  {}", cluster.admin_token);
    println!();
    println!("Try it:");
    println!("  export CUSTOS_ADDR={first} CUSTOS_CA_CERT={ca} CUSTOS_TOKEN={}", cluster.admin_token);
    println!("  {exe} tenant create acme --name \"Acme Corp\" --region eu-west");
    println!("  {exe} tenant list");
    println!("  {exe} cluster status");
    println!("  curl --cacert {ca} -H \"Authorization: Bearer $CUSTOS_TOKEN\" \\");
    println!("       -H 'Content-Type: application/json' -d '{{\"id\":\"globex\",\"display_name\":\"Globex\",\"region\":\"us-east\"}}' \\");
    println!("       {first}/v1/tenants");
    if cluster.nodes.len() > 1 {
        let last = cluster.nodes.last().expect("more than one node");
        println!();
        println!("Failover: kill the leader shown by `cluster status` (kill -9 <pid>), then ask another node:");
        println!("  {exe} cluster status --addr {}", last.api_url);
        println!("Bring a killed node back (it catches up from its data dir):");
        println!("  {exe} run --config <the node's custos.toml, e.g. {}>", last.config.display());
    }
    println!();
}
