//! `lodge run`: create and boot an instance; attached by default, streaming
//! the console until the program exits and exiting with its code (as docker).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use reqwest::Method;

use super::logs_escape::ConsoleOut;
use crate::api::instances::CreateInstance;
use crate::api::types::LogsQuery;
use crate::cli::RunArgs;
use crate::client::{encode, Client};
use crate::instances::naming::new_id;
use crate::instances::Instance;

pub fn run(args: RunArgs) -> Result<u8> {
    let body = request_body(&args)?;
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let inst: Instance = client.call_with(Method::POST, "/instances", &body).await?;
        let id = inst.id;
        if args.detach {
            println!("{id}");
            return Ok(0);
        }
        eprintln!("{id}");
        // A guest's escape sequences are shown, not acted on, on a terminal.
        let mut out = ConsoleOut::new(args.raw);
        let query = LogsQuery {
            tail: Some(u64::from(u32::MAX)),
            follow: Some(true),
            source: Some("app".to_string()),
        };
        client
            .logs(&id, &query, |line, ends| Ok(out.write(line, ends)?))
            .await?;
        let inst: Instance = client
            .call(Method::GET, &format!("/instances/{}", encode(&id)))
            .await?;
        let code = match inst.exit_code {
            Some(code) => u8::try_from(code).unwrap_or(1),
            None => {
                eprintln!(
                    "lodge: instance {id} ended without an exit code (state {:?})",
                    inst.state
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

fn request_body(args: &RunArgs) -> Result<CreateInstance> {
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
    Ok(CreateInstance {
        name,
        image,
        rootfs,
        vcpus: args.cpus,
        size: args.memory.clone(),
        overlay_size: args.overlay_size.clone(),
        entrypoint: args.entrypoint.as_ref().map(|e| vec![e.clone()]),
        cmd: (!rest.is_empty()).then_some(rest),
        env: Some(env),
        workdir: args.workdir.clone(),
        ..CreateInstance::default()
    })
}
