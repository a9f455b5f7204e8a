//! The Cloud Hypervisor command line as pure data: a validated
//! [`VmConfig`] in, the whole argv (binary first) out, so tests compare it
//! element by element.
//!
//! The VM is described entirely on the command line, so Cloud Hypervisor
//! creates and boots it as it starts: there is no moment in which a VMM
//! runs with a created-but-not-booted VM waiting for a daemon that may have
//! died. The REST socket (`--api-socket`) is for control only.
//!
//! The console is the VMM's stdout (`--serial tty`), exactly as QEMU's is:
//! lodge's monitor starts the VMM with stdout on a pipe it owns and is the
//! only writer of `app.log`. Cloud Hypervisor never opens the log itself
//! (its `file=` mode truncates and leaves NUL holes under an outside
//! truncate) and never listens on a console socket that drops output while
//! nobody is connected (`socket=`). Its stdin is `/dev/null` (the monitor's
//! choice), so it reads no console input. `earlyprintk=ttyS0` is appended
//! to the kernel command line so the kernel's first lines reach the same
//! pipe. The workload's fast console (`console_fd`) is the virtio console
//! (`hvc0`) written to the inherited descriptor.
//!
//! Cloud Hypervisor's option values are comma-separated `key=value` lists
//! in which a value may be double-quoted to hold commas, brackets and `=`
//! (a quote inside is written twice). Every path and serial lodge passes
//! in such a list is quoted ([`quote`]); paths that are not UTF-8 cannot
//! be passed at all and are refused ([`ConfigError::Unrepresentable`]).
//! `--kernel`, `--initramfs` and `--cmdline` take their whole argument
//! verbatim.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::config::{ConfigError, DiskFormat, VmConfig};

/// The default Cloud Hypervisor binary, looked up on `PATH`.
pub const DEFAULT_CH_BINARY: &str = "cloud-hypervisor";

/// Appended to the kernel command line: the kernel's early console on the
/// UART, so its first lines reach `app.log` before the real console starts.
pub const EARLY_CONSOLE: &str = "earlyprintk=ttyS0";

/// Device id of the disk in hot-plug slot `slot` (same name as QEMU's).
pub fn slot_device(slot: u32) -> String {
    format!("lodge-slot{slot}-dev")
}

/// The full argv for `cfg`, `binary` first.
pub fn build_argv(binary: &OsStr, cfg: &VmConfig) -> Result<Vec<OsString>, ConfigError> {
    cfg.validate()?;
    let mut argv: Vec<OsString> = vec![binary.to_owned()];
    let mut push = |flag: &str, value: OsString| {
        argv.push(flag.into());
        argv.push(value);
    };

    push(
        "--api-socket",
        kv("path", &quote("control socket", &cfg.control_socket)?),
    );
    push("--kernel", cfg.kernel.clone().into_os_string());
    push("--initramfs", cfg.initrd.clone().into_os_string());
    let cmdline = if cfg.cmdline.is_empty() {
        EARLY_CONSOLE.to_string()
    } else {
        format!("{} {EARLY_CONSOLE}", cfg.cmdline)
    };
    push("--cmdline", cmdline.into());
    push("--cpus", format!("boot={}", cfg.vcpus).into());
    push("--memory", format!("size={}M", cfg.memory_mib()).into());

    for (index, disk) in cfg.disks.iter().enumerate() {
        if disk.format != DiskFormat::Raw {
            return Err(ConfigError::Unrepresentable {
                what: "disk image format (only raw)",
                value: format!("disk {index}"),
            });
        }
        let mut v = kv("path", &quote("disk path", &disk.path)?);
        v.push(if disk.read_only {
            ",readonly=on"
        } else {
            ",readonly=off"
        });
        v.push(",image_type=raw");
        if let Some(serial) = &disk.serial {
            v.push(",serial=");
            v.push(quote("disk serial", Path::new(serial))?);
        }
        if let Some(slot) = disk.slot {
            v.push(format!(",id={}", slot_device(slot)));
        }
        if let Some(bps) = cfg.disk_bps {
            // A token bucket of one second's bytes, refilled every second.
            v.push(format!(",bw_size={bps},bw_refill_time=1000"));
        }
        push("--disk", v);
    }

    for nic in &cfg.nics {
        push(
            "--net",
            format!("tap={},mac={}", nic.tap, nic.mac_string()).into(),
        );
    }

    push("--serial", "tty".into());
    push(
        "--console",
        match cfg.console_fd {
            // The kernel resolves /dev/fd/N to the inherited pipe itself.
            Some(fd) => format!("file=/dev/fd/{fd}").into(),
            None => "off".into(),
        },
    );

    if cfg.balloon {
        // Starts empty; `vm.resize` with `desired_balloon` inflates it.
        push("--balloon", "size=0,deflate_on_oom=on".into());
    }
    Ok(argv)
}

/// `key=value`.
fn kv(key: &str, value: &str) -> OsString {
    let mut s = OsString::from(key);
    s.push("=");
    s.push(value);
    s
}

/// `value` double-quoted for an option list, a quote inside doubled;
/// refused if it is not UTF-8 (Cloud Hypervisor parses options as text).
pub fn quote(what: &'static str, value: &Path) -> Result<String, ConfigError> {
    let text = value.to_str().ok_or_else(|| ConfigError::Unrepresentable {
        what,
        value: value.display().to_string(),
    })?;
    Ok(format!("\"{}\"", text.replace('"', "\"\"")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, NicConfig, MIB};

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn base() -> VmConfig {
        let mut cfg = VmConfig::new(
            "i1",
            "web",
            "/sys/vmlinux",
            "/sys/initrd.img",
            "/g/i1/ch.sock",
            "/g/i1/status.log",
        );
        cfg.cmdline = "console=ttyS0 quiet".into();
        cfg.vcpus = 2;
        cfg.memory_bytes = 512 * MIB;
        cfg
    }

    #[test]
    fn minimal_vm_boots_from_the_command_line_with_the_console_on_stdout() {
        let argv = strings(&build_argv(OsStr::new("/opt/ch"), &base()).expect("valid"));
        assert_eq!(
            argv,
            [
                "/opt/ch",
                "--api-socket",
                "path=\"/g/i1/ch.sock\"",
                "--kernel",
                "/sys/vmlinux",
                "--initramfs",
                "/sys/initrd.img",
                "--cmdline",
                "console=ttyS0 quiet earlyprintk=ttyS0",
                "--cpus",
                "boot=2",
                "--memory",
                "size=512M",
                "--serial",
                "tty",
                "--console",
                "off",
            ]
        );
    }

    #[test]
    fn disks_nics_fast_console_and_balloon() {
        let mut cfg = base();
        cfg.disks = vec![
            DiskConfig::raw("/g/i1/rootfs.ext4", true).with_serial("lodge-root"),
            DiskConfig::raw("/v/data", false)
                .with_serial("lodge-vol0")
                .with_slot(0),
        ];
        cfg.hotplug_slots = 1;
        cfg.nics = vec![NicConfig {
            tap: "lodge-t1".into(),
            mac: [0x02, 0, 0, 0, 0, 0x0a],
        }];
        cfg.console_fd = Some(4);
        cfg.status_fd = Some(3);
        cfg.balloon = true;
        cfg.disk_bps = Some(1_000_000);
        let argv = strings(&build_argv(OsStr::new("ch"), &cfg).expect("valid"));
        let values = |flag: &str| -> Vec<String> {
            argv.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].clone())
                .collect()
        };
        assert_eq!(
            values("--disk"),
            [
                "path=\"/g/i1/rootfs.ext4\",readonly=on,image_type=raw,serial=\"lodge-root\",\
                 bw_size=1000000,bw_refill_time=1000",
                "path=\"/v/data\",readonly=off,image_type=raw,serial=\"lodge-vol0\",\
                 id=lodge-slot0-dev,bw_size=1000000,bw_refill_time=1000",
            ]
        );
        assert_eq!(values("--net"), ["tap=lodge-t1,mac=02:00:00:00:00:0a"]);
        assert_eq!(values("--console"), ["file=/dev/fd/4"]);
        assert_eq!(values("--serial"), ["tty"]);
        assert_eq!(values("--balloon"), ["size=0,deflate_on_oom=on"]);
    }

    #[test]
    fn paths_with_commas_and_quotes_are_quoted_and_non_utf8_is_refused() {
        let mut cfg = base();
        cfg.control_socket = "/data/my vms,2/g/qmp.sock".into();
        cfg.disks = vec![DiskConfig::raw("/g/a,readonly=off \"x\"", true)];
        let argv = strings(&build_argv(OsStr::new("ch"), &cfg).expect("valid"));
        assert!(argv.contains(&"path=\"/data/my vms,2/g/qmp.sock\"".to_string()));
        assert!(
            argv.contains(
                &"path=\"/g/a,readonly=off \"\"x\"\"\",readonly=on,image_type=raw".to_string()
            ),
            "{argv:?}"
        );
        use std::os::unix::ffi::OsStrExt;
        cfg.disks = vec![DiskConfig::raw(OsStr::from_bytes(b"/g/\xff"), true)];
        let err = build_argv(OsStr::new("ch"), &cfg).expect_err("not utf-8");
        assert!(
            matches!(
                err,
                ConfigError::Unrepresentable {
                    what: "disk path",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_configs_are_refused_before_anything_is_built() {
        let mut cfg = base();
        cfg.vcpus = 0;
        assert!(build_argv(OsStr::new("ch"), &cfg).is_err());
    }
}
