//! Daemon configuration, read once from the environment at the edge.
//!
//! Everything lodge needs to know about the host lives here as typed values;
//! the rest of the code never looks at environment variables itself.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use lodge_common::paths::Paths;

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
    /// Rotation policy for each instance's logs.
    pub log_max_size: u64,
    pub log_max_files: usize,
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
        let log_max_size = log_max_size_from(std::env::var("LODGE_LOG_MAX_SIZE").ok().as_deref())?;
        let log_max_files = match std::env::var("LODGE_LOG_MAX_FILES") {
            Ok(s) => s
                .parse()
                .with_context(|| format!("LODGE_LOG_MAX_FILES {s:?}"))?,
            Err(_) => 5,
        };
        Ok(Config {
            data_dir,
            system_dir,
            listen,
            lodge_exe,
            qemu_binary,
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

/// `LODGE_LOG_MAX_SIZE` (unset: 50MiB), in lodge-common's size syntax.
pub fn log_max_size_from(value: Option<&str>) -> Result<u64> {
    match value {
        Some(s) => Ok(lodge_common::size::parse_size(s)
            .with_context(|| format!("LODGE_LOG_MAX_SIZE {s:?}"))?),
        None => Ok(50 << 20),
    }
}

/// `LODGE_DATA_DIR` or the default; shared by the daemon and `lodge token`.
pub fn data_dir_from_env() -> PathBuf {
    std::env::var_os("LODGE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}
