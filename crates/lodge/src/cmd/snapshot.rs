//! `lodge snapshot create|ls|rm|restore`: the snapshots API, read and
//! written as the API's own types.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};
use reqwest::Method;

use crate::cli::SnapshotCommand;
use crate::client::{encode, Client};
use crate::instances::snapshots::Snapshot;
use crate::instances::Instance;

pub fn run(cmd: SnapshotCommand) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        match cmd {
            SnapshotCommand::Create(a) => {
                let mut tags = BTreeMap::new();
                for t in &a.tags {
                    let Some((k, v)) = t.split_once('=') else {
                        bail!("--tag {t:?}: expected KEY=VALUE");
                    };
                    tags.insert(k.to_string(), v.to_string());
                }
                let kind = if a.kind == "stopped" {
                    "Stopped"
                } else {
                    "Standby"
                };
                let mut body = serde_json::json!({ "kind": kind, "tags": tags });
                if let Some(n) = &a.name {
                    body["name"] = n.clone().into();
                }
                let snap: Snapshot = client
                    .call_with(
                        Method::POST,
                        &format!("/instances/{}/snapshots", encode(&a.instance)),
                        &body,
                    )
                    .await?;
                println!("{}", snap.id);
                Ok(0)
            }
            SnapshotCommand::Ls(a) => {
                let mut query = Vec::new();
                if let Some(i) = &a.instance {
                    let inst: Instance = client
                        .call(Method::GET, &format!("/instances/{}", encode(i)))
                        .await
                        .with_context(|| format!("instance {i}"))?;
                    query.push(("source_instance_id", inst.id));
                }
                let list: Vec<Snapshot> = client.get_with("/snapshots", &query).await?;
                let mut out = std::io::stdout().lock();
                if !a.quiet {
                    writeln!(
                        out,
                        "{:<24}  {:<16}  {:<8}  {:<20}  {:>9}  CREATED",
                        "ID", "NAME", "KIND", "SOURCE", "SIZE"
                    )?;
                }
                for s in list {
                    if a.quiet {
                        writeln!(out, "{}", s.id)?;
                        continue;
                    }
                    writeln!(
                        out,
                        "{:<24}  {:<16}  {:<8}  {:<20}  {:>7}MB  {}",
                        s.id,
                        s.name.as_deref().unwrap_or("-"),
                        format!("{:?}", s.kind),
                        s.source_instance_name,
                        s.size_bytes >> 20,
                        s.created_at
                    )?;
                }
                Ok(0)
            }
            SnapshotCommand::Rm(a) => {
                let mut failed = false;
                for id in &a.snapshots {
                    match client
                        .call_empty(Method::DELETE, &format!("/snapshots/{}", encode(id)))
                        .await
                    {
                        Ok(()) => println!("{id}"),
                        Err(e) => {
                            eprintln!("lodge: {e:#}");
                            failed = true;
                        }
                    }
                }
                Ok(u8::from(failed))
            }
            SnapshotCommand::Restore(a) => {
                let mut body = serde_json::Map::new();
                if let Some(s) = &a.state {
                    let state = match s.as_str() {
                        "running" => "Running",
                        "standby" => "Standby",
                        _ => "Stopped",
                    };
                    body.insert("target_state".into(), state.into());
                }
                let inst: Instance = client
                    .call_with(
                        Method::POST,
                        &format!(
                            "/instances/{}/snapshots/{}/restore",
                            encode(&a.instance),
                            encode(&a.snapshot)
                        ),
                        &body,
                    )
                    .await?;
                println!("{} {:?}", inst.id, inst.state);
                Ok(0)
            }
        }
    })
}
