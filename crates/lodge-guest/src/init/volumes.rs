//! Volumes attached at create, mounted by PID 1 into the workload's root
//! before the workload starts: read-write, read-only (`ro,noload`: the
//! journal is never replayed, so a read-only volume is never written), or
//! as an overlay whose lower layer is the volume (mounted read-only under
//! `/volumes/<serial>/lower`, outside the workload's root) and whose upper
//! layer is the instance's own writable disk.
//!
//! Disks are found by serial (the host names them `lodge-vol-<slot>`),
//! like the root and config disks; they are probed with those, so the wait
//! is short.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lodge_guest::VolumeMount;

use super::error::{Context, Error, Result};
use super::rootfs::{Mounts, NEWROOT};

const VOLUMES_DIR: &str = "/volumes";
const POLL: Duration = Duration::from_millis(5);

/// Device nodes by serial of the `vd*` disks present now.
fn scan() -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        let Ok(serial) = std::fs::read(e.path().join("serial")) else {
            continue;
        };
        let dev = format!("/dev/{name}");
        if Path::new(&dev).exists() {
            let serial = String::from_utf8_lossy(&serial);
            out.insert(
                serial
                    .trim_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_string(),
                dev,
            );
        }
    }
    out
}

/// Mounts every volume of the config, in order.
pub fn mount_all(volumes: &[VolumeMount], mounts: &mut Mounts, timeout: Duration) -> Result<()> {
    if volumes.is_empty() {
        return Ok(());
    }
    let wanted: Vec<&str> = volumes
        .iter()
        .flat_map(|v| std::iter::once(v.serial.as_str()).chain(v.overlay_serial.as_deref()))
        .collect();
    let deadline = Instant::now() + timeout;
    let found = loop {
        let found = scan();
        if wanted.iter().all(|s| found.contains_key(*s)) {
            break found;
        }
        if Instant::now() >= deadline {
            let missing: Vec<&str> = wanted
                .iter()
                .filter(|s| !found.contains_key(**s))
                .copied()
                .collect();
            return Err(Error::new(format!(
                "no disk with serial {} appeared within {}s",
                missing.join(", "),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    };
    for v in volumes {
        let dev = &found[&v.serial];
        let target = format!("{NEWROOT}{}", v.mount_path);
        match &v.overlay_serial {
            None => {
                let (flags, data) = if v.readonly {
                    (libc::MS_RDONLY, Some("noload"))
                } else {
                    (libc::MS_NOATIME, None)
                };
                mounts
                    .mount(dev, &target, "ext4", flags, data)
                    .context(|| format!("mount volume {dev} on {}", v.mount_path))?;
            }
            Some(upper_serial) => {
                let upper_dev = &found[upper_serial];
                let base = format!("{VOLUMES_DIR}/{}", v.serial);
                let lower = format!("{base}/lower");
                let upper = format!("{base}/upper");
                mounts
                    .mount(dev, &lower, "ext4", libc::MS_RDONLY, Some("noload"))
                    .context(|| format!("mount volume {dev} on {lower}"))?;
                mounts
                    .mount(upper_dev, &upper, "ext4", libc::MS_NOATIME, None)
                    .context(|| format!("mount overlay disk {upper_dev} on {upper}"))?;
                for dir in ["upper", "work"] {
                    let path = format!("{upper}/{dir}");
                    std::fs::create_dir_all(&path).context(|| format!("create {path}"))?;
                }
                let options =
                    format!("lowerdir={lower},upperdir={upper}/upper,workdir={upper}/work");
                mounts
                    .mount("overlay", &target, "overlay", 0, Some(&options))
                    .context(|| format!("mount the overlay of {dev} on {}", v.mount_path))?;
            }
        }
    }
    Ok(())
}
