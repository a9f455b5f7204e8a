//! The typed description of one VM, shared by every backend.
//!
//! `VmConfig` is plain data (the daemon builds it from an instance's metadata
//! and may persist it), and [`VmConfig::validate`] is the one place where it is
//! checked. Backends call `validate` before turning a config into a command
//! line, so an argument builder never has to re-check a value. The rules here
//! are the ones every backend shares (sizes, absolute paths, Unix socket path
//! length, printable strings); what only one backend cannot do is reported by
//! that backend as `Unsupported`. Options only one VMM has (QEMU's machine
//! type and TCG, the chardev syntax of the status file) live with that
//! backend, e.g. `qemu::QemuOptions`, never here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One mebibyte, the granularity of guest memory.
pub const MIB: u64 = 1024 * 1024;

/// Smallest guest memory accepted: below this Debian's kernel plus an initrd
/// does not reach userspace.
pub const MIN_MEMORY_BYTES: u64 = 64 * MIB;

/// Largest guest memory accepted (a sanity bound, far above this host).
pub const MAX_MEMORY_BYTES: u64 = 1024 * 1024 * MIB;

/// Largest vCPU count: the x86 limit without interrupt remapping.
pub const MAX_VCPUS: u32 = 255;

/// Most disks one VM may have (each is a PCI device on the root bus).
pub const MAX_DISKS: usize = 16;

/// Most hot-plug slots one VM may have (each is a PCIe root port on q35,
/// a fixed address on the root bus of `pc`).
pub const MAX_HOTPLUG_SLOTS: u32 = 8;

/// Longest disk serial: virtio-blk exposes at most 20 bytes of it.
pub const MAX_DISK_SERIAL_LEN: usize = 20;

/// Longest kernel command line (x86 `COMMAND_LINE_SIZE` minus the NUL).
pub const MAX_CMDLINE_LEN: usize = 2047;

/// Longest Unix socket path: `sun_path` is 108 bytes including the NUL
/// (defined once, in lodge-common).
pub use lodge_common::socket::MAX_UNIX_SOCKET_PATH_LEN;

/// Longest VM name or virtio-serial port name.
pub const MAX_NAME_LEN: usize = 255;

/// Most network interfaces one VM may have (each is a PCI device).
pub const MAX_NICS: usize = 8;

/// Longest host interface name (the kernel's `IFNAMSIZ` minus the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// Everything a backend needs to start and control one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// lodge's instance id; used in errors and logs.
    pub id: String,
    /// Human-readable name, given to the VMM as the guest name.
    pub name: String,
    /// Number of virtual CPUs, at least 1.
    pub vcpus: u32,
    /// Guest memory in bytes; a whole number of MiB, at least 64 MiB.
    pub memory_bytes: u64,
    /// Guest kernel (bzImage), absolute path.
    pub kernel: PathBuf,
    /// Initial ramdisk, absolute path.
    pub initrd: PathBuf,
    /// Kernel command line, passed verbatim.
    pub cmdline: String,
    /// Block devices, in the order the guest sees them.
    pub disks: Vec<DiskConfig>,
    /// The VMM's control socket (QMP for QEMU), absolute path.
    pub control_socket: PathBuf,
    /// File the VMM appends the guest init's status channel to (never
    /// truncates), absolute path. How the guest's bytes get there is the
    /// backend's business (a second serial port for QEMU).
    pub status_file: PathBuf,
    /// When set, the status channel goes to this file descriptor instead
    /// of `status_file`: the VMM's parent (lodge's monitor) passes it open
    /// across exec, as the write end of a pipe it reads and bounds itself.
    /// At least 3 (0 to 2 are the VMM's stdio). Absent in older configs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_fd: Option<i32>,
    /// When set, the VM gets a fast console for the workload (QEMU: a
    /// virtio-serial port) whose output goes to this
    /// inherited descriptor, the write end of a pipe lodge's monitor reads
    /// into the same console log as the serial console. At least 3, not
    /// `status_fd`. Absent in older configs (serial console only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_fd: Option<i32>,
    /// Optional host<->guest byte channel for the guest agent.
    pub agent_channel: Option<VirtioSerialChannel>,
    /// Network interfaces, in the order the guest sees them; empty means
    /// the VM has no network device at all. Absent in configs persisted
    /// before networking, hence the default.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    /// Guest RAM backed by this file, mapped shared: the file *is* the
    /// guest's memory, so a saved state needs only the devices and a
    /// restore maps the pages back lazily. `None`: anonymous memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file: Option<PathBuf>,
    /// Hot-plug slots made at boot (at most [`MAX_HOTPLUG_SLOTS`]): disks
    /// can be added to and removed from them while the VM runs, and a disk
    /// with a [`DiskConfig::slot`] sits in its slot from boot. Absent in
    /// configs from before hot-plug.
    #[serde(default)]
    pub hotplug_slots: u32,
    /// A memory balloon (QEMU: virtio-balloon with free page reporting and
    /// deflate-on-OOM), placed after every other device so it shifts no
    /// device's address. Off in configs from before it: a saved state is
    /// only restored into the devices it was saved with.
    #[serde(default)]
    pub balloon: bool,
    /// Bytes per second each disk may move, reads and writes together
    /// (QEMU block throttling: `-drive` throttling for the VM's own disks,
    /// a throttle group per hot-plug slot for the others, hot-plugged
    /// ones included); `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bps: Option<u64>,
}

/// One virtio network interface backed by a host TAP device that already
/// exists (the caller creates and owns it; the VMM only opens it by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    /// Host TAP device name, at most 15 bytes.
    pub tap: String,
    /// The guest's MAC address; must be unicast.
    pub mac: [u8; 6],
}

impl NicConfig {
    /// The MAC in the usual `aa:bb:cc:dd:ee:ff` form.
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One block device backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// Backing file, absolute path.
    pub path: PathBuf,
    /// Attach read-only (the guest cannot write, the file is opened `O_RDONLY`).
    pub read_only: bool,
    /// Serial number the guest sees (`/dev/disk/by-id/virtio-<serial>`), at
    /// most 20 bytes.
    pub serial: Option<String>,
    /// On-disk format of the backing file.
    pub format: DiskFormat,
    /// The hot-plug slot the disk sits in (below
    /// [`VmConfig::hotplug_slots`]), so it can be removed while the VM
    /// runs; `None`: a fixed disk for the VM's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// On-disk formats lodge attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A plain image, byte for byte.
    #[default]
    Raw,
}

/// A virtio-serial port wired to a Unix socket on the host, for the guest
/// agent. The guest sees it as `/dev/vport*` named by `port_name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioSerialChannel {
    /// Host-side Unix socket the VMM listens on, absolute path.
    pub socket: PathBuf,
    /// Port name shown to the guest in `/sys/class/virtio-ports/*/name`.
    pub port_name: String,
}

/// Why a [`VmConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The status channel's descriptor is one of the VMM's stdio (0 to 2)
    /// or negative.
    #[error("status channel descriptor must be 3 or more, got {0}")]
    StatusFd(i32),
    /// The fast console's descriptor is one of the VMM's stdio (0 to 2),
    /// negative, or the status channel's.
    #[error("fast console descriptor must be 3 or more and not the status channel's, got {0}")]
    ConsoleFd(i32),
    /// The id is empty or holds a control character.
    #[error("vm id {0:?} must be non-empty printable text")]
    InvalidId(String),
    /// The name is empty, too long or holds a control character.
    #[error("vm name {0:?} must be 1 to 255 bytes of printable text")]
    InvalidName(String),
    /// Fewer than one or more than [`MAX_VCPUS`] vCPUs.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u32),
    /// Memory below [`MIN_MEMORY_BYTES`] or above [`MAX_MEMORY_BYTES`].
    #[error("memory must be between 64 MiB and 1 TiB, got {0} bytes")]
    MemorySize(u64),
    /// Memory that is not a whole number of MiB.
    #[error("memory must be a whole number of MiB, got {0} bytes")]
    MemoryAlignment(u64),
    /// A path that must be absolute is relative (the VMM runs elsewhere).
    #[error("{what} path {path:?} must be absolute")]
    RelativePath {
        /// Which path it is.
        what: &'static str,
        /// The offending path.
        path: PathBuf,
    },
    /// A path holding a NUL byte, which no system call accepts.
    #[error("{what} path {path:?} contains a NUL byte")]
    NulInPath {
        /// Which path it is.
        what: &'static str,
        /// The offending path.
        path: PathBuf,
    },
    /// A Unix socket path longer than the kernel accepts.
    #[error("{what} socket path {path:?} is {len} bytes, longer than the {MAX_UNIX_SOCKET_PATH_LEN} a unix socket allows")]
    SocketPathTooLong {
        /// Which socket it is.
        what: &'static str,
        /// The offending path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The kernel command line is too long or holds a NUL or newline.
    #[error("kernel command line must be at most {MAX_CMDLINE_LEN} bytes without NUL or newline")]
    Cmdline,
    /// More disks than [`MAX_DISKS`].
    #[error("at most {MAX_DISKS} disks are supported, got {0}")]
    TooManyDisks(usize),
    /// A disk serial that is empty, too long or not printable ASCII.
    #[error("disk {index} serial {serial:?} must be 1 to 20 printable ascii characters")]
    DiskSerial {
        /// Position of the disk in `disks`.
        index: usize,
        /// The offending serial.
        serial: String,
    },
    /// The same backing file attached twice.
    #[error("disk {index} path {path:?} is attached more than once")]
    DuplicateDisk {
        /// Position of the second occurrence in `disks`.
        index: usize,
        /// The repeated path.
        path: PathBuf,
    },
    /// A virtio-serial port name that is empty, too long or not printable ASCII.
    #[error("agent channel port name {0:?} must be 1 to 255 printable ascii characters")]
    PortName(String),
    /// More hot-plug slots than [`MAX_HOTPLUG_SLOTS`].
    #[error("at most {MAX_HOTPLUG_SLOTS} hot-plug slots are supported, got {0}")]
    TooManySlots(u32),
    /// A disk in a slot the VM does not have, or sharing one.
    #[error("disk {index} is in hot-plug slot {slot}, which is missing or taken")]
    DiskSlot {
        /// Position of the disk in `disks`.
        index: usize,
        /// The offending slot.
        slot: u32,
    },
    /// More network interfaces than [`MAX_NICS`].
    #[error("at most {MAX_NICS} network interfaces are supported, got {0}")]
    TooManyNics(usize),
    /// A TAP name that is empty, too long or not a plain interface name.
    #[error("nic {index} tap name {tap:?} must be 1 to 15 characters without '/', ',', ':' or whitespace")]
    TapName {
        /// Position of the interface in `nics`.
        index: usize,
        /// The offending name.
        tap: String,
    },
    /// A multicast (group) MAC, which names no single interface.
    #[error("nic {index} mac {mac} is a multicast address")]
    MulticastMac {
        /// Position of the interface in `nics`.
        index: usize,
        /// The offending MAC.
        mac: String,
    },
    /// Two interfaces on one TAP, or with one MAC.
    #[error("nic {index} repeats the tap or mac of an earlier one")]
    DuplicateNic {
        /// Position of the second occurrence in `nics`.
        index: usize,
    },
    /// Two sockets or files of the VM share one path.
    #[error("{a} and {b} use the same path {path:?}")]
    PathClash {
        /// First user of the path.
        a: &'static str,
        /// Second user of the path.
        b: &'static str,
        /// The shared path.
        path: PathBuf,
    },
    /// A value the backend's command line cannot carry (Cloud Hypervisor
    /// parses its options as UTF-8 text).
    #[error("{what} {value:?} cannot be passed to this hypervisor")]
    Unrepresentable {
        /// What the value is.
        what: &'static str,
        /// The value.
        value: String,
    },
}

impl VmConfig {
    /// A config with lodge's defaults (1 vCPU, 512 MiB, an empty command
    /// line, no disks, no agent channel) for the given paths.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
        control_socket: impl Into<PathBuf>,
        status_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            vcpus: 1,
            memory_bytes: 512 * MIB,
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: String::new(),
            disks: Vec::new(),
            control_socket: control_socket.into(),
            status_file: status_file.into(),
            status_fd: None,
            console_fd: None,
            agent_channel: None,
            nics: Vec::new(),
            memory_file: None,
            hotplug_slots: 0,
            balloon: false,
            disk_bps: None,
        }
    }

    /// Guest memory in MiB (exact once the config is valid).
    pub fn memory_mib(&self) -> u64 {
        self.memory_bytes / MIB
    }

    /// Checks every rule; backends call this before building a command.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.is_empty() || has_control(&self.id) {
            return Err(ConfigError::InvalidId(self.id.clone()));
        }
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN || has_control(&self.name) {
            return Err(ConfigError::InvalidName(self.name.clone()));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&self.memory_bytes) {
            return Err(ConfigError::MemorySize(self.memory_bytes));
        }
        // MIB is a power of two (no `is_multiple_of` before Rust 1.87).
        if self.memory_bytes & (MIB - 1) != 0 {
            return Err(ConfigError::MemoryAlignment(self.memory_bytes));
        }
        check_path("kernel", &self.kernel)?;
        check_path("initrd", &self.initrd)?;
        if let Some(file) = &self.memory_file {
            check_path("memory file", file)?;
        }
        if self.cmdline.len() > MAX_CMDLINE_LEN || self.cmdline.contains(['\0', '\n', '\r']) {
            return Err(ConfigError::Cmdline);
        }
        check_socket("control", &self.control_socket)?;
        check_path("status file", &self.status_file)?;
        if let Some(fd) = self.status_fd {
            if fd < 3 {
                return Err(ConfigError::StatusFd(fd));
            }
        }
        if let Some(fd) = self.console_fd {
            if fd < 3 || Some(fd) == self.status_fd {
                return Err(ConfigError::ConsoleFd(fd));
            }
        }
        clash(
            "control socket",
            &self.control_socket,
            "status file",
            &self.status_file,
        )?;
        if let Some(chan) = &self.agent_channel {
            check_socket("agent channel", &chan.socket)?;
            if !is_printable_ascii(&chan.port_name, MAX_NAME_LEN) {
                return Err(ConfigError::PortName(chan.port_name.clone()));
            }
            clash(
                "control socket",
                &self.control_socket,
                "agent channel",
                &chan.socket,
            )?;
            clash(
                "status file",
                &self.status_file,
                "agent channel",
                &chan.socket,
            )?;
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        if self.hotplug_slots > MAX_HOTPLUG_SLOTS {
            return Err(ConfigError::TooManySlots(self.hotplug_slots));
        }
        for (index, disk) in self.disks.iter().enumerate() {
            check_path("disk", &disk.path)?;
            if let Some(slot) = disk.slot {
                if slot >= self.hotplug_slots
                    || self.disks[..index].iter().any(|d| d.slot == Some(slot))
                {
                    return Err(ConfigError::DiskSlot { index, slot });
                }
            }
            if let Some(serial) = &disk.serial {
                if !is_printable_ascii(serial, MAX_DISK_SERIAL_LEN) {
                    return Err(ConfigError::DiskSerial {
                        index,
                        serial: serial.clone(),
                    });
                }
            }
            if self.disks[..index].iter().any(|d| d.path == disk.path) {
                return Err(ConfigError::DuplicateDisk {
                    index,
                    path: disk.path.clone(),
                });
            }
        }
        if self.nics.len() > MAX_NICS {
            return Err(ConfigError::TooManyNics(self.nics.len()));
        }
        for (index, nic) in self.nics.iter().enumerate() {
            if !is_ifname(&nic.tap) {
                return Err(ConfigError::TapName {
                    index,
                    tap: nic.tap.clone(),
                });
            }
            if nic.mac[0] & 1 == 1 {
                return Err(ConfigError::MulticastMac {
                    index,
                    mac: nic.mac_string(),
                });
            }
            if self.nics[..index]
                .iter()
                .any(|n| n.tap == nic.tap || n.mac == nic.mac)
            {
                return Err(ConfigError::DuplicateNic { index });
            }
        }
        Ok(())
    }
}

/// A name the kernel accepts for a network interface (and that needs no
/// quoting anywhere): 1 to 15 bytes, none of them `/`, `,`, `:`,
/// whitespace or control characters.
fn is_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b',' | b':'))
}

impl DiskConfig {
    /// A raw disk without a serial.
    pub fn raw(path: impl Into<PathBuf>, read_only: bool) -> Self {
        Self {
            path: path.into(),
            read_only,
            serial: None,
            format: DiskFormat::Raw,
            slot: None,
        }
    }

    /// The same disk in hot-plug slot `slot`.
    pub fn with_slot(mut self, slot: u32) -> Self {
        self.slot = Some(slot);
        self
    }

    /// The same disk with a serial number.
    pub fn with_serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn is_printable_ascii(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

fn check_path(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(ConfigError::NulInPath {
            what,
            path: path.to_owned(),
        });
    }
    if !path.is_absolute() {
        return Err(ConfigError::RelativePath {
            what,
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn check_socket(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    check_path(what, path)?;
    let len = path.as_os_str().len();
    if len > MAX_UNIX_SOCKET_PATH_LEN {
        return Err(ConfigError::SocketPathTooLong {
            what,
            path: path.to_owned(),
            len,
        });
    }
    Ok(())
}

fn clash(a: &'static str, pa: &Path, b: &'static str, pb: &Path) -> Result<(), ConfigError> {
    if pa == pb {
        return Err(ConfigError::PathClash {
            a,
            b,
            path: pa.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmConfig {
        VmConfig::new(
            "abc123",
            "web-1",
            "/sys/vmlinuz",
            "/sys/initrd.img",
            "/run/vm/qmp.sock",
            "/run/vm/status.log",
        )
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = base();
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.vcpus, 1);
        assert_eq!(cfg.memory_mib(), 512);
    }

    #[test]
    fn rejects_zero_and_too_many_vcpus() {
        let mut cfg = base();
        cfg.vcpus = 0;
        assert_eq!(cfg.validate(), Err(ConfigError::Vcpus(0)));
        cfg.vcpus = 256;
        assert_eq!(cfg.validate(), Err(ConfigError::Vcpus(256)));
        cfg.vcpus = 255;
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn memory_bounds_and_alignment() {
        let mut cfg = base();
        cfg.memory_bytes = 63 * MIB;
        assert_eq!(cfg.validate(), Err(ConfigError::MemorySize(63 * MIB)));
        cfg.memory_bytes = 64 * MIB;
        assert_eq!(cfg.validate(), Ok(()));
        cfg.memory_bytes = 1_000_000_000;
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::MemoryAlignment(1_000_000_000))
        );
        cfg.memory_bytes = MAX_MEMORY_BYTES + MIB;
        assert!(matches!(cfg.validate(), Err(ConfigError::MemorySize(_))));
    }

    #[test]
    fn paths_must_be_absolute_and_nul_free() {
        let mut cfg = base();
        cfg.kernel = "vmlinuz".into();
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::RelativePath { what: "kernel", .. })
        ));
        let mut cfg = base();
        cfg.disks.push(DiskConfig::raw("rootfs.ext4", true));
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::RelativePath { what: "disk", .. })
        ));
        let mut cfg = base();
        cfg.initrd = "/a\0b".into();
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::NulInPath { what: "initrd", .. })
        ));
    }

    #[test]
    fn socket_path_length_is_bounded() {
        let mut cfg = base();
        let long = format!("/{}", "d".repeat(MAX_UNIX_SOCKET_PATH_LEN - 1));
        cfg.control_socket = long.clone().into();
        assert_eq!(cfg.validate(), Ok(()));
        cfg.control_socket = format!("{long}x").into();
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::SocketPathTooLong { len: 108, .. })
        ));
    }

    #[test]
    fn disk_serials_are_checked() {
        let mut cfg = base();
        cfg.disks
            .push(DiskConfig::raw("/d/a.raw", false).with_serial("x".repeat(20)));
        assert_eq!(cfg.validate(), Ok(()));
        cfg.disks[0].serial = Some("x".repeat(21));
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::DiskSerial { index: 0, .. })
        ));
        cfg.disks[0].serial = Some("bad\u{7}".into());
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::DiskSerial { .. })
        ));
        cfg.disks[0].serial = Some(String::new());
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::DiskSerial { .. })
        ));
    }

    #[test]
    fn duplicate_disks_and_clashing_paths_are_rejected() {
        let mut cfg = base();
        cfg.disks.push(DiskConfig::raw("/d/a.raw", true));
        cfg.disks.push(DiskConfig::raw("/d/a.raw", false));
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::DuplicateDisk { index: 1, .. })
        ));
        let mut cfg = base();
        cfg.status_file = cfg.control_socket.clone();
        assert!(matches!(cfg.validate(), Err(ConfigError::PathClash { .. })));
    }

    #[test]
    fn disk_slots_must_exist_and_be_unique() {
        let mut cfg = base();
        cfg.hotplug_slots = 2;
        cfg.disks = vec![
            DiskConfig::raw("/d/a.raw", false).with_slot(0),
            DiskConfig::raw("/d/b.raw", true).with_slot(1),
        ];
        assert_eq!(cfg.validate(), Ok(()));
        cfg.disks[1].slot = Some(0);
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::DiskSlot { index: 1, slot: 0 })
        );
        cfg.disks[1].slot = Some(2);
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::DiskSlot { index: 1, slot: 2 })
        );
        cfg.disks.clear();
        cfg.hotplug_slots = MAX_HOTPLUG_SLOTS + 1;
        assert_eq!(cfg.validate(), Err(ConfigError::TooManySlots(9)));
    }

    #[test]
    fn too_many_disks() {
        let mut cfg = base();
        cfg.disks = (0..=MAX_DISKS)
            .map(|i| DiskConfig::raw(format!("/d/{i}.raw"), true))
            .collect();
        assert_eq!(cfg.validate(), Err(ConfigError::TooManyDisks(17)));
    }

    #[test]
    fn names_and_ids() {
        let mut cfg = base();
        cfg.name = String::new();
        assert!(matches!(cfg.validate(), Err(ConfigError::InvalidName(_))));
        cfg.name = "a\nb".into();
        assert!(matches!(cfg.validate(), Err(ConfigError::InvalidName(_))));
        let mut cfg = base();
        cfg.id = String::new();
        assert!(matches!(cfg.validate(), Err(ConfigError::InvalidId(_))));
    }

    #[test]
    fn cmdline_rules() {
        let mut cfg = base();
        cfg.cmdline = "x".repeat(MAX_CMDLINE_LEN);
        assert_eq!(cfg.validate(), Ok(()));
        cfg.cmdline.push('x');
        assert_eq!(cfg.validate(), Err(ConfigError::Cmdline));
        cfg.cmdline = "console=ttyS0\nfoo".into();
        assert_eq!(cfg.validate(), Err(ConfigError::Cmdline));
    }

    #[test]
    fn agent_port_name() {
        let mut cfg = base();
        cfg.agent_channel = Some(VirtioSerialChannel {
            socket: "/run/vm/agent.sock".into(),
            port_name: "org.lodge.agent.0".into(),
        });
        assert_eq!(cfg.validate(), Ok(()));
        if let Some(chan) = cfg.agent_channel.as_mut() {
            chan.port_name = String::new();
        }
        assert!(matches!(cfg.validate(), Err(ConfigError::PortName(_))));
    }

    #[test]
    fn nics_are_checked() {
        let nic = |tap: &str, last: u8| NicConfig {
            tap: tap.into(),
            mac: [0x02, 0x4c, 0x0a, 0x64, 0x00, last],
        };
        let mut cfg = base();
        cfg.nics = vec![nic("lt-abc", 2), nic("lt-def", 3)];
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.nics[0].mac_string(), "02:4c:0a:64:00:02");
        for bad in ["", "a,b", "a/b", "a b", "a:b", "sixteen-chars-xx", ".."] {
            cfg.nics = vec![nic(bad, 2)];
            assert!(
                matches!(cfg.validate(), Err(ConfigError::TapName { index: 0, .. })),
                "{bad:?}"
            );
        }
        cfg.nics = vec![NicConfig {
            tap: "lt-x".into(),
            mac: [0x03, 0, 0, 0, 0, 1],
        }];
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::MulticastMac { index: 0, .. })
        ));
        cfg.nics = vec![nic("lt-a", 2), nic("lt-a", 3)];
        assert_eq!(cfg.validate(), Err(ConfigError::DuplicateNic { index: 1 }));
        cfg.nics = vec![nic("lt-a", 2), nic("lt-b", 2)];
        assert_eq!(cfg.validate(), Err(ConfigError::DuplicateNic { index: 1 }));
        cfg.nics = (0..=MAX_NICS as u8)
            .map(|i| nic(&format!("lt-{i}"), i))
            .collect();
        assert_eq!(cfg.validate(), Err(ConfigError::TooManyNics(9)));
    }

    /// A config persisted before networking (no `nics` key) still loads.
    #[test]
    fn configs_without_nics_still_load() {
        let mut json = serde_json::to_value(base()).expect("serialize");
        json.as_object_mut().expect("object").remove("nics");
        let back: VmConfig = serde_json::from_value(json).expect("deserialize");
        assert!(back.nics.is_empty());
    }

    #[test]
    fn serde_round_trip() {
        let mut cfg = base();
        cfg.disks
            .push(DiskConfig::raw("/d/a.raw", true).with_serial("root"));
        let json = serde_json::to_string(&cfg).expect("serialize");
        assert!(json.contains(r#""memory_bytes":536870912"#), "{json}");
        let back: VmConfig = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, cfg);
    }
}
