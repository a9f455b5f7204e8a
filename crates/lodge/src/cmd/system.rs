//! `lodge system df`: where the data dir's disk goes (images, the layer
//! cache, instance overlays, volumes), from `GET /resources`' disk
//! breakdown, as `docker system df` shows it; and the host's vCPU and
//! memory allocation against the effective limits.
//!
//! `lodge system info`: what an operator asks first (docker's `info`):
//! versions, the accelerator, the hypervisors on `PATH`, the data and
//! system dirs, disk use. It reads the host itself (the daemon's
//! accelerator verdict is the one cached in the data dir), so it answers
//! even when the daemon is down; what only the daemon knows (its version,
//! the disk breakdown) is added when it answers.

use std::io::Write;

use anyhow::Result;
use reqwest::Method;

use crate::cli::{InfoArgs, SystemArgs, SystemCommand};
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
        SystemCommand::Info(info_args) => info(info_args),
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

/// `lodge system info`'s facts.
#[derive(Debug, serde::Serialize)]
struct Info {
    client_version: &'static str,
    /// The daemon's version, or null when it does not answer.
    server_version: Option<String>,
    /// Why the daemon could not be asked, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_error: Option<String>,
    /// `kvm` or `tcg`: from `LODGE_ACCEL`, else the daemon's cached probe.
    accelerator: Option<String>,
    accelerator_note: String,
    kvm_device: bool,
    /// Hypervisor binaries found on `PATH` (with `LODGE_QEMU`'s choice).
    hypervisors: Vec<Hypervisor>,
    data_dir: String,
    system_dir: String,
    guest_kernel: bool,
    /// Bytes of the data dir's file system.
    disk_total: Option<u64>,
    disk_free: Option<u64>,
    /// Bytes lodge uses there (images, cache, overlays, volumes), from the daemon.
    disk_used_by_lodge: Option<u64>,
}

#[derive(Debug, serde::Serialize)]
struct Hypervisor {
    name: &'static str,
    path: String,
}

/// The first executable `name` on `PATH` (or `name` itself when it is a path).
fn which(name: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let as_path = std::path::Path::new(name);
    if as_path.components().count() > 1 {
        return executable(as_path).then(|| as_path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

fn gather_local() -> Info {
    let data_dir = crate::config::data_dir_from_env();
    let paths = lodge_common::paths::Paths::new(&data_dir);
    let system_dir = std::env::var_os("LODGE_SYSTEM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            lodge_common::paths::Paths::new(crate::config::DEFAULT_DATA_DIR).system_dir()
        });
    let (accelerator, accelerator_note) = match std::env::var("LODGE_ACCEL") {
        Ok(a) if !a.is_empty() => (Some(a), "from LODGE_ACCEL".to_string()),
        _ => match std::fs::read(paths.accel_cache())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        {
            Some(v) => (
                v["accel"].as_str().map(str::to_string),
                v["message"].as_str().unwrap_or("").to_string(),
            ),
            None => (
                None,
                "not probed yet: the daemon decides when it starts".to_string(),
            ),
        },
    };
    let qemu = std::env::var_os("LODGE_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
    let hypervisors = [
        ("qemu", qemu),
        (
            "cloud-hypervisor",
            std::env::var_os("LODGE_CH_BINARY")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "cloud-hypervisor".into()),
        ),
        ("firecracker", "firecracker".into()),
    ]
    .into_iter()
    .filter_map(|(name, bin)| {
        which(&bin).map(|p| Hypervisor {
            name,
            path: p.display().to_string(),
        })
    })
    .collect();
    let fs = rustix::fs::statvfs(&data_dir).ok();
    Info {
        client_version: env!("CARGO_PKG_VERSION"),
        server_version: None,
        server_error: None,
        accelerator,
        accelerator_note,
        kvm_device: std::path::Path::new("/dev/kvm").exists(),
        hypervisors,
        data_dir: data_dir.display().to_string(),
        guest_kernel: system_dir.join("vmlinuz").exists() && system_dir.join("initrd.img").exists(),
        system_dir: system_dir.display().to_string(),
        disk_total: fs.as_ref().map(|f| f.f_blocks * f.f_frsize),
        disk_free: fs.as_ref().map(|f| f.f_bavail * f.f_frsize),
        disk_used_by_lodge: None,
    }
}

fn info_lines(i: &Info) -> Vec<String> {
    let opt = |v: Option<u64>| v.map(human).unwrap_or_else(|| "-".to_string());
    let mut out = vec![
        format!("Client version:  {}", i.client_version),
        format!(
            "Server version:  {}",
            match (&i.server_version, &i.server_error) {
                (Some(v), _) => v.clone(),
                (None, Some(e)) => format!("- ({e})"),
                (None, None) => "-".to_string(),
            }
        ),
        format!(
            "Accelerator:     {} ({})",
            i.accelerator.as_deref().unwrap_or("-"),
            i.accelerator_note
        ),
        format!(
            "/dev/kvm:        {}",
            if i.kvm_device { "present" } else { "absent" }
        ),
    ];
    if i.hypervisors.is_empty() {
        out.push("Hypervisors:     none found on PATH".to_string());
    }
    for (n, h) in i.hypervisors.iter().enumerate() {
        let label = if n == 0 { "Hypervisors:" } else { "" };
        out.push(format!("{label:<16} {} ({})", h.name, h.path));
    }
    out.push(format!("Data dir:        {}", i.data_dir));
    out.push(format!(
        "System dir:      {} ({})",
        i.system_dir,
        if i.guest_kernel {
            "guest kernel and initrd present"
        } else {
            "no guest kernel: run scripts/build-guest.sh"
        }
    ));
    out.push(format!(
        "Disk:            {} used by lodge, {} free of {}",
        opt(i.disk_used_by_lodge),
        opt(i.disk_free),
        opt(i.disk_total)
    ));
    out
}

fn info(args: InfoArgs) -> Result<u8> {
    let mut i = gather_local();
    super::rt::runtime()?.block_on(async {
        let asked = async {
            let client = Client::from_env()?;
            let caps: serde_json::Value = client.call(Method::GET, "/capabilities").await?;
            let r: Resources = client.call(Method::GET, "/resources").await?;
            anyhow::Ok((caps, r))
        };
        match asked.await {
            Ok((caps, r)) => {
                i.server_version = caps["server"]["version"].as_str().map(str::to_string);
                let b = &r.disk_breakdown;
                i.disk_used_by_lodge =
                    Some(b.images_bytes + b.oci_cache_bytes + b.overlays_bytes + b.volumes_bytes);
            }
            Err(e) => i.server_error = Some(e.to_string()),
        }
    });
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&i)?)?;
    } else {
        for line in info_lines(&i) {
            writeln!(stdout, "{line}")?;
        }
    }
    Ok(0)
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

    #[test]
    fn info_names_every_fact_even_without_a_daemon() {
        let mut i = gather_local();
        i.server_error = Some("connection refused".into());
        let text = info_lines(&i).join("\n");
        for part in [
            "Client version:",
            "Server version:  - (connection refused)",
            "Accelerator:",
            "Hypervisors:",
            "Data dir:",
            "System dir:",
            "Disk:",
        ] {
            assert!(text.contains(part), "{part} in\n{text}");
        }
    }
}
