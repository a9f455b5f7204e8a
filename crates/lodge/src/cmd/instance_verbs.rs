//! The small instance verbs over the API: ps, stop, start, rm, inspect,
//! update, logs.
//!
//! Instances are read as the API's own `Instance` type; `inspect` prints the
//! JSON whole, as the daemon sent it.

use std::io::Write;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::Value;

use crate::api::types::LogsQuery;
use crate::cli::{InspectArgs, InstanceArg, LogsArgs, PsArgs, RmArgs, UpdateArgs};
use crate::client::{encode, ApiFailure, Client};
use crate::instances::{Instance, State};

use super::format::{print_list, Format};
use super::logs_escape::ConsoleOut;

fn path(instance: &str) -> String {
    format!("/instances/{}", encode(instance))
}

/// `ps --filter`s, parsed: label pairs go to the API as `tags[k]=v`, label
/// keys alone and states are checked here.
#[derive(Debug, Default, PartialEq)]
struct PsFilter {
    query: Vec<(String, String)>,
    label_keys: Vec<String>,
    states: Vec<State>,
}

fn ps_filter(filters: &[String]) -> Result<PsFilter> {
    let mut f = PsFilter::default();
    for raw in filters {
        match raw.split_once('=') {
            Some(("label", l)) => match l.split_once('=') {
                Some((k, v)) => f.query.push((format!("tags[{k}]"), v.to_string())),
                None => f.label_keys.push(l.to_string()),
            },
            Some(("state" | "status", s)) => f.states.push(
                State::parse(s)
                    .ok_or_else(|| anyhow::anyhow!("unknown state {s:?} in --filter"))?,
            ),
            _ => anyhow::bail!("unsupported filter {raw:?}: use label=K=V, label=K or state=STATE"),
        }
    }
    Ok(f)
}

pub fn ps(args: PsArgs) -> Result<u8> {
    let filter = ps_filter(&args.filters)?;
    let format = Format::parse(args.format.as_deref())?;
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let list: Vec<Instance> = client.get_with("/instances", &filter.query).await?;
        let shown = list
            .iter()
            .filter(|i| {
                // A state filter shows stopped instances too, as docker's.
                args.all
                    || !filter.states.is_empty()
                    || !matches!(i.state, State::Stopped | State::Created)
            })
            .filter(|i| filter.states.is_empty() || filter.states.contains(&i.state))
            .filter(|i| filter.label_keys.iter().all(|k| i.tags.contains_key(k)));
        if !args.quiet {
            let shown: Vec<&Instance> = shown.clone().collect();
            if print_list(&format, &shown)? {
                return Ok(0);
            }
        }
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

pub fn inspect(args: InspectArgs) -> Result<u8> {
    let format = Format::parse(args.format.as_deref())?;
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let inst: Value = client.call(Method::GET, &path(&args.instance)).await?;
        if !print_list(&format, std::slice::from_ref(&inst))? {
            println!("{}", serde_json::to_string_pretty(&inst)?);
        }
        Ok(0)
    })
}

/// Labels added or changed and removed, on the instance's current set;
/// the whole set is sent (PATCH replaces it).
pub fn update(args: UpdateArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let inst: Instance = client.call(Method::GET, &path(&args.instance)).await?;
        let mut tags = inst.tags.clone();
        for k in &args.remove {
            tags.remove(k);
        }
        for l in &args.labels {
            let (k, v) = crate::tags::parse_pair(l);
            tags.insert(k, v);
        }
        let mut body = serde_json::json!({ "tags": tags });
        if let Some(idle) = &args.auto_standby {
            body["auto_standby"] = super::auto_standby::policy(idle);
        }
        let inst: Instance = client
            .call_with(Method::PATCH, &path(&inst.id), &body)
            .await?;
        println!("{}", inst.id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_filters_read_like_docker() {
        let f = ps_filter(&[
            "label=team=web".into(),
            "label=canary".into(),
            "state=Running".into(),
        ])
        .expect("valid");
        assert_eq!(
            f,
            PsFilter {
                query: vec![("tags[team]".into(), "web".into())],
                label_keys: vec!["canary".into()],
                states: vec![State::Running],
            }
        );
        assert!(ps_filter(&["name=x".into()]).is_err());
        assert!(ps_filter(&["state=Sleeping".into()]).is_err());
    }
}
