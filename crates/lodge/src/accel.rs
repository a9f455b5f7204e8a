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
    Ok(decide_probed(&options, &cfg.paths().accel_cache()).await)
}

/// The cached verdict for `options.kernel` if `cache` has one, else a
/// probe, cached when it is definitive.
async fn decide_probed(options: &ProbeOptions, cache: &Path) -> Accel {
    let key = kernel_key(&options.kernel);
    if let Ok(bytes) = std::fs::read(cache) {
        if let Ok(c) = serde_json::from_slice::<Cached>(&bytes) {
            if c.kernel_key == key {
                log_verdict(
                    c.accel,
                    &format!("{} (cached in {})", c.message, cache.display()),
                );
                return c.accel;
            }
        }
    }
    let probe: ProbeResult = lodge_hypervisor::accel::probe(options).await;
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
            .and_then(|json| lodge_common::fsutil::write_atomic(cache, &json));
        if let Err(e) = written {
            tracing::warn!(
                "cannot cache the accelerator verdict in {}: {e}",
                cache.display()
            );
        }
    }
    probe.accel
}

fn log_verdict(accel: Accel, message: &str) {
    match accel {
        Accel::Tcg => tracing::warn!("using software emulation (TCG): {message}"),
        Accel::Kvm => tracing::info!("using KVM: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probe inputs faked where this machine cannot give them: a kernel
    /// file, and a KVM device that is absent or a plain file.
    fn options(dir: &Path, kvm_device: &str) -> ProbeOptions {
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"not really a kernel").expect("kernel");
        let mut o = ProbeOptions::new(&kernel, dir.join("initrd.img"));
        o.kvm_device = dir.join(kvm_device);
        o
    }

    fn cached(cache: &Path) -> Option<Cached> {
        serde_json::from_slice(&std::fs::read(cache).ok()?).ok()
    }

    #[tokio::test]
    async fn a_definitive_verdict_is_cached_and_reused_for_the_same_kernel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("accel.json");
        let opts = options(dir.path(), "no-kvm");
        assert_eq!(decide_probed(&opts, &cache).await, Accel::Tcg);
        let record = cached(&cache).expect("a verdict without KVM is definitive: cached");
        assert_eq!(record.kernel_key, kernel_key(&opts.kernel));
        assert_eq!(record.accel, Accel::Tcg);

        // The cache wins over a new probe: claim KVM there, and the probe
        // (which would say TCG: still no device) is not run.
        let claimed = Cached {
            kernel_key: record.kernel_key.clone(),
            accel: Accel::Kvm,
            message: "claimed by the test".into(),
        };
        std::fs::write(&cache, serde_json::to_vec(&claimed).expect("json")).expect("write");
        assert_eq!(decide_probed(&opts, &cache).await, Accel::Kvm);
    }

    #[tokio::test]
    async fn another_kernel_probes_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("accel.json");
        let opts = options(dir.path(), "no-kvm");
        let stale = Cached {
            kernel_key: "some other kernel@then".into(),
            accel: Accel::Kvm,
            message: "for another kernel".into(),
        };
        std::fs::write(&cache, serde_json::to_vec(&stale).expect("json")).expect("write");
        assert_eq!(decide_probed(&opts, &cache).await, Accel::Tcg);
        assert_eq!(
            cached(&cache).map(|c| c.kernel_key),
            Some(kernel_key(&opts.kernel)),
            "the cache now speaks of this kernel"
        );
    }

    #[tokio::test]
    async fn a_verdict_that_is_not_definitive_is_not_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("accel.json");
        // An openable "device" but no initrd: the self-test cannot run.
        let opts = options(dir.path(), "fake-kvm");
        std::fs::write(&opts.kvm_device, b"").expect("device");
        assert_eq!(decide_probed(&opts, &cache).await, Accel::Tcg);
        assert!(!cache.exists(), "a TCG verdict by default is probed again");
    }
}
