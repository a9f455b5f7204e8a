//! `lodge push IMAGE TARGET`: starts the daemon's push job and polls it
//! until it is pushed or failed, drawing the layer bytes on a progress bar
//! (on a terminal only), as `lodge pull` does for pulls. Credentials are
//! the daemon's (its docker-style auth file), as for pulls.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::Method;

use crate::api::pushes::{CreatePush, Push};
use crate::cli::PushArgs;
use crate::client::{encode, Client};

pub fn run(args: PushArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let started = Instant::now();
        let body = CreatePush {
            image: args.image.clone(),
            target: args.target.clone(),
            credentials: None,
            insecure: args.insecure,
        };
        let mut push: Push = client.call_with(Method::POST, "/pushes", &body).await?;
        let path = format!("/pushes/{}", encode(&push.id));
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
            bar.set_length(push.bytes_total);
            bar.set_position(push.bytes);
            bar.set_message(format!("{} {} → {}", push.status, push.image, push.target));
            match push.status.as_str() {
                "pushed" => break,
                "failed" => {
                    bar.finish_and_clear();
                    bail!(
                        "push of {} to {} failed: {}",
                        push.image,
                        push.target,
                        push.error.as_deref().unwrap_or("unknown error")
                    );
                }
                _ => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
            push = client.call(Method::GET, &path).await?;
        }
        bar.finish_and_clear();
        if !args.quiet {
            eprintln!(
                "pushed {} to {} ({}, {} layers, {} already there) in {:.2}s",
                push.image,
                push.target,
                push.digest,
                push.layers,
                push.blobs_skipped,
                started.elapsed().as_secs_f64()
            );
        }
        println!(
            "{}@{}",
            push.target.split('@').next().unwrap_or(&push.target),
            push.digest
        );
        Ok(0)
    })
}
