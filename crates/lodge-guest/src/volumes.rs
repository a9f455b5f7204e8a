//! Volumes as the guest sees them: which disk (by serial) to mount where,
//! and how (read-write, read-only, or as an overlay over a writable upper
//! disk of the instance's own).
//!
//! The host puts the disk of the volume in hot-plug slot `N` on a virtio
//! disk with the serial [`serial_for_slot`]`(N)`; an overlay's upper disk
//! has a slot (and so a serial) of its own. The same record travels in the
//! config disk (volumes attached at create, mounted by PID 1 before the
//! workload) and in the agent's `Mount` request (attached while running).

use serde::{Deserialize, Serialize};

/// Serial prefix of volume disks.
pub const VOLUME_SERIAL_PREFIX: &str = "lodge-vol-";

/// The serial of the disk in hot-plug slot `slot`.
pub fn serial_for_slot(slot: u32) -> String {
    format!("{VOLUME_SERIAL_PREFIX}{slot}")
}

/// Longest mount path the guest accepts.
const MAX_MOUNT_PATH: usize = 255;

/// One volume to mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// Serial of the volume's disk ([`serial_for_slot`]).
    pub serial: String,
    /// Absolute path in the workload's root.
    pub mount_path: String,
    /// Mount read-only (with `noload`: the journal is never replayed, so
    /// the disk is never written, even when another writer left it dirty).
    pub readonly: bool,
    /// Serial of the instance's writable upper disk: the volume is then
    /// the read-only lower layer of an overlay mounted at `mount_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_serial: Option<String>,
}

/// Why a [`VolumeMount`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error("volume serial {0:?} is not a lodge volume serial")]
    Serial(String),
    #[error("mount path {0:?} must be absolute, normalised, not '/', and free of commas, whitespace and control characters")]
    MountPath(String),
}

/// Whether `serial` is one the host gives volume disks.
fn valid_serial(serial: &str) -> bool {
    serial
        .strip_prefix(VOLUME_SERIAL_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The mount path rules both sides hold (the host's are stricter).
pub fn valid_mount_path(path: &str) -> bool {
    path.starts_with('/')
        && path != "/"
        && path.len() <= MAX_MOUNT_PATH
        && !path.ends_with('/')
        && !path
            .chars()
            .any(|c| c == ',' || c == '\0' || c.is_whitespace() || c.is_control())
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

impl VolumeMount {
    pub fn validate(&self) -> Result<(), VolumeError> {
        for s in std::iter::once(&self.serial).chain(self.overlay_serial.as_ref()) {
            if !valid_serial(s) {
                return Err(VolumeError::Serial(s.clone()));
            }
        }
        if !valid_mount_path(&self.mount_path) {
            return Err(VolumeError::MountPath(self.mount_path.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_and_paths() {
        let m = VolumeMount {
            serial: serial_for_slot(3),
            mount_path: "/data".into(),
            readonly: false,
            overlay_serial: None,
        };
        assert_eq!(m.serial, "lodge-vol-3");
        assert_eq!(m.validate(), Ok(()));
        for bad in ["lodge-root", "lodge-vol-", "lodge-vol-x", "lodge-vol-1234"] {
            let mut b = m.clone();
            b.serial = bad.into();
            assert!(b.validate().is_err(), "{bad}");
        }
        for bad in ["data", "/", "/a/../b", "/a,b", "/a b", "/a/", "//a", "/a\0"] {
            let mut b = m.clone();
            b.mount_path = bad.into();
            assert!(b.validate().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&m).expect("json");
        assert!(!json.contains("overlay_serial"), "{json}");
    }
}
