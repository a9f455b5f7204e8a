//! Mounting the workload's root: the image disk read-only at `/lower`, the
//! overlay disk at `/upper`, and overlayfs over both at [`NEWROOT`].
//!
//! PID 1 itself stays in the initramfs and only the workload is chrooted
//! into [`NEWROOT`] (see `workload`). That keeps every mount reachable from
//! PID 1, so at shutdown it can unmount them in reverse order and leave the
//! overlay disk's ext4 clean, which a `switch_root` into the overlay (where
//! `/upper` is hidden from PID 1) would not allow.

use std::path::Path;

use crate::sys;

use super::error::{Context, Error, Result};

/// Where the overlay root is assembled; the workload's `/`.
pub const NEWROOT: &str = "/newroot";
const LOWER: &str = "/lower";
const UPPER: &str = "/upper";

/// Superblock magic numbers, little-endian on disk.
const EXT4_MAGIC_OFFSET: usize = 1024 + 0x38;
const EXT4_MAGIC: u16 = 0xef53;
const EROFS_MAGIC_OFFSET: usize = 1024;
const EROFS_MAGIC: u32 = 0xe0f5_e1e2;

/// The filesystem type of a superblock read from the start of a disk
/// (at least 2 KiB), if it is one the root disk may hold. Looking first
/// avoids the kernel's console complaints from a failed trial mount.
fn fstype_of(head: &[u8]) -> Option<&'static str> {
    let ext4 = head.get(EXT4_MAGIC_OFFSET..EXT4_MAGIC_OFFSET + 2)?;
    if u16::from_le_bytes([ext4[0], ext4[1]]) == EXT4_MAGIC {
        return Some("ext4");
    }
    let erofs = head.get(EROFS_MAGIC_OFFSET..EROFS_MAGIC_OFFSET + 4)?;
    if u32::from_le_bytes([erofs[0], erofs[1], erofs[2], erofs[3]]) == EROFS_MAGIC {
        return Some("erofs");
    }
    None
}

fn detect_fstype(disk: &Path) -> Result<&'static str> {
    use std::io::Read;
    let mut head = Vec::with_capacity(2048);
    std::fs::File::open(disk)
        .and_then(|f| f.take(2048).read_to_end(&mut head))
        .context(|| format!("read root disk {}", disk.display()))?;
    fstype_of(&head).ok_or_else(|| {
        Error::new(format!(
            "root disk {} holds neither ext4 nor erofs",
            disk.display()
        ))
    })
}

/// Mount points in the order they were mounted, for [`Mounts::unmount_all`].
/// PID 1's own proc, sysfs and devtmpfs are not in the list: they hold no
/// data and are still needed while powering off.
#[derive(Default)]
pub struct Mounts {
    targets: Vec<String>,
}

impl Mounts {
    pub(super) fn mount(
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
        let fstype = detect_fstype(root_disk)?;
        let root_disk = root_disk.to_string_lossy();
        self.mount(&root_disk, LOWER, fstype, libc::MS_RDONLY, None)
            .context(|| format!("mount root disk {root_disk} ({fstype}) on {LOWER}"))?;

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
        dev_links(Path::new(&format!("{NEWROOT}/dev")))
    }

    /// Unmount everything in reverse order, best effort. A mount that is
    /// still busy is detached lazily; `sync` has already written its data.
    pub fn unmount_all(&mut self) {
        sys::sync();
        // Mounts under the workload's root that PID 1 did not make (volumes
        // the agent mounted while the VM ran) go first, deepest first, so
        // their disks are left clean too.
        for target in foreign_mounts(&self.targets) {
            if sys::umount(&target, 0).is_err() {
                let _ = sys::umount(&target, libc::MNT_DETACH);
            }
        }
        while let Some(target) = self.targets.pop() {
            if sys::umount(&target, 0).is_err() {
                let _ = sys::umount(&target, libc::MNT_DETACH);
            }
        }
        sys::sync();
    }
}

/// The links docker and podman put in a container's `/dev`; images rely on
/// them (nginx links its logs to `/dev/stdout`). devtmpfs has none of them.
const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Creates [`DEV_LINKS`] in `dev`; a name that already exists is left.
fn dev_links(dev: &Path) -> Result<()> {
    for (name, target) in DEV_LINKS {
        let link = dev.join(name);
        match std::os::unix::fs::symlink(target, &link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err::<(), _>(e).context(|| format!("link {} to {target}", link.display()))
            }
        }
    }
    Ok(())
}

/// Mount points under [`NEWROOT`] that are not in `ours`, deepest first.
fn foreign_mounts(ours: &[String]) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    let prefix = format!("{NEWROOT}/");
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/mounts escapes spaces and the like as octal; volume mount
        // paths have none, so an escaped name is not one of ours to undo.
        .filter(|t| t.starts_with(&prefix) && !t.contains('\\'))
        .filter(|t| !ours.iter().any(|o| o == t))
        .map(str::to_string)
        .collect();
    out.sort_by_key(|t| std::cmp::Reverse(t.len()));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_links_are_dockers_and_leave_existing_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("stderr"), b"kept").expect("file");
        dev_links(dir.path()).expect("links");
        dev_links(dir.path()).expect("again");
        let link = std::fs::read_link(dir.path().join("stdout")).expect("stdout link");
        assert_eq!(link, Path::new("/proc/self/fd/1"));
        assert_eq!(
            std::fs::read_link(dir.path().join("fd")).expect("fd link"),
            Path::new("/proc/self/fd")
        );
        assert_eq!(
            std::fs::read(dir.path().join("stderr")).expect("kept"),
            b"kept"
        );
    }

    #[test]
    fn superblock_magic_decides_the_fstype() {
        let mut head = vec![0u8; 2048];
        assert_eq!(fstype_of(&head), None);
        assert_eq!(fstype_of(&head[..100]), None);
        head[EXT4_MAGIC_OFFSET..EXT4_MAGIC_OFFSET + 2].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        assert_eq!(fstype_of(&head), Some("ext4"));
        let mut head = vec![0u8; 2048];
        head[EROFS_MAGIC_OFFSET..EROFS_MAGIC_OFFSET + 4]
            .copy_from_slice(&EROFS_MAGIC.to_le_bytes());
        assert_eq!(fstype_of(&head), Some("erofs"));
    }

    #[test]
    fn real_images_are_recognised() {
        // Images made by the tools the host uses, when they are installed.
        let dir = std::env::temp_dir().join(format!("lodge-fstype-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("tree"));
        let made = |cmd: &mut std::process::Command| {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let ext4 = dir.join("ext4.img");
        if made(
            std::process::Command::new("truncate")
                .arg("-s8M")
                .arg(&ext4),
        ) && made(
            std::process::Command::new("mkfs.ext4")
                .arg("-qF")
                .arg(&ext4),
        ) {
            assert_eq!(detect_fstype(&ext4).ok(), Some("ext4"));
        }
        let erofs = dir.join("erofs.img");
        if made(
            std::process::Command::new("mkfs.erofs")
                .arg(&erofs)
                .arg(dir.join("tree")),
        ) {
            assert_eq!(detect_fstype(&erofs).ok(), Some("erofs"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
