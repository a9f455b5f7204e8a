//! `lodge pull`, `lodge images`, `lodge rmi`, and the hidden `lodge
//! mk-image` that writes an image archive from directories (the offline
//! quick start builds its demo image with it).
//!
//! `pull` starts the daemon's asynchronous pull and polls the image until it
//! is ready or failed, drawing bytes and layers on a progress bar (on a
//! terminal only). Polls start every 10 ms and back off, so a pull that
//! finds everything cached returns in a few milliseconds.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::Method;

use crate::api::types::{CreateImage, Image};
use crate::cli::{ImagesArgs, MkImageArgs, PullArgs, RmiArgs};
use crate::client::{encode, Client};

/// Archive sources name a file on the daemon's host: make relative paths
/// absolute here, where the user typed them.
fn absolutize_source(image: &str) -> Result<String> {
    for prefix in ["oci-archive:", "docker-archive:"] {
        if let Some(rest) = image.strip_prefix(prefix) {
            let (path, reference) = match rest.split_once(':') {
                Some((p, r)) => (p, Some(r)),
                None => (rest, None),
            };
            let abs =
                std::path::absolute(path).with_context(|| format!("archive path {path:?}"))?;
            let abs = abs.to_str().context("archive path is not valid UTF-8")?;
            return Ok(match reference {
                Some(r) => format!("{prefix}{abs}:{r}"),
                None => format!("{prefix}{abs}"),
            });
        }
    }
    Ok(image.to_string())
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

pub fn pull(args: PullArgs) -> Result<u8> {
    let name = absolutize_source(&args.image)?;
    let body = CreateImage {
        name,
        platform: args.platform.clone(),
        ..CreateImage::default()
    };
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let started = Instant::now();
        let mut img: Image = client.call_with(Method::POST, "/images", &body).await?;
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
        if args.quiet {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut delay = Duration::from_millis(10);
        loop {
            let status = img.status.as_str();
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
                    bail!(
                        "pull of {name} failed: {}",
                        img.error.as_deref().unwrap_or("unknown error")
                    );
                }
                _ => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
            img = client.call(Method::GET, &path).await?;
        }
        bar.finish_and_clear();
        if !args.quiet {
            eprintln!(
                "pulled {name} {} ({}) in {:.2}s",
                img.digest,
                human(img.size_bytes.unwrap_or(0)),
                started.elapsed().as_secs_f64()
            );
        }
        println!("{name}");
        Ok(0)
    })
}

pub fn images(args: ImagesArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let list: Vec<Image> = client.call(Method::GET, "/images").await?;
        if args.quiet {
            for i in &list {
                println!("{}", i.name);
            }
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
