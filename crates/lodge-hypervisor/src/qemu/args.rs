//! The QEMU command line as pure data: a validated [`VmConfig`] and the
//! backend's [`QemuOptions`] in, the whole argv (binary included) out, so
//! tests can compare it element by element.
//!
//! Two rules shape every line here:
//!
//! - The console is QEMU's stdio (`-chardev stdio`), because lodge's monitor
//!   starts QEMU with stdout on a pipe it owns and is the only writer of the
//!   console log. QEMU never opens that log itself, so nothing is truncated
//!   when a VM starts again. The guest's status channel is its second
//!   serial port ([`STATUS_TTY`]): with `status_fd`, a pipe inherited from
//!   the monitor, which bounds what it keeps (QEMU opens it as
//!   `/dev/fdset/N` after `-add-fd`); without, a file QEMU opens with
//!   `append=on` (`O_APPEND`), for the same reason.
//! - QEMU option values (`-chardev`, `-drive`, `-device`, `-name`, …) are
//!   comma-separated `key=value` lists in which a literal comma is written
//!   twice. Every value that can hold user text goes through [`escape`].
//!   `-kernel`, `-initrd` and `-append` take their whole argument verbatim
//!   (QEMU does not split them), so they are passed unescaped.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::options::{MachineType, QemuOptions};
use crate::config::{ConfigError, DiskFormat, VmConfig};

/// The default QEMU binary, looked up on `PATH`.
pub const DEFAULT_QEMU_BINARY: &str = "qemu-system-x86_64";

/// The guest serial port that carries the console (the monitor's pipe).
pub const CONSOLE_TTY: &str = "ttyS0";

/// The guest serial port that carries the guest init's status lines.
pub const STATUS_TTY: &str = "ttyS1";

/// Chardev id of the console (guest `ttyS0`).
pub const CONSOLE_CHARDEV: &str = "console";
/// Chardev id of the status port (guest `ttyS1`).
pub const STATUS_CHARDEV: &str = "status";
/// The QEMU fd set holding the status channel's inherited descriptor.
pub const STATUS_FDSET: u32 = 1;
/// Chardev id of the workload's fast console (a virtio-serial port).
pub const FAST_CONSOLE_CHARDEV: &str = "fastcon";
/// The QEMU fd set holding the fast console's inherited descriptor.
pub const FAST_CONSOLE_FDSET: u32 = 2;
/// Name of the fast console's virtio-serial port (in the guest's
/// `/sys/class/virtio-ports/*/name`).
pub const FAST_CONSOLE_PORT: &str = "org.lodge.console";
/// Chardev id of the QMP control socket.
pub const QMP_CHARDEV: &str = "qmp";
/// Chardev id of the agent's virtio-serial channel.
pub const AGENT_CHARDEV: &str = "agent";
/// Object id of the file-backed guest RAM, when there is one.
pub const MEMORY_BACKEND: &str = "mem0";
/// Netdev id prefix of the network interfaces (`net0`, `net1`, …).
pub const NETDEV_PREFIX: &str = "net";

/// Bus id of hot-plug slot `slot` on q35: a PCIe root port made at boot.
pub fn slot_port(slot: u32) -> String {
    format!("lodge-hp{slot}")
}

/// Block node name of the disk in hot-plug slot `slot`.
pub fn slot_node(slot: u32) -> String {
    format!("lodge-slot{slot}")
}

/// Device id of the disk in hot-plug slot `slot`.
pub fn slot_device(slot: u32) -> String {
    format!("lodge-slot{slot}-dev")
}

/// Where the device of hot-plug slot `slot` goes: its root port on q35
/// (whose root bus cannot hot-plug), a fixed address on `pc`'s root bus
/// (hot-plugged through ACPI). Fixed, so a VM started again with the same
/// disks has the same devices at the same places.
pub fn slot_bus(machine: MachineType, slot: u32) -> (String, Option<String>) {
    match machine {
        MachineType::Q35 => (slot_port(slot), None),
        MachineType::Pc => ("pci.0".to_string(), Some(format!("0x{:x}", 0x10 + slot))),
    }
}

/// Escapes one value for QEMU's `key=value,…` option syntax: every comma is
/// doubled. Works on raw bytes, so non-UTF-8 paths survive unchanged.
pub fn escape(value: &OsStr) -> OsString {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 4);
    for &b in bytes {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Builds one option string: `head` verbatim, then `,key=value` pairs with
/// each value escaped.
struct OptBuf(Vec<u8>);

impl OptBuf {
    fn new(head: &str) -> Self {
        Self(head.as_bytes().to_vec())
    }

    /// Appends `,key=<escaped value>` (or `key=…` when the buffer is empty).
    fn kv(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        if !self.0.is_empty() {
            self.0.push(b',');
        }
        self.0.extend_from_slice(key.as_bytes());
        self.0.push(b'=');
        self.0.extend_from_slice(escape(value.as_ref()).as_bytes());
        self
    }

    fn done(self) -> OsString {
        OsString::from_vec(self.0)
    }
}

/// A socket chardev on which QEMU listens at `path` without waiting for a
/// client (QMP, the guest agent).
fn listening_socket(id: &str, path: &Path) -> OsString {
    OptBuf::new(&format!("socket,id={id}"))
        .kv("path", path)
        .kv("server", "on")
        .kv("wait", "off")
        .done()
}

/// The full QEMU argv for `cfg` under `opts`, starting with `binary`.
/// Validates `cfg` first.
pub fn build_argv(
    binary: &OsStr,
    opts: &QemuOptions,
    cfg: &VmConfig,
) -> Result<Vec<OsString>, ConfigError> {
    cfg.validate()?;
    let mut argv: Vec<OsString> = Vec::with_capacity(48);
    let mut push = |items: &[&dyn AsRef<OsStr>]| {
        argv.extend(items.iter().map(|s| s.as_ref().to_owned()));
    };

    push(&[&binary]);
    push(&[&"-name", &OptBuf::new("").kv("guest", &cfg.name).done()]);
    push(&[
        &"-nodefaults",
        &"-no-user-config",
        &"-display",
        &"none",
        &"-no-reboot",
    ]);
    match &cfg.memory_file {
        None => push(&[&"-machine", &opts.machine.arg()]),
        // RAM is this file, mapped shared (see `VmConfig::memory_file`).
        Some(file) => push(&[
            &"-object",
            &OptBuf::new(&format!(
                "memory-backend-file,id={MEMORY_BACKEND},size={}M",
                cfg.memory_mib()
            ))
            .kv("mem-path", file)
            .kv("share", "on")
            .done(),
            &"-machine",
            &format!("{},memory-backend={MEMORY_BACKEND}", opts.machine.arg()),
        ]),
    }
    push(&[&"-accel", &opts.accel_arg()]);
    push(&[&"-smp", &cfg.vcpus.to_string()]);
    push(&[&"-m", &cfg.memory_mib().to_string()]);

    push(&[&"-kernel", &cfg.kernel]);
    push(&[&"-initrd", &cfg.initrd]);
    push(&[&"-append", &cfg.cmdline]);

    // Console: QEMU's stdout, a pipe owned by lodge's monitor. signal=off so
    // a ^C typed into the console reaches the guest instead of killing QEMU.
    push(&[
        &"-chardev",
        &format!("stdio,id={CONSOLE_CHARDEV},signal=off"),
        &"-serial",
        &format!("chardev:{CONSOLE_CHARDEV}"),
    ]);
    // Status lines of lodge's guest init: into the pipe the monitor passed
    // as `status_fd` (QEMU reopens it through an fd set; `append=on`, as
    // QEMU refuses `O_TRUNC` there), else appended (O_APPEND) to a file.
    let status_path = match cfg.status_fd {
        Some(fd) => {
            push(&[
                &"-add-fd",
                &format!("fd={fd},set={STATUS_FDSET},opaque={STATUS_CHARDEV}"),
            ]);
            OsString::from(format!("/dev/fdset/{STATUS_FDSET}"))
        }
        None => cfg.status_file.clone().into_os_string(),
    };
    push(&[
        &"-chardev",
        &OptBuf::new(&format!("file,id={STATUS_CHARDEV}"))
            .kv("path", &status_path)
            .kv("append", "on")
            .done(),
        &"-serial",
        &format!("chardev:{STATUS_CHARDEV}"),
    ]);

    for (i, disk) in cfg.disks.iter().enumerate() {
        if disk.slot.is_some() {
            continue;
        }
        let id = format!("disk{i}");
        let format = match disk.format {
            DiskFormat::Raw => "raw",
        };
        let mut drive = OptBuf::new("")
            .kv("file", &disk.path)
            .kv("if", "none")
            .kv("id", &id)
            .kv("format", format);
        if disk.read_only {
            drive = drive.kv("readonly", "on");
        }
        if let Some(bps) = cfg.disk_bps {
            drive = drive.kv("throttling.bps-total", bps.to_string());
        }
        let mut device = OptBuf::new("virtio-blk-pci").kv("drive", &id);
        if let Some(serial) = &disk.serial {
            device = device.kv("serial", serial);
        }
        push(&[&"-drive", &drive.done(), &"-device", &device.done()]);
    }

    // Each NIC is a TAP the caller created and owns: QEMU opens it by name
    // and runs no helper scripts on it; no vhost (`/dev/vhost-net` may be
    // absent, and the TAP's owner shapes its traffic on the host anyway).
    for (i, nic) in cfg.nics.iter().enumerate() {
        let id = format!("{NETDEV_PREFIX}{i}");
        push(&[
            &"-netdev",
            &OptBuf::new(&format!("tap,id={id}"))
                .kv("ifname", &nic.tap)
                .kv("script", "no")
                .kv("downscript", "no")
                .kv("vhost", "off")
                .done(),
            &"-device",
            &OptBuf::new(&format!("virtio-net-pci,netdev={id}"))
                .kv("mac", nic.mac_string())
                .done(),
        ]);
    }

    if let Some(chan) = &cfg.agent_channel {
        push(&[
            &"-device",
            &"virtio-serial-pci,id=vser0",
            &"-chardev",
            &listening_socket(AGENT_CHARDEV, &chan.socket),
            &"-device",
            &OptBuf::new(&format!(
                "virtserialport,bus=vser0.0,chardev={AGENT_CHARDEV}"
            ))
            .kv("name", &chan.port_name)
            .done(),
        ]);
    }

    // The workload's fast console: a plain virtio-serial port (not a
    // `virtconsole`) on its own bus, written into the pipe the monitor
    // passed as `console_fd`. The UART traps on every byte and a virtio
    // console (`hvc`) waits for the host after every tty chunk of at most
    // 2 KiB; a port takes each write (up to 32 KiB) in one buffer and one
    // guest exit, and makes the writer wait only when the host is behind.
    // Port 0 of a bus is kept for a console, hence two ports.
    if let Some(fd) = cfg.console_fd {
        push(&[
            &"-add-fd",
            &format!("fd={fd},set={FAST_CONSOLE_FDSET},opaque={FAST_CONSOLE_CHARDEV}"),
            &"-chardev",
            &format!(
                "file,id={FAST_CONSOLE_CHARDEV},path=/dev/fdset/{FAST_CONSOLE_FDSET},append=on"
            ),
            &"-device",
            &"virtio-serial-pci,id=vcon0,max_ports=2",
            &"-device",
            &format!(
                "virtserialport,bus=vcon0.0,chardev={FAST_CONSOLE_CHARDEV},name={FAST_CONSOLE_PORT}"
            ),
        ]);
    }
    // Hot-plug slots, then the disks that sit in them from boot (after
    // every other device, so they never shift another device's address).
    // Each slot's throttle group (objects take no device address).
    if let Some(bps) = cfg.disk_bps {
        for slot in 0..cfg.hotplug_slots {
            push(&[&"-object", &super::throttle::group_object(slot, bps)]);
        }
    }
    if opts.machine == MachineType::Q35 {
        for slot in 0..cfg.hotplug_slots {
            push(&[
                &"-device",
                &format!("pcie-root-port,id={},chassis={}", slot_port(slot), slot + 1),
            ]);
        }
    }
    for disk in &cfg.disks {
        let Some(slot) = disk.slot else { continue };
        let ro = if disk.read_only { "on" } else { "off" };
        let (bus, addr) = slot_bus(opts.machine, slot);
        // Set as a `-drive` disk gets them by default: transitional
        // (legacy I/O ports too; QEMU makes a device behind a PCIe port
        // modern-only), and a write cache the guest flushes (a device on a
        // `-blockdev` node would otherwise write through, every write
        // synchronous: guest writes measured at about half the speed).
        let mut device = OptBuf::new("virtio-blk-pci,disable-legacy=off,write-cache=on")
            .kv("drive", slot_node(slot))
            .kv("id", slot_device(slot))
            .kv("bus", bus);
        if let Some(addr) = addr {
            device = device.kv("addr", addr);
        }
        if let Some(serial) = &disk.serial {
            device = device.kv("serial", serial);
        }
        let node = match cfg.disk_bps {
            None => OptBuf::new("driver=raw")
                .kv("node-name", slot_node(slot))
                .kv("read-only", ro)
                .kv("file.driver", "file")
                .kv("file.filename", &disk.path),
            // A throttle filter over the raw node (see `throttle`).
            Some(_) => OptBuf::new("driver=throttle")
                .kv("node-name", slot_node(slot))
                .kv("throttle-group", super::throttle::group(slot))
                .kv("read-only", ro)
                .kv("file.driver", "raw")
                .kv("file.read-only", ro)
                .kv("file.file.driver", "file")
                .kv("file.file.filename", &disk.path)
                .kv("file.file.read-only", ro),
        };
        push(&[&"-blockdev", &node.done(), &"-device", &device.done()]);
    }

    // The balloon last of the devices: adding it moves no other address.
    if cfg.balloon {
        push(&[&"-device", &super::balloon::DEVICE]);
    }

    push(&[
        &"-chardev",
        &listening_socket(QMP_CHARDEV, &cfg.control_socket),
        &"-mon",
        &format!("chardev={QMP_CHARDEV},mode=control"),
    ]);

    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, NicConfig, VirtioSerialChannel, MIB};
    use crate::qemu::options::{Accel, MachineType};

    fn tcg() -> QemuOptions {
        QemuOptions::new(Accel::Tcg)
    }

    fn argv_strings(argv: &[OsString]) -> Vec<&str> {
        argv.iter()
            .map(|a| a.to_str().expect("test argv is utf-8"))
            .collect()
    }

    #[test]
    fn escape_doubles_commas_only() {
        assert_eq!(escape(OsStr::new("/tmp/my vms,2")), "/tmp/my vms,,2");
        assert_eq!(escape(OsStr::new(",,")), ",,,,");
        assert_eq!(escape(OsStr::new("a=b:c")), "a=b:c");
        assert_eq!(escape(OsStr::new("")), "");
    }

    #[test]
    fn escape_keeps_non_utf8_bytes() {
        let raw = OsStr::from_bytes(b"/d/\xff,x");
        assert_eq!(escape(raw).as_bytes(), b"/d/\xff,,x");
    }

    /// A minimal VM: no disks, no agent channel, default q35.
    #[test]
    fn minimal_vm_whole_argv() {
        let cfg = VmConfig::new(
            "id1",
            "vm1",
            "/sys/vmlinuz",
            "/sys/initrd.img",
            "/data/guests/id1/qmp.sock",
            "/data/guests/id1/status.log",
        );
        let argv = build_argv(OsStr::new(DEFAULT_QEMU_BINARY), &tcg(), &cfg).expect("valid");
        assert_eq!(
            argv_strings(&argv),
            [
                "qemu-system-x86_64",
                "-name",
                "guest=vm1",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-machine",
                "q35,sata=off,smbus=off,vmport=off,i8042=off,smm=off",
                "-accel",
                "tcg,tb-size=16",
                "-smp",
                "1",
                "-m",
                "512",
                "-kernel",
                "/sys/vmlinuz",
                "-initrd",
                "/sys/initrd.img",
                "-append",
                "",
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
                "-chardev",
                "file,id=status,path=/data/guests/id1/status.log,append=on",
                "-serial",
                "chardev:status",
                "-chardev",
                "socket,id=qmp,path=/data/guests/id1/qmp.sock,server=on,wait=off",
                "-mon",
                "chardev=qmp,mode=control",
            ]
        );
    }

    /// A disk limit: `-drive` throttling for the VM's own disks, and a
    /// throttle group per slot with the slot disks' nodes as filters over
    /// their raw images (the node the device names keeps its name).
    #[test]
    fn disk_limits_reach_every_disk() {
        let mut cfg = VmConfig::new("id1", "vm1", "/k", "/i", "/d/qmp.sock", "/d/s.log");
        cfg.disks = vec![
            DiskConfig::raw("/d/root.ext4", true),
            DiskConfig::raw("/d/vol.raw", false).with_slot(1),
        ];
        cfg.hotplug_slots = 2;
        cfg.disk_bps = Some(2 << 20);
        let argv = build_argv(OsStr::new("qemu"), &tcg(), &cfg).expect("valid");
        let s = argv_strings(&argv);
        assert!(
            s.contains(&"file=/d/root.ext4,if=none,id=disk0,format=raw,readonly=on,throttling.bps-total=2097152"),
            "{s:?}"
        );
        for slot in 0..2 {
            assert!(
                s.contains(
                    &format!("throttle-group,id=throttle-slot{slot},x-bps-total=2097152").as_str()
                ),
                "{s:?}"
            );
        }
        assert!(
            s.contains(&"driver=throttle,node-name=lodge-slot1,throttle-group=throttle-slot1,read-only=off,file.driver=raw,file.read-only=off,file.file.driver=file,file.file.filename=/d/vol.raw,file.file.read-only=off"),
            "{s:?}"
        );
    }

    /// The balloon comes after every other device (adding it moves no
    /// other device's address), just before the control socket.
    #[test]
    fn balloon_is_the_last_device() {
        let mut cfg = VmConfig::new("id1", "vm1", "/k", "/i", "/d/qmp.sock", "/d/s.log");
        let without = build_argv(OsStr::new("qemu"), &tcg(), &cfg).expect("valid");
        assert!(!argv_strings(&without).iter().any(|a| a.contains("balloon")));
        cfg.balloon = true;
        cfg.hotplug_slots = 2;
        let argv = build_argv(OsStr::new("qemu"), &tcg(), &cfg).expect("valid");
        let s = argv_strings(&argv);
        let at = s
            .iter()
            .position(|a| a.starts_with("virtio-balloon-pci"))
            .expect("balloon");
        assert_eq!(s[at - 1], "-device");
        assert!(s[at].contains("free-page-reporting=on") && s[at].contains("deflate-on-oom=on"));
        assert!(
            !s[at + 1..].contains(&"-device"),
            "a device after the balloon: {s:?}"
        );
        assert_eq!(s.len(), without.len() + 2 + 2 * 2, "{s:?}");
    }

    /// Guest RAM in a shared file: a memory backend object the machine
    /// uses, its path escaped like every other.
    #[test]
    fn memory_file_backs_the_guest_ram() {
        let mut cfg = VmConfig::new("id1", "vm1", "/k", "/i", "/d/qmp.sock", "/d/s.log");
        cfg.memory_bytes = 256 * MIB;
        cfg.memory_file = Some("/d/my vms,2/memory.ram".into());
        let argv = build_argv(OsStr::new("qemu"), &tcg(), &cfg).expect("valid");
        let argv = argv_strings(&argv);
        let at = argv.iter().position(|a| *a == "-object").expect("-object");
        assert_eq!(
            argv[at..at + 4],
            [
                "-object",
                "memory-backend-file,id=mem0,size=256M,mem-path=/d/my vms,,2/memory.ram,share=on",
                "-machine",
                "q35,sata=off,smbus=off,vmport=off,i8042=off,smm=off,memory-backend=mem0",
            ]
        );
        assert!(argv.windows(2).any(|w| w == ["-m", "256"]));
        cfg.memory_file = Some("memory.ram".into());
        assert!(build_argv(OsStr::new("qemu"), &tcg(), &cfg).is_err());
    }

    /// hypeman's TestBuildArgs_SerialLog, lodge's way: the console goes to
    /// stdio, never to a file QEMU opens, and every user path is escaped.
    #[test]
    fn full_vm_in_data_dir_with_comma_and_space() {
        let dir = "/tmp/my vms,2/guests/x,y";
        let mut cfg = VmConfig::new(
            "x,y",
            "web,1",
            "/tmp/my vms,2/system/vmlinuz",
            "/tmp/my vms,2/system/initrd.img",
            format!("{dir}/qmp.sock"),
            format!("{dir}/status.log"),
        );
        cfg.vcpus = 2;
        cfg.memory_bytes = 1024 * MIB;
        cfg.cmdline = "console=ttyS0 quiet lodge.x=a,b".into();
        cfg.disks = vec![
            DiskConfig::raw("/tmp/my vms,2/images/rootfs.ext4", true).with_serial("root,fs"),
            DiskConfig::raw(format!("{dir}/overlay.raw"), false).with_serial("overlay"),
            DiskConfig::raw(format!("{dir}/config.raw"), true),
        ];
        cfg.agent_channel = Some(VirtioSerialChannel {
            socket: format!("{dir}/agent.sock").into(),
            port_name: "org.lodge,agent".into(),
        });
        let argv = build_argv(
            OsStr::new("/opt/qemu/bin/qemu-system-x86_64"),
            &QemuOptions {
                machine: MachineType::Pc,
                ..QemuOptions::new(Accel::Kvm)
            },
            &cfg,
        )
        .expect("valid");
        assert_eq!(
            argv_strings(&argv),
            [
                "/opt/qemu/bin/qemu-system-x86_64",
                "-name",
                "guest=web,,1",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-machine",
                "pc,sata=off,smbus=off,vmport=off,i8042=off,smm=off",
                "-accel",
                "kvm",
                "-smp",
                "2",
                "-m",
                "1024",
                "-kernel",
                "/tmp/my vms,2/system/vmlinuz",
                "-initrd",
                "/tmp/my vms,2/system/initrd.img",
                "-append",
                "console=ttyS0 quiet lodge.x=a,b",
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
                "-chardev",
                "file,id=status,path=/tmp/my vms,,2/guests/x,,y/status.log,append=on",
                "-serial",
                "chardev:status",
                "-drive",
                "file=/tmp/my vms,,2/images/rootfs.ext4,if=none,id=disk0,format=raw,readonly=on",
                "-device",
                "virtio-blk-pci,drive=disk0,serial=root,,fs",
                "-drive",
                "file=/tmp/my vms,,2/guests/x,,y/overlay.raw,if=none,id=disk1,format=raw",
                "-device",
                "virtio-blk-pci,drive=disk1,serial=overlay",
                "-drive",
                "file=/tmp/my vms,,2/guests/x,,y/config.raw,if=none,id=disk2,format=raw,readonly=on",
                "-device",
                "virtio-blk-pci,drive=disk2",
                "-device",
                "virtio-serial-pci,id=vser0",
                "-chardev",
                "socket,id=agent,path=/tmp/my vms,,2/guests/x,,y/agent.sock,server=on,wait=off",
                "-device",
                "virtserialport,bus=vser0.0,chardev=agent,name=org.lodge,,agent",
                "-chardev",
                "socket,id=qmp,path=/tmp/my vms,,2/guests/x,,y/qmp.sock,server=on,wait=off",
                "-mon",
                "chardev=qmp,mode=control",
            ]
        );
    }

    /// Hot-plug slots on q35 are root ports after every other device; a
    /// disk in a slot is a `-blockdev` (so it can be removed with
    /// `blockdev-del`) on its port; on `pc` the slot is a fixed address.
    #[test]
    fn disks_in_hotplug_slots() {
        let mut cfg = VmConfig::new(
            "id1",
            "vm1",
            "/sys/vmlinuz",
            "/sys/initrd.img",
            "/d/qmp.sock",
            "/d/status.log",
        );
        cfg.hotplug_slots = 2;
        cfg.disks = vec![
            DiskConfig::raw("/d/root.ext4", true).with_serial("root"),
            DiskConfig::raw("/v/a,b/data.raw", false)
                .with_serial("lodge-vol-1")
                .with_slot(1),
        ];
        let argv = build_argv(OsStr::new("qemu"), &tcg(), &cfg).expect("valid");
        let tail: Vec<&str> = argv_strings(&argv)
            .into_iter()
            .skip_while(|a| *a != "-drive")
            .collect();
        assert_eq!(
            tail,
            [
                "-drive",
                "file=/d/root.ext4,if=none,id=disk0,format=raw,readonly=on",
                "-device",
                "virtio-blk-pci,drive=disk0,serial=root",
                "-device",
                "pcie-root-port,id=lodge-hp0,chassis=1",
                "-device",
                "pcie-root-port,id=lodge-hp1,chassis=2",
                "-blockdev",
                "driver=raw,node-name=lodge-slot1,read-only=off,file.driver=file,file.filename=/v/a,,b/data.raw",
                "-device",
                "virtio-blk-pci,disable-legacy=off,write-cache=on,drive=lodge-slot1,id=lodge-slot1-dev,bus=lodge-hp1,serial=lodge-vol-1",
                "-chardev",
                "socket,id=qmp,path=/d/qmp.sock,server=on,wait=off",
                "-mon",
                "chardev=qmp,mode=control",
            ]
        );
        let pc = QemuOptions {
            machine: MachineType::Pc,
            ..tcg()
        };
        let argv = build_argv(OsStr::new("qemu"), &pc, &cfg).expect("valid");
        let text = argv_strings(&argv).join(" ");
        assert!(!text.contains("pcie-root-port"), "{text}");
        assert!(
            text.contains("id=lodge-slot1-dev,bus=pci.0,addr=0x11,serial=lodge-vol-1"),
            "{text}"
        );
    }

    /// A VM on lodge's network: one TAP the caller owns, opened by name, no
    /// helper scripts, no vhost; a second NIC gets the next ids.
    #[test]
    fn vm_with_nics_whole_argv() {
        let mut cfg = VmConfig::new(
            "id1",
            "vm1",
            "/sys/vmlinuz",
            "/sys/initrd.img",
            "/data/guests/id1/qmp.sock",
            "/data/guests/id1/status.log",
        );
        cfg.disks = vec![DiskConfig::raw("/data/guests/id1/rootfs.ext4", true).with_serial("root")];
        cfg.nics = vec![
            NicConfig {
                tap: "lt-id1".into(),
                mac: [0x02, 0x4c, 0x0a, 0x64, 0x00, 0x02],
            },
            NicConfig {
                tap: "lt-id1-b".into(),
                mac: [0x02, 0x4c, 0x0a, 0x64, 0x00, 0xfe],
            },
        ];
        let argv = build_argv(OsStr::new(DEFAULT_QEMU_BINARY), &tcg(), &cfg).expect("valid");
        assert_eq!(
            argv_strings(&argv),
            [
                "qemu-system-x86_64",
                "-name",
                "guest=vm1",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-machine",
                "q35,sata=off,smbus=off,vmport=off,i8042=off,smm=off",
                "-accel",
                "tcg,tb-size=16",
                "-smp",
                "1",
                "-m",
                "512",
                "-kernel",
                "/sys/vmlinuz",
                "-initrd",
                "/sys/initrd.img",
                "-append",
                "",
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
                "-chardev",
                "file,id=status,path=/data/guests/id1/status.log,append=on",
                "-serial",
                "chardev:status",
                "-drive",
                "file=/data/guests/id1/rootfs.ext4,if=none,id=disk0,format=raw,readonly=on",
                "-device",
                "virtio-blk-pci,drive=disk0,serial=root",
                "-netdev",
                "tap,id=net0,ifname=lt-id1,script=no,downscript=no,vhost=off",
                "-device",
                "virtio-net-pci,netdev=net0,mac=02:4c:0a:64:00:02",
                "-netdev",
                "tap,id=net1,ifname=lt-id1-b,script=no,downscript=no,vhost=off",
                "-device",
                "virtio-net-pci,netdev=net1,mac=02:4c:0a:64:00:fe",
                "-chardev",
                "socket,id=qmp,path=/data/guests/id1/qmp.sock,server=on,wait=off",
                "-mon",
                "chardev=qmp,mode=control",
            ]
        );
        // Without NICs there is no network device at all (`-nodefaults`
        // keeps QEMU from adding its own).
        cfg.nics.clear();
        let argv = build_argv(OsStr::new(DEFAULT_QEMU_BINARY), &tcg(), &cfg).expect("valid");
        let all = argv_strings(&argv);
        assert!(!all.contains(&"-netdev"));
        assert!(!all.iter().any(|a| a.starts_with("virtio-net")));
    }

    /// A bad TAP name never reaches QEMU.
    /// With `status_fd`, QEMU writes the status port into the descriptor
    /// its parent passed (through an fd set), and never opens a file.
    #[test]
    fn status_channel_on_an_inherited_fd() {
        let mut cfg = VmConfig::new(
            "id1",
            "vm1",
            "/sys/vmlinuz",
            "/sys/initrd.img",
            "/data/guests/id1/qmp.sock",
            "/data/guests/id1/status.log",
        );
        cfg.status_fd = Some(3);
        let built = build_argv(OsStr::new("qemu"), &tcg(), &cfg).expect("valid");
        let argv = argv_strings(&built);
        let at = argv.iter().position(|a| *a == "-add-fd").expect("-add-fd");
        assert_eq!(
            argv[at..at + 6],
            [
                "-add-fd",
                "fd=3,set=1,opaque=status",
                "-chardev",
                "file,id=status,path=/dev/fdset/1,append=on",
                "-serial",
                "chardev:status",
            ]
        );
        assert!(!argv.iter().any(|a| a.contains("status.log")), "{argv:?}");
        for bad in [-1, 0, 2] {
            cfg.status_fd = Some(bad);
            assert!(matches!(
                build_argv(OsStr::new("qemu"), &tcg(), &cfg),
                Err(ConfigError::StatusFd(_))
            ));
        }
    }

    /// With `console_fd`, the workload's fast console is a virtio-serial
    /// port on its own bus writing into the inherited pipe; the
    /// serial console stays where it was.
    #[test]
    fn fast_console_on_an_inherited_fd() {
        let mut cfg = VmConfig::new("id1", "vm1", "/k", "/i", "/q.sock", "/s.log");
        cfg.status_fd = Some(3);
        cfg.console_fd = Some(4);
        let built = build_argv(OsStr::new("qemu"), &tcg(), &cfg).expect("valid");
        let argv = argv_strings(&built);
        let at = argv
            .iter()
            .position(|a| *a == "fd=4,set=2,opaque=fastcon")
            .expect("-add-fd");
        assert_eq!(
            argv[at - 1..at + 7],
            [
                "-add-fd",
                "fd=4,set=2,opaque=fastcon",
                "-chardev",
                "file,id=fastcon,path=/dev/fdset/2,append=on",
                "-device",
                "virtio-serial-pci,id=vcon0,max_ports=2",
                "-device",
                "virtserialport,bus=vcon0.0,chardev=fastcon,name=org.lodge.console",
            ]
        );
        let serials: Vec<_> = argv
            .windows(2)
            .filter(|w| w[0] == "-serial")
            .map(|w| w[1])
            .collect();
        assert_eq!(serials, ["chardev:console", "chardev:status"]);
        for bad in [2, 3] {
            cfg.console_fd = Some(bad);
            assert!(matches!(
                build_argv(OsStr::new("qemu"), &tcg(), &cfg),
                Err(ConfigError::ConsoleFd(_))
            ));
        }
    }

    #[test]
    fn invalid_nic_builds_nothing() {
        let mut cfg = VmConfig::new("i", "n", "/k", "/i", "/q.sock", "/s.log");
        cfg.nics.push(NicConfig {
            tap: "a,b".into(),
            mac: [2, 0, 0, 0, 0, 1],
        });
        assert!(matches!(
            build_argv(OsStr::new(DEFAULT_QEMU_BINARY), &tcg(), &cfg),
            Err(ConfigError::TapName { index: 0, .. })
        ));
    }

    /// The console must never be a file QEMU opens (it would truncate it on
    /// every start), and `-cpu host` must never appear (it fails here).
    #[test]
    fn console_is_stdio_and_no_forbidden_options() {
        let mut cfg = VmConfig::new("i", "n", "/k", "/i", "/q.sock", "/s.log");
        cfg.disks.push(DiskConfig::raw("/d.raw", false));
        let argv = build_argv(
            OsStr::new(DEFAULT_QEMU_BINARY),
            &QemuOptions::new(Accel::Kvm),
            &cfg,
        )
        .expect("valid");
        let all = argv_strings(&argv);
        assert!(!all.iter().any(|a| a.starts_with("file:")));
        assert!(!all.contains(&"-cpu"));
        assert!(!all.contains(&"-daemonize"));
        let serials: Vec<_> = all
            .windows(2)
            .filter(|w| w[0] == "-serial")
            .map(|w| w[1])
            .collect();
        assert_eq!(serials, ["chardev:console", "chardev:status"]);
    }

    #[test]
    fn non_utf8_path_is_passed_through_escaped() {
        let kernel = OsStr::from_bytes(b"/k\xff,1").to_owned();
        let status = OsStr::from_bytes(b"/s\xfe,2.log").to_owned();
        let cfg = VmConfig::new("i", "n", kernel.clone(), "/i", "/q.sock", status);
        let argv = build_argv(OsStr::new(DEFAULT_QEMU_BINARY), &tcg(), &cfg).expect("valid");
        assert!(argv.contains(&kernel), "kernel path verbatim");
        let want = OsStr::from_bytes(b"file,id=status,path=/s\xfe,,2.log,append=on");
        assert!(argv.iter().any(|a| a == want), "status path escaped");
    }

    #[test]
    fn invalid_config_builds_nothing() {
        let mut cfg = VmConfig::new("i", "n", "/k", "/i", "/q.sock", "/s.log");
        cfg.vcpus = 0;
        assert_eq!(
            build_argv(OsStr::new(DEFAULT_QEMU_BINARY), &tcg(), &cfg),
            Err(ConfigError::Vcpus(0))
        );
    }
}
