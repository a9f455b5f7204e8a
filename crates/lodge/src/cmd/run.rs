//! `lodge run`: create and boot an instance; attached by default, streaming
//! the console until the program exits and exiting with its code (as docker).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use reqwest::Method;

use super::logs_escape::ConsoleOut;
use crate::api::instances::{CreateInstance, CreateNetwork};
use crate::api::types::LogsQuery;
use crate::cli::RunArgs;
use crate::client::{encode, Client};
use crate::instances::naming::new_id;
use crate::instances::Instance;

pub fn run(args: RunArgs) -> Result<u8> {
    let body = request_body(&args)?;
    let ports = super::ingress::parse_publish(&args.publish)?;
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        if let Some(image) = &body.image {
            super::images::pull_if_missing(&client, image).await?;
        }
        let inst: Instance = client.call_with(Method::POST, "/instances", &body).await?;
        let published = super::ingress::publish(&client, &inst.id, &inst.name, &ports).await;
        let published = match published {
            Ok(p) => p,
            Err(e) => {
                // Nothing half-done: no instance without its ports.
                let path = format!("/instances/{}", encode(&inst.id));
                if let Err(d) = client.call_empty(Method::DELETE, &path).await {
                    eprintln!("lodge: deleting {}: {d:#}", inst.id);
                }
                return Err(e);
            }
        };
        let id = inst.id;
        if args.detach {
            println!("{id}");
            return Ok(0);
        }
        eprintln!("{id}");
        super::progress::wait_for_boot(&client, &id, &inst.name).await;
        // A guest's escape sequences are shown, not acted on, on a terminal.
        let mut out = ConsoleOut::new(args.raw);
        let query = LogsQuery {
            tail: Some(u64::from(u32::MAX)),
            follow: Some(true),
            source: Some("app".to_string()),
            ..LogsQuery::default()
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
            if let Some(ingress) = &published {
                client
                    .call_empty(Method::DELETE, &format!("/ingresses/{}", encode(ingress)))
                    .await?;
            }
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
    let network = network_request(args)?;
    let volumes = args
        .volumes
        .iter()
        .map(|v| super::volume::parse_mount(v))
        .collect::<Result<Vec<_>>>()?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("vm-{}", &new_id()[..8]));
    let mut other = BTreeMap::new();
    if let Some(ttl) = &args.ttl {
        other.insert("ttl".to_string(), serde_json::json!(ttl));
    }
    if let Some(restart) = &args.restart {
        other.insert("restart_policy".to_string(), restart_policy(restart)?);
    }
    if let Some(idle) = &args.auto_standby {
        other.insert(
            "auto_standby".to_string(),
            super::auto_standby::policy(idle),
        );
    }
    if let Some(cmd) = &args.health_cmd {
        let mut check = serde_json::json!({
            "type": "exec",
            "exec": {"command": ["/bin/sh", "-c", cmd]},
        });
        for (k, v) in [
            ("interval", &args.health_interval),
            ("timeout", &args.health_timeout),
            ("start_period", &args.health_start_period),
        ] {
            if let Some(v) = v {
                check[k] = serde_json::json!(v);
            }
        }
        if let Some(n) = args.health_retries {
            check["failure_threshold"] = serde_json::json!(n);
        }
        other.insert("health_check".to_string(), check);
    }
    Ok(CreateInstance {
        other,
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
        network,
        tags: (!args.labels.is_empty()).then(|| {
            args.labels
                .iter()
                .map(|l| crate::tags::parse_pair(l))
                .collect()
        }),
        volumes: (!volumes.is_empty()).then_some(volumes),
        ..CreateInstance::default()
    })
}

/// docker's `--restart` (`no`, `always`, `on-failure[:N]`, and
/// `unless-stopped`, which is `always` here: a stop through the API always
/// holds) as hypeman's `restart_policy`.
fn restart_policy(s: &str) -> Result<serde_json::Value> {
    let (mode, max) = match s.split_once(':') {
        Some((m, n)) => (
            m,
            Some(
                n.parse::<u32>()
                    .with_context(|| format!("--restart {s:?}: {n:?} is not a count"))?,
            ),
        ),
        None => (s, None),
    };
    let policy = match mode {
        "no" | "never" => "never",
        "always" | "unless-stopped" => "always",
        "on-failure" | "on_failure" => "on_failure",
        _ => bail!("--restart {s:?}: use no, always, unless-stopped or on-failure[:N]"),
    };
    if max.is_some() && policy != "on_failure" {
        bail!("--restart {s:?}: only on-failure takes a count");
    }
    let mut p = serde_json::json!({ "policy": policy });
    if let Some(n) = max {
        p["max_attempts"] = serde_json::json!(n);
    }
    Ok(p)
}

/// `--network`, `--bandwidth-down/up` as hypeman's `network`; nothing when
/// none is given, so the daemon's default applies. Rates are checked here
/// too, for an error before anything is sent.
fn network_request(args: &RunArgs) -> Result<Option<CreateNetwork>> {
    for (flag, rate) in [
        ("--bandwidth-down", &args.bandwidth_down),
        ("--bandwidth-up", &args.bandwidth_up),
    ] {
        if let Some(r) = rate {
            r.parse::<lodge_net::Bandwidth>()
                .with_context(|| format!("{flag} {r:?}"))?;
        }
    }
    let limited = args.bandwidth_down.is_some() || args.bandwidth_up.is_some();
    let enabled = match args.network.as_deref() {
        Some("none") if limited => bail!("--network none leaves no traffic to limit"),
        Some("none") => Some(false),
        Some(_) => Some(true),
        None => None,
    };
    if enabled.is_none() && !limited {
        return Ok(None);
    }
    Ok(Some(CreateNetwork {
        enabled,
        bandwidth_download: args.bandwidth_down.clone(),
        bandwidth_upload: args.bandwidth_up.clone(),
        ..CreateNetwork::default()
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    use crate::cli::{Cli, Command};

    fn run_args(args: &[&str]) -> RunArgs {
        let argv = ["lodge", "run"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Run(a) => *a,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn network_flags_become_hypemans_network() {
        let body = |a: &[&str]| {
            serde_json::to_value(request_body(&run_args(a)).expect("valid")).expect("json")
        };
        let v = body(&["--rootfs", "/r", "sh"]);
        assert!(v.get("network").is_none(), "{v}");
        let v = body(&["--network", "none", "--rootfs", "/r", "sh"]);
        assert_eq!(v["network"], serde_json::json!({"enabled": false}));
        let v = body(&["--bandwidth-down", "10Mbps", "--rootfs", "/r", "sh"]);
        assert_eq!(
            v["network"],
            serde_json::json!({"bandwidth_download": "10Mbps"})
        );
        let v = body(&["--network", "default", "--bandwidth-up", "1MB/s", "busybox"]);
        assert_eq!(
            v["network"],
            serde_json::json!({"enabled": true, "bandwidth_upload": "1MB/s"})
        );
        let err =
            request_body(&run_args(&["--bandwidth-up", "fast", "busybox"])).expect_err("bad rate");
        assert!(
            format!("{err:#}").contains("--bandwidth-up \"fast\""),
            "{err:#}"
        );
        assert!(request_body(&run_args(&[
            "--network",
            "none",
            "--bandwidth-up",
            "1Mbps",
            "busybox"
        ]))
        .is_err());
        assert!(Cli::try_parse_from(["lodge", "run", "--network", "host", "busybox"]).is_err());
    }

    #[test]
    fn restart_flags_read_like_docker() {
        assert_eq!(
            restart_policy("on-failure:3").expect("valid"),
            serde_json::json!({"policy": "on_failure", "max_attempts": 3})
        );
        assert_eq!(
            restart_policy("unless-stopped").expect("valid"),
            serde_json::json!({"policy": "always"})
        );
        assert_eq!(
            restart_policy("no").expect("valid"),
            serde_json::json!({"policy": "never"})
        );
        for bad in ["sometimes", "always:3", "on-failure:x"] {
            assert!(restart_policy(bad).is_err(), "{bad}");
        }
    }
}
