//! `lodge ingress create|ls|rm` (the ingress API from the command line,
//! with the API's own types) and the hidden `lodge ingress-proxy`, the
//! proxy process the daemon starts.
//!
//! The proxy runs on a small tokio runtime of its own; its logic is in
//! lodge-ingress, and what it knows of lodge is `ingress::backend`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use reqwest::Method;

use crate::api::ingresses::{CreateIngress, Ingress};
use crate::cli::{IngressCommand, IngressProxyArgs};
use crate::client::{encode, Client};
use lodge_ingress::rules::{HeaderAuth, MatchInput, RuleInput, TargetInput};

pub fn run(cmd: IngressCommand) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        match cmd {
            IngressCommand::Create(a) => {
                let request_header_auth = match &a.header_auth {
                    None => None,
                    Some(s) => {
                        let (header, value) = s
                            .split_once('=')
                            .context("--header-auth takes NAME=VALUE")?;
                        Some(HeaderAuth {
                            header: header.to_string(),
                            value: value.to_string(),
                        })
                    }
                };
                let name = a.name.clone().unwrap_or_else(|| default_name(&a.hostname));
                let body = CreateIngress {
                    name,
                    rules: vec![RuleInput {
                        match_: MatchInput {
                            hostname: a.hostname,
                            port: Some(a.host_port),
                            protocol: None,
                        },
                        target: TargetInput {
                            instance: a.instance,
                            port: a.port,
                        },
                        tls: None,
                        redirect_http: None,
                        request_header_auth,
                    }],
                    tags: Some(tags(&a.tags)?).filter(|t| !t.is_empty()),
                };
                let made: Ingress = client.call_with(Method::POST, "/ingresses", &body).await?;
                println!("{}", made.id);
            }
            IngressCommand::Ls(a) => {
                let list: Vec<Ingress> = client.call(Method::GET, "/ingresses").await?;
                let mut out = std::io::stdout().lock();
                if !a.quiet {
                    writeln!(out, "{:<22}  {:<20}  RULES", "ID", "NAME")?;
                }
                for i in list {
                    if a.quiet {
                        writeln!(out, "{}", i.name)?;
                        continue;
                    }
                    let rules: Vec<String> = i
                        .rules
                        .iter()
                        .map(|r| {
                            format!(
                                "{}:{} -> {}:{}",
                                r.match_.hostname,
                                r.match_.port.unwrap_or(80),
                                r.target.instance,
                                r.target.port
                            )
                        })
                        .collect();
                    writeln!(out, "{:<22}  {:<20}  {}", i.id, i.name, rules.join(", "))?;
                }
            }
            IngressCommand::Rm(a) => {
                let mut failed = false;
                for key in &a.ingresses {
                    match client
                        .call_empty(Method::DELETE, &format!("/ingresses/{}", encode(key)))
                        .await
                    {
                        Ok(()) => println!("{key}"),
                        Err(e) => {
                            eprintln!("lodge: {key}: {e:#}");
                            failed = true;
                        }
                    }
                }
                return Ok(u8::from(failed));
            }
        }
        Ok(0)
    })
}

/// `-p HOSTPORT:GUESTPORT[/tcp]` values, checked before anything is sent.
pub fn parse_publish(raw: &[String]) -> Result<Vec<(u16, u16)>> {
    raw.iter()
        .map(|p| {
            let spec = p.strip_suffix("/tcp").unwrap_or(p);
            let (host, guest) = spec
                .split_once(':')
                .with_context(|| format!("-p {p:?}: expected HOSTPORT:GUESTPORT"))?;
            let port = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|n| *n != 0)
                    .with_context(|| format!("-p {p:?}: {s:?} is not a port (1-65535)"))
            };
            Ok((port(host)?, port(guest)?))
        })
        .collect()
}

/// Publishes `ports` of instance `id` as one ingress of tcp rules (lodge's
/// extension of the resource); returns its name, or `None` for no ports.
pub async fn publish(
    client: &Client,
    id: &str,
    instance_name: &str,
    ports: &[(u16, u16)],
) -> Result<Option<String>> {
    if ports.is_empty() {
        return Ok(None);
    }
    let mut name = format!("{instance_name}-ports");
    if name.len() > 63 {
        name = format!("{}-ports", &id[..id.len().min(57)]);
    }
    let body = CreateIngress {
        name: name.clone(),
        rules: ports
            .iter()
            .map(|(host, guest)| RuleInput {
                match_: MatchInput {
                    hostname: lodge_ingress::rules::ANY_HOST.to_string(),
                    port: Some((*host).into()),
                    protocol: Some("tcp".to_string()),
                },
                target: TargetInput {
                    instance: id.to_string(),
                    port: (*guest).into(),
                },
                tls: None,
                redirect_http: None,
                request_header_auth: None,
            })
            .collect(),
        tags: Some(BTreeMap::from([(
            "lodge.instance".to_string(),
            id.to_string(),
        )])),
    };
    let _made: Ingress = client
        .call_with(Method::POST, "/ingresses", &body)
        .await
        .context("publishing the ports")?;
    Ok(Some(name))
}

/// A name from a hostname: its labels joined by dashes, captures dropped.
fn default_name(hostname: &str) -> String {
    let name: Vec<String> = hostname
        .to_ascii_lowercase()
        .split('.')
        .map(|l| l.replace(['{', '}'], ""))
        .filter(|l| !l.is_empty())
        .collect();
    let mut name = name.join("-");
    name.retain(|c| c.is_ascii_alphanumeric() || c == '-');
    name.truncate(63);
    name.trim_matches('-').to_string()
}

fn tags(raw: &[String]) -> Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("tag {t:?} is not KEY=VALUE"))
        })
        .collect()
}

/// `lodge ingress-proxy`: serve until told to exit.
/// Default of `LODGE_INGRESS_MAX_CONNECTIONS`.
const INGRESS_MAX_CONNECTIONS: usize = 4096;

pub fn proxy(args: IngressProxyArgs) -> Result<u8> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LODGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let data_dir = args
        .ingress_dir
        .parent()
        .context("the ingress dir has no parent (the data dir)")?
        .to_path_buf();
    let backend = Arc::new(crate::ingress::backend::LodgeBackend::new(data_dir)?);
    let wanted = match std::env::var("LODGE_INGRESS_MAX_CONNECTIONS") {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .with_context(|| {
                format!(
                    "LODGE_INGRESS_MAX_CONNECTIONS must be a whole number of at least 1, got {v:?}"
                )
            })?,
        Err(_) => INGRESS_MAX_CONNECTIONS,
    };
    // Two descriptors per proxied connection: the client's and the guest's.
    let max_connections = crate::api::server::fit_to_file_limit(2 * wanted) / 2;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(lodge_ingress::serve(
        lodge_ingress::ServeOptions {
            ingress_dir: args.ingress_dir,
            addr: args.address,
            max_connections: max_connections.max(1),
        },
        backend,
    ))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_flags_are_docker_spelled_ports() {
        let ok = parse_publish(&["8080:80".to_string(), "9000:9000/tcp".to_string()]).expect("ok");
        assert_eq!(ok, vec![(8080, 80), (9000, 9000)]);
        for bad in ["80", "0:80", "8080:70000", "a:80", "8080:80/udp"] {
            assert!(parse_publish(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_come_from_hostnames() {
        assert_eq!(default_name("Web.Example.com"), "web-example-com");
        assert_eq!(default_name("{instance}.apps.test"), "instance-apps-test");
    }
}
