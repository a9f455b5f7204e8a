//! Volumes attached while the VM runs: the host hot-plugs the disk, then
//! asks the agent to mount it (`Request::Mount`), and asks it to unmount
//! before unplugging (`Request::Unmount`). The agent runs chrooted in the
//! workload's root, whose `/sys` and `/dev` show the new disk, so the
//! mount lands where the workload sees it.
//!
//! An unmount is never lazy: a busy volume stays mounted and the answer
//! says so, because unplugging a disk under a live mount loses writes.

use std::path::Path;
use std::time::{Duration, Instant};

use lodge_guest::protocol::Event;
use lodge_guest::volumes::VolumeMount;

use super::wire::StreamOut;
use crate::sys;

/// How long a hot-plugged disk may take to appear.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(10);

fn error(out: &StreamOut, message: String, path: &str) {
    out.event(&Event::Error {
        message,
        path: path.to_string(),
    });
}

/// The device node of the disk with `serial`, once it is there.
fn wait_for(serial: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("vd") {
                    continue;
                }
                let Ok(s) = std::fs::read(e.path().join("serial")) else {
                    continue;
                };
                let s = String::from_utf8_lossy(&s);
                let dev = format!("/dev/{name}");
                if s.trim_matches(|c: char| c.is_whitespace() || c == '\0') == serial
                    && Path::new(&dev).exists()
                {
                    return Some(dev);
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

pub fn mount(out: &StreamOut, m: &VolumeMount) {
    if let Err(e) = m.validate() {
        return error(out, e.to_string(), &m.mount_path);
    }
    if m.overlay_serial.is_some() {
        return error(
            out,
            "overlay volumes are mounted at boot only".into(),
            &m.mount_path,
        );
    }
    let Some(dev) = wait_for(&m.serial, APPEAR_TIMEOUT) else {
        return error(
            out,
            format!(
                "no disk with serial {} appeared within {}s",
                m.serial,
                APPEAR_TIMEOUT.as_secs()
            ),
            &m.mount_path,
        );
    };
    if let Err(e) = std::fs::create_dir_all(&m.mount_path) {
        return error(out, format!("create {}: {e}", m.mount_path), &m.mount_path);
    }
    let (flags, data) = if m.readonly {
        (libc::MS_RDONLY, Some("noload"))
    } else {
        (libc::MS_NOATIME, None)
    };
    match sys::mount(&dev, &m.mount_path, "ext4", flags, data) {
        Ok(()) => out.event(&Event::Result { bytes: 0 }),
        Err(e) => error(
            out,
            format!("mount {dev} on {} as ext4: {e}", m.mount_path),
            &m.mount_path,
        ),
    }
}

pub fn unmount(out: &StreamOut, mount_path: &str) {
    if !lodge_guest::volumes::valid_mount_path(mount_path) {
        return error(out, format!("bad mount path {mount_path:?}"), mount_path);
    }
    sys::sync();
    match sys::umount(mount_path, 0) {
        Ok(()) => out.event(&Event::Result { bytes: 0 }),
        // Not mounted (any more): nothing to release.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {
            out.event(&Event::Result { bytes: 0 })
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => error(
            out,
            format!(
                "the volume at {mount_path} is busy: a process in the guest has a file open or its working directory there"
            ),
            mount_path,
        ),
        Err(e) => error(out, format!("unmount {mount_path}: {e}"), mount_path),
    }
}
