//! Choosing KVM or TCG once, when the daemon starts.
//!
//! `/dev/kvm` can exist and still be useless (nested KVM here hangs a Linux
//! guest after decompression), so unless `LODGE_ACCEL` decides, lodge boots
//! its own kernel once under KVM with a bounded self-test and falls back to
//! TCG with a clear message. The verdict is cached in the data dir, keyed by
//! the kernel it was measured with, so restarts do not pay for it again.

use anyhow::Result;
use lodge_hypervisor::Accel;

use crate::config::Config;

pub async fn decide(cfg: &Config) -> Result<Accel> {
    let kernel = cfg.system_dir.join("vmlinuz");
    let initrd = cfg.system_dir.join("initrd.img");
    let probe = lodge_hypervisor::probe_accel(&cfg.qemu_binary, &kernel, &initrd).await?;
    if probe.accel == Accel::Tcg {
        tracing::warn!("using software emulation (TCG): {}", probe.reason);
    } else {
        tracing::info!("using KVM: {}", probe.reason);
    }
    Ok(probe.accel)
}
