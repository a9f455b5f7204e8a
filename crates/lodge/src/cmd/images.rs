//! `lodge pull`, `lodge images`, `lodge rmi`, and the hidden `lodge
//! mk-image` that writes an image archive from directories (the offline
//! quick start builds its demo image with it).
//!
//! `pull` starts the daemon's asynchronous pull and polls the image until
//! its pull is ready or failed, drawing bytes and layers on a progress bar
//! (on a terminal only). Polls start every 10 ms and back off, so a pull
//! that finds everything cached returns in a few milliseconds. A refresh of
//! a ready image that fails is an error here, and the image stays ready.
//!
//! `oci-archive:PATH` and `docker-archive:PATH` name a file where the CLI
//! runs: it is streamed to the daemon (`POST /images/load`), so the daemon
//! never opens a path a client chose, and a remote daemon works the same.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::Method;

use crate::api::types::{CreateImage, Image};
use crate::cli::{ImagesArgs, MkImageArgs, PullArgs, RmiArgs, TagArgs};
use crate::client::{encode, failure, Client};

/// An archive source as typed: `oci-archive:PATH[:REF]`.
struct ArchiveArg<'a> {
    format: &'static str,
    path: &'a str,
    reference: Option<&'a str>,
}

fn archive_arg(image: &str) -> Option<ArchiveArg<'_>> {
    for (prefix, format) in [("oci-archive:", "oci"), ("docker-archive:", "docker")] {
        if let Some(rest) = image.strip_prefix(prefix) {
            let (path, reference) = match rest.split_once(':') {
                Some((p, r)) => (p, Some(r).filter(|r| !r.is_empty())),
                None => (rest, None),
            };
            return Some(ArchiveArg {
                format,
                path,
                reference,
            });
        }
    }
    None
}

/// Streams a local archive to the daemon (`POST /images/load`) and returns
/// the image the daemon started importing.
async fn upload(
    client: &Client,
    arg: &ArchiveArg<'_>,
    platform: Option<&str>,
    quiet: bool,
) -> Result<Image> {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;

    let file = tokio::fs::File::open(arg.path)
        .await
        .with_context(|| format!("opening archive {}", arg.path))?;
    let len = file
        .metadata()
        .await
        .with_context(|| format!("reading archive {}", arg.path))?
        .len();
    let file_name = std::path::Path::new(arg.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} uploading {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(file_name.clone());
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let shown = bar.clone();
    let chunks = futures_util::stream::unfold(file, move |mut f| {
        let bar = shown.clone();
        async move {
            let mut buf = vec![0u8; 256 << 10];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    bar.inc(n as u64);
                    Some((Ok::<_, std::io::Error>(buf), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        }
    })
    .boxed();
    let mut query: Vec<(&str, &str)> = vec![("format", arg.format), ("file", &file_name)];
    if let Some(r) = arg.reference {
        query.push(("reference", r));
    }
    if let Some(p) = platform {
        query.push(("platform", p));
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/images/load", client.base_url()))
        .bearer_auth(client.token())
        .query(&query)
        .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .with_context(|| {
            format!(
                "sending {} to the lodge daemon at {}",
                arg.path,
                client.base_url()
            )
        })?;
    bar.finish_and_clear();
    let status = resp.status();
    if !status.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        return Err(failure(status, &body));
    }
    Ok(resp.json().await?)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// The pull's status and error: the image's `pull` when the daemon
/// reports one, else (an older daemon) the image's own.
fn pull_status(img: &Image) -> (&str, Option<&str>) {
    match &img.pull {
        Some(p) => (p.status.as_str(), p.error.as_deref()),
        None => (img.status.as_str(), img.error.as_deref()),
    }
}

pub fn pull(args: PullArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let name =
            pull_with_progress(&client, &args.image, args.platform.as_deref(), args.quiet).await?;
        println!("{name}");
        Ok(0)
    })
}

/// Pulls `image` (or imports an archive) with a progress bar on stderr
/// (hidden when `quiet` or when stderr is not a terminal) and returns the
/// image's name once it is ready; `pull` and `run`'s implicit pull.
pub(super) async fn pull_with_progress(
    client: &Client,
    image: &str,
    platform: Option<&str>,
    quiet: bool,
) -> Result<String> {
    let started = Instant::now();
    let mut img: Image = match archive_arg(image) {
        Some(arg) => upload(client, &arg, platform, quiet).await?,
        None => {
            let body = CreateImage {
                name: image.to_string(),
                platform: platform.map(str::to_string),
                ..CreateImage::default()
            };
            client.call_with(Method::POST, "/images", &body).await?
        }
    };
    let name = img.name.clone();
    let path = format!("/images/{}", encode(&name));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut delay = Duration::from_millis(10);
    loop {
        let (status, error) = pull_status(&img);
        if let Some(p) = &img.progress {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(format!(
                "{status} {name}: layers {}/{} ({} cached)",
                p.layers_done, p.layers_total, p.layers_cached
            ));
        } else {
            bar.set_message(format!("{status} {name}"));
        }
        match status {
            "ready" => break,
            "failed" => {
                bar.finish_and_clear();
                let error = error.unwrap_or("unknown error");
                if img.status == "ready" {
                    bail!(
                        "pull of {name} failed: {error}\n(the image already there is unchanged and still usable: {})",
                        img.digest
                    );
                }
                bail!("pull of {name} failed: {error}");
            }
            _ => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
        img = client.call(Method::GET, &path).await?;
    }
    bar.finish_and_clear();
    if !quiet {
        eprintln!(
            "pulled {name} {} ({}) in {:.2}s",
            img.digest,
            human(img.size_bytes.unwrap_or(0)),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(name)
}

/// `run`'s implicit pull: an image the daemon does not have ready is
/// pulled first with the same progress bar as `lodge pull` (the create
/// call would pull it too, silently); one that is ready is left alone, so
/// `run` of a loaded or cached image never asks a registry.
pub(super) async fn pull_if_missing(client: &Client, image: &str) -> Result<()> {
    if archive_arg(image).is_some() {
        return Ok(());
    }
    let path = format!("/images/{}", encode(image));
    match client.call::<Image>(Method::GET, &path).await {
        Ok(img) if img.status == "ready" => Ok(()),
        _ => pull_with_progress(client, image, None, false)
            .await
            .map(|_| ()),
    }
}

/// Query pairs for the API (`tags[K]=V`) and label keys checked here.
type LabelFilter = (Vec<(String, String)>, Vec<String>);

/// `images --filter`s: `label=K=V` pairs for the API, and `label=K` keys
/// checked here.
fn image_filter(filters: &[String]) -> Result<LabelFilter> {
    let (mut query, mut keys) = (Vec::new(), Vec::new());
    for raw in filters {
        match raw.strip_prefix("label=") {
            Some(l) => match l.split_once('=') {
                Some((k, v)) => query.push((format!("tags[{k}]"), v.to_string())),
                None => keys.push(l.to_string()),
            },
            None => bail!("unsupported filter {raw:?}: use label=K=V or label=K"),
        }
    }
    Ok((query, keys))
}

pub fn images(args: ImagesArgs) -> Result<u8> {
    let (query, keys) = image_filter(&args.filters)?;
    let format = super::format::Format::parse(args.format.as_deref())?;
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let mut list: Vec<Image> = client.get_with("/images", &query).await?;
        list.retain(|i| {
            keys.iter()
                .all(|k| i.tags.as_ref().is_some_and(|t| t.contains_key(k)))
        });
        if args.quiet {
            for i in &list {
                println!("{}", i.name);
            }
            return Ok(0);
        }
        if super::format::print_list(&format, &list)? {
            return Ok(0);
        }
        let rows: Vec<[String; 5]> = list
            .iter()
            .map(|i| {
                let short = i.digest.strip_prefix("sha256:").unwrap_or(&i.digest);
                [
                    i.name.clone(),
                    short.chars().take(12).collect(),
                    i.status.clone(),
                    i.size_bytes.map(human).unwrap_or_default(),
                    i.created_at.clone(),
                ]
            })
            .collect();
        let header = ["NAME", "DIGEST", "STATUS", "SIZE", "CREATED"].map(String::from);
        let mut widths = [0usize; 5];
        for r in std::iter::once(&header).chain(&rows) {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        for r in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = r
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("{}", line.join("  ").trim_end());
        }
        Ok(0)
    })
}

pub fn rmi(args: RmiArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let mut code = 0;
        for name in &args.images {
            match client
                .call_empty(Method::DELETE, &format!("/images/{}", encode(name)))
                .await
            {
                Ok(()) => println!("{name}"),
                Err(e) => {
                    eprintln!("lodge: {name}: {e:#}");
                    code = 1;
                }
            }
        }
        Ok(code)
    })
}

/// `lodge tag SOURCE TARGET`: `POST /images/{source}/tag`.
pub fn tag(args: TagArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let body = serde_json::json!({ "target": args.target });
        let img: Image = client
            .call_with(
                Method::POST,
                &format!("/images/{}/tag", encode(&args.source)),
                &body,
            )
            .await?;
        println!("{}", img.name);
        Ok(0)
    })
}

pub fn mk_image(args: MkImageArgs) -> Result<u8> {
    use lodge_images::builder::{write_docker_archive, Image, Layer, LayerBuilder, Layout};
    let mut layers = Vec::new();
    for dir in &args.layers {
        let mut b = LayerBuilder::new();
        b.tree(dir, "")
            .with_context(|| format!("reading {}", dir.display()))?;
        layers.push(Layer::gzip(&b.finish()?)?);
    }
    let opt = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let config = lodge_images::oci::ContainerConfig {
        entrypoint: opt(&args.entrypoint),
        cmd: opt(&args.cmd),
        env: opt(&args.env),
        working_dir: args.workdir.clone(),
        user: args.user.clone(),
    };
    let image = Image::new(config, layers);
    if args.docker {
        write_docker_archive(&image, args.name.as_deref(), &args.output)?;
    } else {
        Layout::single(&image, args.name.as_deref())?.write_archive(&args.output)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_go_to_the_api_or_stay_here() {
        let (query, keys) =
            image_filter(&["label=team=web".into(), "label=canary".into()]).expect("valid");
        assert_eq!(query, vec![("tags[team]".to_string(), "web".to_string())]);
        assert_eq!(keys, vec!["canary".to_string()]);
        assert!(image_filter(&["dangling=true".into()]).is_err());
    }
}
