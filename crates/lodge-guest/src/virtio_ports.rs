//! Finding a virtio-serial port by the name the host gave it.
//!
//! The kernel names ports `vportNpM` in probe order, and the initrd has no
//! udev to make stable links, so a port is looked up by its name in
//! `/sys/class/virtio-ports/*/name`. Shared by PID 1 (the workload's fast
//! console) and the agent (its channel).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PORTS_DIR: &str = "/sys/class/virtio-ports";

/// The device node of the port named `name`, waiting up to `timeout` for it
/// to appear (ports show up shortly after the virtio driver loads).
pub fn find(name: &str, timeout: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(device) = lookup(name) {
            if device.exists() {
                return Some(device);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lookup(name: &str) -> Option<PathBuf> {
    std::fs::read_dir(PORTS_DIR)
        .ok()?
        .flatten()
        .find(|entry| {
            std::fs::read_to_string(entry.path().join("name"))
                .is_ok_and(|n| n.trim_end_matches('\n') == name)
        })
        .map(|entry| Path::new("/dev").join(entry.file_name()))
}
