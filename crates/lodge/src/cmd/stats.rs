//! `lodge stats [--watch] INSTANCE...`: what running instances cost the host,
//! from `GET /instances/{id}/stats`, as `docker stats` shows it.
//!
//! One-shot by default (CPU time so far); `--watch` redraws every interval
//! and adds CPU% from the difference between two samples, which is the only
//! honest utilisation figure (a single sample has no time base).

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use reqwest::Method;

use crate::cli::StatsArgs;
use crate::client::{encode, Client};
use crate::instances::InstanceStats;

/// Bytes in binary units with one decimal, as docker prints them.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// One table row; `cpu_pct` only when there was an earlier sample.
fn row(s: &InstanceStats, cpu_pct: Option<f64>) -> String {
    let mem_pct = s
        .memory_utilization_ratio
        .map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "-".into());
    format!(
        "{:<20}  {:>8.2}  {:>6}  {:>21}  {:>6}  {:>21}",
        s.instance_name,
        s.cpu_seconds,
        cpu_pct.map_or_else(|| "-".into(), |p| format!("{p:.1}%")),
        format!(
            "{} / {}",
            human(s.memory_rss_bytes),
            human(s.allocated_memory_bytes)
        ),
        mem_pct,
        format!(
            "{} / {}",
            human(s.network_rx_bytes),
            human(s.network_tx_bytes)
        ),
    )
}

fn header() -> String {
    format!(
        "{:<20}  {:>8}  {:>6}  {:>21}  {:>6}  {:>21}",
        "NAME", "CPU(s)", "CPU%", "MEM USAGE / LIMIT", "MEM%", "NET RX / TX"
    )
}

/// CPU% (of one CPU) between two samples.
fn cpu_percent(before: f64, after: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    ((after - before).max(0.0) / secs) * 100.0
}

pub fn run(args: StatsArgs) -> Result<u8> {
    super::rt::runtime()?.block_on(async {
        let client = Client::from_env()?;
        let fetch = |name: String| {
            let client = &client;
            async move {
                let path = format!("/instances/{}/stats", encode(&name));
                client.call::<InstanceStats>(Method::GET, &path).await
            }
        };
        if args.json && !args.watch {
            let mut all = Vec::new();
            for name in &args.instances {
                all.push(fetch(name.clone()).await?);
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
            return Ok(0);
        }
        let mut last: HashMap<String, (f64, Instant)> = HashMap::new();
        loop {
            let mut out = String::new();
            if args.watch {
                // Clear the screen and go home, as `watch` does.
                out.push_str("\x1b[2J\x1b[H");
            }
            out.push_str(&header());
            out.push('\n');
            let mut failed = false;
            for name in &args.instances {
                match fetch(name.clone()).await {
                    Ok(s) => {
                        let now = Instant::now();
                        let pct = last
                            .get(&s.instance_id)
                            .map(|(cpu, at)| cpu_percent(*cpu, s.cpu_seconds, now - *at));
                        last.insert(s.instance_id.clone(), (s.cpu_seconds, now));
                        out.push_str(&row(&s, pct));
                        out.push('\n');
                    }
                    Err(e) => {
                        if !args.watch {
                            eprintln!("lodge: {e:#}");
                        }
                        out.push_str(&format!("{name:<20}  {e:#}\n"));
                        failed = true;
                    }
                }
            }
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes())?;
            stdout.flush()?;
            if !args.watch {
                return Ok(if failed { 1 } else { 0 });
            }
            tokio::time::sleep(Duration::from_secs(args.interval.max(1))).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_percentages_read_like_docker() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(256 << 20), "256.0MiB");
        assert_eq!(human(1536 << 20), "1.5GiB");
        let p = cpu_percent(1.0, 1.5, Duration::from_secs(1));
        assert!((p - 50.0).abs() < 1e-9, "{p}");
        assert_eq!(cpu_percent(2.0, 1.0, Duration::from_secs(1)), 0.0);
        assert_eq!(cpu_percent(1.0, 2.0, Duration::ZERO), 0.0);
    }

    #[test]
    fn a_row_shows_every_figure() {
        let s = InstanceStats {
            instance_id: "abc".into(),
            instance_name: "web".into(),
            cpu_seconds: 1.25,
            memory_rss_bytes: 128 << 20,
            memory_vms_bytes: 1 << 30,
            network_rx_bytes: 2048,
            network_tx_bytes: 10,
            allocated_vcpus: 1,
            allocated_memory_bytes: 256 << 20,
            memory_utilization_ratio: Some(0.5),
        };
        let r = row(&s, Some(12.34));
        for part in [
            "web",
            "1.25",
            "12.3%",
            "128.0MiB / 256.0MiB",
            "50.0%",
            "2.0KiB / 10B",
        ] {
            assert!(r.contains(part), "{part} in {r}");
        }
        assert!(row(&s, None).contains("  -  ") || row(&s, None).contains(" - "));
    }
}
