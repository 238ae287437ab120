//! `custos key --tenant T ...`: a tenant's keys over the API.

use std::collections::BTreeMap;
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Subcommand;
use custos_node::client::ApiClient;
use reqwest::Method;
use serde_json::{json, Value};

use super::output::{page_lines, print, text};
use super::{client, Global};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an AES-256-GCM key.
    Create {
        id: String,
        /// Rotate automatically after this many seconds.
        #[arg(long)]
        rotate_every_secs: Option<u64>,
    },
    /// List the tenant's keys.
    List {
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one key.
    Get {
        id: String,
    },
    /// Add a new version; new ciphertexts use it.
    Rotate {
        id: String,
    },
    /// Change the minimum decryption version or the rotation period (0 turns it off).
    Config {
        id: String,
        #[arg(long)]
        min_decryption_version: Option<u32>,
        #[arg(long)]
        rotate_every_secs: Option<u64>,
    },
    Enable {
        id: String,
    },
    Disable {
        id: String,
    },
    /// Schedule destruction (refuses all use meanwhile); --cancel undoes it.
    Destroy {
        id: String,
        /// Delay before destruction, in seconds (default 7 days).
        #[arg(long)]
        after_secs: Option<u64>,
        #[arg(long)]
        cancel: bool,
    },
    /// Encrypt text (UTF-8) and print the ciphertext. Several texts go in one batch request:
    /// one line each, in order, `error <code>: <message>` for one that failed (exit 1).
    Encrypt {
        id: String,
        #[arg(required = true, num_args = 1..)]
        plaintexts: Vec<String>,
        /// Encryption context entries, KEY=VALUE; the same must be given to decrypt.
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
    },
    /// Decrypt a ciphertext and print the plaintext (as text if it is UTF-8, else base64).
    /// Several ciphertexts go in one batch request, as for encrypt (a plaintext with a line
    /// break shows as base64 there).
    Decrypt {
        id: String,
        #[arg(required = true, num_args = 1..)]
        ciphertexts: Vec<String>,
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
    },
    /// Re-encrypt a ciphertext under the key's latest version.
    Rewrap {
        id: String,
        ciphertext: String,
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
    },
    /// Generate a data key: plaintext (base64) and its ciphertext.
    Datakey {
        id: String,
        /// Print only the wrapped data key.
        #[arg(long)]
        wrapped_only: bool,
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn context(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

/// A decrypted plaintext: as text if it is UTF-8, else its base64.
fn plaintext_text(o: &Value) -> String {
    let b64 = text(&o["plaintext"]);
    STANDARD.decode(&b64).ok().and_then(|bytes| String::from_utf8(bytes).ok()).unwrap_or(b64)
}

/// A decrypted plaintext on one line of a batch: as text if it is UTF-8 without a line
/// break, else its base64.
fn plaintext_line(o: &Value) -> String {
    let shown = plaintext_text(o);
    if shown.contains(['\n', '\r']) {
        text(&o["plaintext"])
    } else {
        shown
    }
}

/// Sends `items` to a batch endpoint and prints one line per result (`line` of a success,
/// the error of a failure); the exit code is 1 if any item failed.
async fn batch(
    api: &ApiClient,
    out: super::Output,
    path: &str,
    items: Vec<Value>,
    line: fn(&Value) -> String,
) -> anyhow::Result<ExitCode> {
    let reply = api.request(Method::POST, path, Some(json!({ "items": items }))).await?;
    let Some(results) = reply["results"].as_array().cloned() else {
        anyhow::bail!("the node answered a batch without results: {reply}");
    };
    let failed = results.iter().any(|r| r.get("error").is_some());
    print(out, &reply, |_| {
        let lines: Vec<String> = results
            .iter()
            .map(|r| match r.get("error") {
                Some(e) => format!("error {}: {}", text(&e["code"]), text(&e["message"])),
                None => line(r),
            })
            .collect();
        lines.join("\n")
    });
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn key_line(k: &Value) -> String {
    format!(
        "{:<24} {:<18} v{:<5} min v{:<5} rev {}",
        text(&k["id"]),
        text(&k["state"]),
        text(&k["latest_version"]),
        text(&k["min_decryption_version"]),
        text(&k["revision"])
    )
}

pub async fn run(global: &Global, tenant: &str, command: KeyCommand) -> anyhow::Result<ExitCode> {
    let api = client(global, true)?;
    let base = format!("/v1/tenants/{tenant}/keys");
    let out = global.output;
    match command {
        KeyCommand::Create { id, rotate_every_secs } => {
            let body = json!({ "id": id, "rotation_period_ms": rotate_every_secs.map(|s| s * 1000) });
            let key = api.request(Method::POST, &base, Some(body)).await?;
            print(out, &key, |k| format!("created {}", key_line(k)));
        }
        KeyCommand::List { limit, after } => {
            let mut path = format!("{base}?limit={}", limit.unwrap_or(100));
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            let list = api.get(&path).await?;
            print(out, &list, |l| page_lines(l, "keys", "no keys", key_line));
        }
        KeyCommand::Get { id } => {
            let key = api.get(&format!("{base}/{id}")).await?;
            print(out, &key, key_line);
        }
        KeyCommand::Rotate { id } => {
            let key = api.request(Method::POST, &format!("{base}/{id}/rotate"), None).await?;
            print(out, &key, |k| format!("rotated {}", key_line(k)));
        }
        KeyCommand::Config { id, min_decryption_version, rotate_every_secs } => {
            let body = json!({
                "min_decryption_version": min_decryption_version,
                "rotation_period_ms": rotate_every_secs.map(|s| s * 1000),
            });
            let key = api.request(Method::POST, &format!("{base}/{id}/config"), Some(body)).await?;
            print(out, &key, key_line);
        }
        KeyCommand::Enable { id } => {
            let key = api.request(Method::POST, &format!("{base}/{id}/enable"), None).await?;
            print(out, &key, key_line);
        }
        KeyCommand::Disable { id } => {
            let key = api.request(Method::POST, &format!("{base}/{id}/disable"), None).await?;
            print(out, &key, key_line);
        }
        KeyCommand::Destroy { id, after_secs, cancel } => {
            let path = format!("{base}/{id}/destroy");
            let key = if cancel {
                api.request(Method::DELETE, &path, None).await?
            } else {
                api.request(Method::POST, &path, Some(json!({ "delay_ms": after_secs.map(|s| s * 1000) }))).await?
            };
            print(out, &key, |k| format!("{} (destroy at {} ms)", key_line(k), text(&k["destroy_at_ms"])));
        }
        KeyCommand::Encrypt { id, mut plaintexts, context: pairs } => {
            let context = context(pairs);
            let item = |p: &String| json!({ "plaintext": STANDARD.encode(p.as_bytes()), "context": context });
            if plaintexts.len() > 1 {
                let items = plaintexts.iter().map(item).collect();
                return batch(&api, out, &format!("{base}/{id}/encrypt/batch"), items, |s| text(&s["ciphertext"]))
                    .await;
            }
            let body = item(&plaintexts.remove(0));
            let sealed = api.request(Method::POST, &format!("{base}/{id}/encrypt"), Some(body)).await?;
            print(out, &sealed, |s| text(&s["ciphertext"]));
        }
        KeyCommand::Decrypt { id, mut ciphertexts, context: pairs } => {
            let context = context(pairs);
            let item = |c: &String| json!({ "ciphertext": c, "context": context });
            if ciphertexts.len() > 1 {
                let items = ciphertexts.iter().map(item).collect();
                return batch(&api, out, &format!("{base}/{id}/decrypt/batch"), items, plaintext_line).await;
            }
            let body = item(&ciphertexts.remove(0));
            let opened = api.request(Method::POST, &format!("{base}/{id}/decrypt"), Some(body)).await?;
            print(out, &opened, plaintext_text);
        }
        KeyCommand::Rewrap { id, ciphertext, context: pairs } => {
            let body = json!({ "ciphertext": ciphertext, "context": context(pairs) });
            let sealed = api.request(Method::POST, &format!("{base}/{id}/rewrap"), Some(body)).await?;
            print(out, &sealed, |s| text(&s["ciphertext"]));
        }
        KeyCommand::Datakey { id, wrapped_only, context: pairs } => {
            let body = json!({ "context": context(pairs), "include_plaintext": !wrapped_only });
            let dk = api.request(Method::POST, &format!("{base}/{id}/datakey"), Some(body)).await?;
            print(out, &dk, |d| match d.get("plaintext") {
                Some(p) => format!("plaintext  {}\nciphertext {}", text(p), text(&d["ciphertext"])),
                None => text(&d["ciphertext"]),
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
