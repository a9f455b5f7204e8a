//! Mounting the workload's root: the image disk read-only at `/lower`, the
//! overlay disk at `/upper`, and overlayfs over both at [`NEWROOT`].
//!
//! PID 1 itself stays in the initramfs and only the workload is chrooted
//! into [`NEWROOT`] (see `workload`). That keeps every mount reachable from
//! PID 1, so at shutdown it can unmount them in reverse order and leave the
//! overlay disk's ext4 clean, which a `switch_root` into the overlay (where
//! `/upper` is hidden from PID 1) would not allow.

use std::path::Path;

use super::{sys, Context, Error, Result};

/// Where the overlay root is assembled; the workload's `/`.
pub const NEWROOT: &str = "/newroot";
const LOWER: &str = "/lower";
const UPPER: &str = "/upper";

/// Mount points in the order they were mounted, for [`Mounts::unmount_all`].
/// PID 1's own proc, sysfs and devtmpfs are not in the list: they hold no
/// data and are still needed while powering off.
#[derive(Default)]
pub struct Mounts {
    targets: Vec<String>,
}

impl Mounts {
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(target)?;
        sys::mount(source, target, fstype, flags, data)?;
        self.targets.push(target.to_owned());
        Ok(())
    }

    /// proc, sysfs and devtmpfs for PID 1 itself.
    pub fn mount_early() -> Result<()> {
        let quiet = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        for (fstype, target, flags, data) in [
            ("proc", "/proc", quiet, None),
            ("sysfs", "/sys", quiet, None),
            ("devtmpfs", "/dev", libc::MS_NOSUID, Some("mode=0755")),
        ] {
            let mounted = std::fs::create_dir_all(target)
                .and_then(|()| sys::mount(fstype, target, fstype, flags, data));
            match mounted {
                // Already there (a kernel that automounts devtmpfs).
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                other => other.context(|| format!("mount {fstype} on {target}"))?,
            }
        }
        Ok(())
    }

    /// Build the overlay root from the image disk and the (optional)
    /// writable disk, with the usual pseudo filesystems inside.
    pub fn assemble(&mut self, root_disk: &Path, overlay_disk: Option<&Path>) -> Result<()> {
        let root_disk = root_disk.to_string_lossy();
        let mut attempts = Vec::new();
        for fstype in ["ext4", "erofs"] {
            match self.mount(&root_disk, LOWER, fstype, libc::MS_RDONLY, None) {
                Ok(()) => {
                    attempts.clear();
                    break;
                }
                Err(e) => attempts.push(format!("{fstype}: {}", sys::errno_text_of(&e))),
            }
        }
        if !attempts.is_empty() {
            return Err(Error::new(format!(
                "mount root disk {root_disk} on {LOWER} ({})",
                attempts.join(", ")
            )));
        }

        match overlay_disk {
            Some(disk) => {
                let disk = disk.to_string_lossy();
                self.mount(&disk, UPPER, "ext4", libc::MS_NOATIME, None)
                    .context(|| format!("mount overlay disk {disk} on {UPPER} as ext4"))?;
            }
            None => self
                .mount("tmpfs", UPPER, "tmpfs", 0, Some("mode=0755"))
                .context(|| format!("mount tmpfs on {UPPER}"))?,
        }
        for dir in ["upper", "work"] {
            let path = format!("{UPPER}/{dir}");
            std::fs::create_dir_all(&path).context(|| format!("create {path}"))?;
        }
        let options = format!("lowerdir={LOWER},upperdir={UPPER}/upper,workdir={UPPER}/work");
        self.mount("overlay", NEWROOT, "overlay", 0, Some(&options))
            .context(|| format!("mount overlay on {NEWROOT}"))?;

        let quiet = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        for (fstype, dir, flags, data) in [
            ("proc", "proc", quiet, None),
            ("sysfs", "sys", quiet, None),
            ("devtmpfs", "dev", libc::MS_NOSUID, Some("mode=0755")),
            (
                "devpts",
                "dev/pts",
                libc::MS_NOSUID | libc::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            ),
            ("tmpfs", "dev/shm", quiet, Some("mode=1777")),
        ] {
            let target = format!("{NEWROOT}/{dir}");
            self.mount(fstype, &target, fstype, flags, data)
                .context(|| format!("mount {fstype} on {target}"))?;
        }
        Ok(())
    }

    /// Unmount everything in reverse order, best effort. A mount that is
    /// still busy is detached lazily; `sync` has already written its data.
    pub fn unmount_all(&mut self) {
        sys::sync();
        while let Some(target) = self.targets.pop() {
            if sys::umount(&target, 0).is_err() {
                let _ = sys::umount(&target, libc::MNT_DETACH);
            }
        }
        sys::sync();
    }
}
