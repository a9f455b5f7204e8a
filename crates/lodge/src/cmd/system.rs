//! `lodge system df`: where the data dir's disk goes (images, the layer
//! cache, instance overlays, volumes), from `GET /resources`' disk
//! breakdown, as `docker system df` shows it; and the host's vCPU and
//! memory allocation against the effective limits.

use std::io::Write;

use anyhow::Result;
use reqwest::Method;

use crate::cli::{SystemArgs, SystemCommand};
use crate::client::Client;
use crate::instances::Resources;

/// Bytes in binary units with one decimal.
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

/// The report's lines.
fn report(r: &Resources) -> Vec<String> {
    let b = &r.disk_breakdown;
    let mut out = vec![format!("{:<12}  {:>10}", "TYPE", "SIZE")];
    for (what, bytes) in [
        ("Images", b.images_bytes),
        ("Layer cache", b.oci_cache_bytes),
        ("Overlays", b.overlays_bytes),
        ("Volumes", b.volumes_bytes),
    ] {
        out.push(format!("{what:<12}  {:>10}", human(bytes)));
    }
    out.push(String::new());
    out.push(format!(
        "disk: {} allocated of {} ({} free to allocate)",
        human(r.disk.allocated),
        human(r.disk.effective_limit),
        human(r.disk.available)
    ));
    out.push(format!(
        "vCPUs: {} allocated of {} ({} host CPUs x {})",
        r.cpu.allocated, r.cpu.effective_limit, r.cpu.capacity, r.cpu.oversub_ratio
    ));
    out.push(format!(
        "memory: {} allocated of {}",
        human(r.memory.allocated),
        human(r.memory.effective_limit)
    ));
    out
}

pub fn run(args: SystemArgs) -> Result<u8> {
    match args.command {
        SystemCommand::Df(df) => super::rt::runtime()?.block_on(async {
            let client = Client::from_env()?;
            let r: Resources = client.call(Method::GET, "/resources").await?;
            let mut stdout = std::io::stdout().lock();
            if df.json {
                writeln!(stdout, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                for line in report(&r) {
                    writeln!(stdout, "{line}")?;
                }
            }
            Ok(0)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_every_part() {
        let r: Resources = serde_json::from_value(serde_json::json!({
            "cpu": {"type": "cpu", "capacity": 2, "effective_limit": 8, "allocated": 3, "available": 5, "oversub_ratio": 4.0},
            "memory": {"type": "memory", "capacity": 1073741824u64, "effective_limit": 1073741824u64, "allocated": 268435456, "available": 805306368, "oversub_ratio": 1.0},
            "disk": {"type": "disk", "capacity": 10737418240u64, "effective_limit": 10737418240u64, "allocated": 1048576, "available": 10736369664u64, "oversub_ratio": 1.0},
            "network": {"type": "network", "capacity": 1, "effective_limit": 2, "allocated": 0, "available": 2, "oversub_ratio": 2.0},
            "disk_breakdown": {"images_bytes": 1536, "oci_cache_bytes": 0, "overlays_bytes": 1048576, "volumes_bytes": 0},
            "allocations": []
        }))
        .expect("shape");
        let text = report(&r).join("\n");
        for part in [
            "Images",
            "1.5KiB",
            "Overlays",
            "1.0MiB",
            "Layer cache",
            "vCPUs: 3 allocated of 8",
            "256.0MiB allocated of 1.0GiB",
        ] {
            assert!(text.contains(part), "{part} in\n{text}");
        }
    }
}
