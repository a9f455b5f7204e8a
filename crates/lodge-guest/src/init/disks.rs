//! Finding lodge's disks by their virtio serial, never by probe order.
//!
//! The host tags each disk with a serial ([`lodge_guest::SERIAL_ROOT`] and
//! friends); the kernel shows it in `/sys/block/vdX/serial`. Disks appear
//! while the virtio modules probe, and `devtmpfs` creates `/dev/vdX` shortly
//! after, so the search polls with a short sleep up to a deadline. The
//! overlay disk is optional: without it the writable layer lives in memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lodge_guest::{SERIAL_CONFIG, SERIAL_OVERLAY, SERIAL_ROOT};

/// How often the block devices are re-scanned while waiting.
const POLL: Duration = Duration::from_millis(5);

/// Device nodes of lodge's disks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Disks {
    pub root: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

impl Disks {
    fn complete(&self) -> bool {
        self.root.is_some() && self.config.is_some() && self.overlay.is_some()
    }

    fn required(&self) -> bool {
        self.root.is_some() && self.config.is_some()
    }
}

/// Scan `/sys/block` once.
fn scan(sys_block: &Path, dev: &Path) -> Disks {
    let mut disks = Disks::default();
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return disks;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("vd") {
            continue;
        }
        let Ok(serial) = std::fs::read(entry.path().join("serial")) else {
            continue;
        };
        let serial = String::from_utf8_lossy(&serial);
        let node = dev.join(name);
        if !node.exists() {
            continue;
        }
        let slot = match serial.trim_matches(|c: char| c.is_whitespace() || c == '\0') {
            SERIAL_ROOT => &mut disks.root,
            SERIAL_OVERLAY => &mut disks.overlay,
            SERIAL_CONFIG => &mut disks.config,
            _ => continue,
        };
        *slot = Some(node);
    }
    disks
}

/// Wait up to `timeout` for the root and config disks (and briefly for the
/// overlay disk) to show up. Returns whatever was found; the caller decides
/// what is missing.
pub fn find(timeout: Duration) -> Disks {
    let sys_block = Path::new("/sys/block");
    let dev = Path::new("/dev");
    let start = Instant::now();
    // Disks are probed together when virtio_blk loads; once the required
    // ones are there, an absent overlay disk gets only a short grace.
    let mut required_at: Option<Instant> = None;
    loop {
        let disks = scan(sys_block, dev);
        if disks.complete() {
            return disks;
        }
        if disks.required() {
            let since = *required_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_millis(100) {
                return disks;
            }
        }
        if start.elapsed() >= timeout {
            return disks;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_matches_serials_and_needs_device_nodes() {
        let dir = std::env::temp_dir().join(format!("lodge-disks-{}", std::process::id()));
        let sys_block = dir.join("sys");
        let dev = dir.join("dev");
        for (name, serial) in [
            ("vda", "lodge-config"),
            ("vdb", "lodge-root\n"),
            ("vdc", "other"),
            ("vdd", "lodge-overlay"),
            ("sda", "lodge-root"),
        ] {
            std::fs::create_dir_all(sys_block.join(name)).expect("mkdir");
            std::fs::write(sys_block.join(name).join("serial"), serial).expect("write");
        }
        std::fs::create_dir_all(&dev).expect("mkdir");
        for name in ["vda", "vdb", "vdc", "sda"] {
            std::fs::write(dev.join(name), "").expect("write");
        }
        let disks = scan(&sys_block, &dev);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            disks,
            Disks {
                root: Some(dev.join("vdb")),
                // vdd has no device node yet
                overlay: None,
                config: Some(dev.join("vda")),
            }
        );
    }
}
