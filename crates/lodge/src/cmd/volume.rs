//! `lodge volume create|ls|inspect|rm|import`: the volume API from the
//! command line, read and written with the API's own types.
//!
//! `import` streams a local tar archive (gzip, zstd or plain) to
//! `POST /volumes/from-archive`, so it works against a remote daemon too.

use std::io::Write;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use reqwest::Method;

use crate::api::volumes::{CreateVolume, Volume};
use crate::cli::{VolumeArgs, VolumeCommand};
use crate::client::{encode, failure, Client};

pub fn run(args: VolumeArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        match args.command {
            VolumeCommand::Create(a) => {
                let body = CreateVolume {
                    name: a.name,
                    size_gb: serde_json::Value::from(a.size),
                    id: a.id,
                    tags: tags(&a.tags)?,
                };
                let v: Volume = client.call_with(Method::POST, "/volumes", &body).await?;
                println!("{}", v.id);
            }
            VolumeCommand::Ls(a) => {
                let list: Vec<Volume> = client.call(Method::GET, "/volumes").await?;
                let mut out = std::io::stdout().lock();
                if !a.quiet {
                    writeln!(out, "{:<24}  {:<20}  {:>7}  ATTACHED", "ID", "NAME", "SIZE")?;
                }
                for v in list {
                    if a.quiet {
                        writeln!(out, "{}", v.name)?;
                        continue;
                    }
                    let attached: Vec<String> = v
                        .attachments
                        .iter()
                        .map(|x| {
                            format!(
                                "{}:{}{}",
                                x.instance_id,
                                x.mount_path,
                                if x.readonly { ":ro" } else { "" }
                            )
                        })
                        .collect();
                    writeln!(
                        out,
                        "{:<24}  {:<20}  {:>5}GB  {}",
                        v.id,
                        v.name,
                        v.size_gb,
                        if attached.is_empty() {
                            "-".to_string()
                        } else {
                            attached.join(", ")
                        }
                    )?;
                }
            }
            VolumeCommand::Inspect(a) => {
                let v: serde_json::Value = client
                    .call(Method::GET, &format!("/volumes/{}", encode(&a.volume)))
                    .await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            VolumeCommand::Rm(a) => {
                let mut failed = false;
                for v in &a.volumes {
                    match client
                        .call_empty(Method::DELETE, &format!("/volumes/{}", encode(v)))
                        .await
                    {
                        Ok(()) => println!("{v}"),
                        Err(e) => {
                            eprintln!("lodge: {v}: {e:#}");
                            failed = true;
                        }
                    }
                }
                return Ok(u8::from(failed));
            }
            VolumeCommand::Import(a) => {
                let file = tokio::fs::File::open(&a.archive)
                    .await
                    .with_context(|| format!("opening {}", a.archive.display()))?;
                let len = file.metadata().await?.len();
                let chunks = tokio_util_chunks(file);
                let mut query: Vec<(String, String)> = vec![("name".into(), a.name.clone())];
                if let Some(s) = a.size {
                    query.push(("size_gb".into(), s.to_string()));
                }
                if let Some(id) = &a.id {
                    query.push(("id".into(), id.clone()));
                }
                for (k, v) in tags(&a.tags)?.unwrap_or_default() {
                    query.push((format!("tags[{k}]"), v));
                }
                let resp = reqwest::Client::new()
                    .post(format!("{}/volumes/from-archive", client.base_url()))
                    .bearer_auth(client.token())
                    .query(&query)
                    .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(reqwest::Body::wrap_stream(chunks))
                    .send()
                    .await
                    .with_context(|| {
                        format!(
                            "sending {} to the lodge daemon at {}",
                            a.archive.display(),
                            client.base_url()
                        )
                    })?;
                let status = resp.status();
                if !status.is_success() {
                    let body = resp.bytes().await.unwrap_or_default();
                    return Err(failure(status, &body));
                }
                let v: Volume = resp.json().await?;
                println!("{}", v.id);
            }
        }
        Ok(0)
    })
}

/// A file as a stream of 1 MiB chunks.
fn tokio_util_chunks(
    file: tokio::fs::File,
) -> futures_util::stream::BoxStream<'static, std::io::Result<Vec<u8>>> {
    futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
    .boxed()
}

/// `--tag K=V` flags as hypeman's tags; `None` when there are none.
fn tags(flags: &[String]) -> Result<Option<std::collections::BTreeMap<String, String>>> {
    let mut out = std::collections::BTreeMap::new();
    for kv in flags {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--tag {kv:?}: expected KEY=VALUE"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok((!out.is_empty()).then_some(out))
}

/// `-v NAME:/path[:ro]` (docker's syntax) as hypeman's `VolumeMount`.
pub fn parse_mount(spec: &str) -> Result<crate::instances::VolumeMount> {
    let mut parts = spec.splitn(3, ':');
    let (Some(volume), Some(path)) = (parts.next(), parts.next()) else {
        anyhow::bail!("-v {spec:?}: expected VOLUME:/PATH[:ro]");
    };
    let readonly = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => anyhow::bail!("-v {spec:?}: {other:?} is not ro or rw"),
    };
    if volume.is_empty() || !path.starts_with('/') {
        anyhow::bail!("-v {spec:?}: expected VOLUME:/PATH[:ro]");
    }
    Ok(crate::instances::VolumeMount {
        volume_id: volume.to_string(),
        mount_path: path.to_string(),
        readonly,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_mounts() {
        let m = parse_mount("data:/var/lib/db").expect("rw");
        assert_eq!(
            (m.volume_id.as_str(), m.mount_path.as_str(), m.readonly),
            ("data", "/var/lib/db", false)
        );
        assert!(parse_mount("data:/d:ro").expect("ro").readonly);
        assert!(!parse_mount("data:/d:rw").expect("rw").readonly);
        for bad in ["data", "data:rel", ":/d", "data:/d:xx"] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
    }
}
