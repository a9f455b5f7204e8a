//! Disk throttling ([`VmConfig::disk_bps`]) for the disks in hot-plug
//! slots (volumes), whose nodes are made with `-blockdev` or QMP
//! `blockdev-add` rather than `-drive`.
//!
//! Each slot gets its own throttle group, made at boot for every slot so a
//! disk hot-plugged later finds it; the slot's node (the one its device
//! names) is then a `throttle` filter over the raw image node, made in one
//! piece, so removing the slot's node removes both. The limit is per disk,
//! as `-drive`'s `throttling.bps-total` is for the VM's own disks.

use std::path::Path;

use serde_json::{json, Value};

use super::qmp::QmpError;

/// The throttle group of hot-plug slot `slot`.
pub fn group(slot: u32) -> String {
    format!("throttle-slot{slot}")
}

/// The `-object` argument of slot `slot`'s group.
pub fn group_object(slot: u32, bps: u64) -> String {
    format!("throttle-group,id={},x-bps-total={bps}", group(slot))
}

/// QMP `blockdev-add` arguments of a throttled slot node over the raw
/// image at `path`.
pub fn blockdev_args(
    node: &str,
    path: &Path,
    read_only: bool,
    slot: u32,
) -> Result<Value, QmpError> {
    // JSON carries only UTF-8; a path that is not cannot be named here.
    let filename = path.to_str().ok_or_else(|| QmpError::Command {
        command: "blockdev-add".into(),
        class: "lodge".into(),
        desc: format!("path {} is not UTF-8", path.display()),
    })?;
    Ok(json!({
        "driver": "throttle",
        "node-name": node,
        "throttle-group": group(slot),
        "read-only": read_only,
        "file": {
            "driver": "raw",
            "read-only": read_only,
            "file": { "driver": "file", "filename": filename, "read-only": read_only },
        },
    }))
}
