//! The guest kernel has what lodge's guest relies on (issue 11, item 1):
//! one VM reports from inside what its kernel offers, and the test checks
//! it. The file systems lodge-init mounts (ext4, overlay, erofs, tmpfs,
//! devtmpfs, devpts) are in `/proc/filesystems`; the virtio devices QEMU
//! gives every VM are bound to their drivers (disks, the agent channel and
//! fast console, the balloon); the PCIe ports that take hot-plugged volumes
//! have their port driver; the ACPI power button is an input device (the
//! graceful stop). With the lodge kernel (`kernel-flavor` in the system
//! dir, see scripts/build-guest.sh) nothing is loaded as a module: the
//! kernel has no module support at all and the initrd carries no
//! module order file. One VM serves every check (CI time).

mod common;

use std::time::Duration;

use common::{busybox_rootfs, system_dir, Daemon};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

/// Prints one `key: value` line per fact the test checks.
const PROBE: &str = r#"
echo "release: $(uname -r)"
echo "filesystems: $(awk '{print $NF}' /proc/filesystems | sort -u | tr '\n' ' ')"
drivers=""
for d in /sys/bus/virtio/devices/*; do
  drivers="$drivers $(basename "$(readlink "$d/driver")")"
done
echo "virtio drivers:$drivers"
echo "pcieport: $(ls /sys/bus/pci/drivers/pcieport 2>/dev/null | grep -c '^0000:')"
echo "inputs: $(cat /sys/class/input/*/name 2>/dev/null | tr '\n' ',')"
echo "printk time: $(cat /sys/module/printk/parameters/time 2>/dev/null)"
if [ -e /proc/modules ]; then echo "modules: $(wc -l < /proc/modules)"; else echo "modules: unsupported"; fi
if [ -e /proc/sys/kernel/modprobe ]; then echo "modprobe: present"; else echo "modprobe: absent"; fi
"#;

fn field<'a>(lines: &'a [String], key: &str) -> &'a str {
    let prefix = format!("{key}:");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} line in the guest's output: {lines:#?}"))
}

#[test]
fn the_guest_kernel_has_every_feature_lodge_relies_on() {
    require_guest!();
    let flavor = std::fs::read_to_string(system_dir().join("kernel-flavor"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "debian".to_string());
    let d = Daemon::start();
    let inst = d.create(json!({
        "name": "kernel-probe",
        "rootfs": busybox_rootfs(),
        "vcpus": 1,
        "size": "256MB",
        "overlay_size": "64MB",
        "cmd": ["sh", "-c", PROBE],
    }));
    let id = inst["id"].as_str().expect("id").to_string();
    let stopped = d.wait_state(&id, "Stopped", BOOT);
    assert_eq!(stopped["exit_code"], 0, "{stopped}");
    let lines = d.log_lines(&id, "tail=100");

    let filesystems: Vec<&str> = field(&lines, "filesystems").split_whitespace().collect();
    for fs in [
        "ext4", "overlay", "erofs", "tmpfs", "devtmpfs", "devpts", "proc", "sysfs",
    ] {
        assert!(
            filesystems.contains(&fs),
            "{fs} missing from /proc/filesystems: {filesystems:?}"
        );
    }

    let drivers: Vec<&str> = field(&lines, "virtio drivers").split_whitespace().collect();
    // The root, overlay and config disks; the agent channel and the fast
    // console (two virtio-serial buses); the balloon.
    assert_eq!(
        drivers.iter().filter(|d| **d == "virtio_blk").count(),
        3,
        "{drivers:?}"
    );
    assert_eq!(
        drivers.iter().filter(|d| **d == "virtio_console").count(),
        2,
        "{drivers:?}"
    );
    assert!(drivers.contains(&"virtio_balloon"), "{drivers:?}");

    let ports: u32 = field(&lines, "pcieport").parse().expect("a count");
    assert!(
        ports >= 1,
        "no PCIe port bound to pcieport: volumes could not be hot-plugged"
    );
    // Kernel lines in the console log carry their `[seconds]` stamp, which
    // tells them apart from the program's lines.
    assert_eq!(field(&lines, "printk time"), "Y", "{lines:#?}");
    assert!(
        field(&lines, "inputs").contains("Power Button"),
        "no ACPI power button input: {}",
        field(&lines, "inputs")
    );

    if flavor == "lodge" {
        let release = field(&lines, "release");
        assert!(
            release.ends_with("-lodge"),
            "kernel-flavor says lodge but the guest runs {release}"
        );
        assert_eq!(field(&lines, "modules"), "unsupported", "{lines:#?}");
        assert_eq!(field(&lines, "modprobe"), "absent", "{lines:#?}");
        // The initrd's file names (lodge-init itself names the order file,
        // so its bytes alone prove nothing).
        let listing = std::process::Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(std::fs::File::open(system_dir().join("initrd.img")).expect("open initrd.img"))
            .output()
            .expect("cpio -it");
        assert!(listing.status.success(), "cpio -it: {listing:?}");
        let names = String::from_utf8_lossy(&listing.stdout);
        assert!(
            names.lines().any(|n| n.trim_start_matches("./") == "init"),
            "{names}"
        );
        assert!(
            !names.contains("lib/modules"),
            "the lodge kernel's initrd must carry no modules:\n{names}"
        );
    } else {
        eprintln!("kernel-flavor {flavor}: the no-modules checks apply to the lodge kernel only");
    }
}
