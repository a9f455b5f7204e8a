//! Daemon configuration, read once from the environment at the edge.
//!
//! Everything lodge needs to know about the host lives here as typed values;
//! the rest of the code never looks at environment variables itself.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lodge_common::paths::Paths;
use serde::{Deserialize, Serialize};

/// Where the daemon keeps its state and listens.
#[derive(Debug, Clone)]
pub struct Config {
    /// Root of all state: `guests/<id>/` per instance, the JWT secret, caches.
    pub data_dir: PathBuf,
    /// Kernel, initrd and the demo rootfs built by `scripts/build-guest.sh`.
    pub system_dir: PathBuf,
    pub listen: SocketAddr,
    /// The `lodge` executable started as each VM's monitor.
    pub lodge_exe: PathBuf,
    pub qemu_binary: PathBuf,
    /// `LODGE_CH_BINARY`: the Cloud Hypervisor binary; when unset,
    /// `cloud-hypervisor` is looked up on `PATH` (`path`).
    pub ch_binary: Option<PathBuf>,
    /// The daemon's `PATH`, where an unconfigured Cloud Hypervisor is
    /// looked for.
    pub path: Option<std::ffi::OsString>,
    /// Rotation policy for each instance's logs.
    pub log_max_size: u64,
    pub log_max_files: usize,
    /// The default network to set up, or `None` when networking is off
    /// (`LODGE_NETWORK=off`, or not root and not asked for).
    pub network: Option<lodge_net::NetConfig>,
    /// `LODGE_BENCH_ENDPOINTS=1`: serve the benchmark-only agent throughput
    /// route (`scripts/bench-exec.sh`). Off by default.
    pub bench_endpoints: bool,
    /// Guest RAM in a shared file in the instance directory, so standby
    /// saves only the devices and restore maps memory back lazily
    /// (`LODGE_MEMORY_FILE=off`: anonymous RAM, standby streams it all).
    pub memory_file: bool,
    /// `LODGE_CONSOLE`: where new instances' workloads write (`virtio`, the
    /// default: a fast virtio console; `serial`: the UART only).
    pub console: ConsoleKind,
    /// `LODGE_KERNEL_ARGS`: appended to every guest kernel command line
    /// (e.g. `loglevel=7` to see the kernel's boot lines in the console
    /// log despite `quiet`). Empty by default.
    pub kernel_args: String,
    /// `LODGE_TCG_TB_SIZE`: TCG's translation cache per VM, in MiB (a size
    /// such as `16MiB`, default 16; `qemu` leaves QEMU's own, 1 GiB in
    /// 7.2). Unused under KVM. See `lodge_hypervisor::QemuOptions`.
    pub tcg_tb_size_mib: Option<u32>,
}

/// The console the workload writes to. Both end up in `logs/app.log`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleKind {
    /// The UART (`ttyS0`) only, like the kernel.
    #[default]
    Serial,
    /// A virtio-serial port for the workload's output (the fast console);
    /// the kernel and lodge's init keep the UART.
    Virtio,
}

pub const DEFAULT_DATA_DIR: &str = "/var/lib/lodge";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Config {
    pub fn from_env() -> Result<Self> {
        let data_dir = data_dir_from_env();
        let system_dir = std::env::var_os("LODGE_SYSTEM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Paths::new(DEFAULT_DATA_DIR).system_dir());
        let listen = std::env::var("LODGE_LISTEN").unwrap_or_else(|_| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!("LODGE_LISTEN {listen:?} is not an address like 127.0.0.1:8080")
        })?;
        let lodge_exe = std::env::current_exe().context("cannot locate the lodge executable")?;
        let qemu_binary = std::env::var_os("LODGE_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let ch_binary = std::env::var_os("LODGE_CH_BINARY")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let path = std::env::var_os("PATH");
        let log_max_size = log_max_size_from(std::env::var("LODGE_LOG_MAX_SIZE").ok().as_deref())?;
        let log_max_files = match std::env::var("LODGE_LOG_MAX_FILES") {
            Ok(s) => s
                .parse()
                .with_context(|| format!("LODGE_LOG_MAX_FILES {s:?}"))?,
            Err(_) => 5,
        };
        let network = network_from(
            std::env::var("LODGE_NETWORK").ok().as_deref(),
            is_root(),
            lodge_net::NetConfig::from_env,
        )?;
        let bench_endpoints = matches!(
            std::env::var("LODGE_BENCH_ENDPOINTS").ok().as_deref(),
            Some("1" | "true" | "yes")
        );
        let console = console_from(std::env::var("LODGE_CONSOLE").ok().as_deref())?;
        let kernel_args = std::env::var("LODGE_KERNEL_ARGS").unwrap_or_default();
        if kernel_args.contains(['\0', '\n', '\r']) {
            bail!("LODGE_KERNEL_ARGS must be one line");
        }
        let memory_file = match std::env::var("LODGE_MEMORY_FILE").as_deref() {
            Ok("off") | Ok("0") | Ok("false") => false,
            Ok("on") | Ok("1") | Ok("true") | Ok("") | Err(_) => true,
            Ok(other) => anyhow::bail!("LODGE_MEMORY_FILE {other:?}: expected on or off"),
        };
        let tcg_tb_size_mib = tcg_tb_size_from(std::env::var("LODGE_TCG_TB_SIZE").ok().as_deref())?;
        Ok(Config {
            kernel_args: kernel_args.trim().to_string(),
            tcg_tb_size_mib,
            console,
            bench_endpoints,
            memory_file,
            network,
            data_dir,
            system_dir,
            listen,
            lodge_exe,
            qemu_binary,
            ch_binary,
            path,
            log_max_size,
            log_max_files,
        })
    }

    /// Every path under the data dir.
    pub fn paths(&self) -> Paths {
        Paths::new(&self.data_dir)
    }

    pub fn guests_dir(&self) -> PathBuf {
        self.paths().guests_dir()
    }
}

/// `LODGE_CONSOLE`: `virtio` (unset, also `hvc`/`fast`) or `serial`
/// (also `ttyS0`/`uart`).
pub fn console_from(value: Option<&str>) -> Result<ConsoleKind> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "virtio" | "hvc" | "hvc0" | "fast") => Ok(ConsoleKind::Virtio),
        Some("serial" | "ttys0" | "uart") => Ok(ConsoleKind::Serial),
        Some(other) => bail!("LODGE_CONSOLE {other:?}: expected virtio or serial"),
    }
}

/// The largest translation cache QEMU accepts on an x86-64 host, in MiB.
const MAX_TCG_TB_SIZE_MIB: u64 = 2048;

/// `LODGE_TCG_TB_SIZE`: unset or empty for lodge's default, `qemu` for
/// QEMU's own, else a whole number of MiB in lodge-common's size syntax
/// (`16MiB`, `32M`), 1 MiB to 2 GiB.
pub fn tcg_tb_size_from(value: Option<&str>) -> Result<Option<u32>> {
    let value = match value.map(str::trim) {
        None | Some("") => return Ok(Some(lodge_hypervisor::DEFAULT_TCG_TB_SIZE_MIB)),
        Some(v) if v.eq_ignore_ascii_case("qemu") => return Ok(None),
        Some(v) => v,
    };
    let bytes = lodge_common::size::parse_size(value).with_context(|| {
        format!("LODGE_TCG_TB_SIZE {value:?}: expected a size like 16MiB, or qemu")
    })?;
    let mib = bytes >> 20;
    if bytes & ((1 << 20) - 1) != 0 || !(1..=MAX_TCG_TB_SIZE_MIB).contains(&mib) {
        bail!("LODGE_TCG_TB_SIZE {value:?}: expected whole MiB from 1MiB to 2GiB, or qemu");
    }
    Ok(Some(mib as u32))
}

/// `LODGE_LOG_MAX_SIZE` (unset: 50MiB), in lodge-common's size syntax.
pub fn log_max_size_from(value: Option<&str>) -> Result<u64> {
    match value {
        Some(s) => Ok(lodge_common::size::parse_size(s)
            .with_context(|| format!("LODGE_LOG_MAX_SIZE {s:?}"))?),
        None => Ok(50 << 20),
    }
}

/// `LODGE_NETWORK`: `on`/`off` (also `1`/`0`, `true`/`false`, `yes`/`no`).
/// Unset means on for root and off otherwise (creating bridges and TAPs
/// needs root, and a non-root daemon ran without a network before). Asking
/// for it without root is refused at once rather than failing half-way.
/// The network variables (`LODGE_BRIDGE`, `LODGE_SUBNET`, …) are only read,
/// and validated, when networking is on.
pub fn network_from(
    value: Option<&str>,
    root: bool,
    read: impl FnOnce() -> Result<lodge_net::NetConfig, lodge_net::NetError>,
) -> Result<Option<lodge_net::NetConfig>> {
    let on = match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => root,
        Some("on" | "1" | "true" | "yes") => {
            if !root {
                bail!("networking needs root; set LODGE_NETWORK=off");
            }
            true
        }
        Some("off" | "0" | "false" | "no") => false,
        Some(other) => bail!("LODGE_NETWORK {other:?}: expected on or off"),
    };
    if !on {
        return Ok(None);
    }
    Ok(Some(read().context("the default network's settings")?))
}

/// Whether the daemon runs as root (effective uid 0).
#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `LODGE_DATA_DIR` or the default; shared by the daemon and `lodge token`.
pub fn data_dir_from_env() -> PathBuf {
    std::env::var_os("LODGE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tcg_tb_size_from_env() {
        let default = Some(lodge_hypervisor::DEFAULT_TCG_TB_SIZE_MIB);
        assert_eq!(tcg_tb_size_from(None).expect("valid"), default);
        assert_eq!(tcg_tb_size_from(Some(" ")).expect("valid"), default);
        assert_eq!(tcg_tb_size_from(Some("QEMU")).expect("valid"), None);
        assert_eq!(tcg_tb_size_from(Some("32MiB")).expect("valid"), Some(32));
        assert_eq!(tcg_tb_size_from(Some("1G")).expect("valid"), Some(1024));
        for bad in ["0", "512KiB", "1.5MiB", "3GiB", "lots"] {
            assert!(tcg_tb_size_from(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn console_kind_from_env() {
        assert_eq!(console_from(None).expect("valid"), ConsoleKind::Virtio);
        assert_eq!(
            console_from(Some("virtio")).expect("valid"),
            ConsoleKind::Virtio
        );
        assert_eq!(
            console_from(Some(" Serial ")).expect("valid"),
            ConsoleKind::Serial
        );
        assert_eq!(
            console_from(Some("ttyS0")).expect("valid"),
            ConsoleKind::Serial
        );
        assert!(console_from(Some("vga")).is_err());
    }

    use super::*;

    #[test]
    fn network_switch() {
        let ok = || Ok(lodge_net::NetConfig::default());
        let bad = || {
            "10.0.0.0/33"
                .parse::<lodge_net::Subnet>()
                .map(|_| lodge_net::NetConfig::default())
        };
        // Default: on for root, off otherwise.
        assert!(network_from(None, true, ok).expect("root").is_some());
        assert!(network_from(None, false, ok).expect("user").is_none());
        assert!(network_from(Some(""), true, ok).expect("empty").is_some());
        for off in ["off", "0", "false", "OFF", " no "] {
            assert!(network_from(Some(off), true, ok).expect(off).is_none());
            // Off never reads (or validates) the other variables.
            assert!(network_from(Some(off), true, bad).expect(off).is_none());
        }
        assert!(network_from(Some("on"), true, ok).expect("on").is_some());
        let err = network_from(Some("on"), false, ok).expect_err("not root");
        assert_eq!(
            err.to_string(),
            "networking needs root; set LODGE_NETWORK=off"
        );
        let err = network_from(Some("maybe"), true, ok).expect_err("bad value");
        assert!(err.to_string().contains("expected on or off"), "{err}");
        let err = network_from(None, true, bad).expect_err("bad subnet");
        assert!(format!("{err:#}").contains("invalid subnet"), "{err:#}");
    }
}
