//! QEMU's memory balloon: the device lodge adds to a VM, and the two QMP
//! commands that drive it.
//!
//! `free-page-reporting=on`: the guest hands pages it has freed back to the
//! host by itself (QEMU discards them), so an idle guest's footprint
//! shrinks without being asked. `deflate-on-oom=on`: a guest about to run
//! out of memory takes pages back from the balloon before killing
//! anything, so a reclaim can slow a workload but never OOM-kill it.
//! Asking for a target (`balloon`) returns at once; the guest inflates in
//! its own time, and `query-balloon`'s `actual` says how far it has got.

use serde_json::json;

use super::{qmp_err, QemuBackend};
use crate::config::VmConfig;
use crate::hypervisor::BackendError;

/// The `-device` argument of the balloon.
pub const DEVICE: &str = "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on";

impl QemuBackend {
    /// Asks the guest to shrink (or grow back) to `target_bytes` of memory.
    pub async fn set_balloon(&self, cfg: &VmConfig, target_bytes: u64) -> Result<(), BackendError> {
        let mut qmp = self.connect(cfg).await?;
        qmp.execute_raw("balloon", Some(json!({ "value": target_bytes })))
            .await
            .map_err(|e| qmp_err(cfg, e))?;
        Ok(())
    }

    /// The memory the guest has now (its size minus the balloon), in bytes.
    pub async fn balloon_actual(&self, cfg: &VmConfig) -> Result<u64, BackendError> {
        let mut qmp = self.connect(cfg).await?;
        let v = qmp
            .execute_raw("query-balloon", None)
            .await
            .map_err(|e| qmp_err(cfg, e))?;
        v.get("actual")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| BackendError::StateTransfer {
                op: "querying",
                vm: cfg.id.clone(),
                reason: format!("query-balloon answered {v} without `actual`"),
            })
    }
}
