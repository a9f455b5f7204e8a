//! Every path under lodge's data dir, in one struct (hypeman's `lib/paths`
//! is the model). Code asks `Paths` for "the metadata of guest X" instead of
//! joining strings itself, so the layout is written down exactly once:
//!
//! ```text
//! <data dir>/
//!   jwt-secret               signing secret for API tokens (mode 0600)
//!   accel.json               cached KVM/TCG verdict
//!   system/                  default guest kernel, initrd (LODGE_SYSTEM_DIR)
//!     vmlinuz  vmlinux  initrd.img
//!   guests/<id>/             one directory per instance
//!     metadata.json  config.img  rootfs.ext4  overlay.ext4
//!     qmp.sock  agent.sock  monitor.err
//!     status.log             guest status lines of VMs started before the
//!                            monitor owned the status channel (read only)
//!     logs/                  app.log vmm.log lodge.log (+ rotated segments),
//!                            status.log (bounded), guest-status.json,
//!                            monitor.json exit.json capture.json
//!   guests/.creating-<id>/   an instance being created (renamed into place)
//!   guests/.deleting-<id>/   an instance being deleted
//!   network/leases/<ip>      one file per guest address, naming its instance
//!   volumes/<id>/            one volume: volume.json data.raw (lodge-volumes)
//!   images/                  the image store (lodge-images)
//!     blobs/sha256/<hex>  records/<hex>.json  disks/<hex>.<fmt>  tmp/
//! ```

use std::path::{Path, PathBuf};

use crate::socket;

/// Layout of a data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    data_dir: PathBuf,
}

impl Paths {
    /// Paths under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
        }
    }

    /// The data dir itself.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The API token signing secret.
    pub fn jwt_secret(&self) -> PathBuf {
        self.data_dir.join("jwt-secret")
    }

    /// The cached accelerator verdict.
    pub fn accel_cache(&self) -> PathBuf {
        self.data_dir.join("accel.json")
    }

    /// Default system dir (guest kernel and initrd) when `LODGE_SYSTEM_DIR`
    /// is unset.
    pub fn system_dir(&self) -> PathBuf {
        self.data_dir.join("system")
    }

    /// Parent of every instance directory.
    pub fn guests_dir(&self) -> PathBuf {
        self.data_dir.join("guests")
    }

    /// One instance's files.
    pub fn guest(&self, id: &str) -> GuestPaths {
        GuestPaths::new(self.guests_dir().join(id))
    }

    /// Where an instance is assembled before it is renamed into place.
    pub fn guest_creating(&self, id: &str) -> PathBuf {
        self.guests_dir().join(format!(".creating-{id}"))
    }

    /// Where an instance is moved to be deleted.
    pub fn guest_deleting(&self, id: &str) -> PathBuf {
        self.guests_dir().join(format!(".deleting-{id}"))
    }

    /// The default network's address leases (lodge-net's `Allocator`).
    pub fn network_leases(&self) -> PathBuf {
        self.data_dir.join("network").join("leases")
    }

    /// The ingress process's configuration, certificates and socket.
    pub fn ingress_dir(&self) -> PathBuf {
        self.data_dir.join("ingress")
    }

    /// The volume store (lodge-volumes).
    pub fn volumes(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }

    /// The image store's files.
    pub fn images(&self) -> ImagePaths {
        ImagePaths::new(self.data_dir.join("images"))
    }
}

/// File name of the compressed guest kernel (bzImage) in the system dir.
pub const KERNEL_FILE: &str = "vmlinuz";
/// File name of the uncompressed guest kernel (ELF) in the system dir.
pub const KERNEL_ELF_FILE: &str = "vmlinux";
/// File name of the initrd carrying lodge's guest init in the system dir.
pub const INITRD_FILE: &str = "initrd.img";

/// Files of the system dir: the guest kernel and initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPaths {
    /// The system dir.
    pub dir: PathBuf,
}

impl SystemPaths {
    /// Files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// Compressed kernel (bzImage).
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join(KERNEL_FILE)
    }
    /// Uncompressed kernel (ELF), preferred when present.
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join(KERNEL_ELF_FILE)
    }
    /// The initrd carrying lodge's guest init.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join(INITRD_FILE)
    }
}

/// Files of one instance directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPaths {
    /// `guests/<id>`.
    pub dir: PathBuf,
}

impl GuestPaths {
    /// Files in the instance directory `dir` (its name is the id).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// The instance record.
    pub fn metadata(&self) -> PathBuf {
        self.dir.join("metadata.json")
    }
    /// Console logs (written by the monitor).
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// The instance's own root disk (directory-booted instances).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.ext4")
    }
    /// The writable overlay disk.
    pub fn overlay(&self) -> PathBuf {
        self.dir.join("overlay.ext4")
    }
    /// The config disk the guest init reads.
    pub fn config_disk(&self) -> PathBuf {
        self.dir.join("config.img")
    }
    /// The VMM's control socket. Named `qmp.sock` since lodge's first
    /// (QEMU) VMs; the name stays so running VMs are still found.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// Host end of the guest agent's port. When `dir/agent.sock` is longer
    /// than a socket path may be, the socket goes to the temp dir as
    /// `lodge-agent-<id>.sock`.
    pub fn agent_socket(&self) -> PathBuf {
        let socket = self.dir.join("agent.sock");
        if socket::fits(&socket) {
            return socket;
        }
        let id = self.dir.file_name().unwrap_or_default().to_string_lossy();
        std::env::temp_dir().join(format!("lodge-agent-{id}.sock"))
    }
    /// Guest init's status lines as QEMU wrote them before the monitor
    /// owned the status channel; read only for VMs started back then.
    pub fn status_file(&self) -> PathBuf {
        self.dir.join("status.log")
    }
    /// Traffic through the ingress ([`crate::activity::Activity`]),
    /// written by the ingress process, read by auto-standby.
    pub fn ingress_activity(&self) -> PathBuf {
        self.dir.join("ingress-activity")
    }
    /// The monitor's own stderr.
    pub fn monitor_stderr(&self) -> PathBuf {
        self.dir.join("monitor.err")
    }
}

/// Files of the image store (`<data dir>/images`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePaths {
    /// `images/`.
    pub dir: PathBuf,
}

impl ImagePaths {
    /// Files in the image store `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// Content-addressed blobs (`<hex>` per sha256 digest).
    pub fn blobs(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }
    /// One JSON record per image name.
    pub fn records(&self) -> PathBuf {
        self.dir.join("records")
    }
    /// Built root disks, shared by every instance of an image.
    pub fn disks(&self) -> PathBuf {
        self.dir.join("disks")
    }
    /// Scratch space for pulls in progress (swept at open).
    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_layout() {
        let p = Paths::new("/var/lib/lodge");
        assert_eq!(p.data_dir(), Path::new("/var/lib/lodge"));
        assert_eq!(p.jwt_secret(), Path::new("/var/lib/lodge/jwt-secret"));
        assert_eq!(p.accel_cache(), Path::new("/var/lib/lodge/accel.json"));
        assert_eq!(p.system_dir(), Path::new("/var/lib/lodge/system"));
        assert_eq!(p.guests_dir(), Path::new("/var/lib/lodge/guests"));
        assert_eq!(
            p.network_leases(),
            Path::new("/var/lib/lodge/network/leases")
        );
        assert_eq!(
            p.guest_creating("abc"),
            Path::new("/var/lib/lodge/guests/.creating-abc")
        );
        assert_eq!(
            p.guest_deleting("abc"),
            Path::new("/var/lib/lodge/guests/.deleting-abc")
        );
    }

    #[test]
    fn guest_layout() {
        let g = Paths::new("/d").guest("abc");
        assert_eq!(g.dir, Path::new("/d/guests/abc"));
        assert_eq!(g.metadata(), Path::new("/d/guests/abc/metadata.json"));
        assert_eq!(g.logs(), Path::new("/d/guests/abc/logs"));
        assert_eq!(g.rootfs(), Path::new("/d/guests/abc/rootfs.ext4"));
        assert_eq!(g.overlay(), Path::new("/d/guests/abc/overlay.ext4"));
        assert_eq!(g.config_disk(), Path::new("/d/guests/abc/config.img"));
        assert_eq!(g.control_socket(), Path::new("/d/guests/abc/qmp.sock"));
        assert_eq!(g.agent_socket(), Path::new("/d/guests/abc/agent.sock"));
        assert_eq!(g.status_file(), Path::new("/d/guests/abc/status.log"));
        assert_eq!(g.monitor_stderr(), Path::new("/d/guests/abc/monitor.err"));
    }

    #[test]
    fn deep_agent_socket_moves_to_temp_dir() {
        let deep = format!("/{}", "d".repeat(120));
        let g = Paths::new(deep).guest("abc");
        assert_eq!(
            g.agent_socket(),
            std::env::temp_dir().join("lodge-agent-abc.sock")
        );
    }

    #[test]
    fn system_and_image_layout() {
        let s = SystemPaths::new(Paths::new("/d").system_dir());
        assert_eq!(s.vmlinuz(), Path::new("/d/system/vmlinuz"));
        assert_eq!(s.vmlinux(), Path::new("/d/system/vmlinux"));
        assert_eq!(s.initrd(), Path::new("/d/system/initrd.img"));
        let i = Paths::new("/d").images();
        assert_eq!(i.dir, Path::new("/d/images"));
        assert_eq!(i.blobs(), Path::new("/d/images/blobs/sha256"));
        assert_eq!(i.records(), Path::new("/d/images/records"));
        assert_eq!(i.disks(), Path::new("/d/images/disks"));
        assert_eq!(i.tmp(), Path::new("/d/images/tmp"));
    }
}
