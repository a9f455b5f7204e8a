//! The small instance verbs over the API: ps, stop, start, rm, inspect, logs.
//!
//! Instances are read as the API's own `Instance` type; `inspect` prints the
//! JSON whole, as the daemon sent it.

use std::io::Write;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::Value;

use crate::api::types::LogsQuery;
use crate::cli::{InstanceArg, LogsArgs, PsArgs, RmArgs};
use crate::client::{encode, ApiFailure, Client};
use crate::instances::{Instance, State};

use super::logs_escape::ConsoleOut;

fn path(instance: &str) -> String {
    format!("/instances/{}", encode(instance))
}

pub fn ps(args: PsArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let list: Vec<Instance> = client.call(Method::GET, "/instances").await?;
        let shown = list
            .iter()
            .filter(|i| args.all || !matches!(i.state, State::Stopped | State::Created));
        let mut out = std::io::stdout().lock();
        if !args.quiet {
            writeln!(
                out,
                "{:<24}  {:<20}  {:<12}  {:<15}  {:<24}  IMAGE",
                "ID", "NAME", "STATE", "IP", "CREATED"
            )?;
        }
        for i in shown {
            if args.quiet {
                writeln!(out, "{}", i.id)?;
            } else {
                writeln!(
                    out,
                    "{:<24}  {:<20}  {:<12}  {:<15}  {:<24}  {}",
                    i.id,
                    i.name,
                    format!("{:?}", i.state),
                    i.network.ip.as_deref().unwrap_or("-"),
                    i.created_at,
                    i.image
                )?;
            }
        }
        Ok(0)
    })
}

pub fn inspect(args: InstanceArg) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let inst: Value = client.call(Method::GET, &path(&args.instance)).await?;
        println!("{}", serde_json::to_string_pretty(&inst)?);
        Ok(0)
    })
}

pub fn stop(args: InstanceArg) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let inst: Instance = client
            .call(Method::POST, &format!("{}/stop", path(&args.instance)))
            .await?;
        println!("{}", inst.id);
        Ok(0)
    })
}

pub fn start(args: InstanceArg) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let inst: Instance = client
            .call_with(
                Method::POST,
                &format!("{}/start", path(&args.instance)),
                // hypeman's StartInstance with nothing overridden.
                &serde_json::Map::new(),
            )
            .await?;
        println!("{}", inst.id);
        Ok(0)
    })
}

pub fn rm(args: RmArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let mut failed = false;
        for name in &args.instances {
            let result: Result<()> = async {
                if !args.force {
                    let inst: Instance = client.call(Method::GET, &path(name)).await?;
                    if !matches!(inst.state, State::Stopped | State::Created | State::Standby) {
                        anyhow::bail!(
                            "instance {name} is {:?}: stop it first or use rm -f",
                            inst.state
                        );
                    }
                }
                client.call_empty(Method::DELETE, &path(name)).await
            }
            .await;
            match result {
                Ok(()) => println!("{name}"),
                Err(e) => {
                    eprintln!("lodge: {e:#}");
                    failed = true;
                }
            }
        }
        Ok(if failed { 1 } else { 0 })
    })
}

pub fn logs(instance: &str, args: &LogsArgs) -> Result<u8> {
    let tail: u64 = if args.tail == "all" {
        u64::from(u32::MAX)
    } else {
        args.tail
            .parse()
            .with_context(|| format!("--tail {:?}: expected a number or `all`", args.tail))?
    };
    let query = LogsQuery {
        tail: Some(tail),
        follow: Some(args.follow),
        source: Some(match args.source.as_str() {
            "hypeman" => "lodge".to_string(),
            s => s.to_string(),
        }),
        since: args.since.clone(),
        until: args.until.clone(),
        timestamps: args.timestamps.then_some(true),
    };
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        // A guest's escape sequences are shown, not acted on, on a terminal.
        let mut out = ConsoleOut::new(args.raw);
        let result = client
            .logs(instance, &query, |line, ends| Ok(out.write(line, ends)?))
            .await;
        match result {
            Ok(()) => Ok(0),
            Err(e) if e.downcast_ref::<ApiFailure>().is_some() => Err(e),
            Err(e) => match e.downcast_ref::<std::io::Error>() {
                Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                _ => Err(e),
            },
        }
    })
}
