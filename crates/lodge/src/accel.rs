//! Choosing KVM or TCG once, when the daemon starts.
//!
//! `/dev/kvm` can exist and still be useless (nested KVM here hangs a Linux
//! guest after decompression), so unless `LODGE_ACCEL` decides, lodge boots
//! its own kernel once under KVM with a bounded self-test and falls back to
//! TCG with a clear message. A definitive verdict is cached in the data dir,
//! keyed by the kernel it was measured with, so restarts do not pay again.

use std::path::Path;

use anyhow::Result;
use lodge_hypervisor::{Accel, ProbeOptions, ProbeResult};
use serde::{Deserialize, Serialize};

use crate::config::Config;

#[derive(Serialize, Deserialize)]
struct Cached {
    kernel_key: String,
    accel: Accel,
    message: String,
}

fn kernel_key(kernel: &Path) -> String {
    let modified = std::fs::metadata(kernel)
        .and_then(|m| m.modified())
        .map(|t| humantime::format_rfc3339_nanos(t).to_string())
        .unwrap_or_default();
    format!("{}@{modified}", kernel.display())
}

pub async fn decide(cfg: &Config) -> Result<Accel> {
    if let Some(accel) = Accel::from_env()? {
        tracing::info!("acceleration {accel} (from LODGE_ACCEL)");
        return Ok(accel);
    }
    let mut options = ProbeOptions::for_system_dir(&cfg.system_dir);
    options.qemu_binary = cfg.qemu_binary.clone().into_os_string();
    let key = kernel_key(&options.kernel);
    let cache = cfg.paths().accel_cache();
    if let Ok(bytes) = std::fs::read(&cache) {
        if let Ok(c) = serde_json::from_slice::<Cached>(&bytes) {
            if c.kernel_key == key {
                log_verdict(
                    c.accel,
                    &format!("{} (cached in {})", c.message, cache.display()),
                );
                return Ok(c.accel);
            }
        }
    }
    let probe: ProbeResult = Accel::from_env_or_probe(&options).await?;
    log_verdict(probe.accel, &probe.to_string());
    if probe.is_definitive() {
        let record = Cached {
            kernel_key: key,
            accel: probe.accel,
            message: probe.to_string(),
        };
        // A cache that cannot be written costs the next start a probe.
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|json| lodge_common::fsutil::write_atomic(&cache, &json));
        if let Err(e) = written {
            tracing::warn!(
                "cannot cache the accelerator verdict in {}: {e}",
                cache.display()
            );
        }
    }
    Ok(probe.accel)
}

fn log_verdict(accel: Accel, message: &str) {
    match accel {
        Accel::Tcg => tracing::warn!("using software emulation (TCG): {message}"),
        Accel::Kvm => tracing::info!("using KVM: {message}"),
    }
}
