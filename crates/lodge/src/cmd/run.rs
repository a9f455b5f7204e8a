//! `lodge run`: create and boot an instance; attached by default, streaming
//! the console until the program exits and exiting with its code (as docker).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::api::types::LogsQuery;
use crate::cli::RunArgs;
use crate::client::{encode, Client};
use crate::instances::naming::new_id;

pub fn run(args: RunArgs) -> Result<u8> {
    let body = request_body(&args)?;
    super::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let inst: Value = client.call_with(Method::POST, "/instances", &body).await?;
        let id = inst["id"]
            .as_str()
            .context("daemon returned no id")?
            .to_string();
        if args.detach {
            println!("{id}");
            return Ok(0);
        }
        eprintln!("{id}");
        let stdout = std::io::stdout();
        let query = LogsQuery {
            tail: Some(u64::from(u32::MAX)),
            follow: Some(true),
            source: Some("app".to_string()),
        };
        client
            .logs(&id, &query, |line, ends| {
                let mut out = stdout.lock();
                out.write_all(line.as_bytes())?;
                if ends {
                    out.write_all(b"\n")?;
                }
                out.flush()?;
                Ok(())
            })
            .await?;
        let inst: Value = client
            .call(Method::GET, &format!("/instances/{}", encode(&id)))
            .await?;
        let code = match inst["exit_code"].as_i64() {
            Some(code) => u8::try_from(code).unwrap_or(1),
            None => {
                eprintln!(
                    "lodge: instance {id} ended without an exit code (state {})",
                    inst["state"]
                );
                1
            }
        };
        if args.rm {
            client
                .call_empty(Method::DELETE, &format!("/instances/{}", encode(&id)))
                .await?;
        }
        Ok(code)
    })
}

fn request_body(args: &RunArgs) -> Result<Value> {
    let mut rest = args.args.clone();
    let (image, rootfs) = match &args.rootfs {
        Some(dir) => {
            let abs =
                std::path::absolute(dir).with_context(|| format!("rootfs {}", dir.display()))?;
            let abs = abs
                .to_str()
                .context("rootfs path is not valid UTF-8")?
                .to_string();
            (None, Some(abs))
        }
        None => {
            if rest.is_empty() {
                bail!("give an IMAGE or --rootfs DIR");
            }
            (Some(rest.remove(0)), None)
        }
    };
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("-e {kv:?}: expected KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("vm-{}", &new_id()[..8]));
    let mut body = json!({ "name": name, "env": env });
    if let Some(i) = image {
        body["image"] = json!(i);
    }
    if let Some(r) = rootfs {
        body["rootfs"] = json!(r);
    }
    if let Some(c) = args.cpus {
        body["vcpus"] = json!(c);
    }
    if let Some(m) = &args.memory {
        body["size"] = json!(m);
    }
    if let Some(o) = &args.overlay_size {
        body["overlay_size"] = json!(o);
    }
    if let Some(e) = &args.entrypoint {
        body["entrypoint"] = json!([e]);
    }
    if let Some(w) = &args.workdir {
        body["workdir"] = json!(w);
    }
    if !rest.is_empty() {
        body["cmd"] = json!(rest);
    }
    Ok(body)
}
