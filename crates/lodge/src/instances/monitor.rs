//! The bridge from an instance record to a running VMM: builds the VM's
//! generic config, asks the instance's own hypervisor backend for the VMM
//! command line, starts it under a detached monitor, and stops it.
//!
//! The backend is looked up per call from the record's `hypervisor`, so each
//! instance is driven by the hypervisor it was created with. Optional
//! backend features are asked of [`Capabilities`] first.
//!
//! The monitor (`lodge supervise`) is started in its own session so that it,
//! the VMM and the console capture survive the daemon being restarted or
//! killed. Liveness is the monitor's lock on `logs/monitor.lock`, which the
//! kernel releases however the monitor ends, so no pid can go stale.
//!
//! [`Capabilities`]: lodge_hypervisor::Capabilities

#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lodge_hypervisor::{
    Backend, BackendError, Backends, DiskConfig, Feature, Hypervisor, HypervisorKind, NicConfig,
    VirtioSerialChannel, VmConfig,
};

use super::error::{MonitorError, Result};
use super::observe::monitor_alive;
use super::store::{upper_disk, ConsoleKind, Metadata, Paths, VolumeAttachment};
use crate::config::Config;

/// Console on the first serial port; the kernel stays quiet so the console
/// log is the program's output. `no_timer_check`: under software emulation
/// on a busy host the kernel's IO-APIC timer check can miss its window and
/// print "MP-BIOS bug: 8254 timer not connected" (an error-level line that
/// `quiet` lets through) into the user's log; a VM's timer needs no check.
/// `printk.time=1`: every kernel line that does reach the log starts with
/// its `[seconds]` stamp, on any kernel (lodge's own is built without
/// `CONFIG_PRINTK_TIME`), so it is told apart from the program's lines.
/// `page_reporting.page_reporting_order=3`: the balloon hands the host back
/// free blocks from 32 KiB up instead of the pageblock order (4 MiB on the
/// lodge kernel): an idle busybox guest's RAM on the host 47.8 → 40.3–41.6 MiB
/// (scripts/bench-density.sh; order 0 gains no more, 5 and 7 keep 1.5 and
/// 2.5 MiB more). Linux 6.1 overrides the command line when the balloon
/// registers; lodge's guest init writes it back (lodge-guest `init::memory`).
const KERNEL_CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 no_timer_check printk.time=1 page_reporting.page_reporting_order=3";

/// The descriptor on which the monitor hands the VMM the write end of the
/// guest's status channel (`lodge supervise --status-fd`), so the monitor,
/// not the VMM, decides what of it is kept (a bounded `logs/status.log`
/// and `logs/guest-status.json`).
const STATUS_FD: i32 = 3;

/// Hot-plug slots every VM gets at boot: one per volume disk it may have
/// (a volume, or an overlay's upper disk). Fixed, so a VM started again
/// or restored has the same devices.
pub const HOTPLUG_SLOTS: u32 = super::spec::MAX_VOLUMES as u32;

/// The descriptor on which the monitor hands the VMM the write end of the
/// workload's fast console (`lodge supervise --console-fd`), merged by the
/// monitor into `logs/app.log` with the serial console.
const CONSOLE_FD: i32 = 4;

/// Tells lodge's guest init to give the workload the fast console, a
/// virtio-serial port (`lodge_guest::FAST_CONSOLE_FLAG`); the kernel keeps
/// `ttyS0`.
/// Then the operator's `LODGE_KERNEL_ARGS`, last so they win.
fn kernel_cmdline(console: ConsoleKind, extra: &str) -> String {
    let mut cmdline = KERNEL_CMDLINE.to_string();
    if console == ConsoleKind::Virtio {
        cmdline.push(' ');
        cmdline.push_str(lodge_guest::FAST_CONSOLE_FLAG);
    }
    if !extra.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

/// How long a monitor may take to hold its lock and record its child.
const MONITOR_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The uncompressed ELF kernel boots ~2 s faster under TCG (no in-guest
/// decompression; QEMU enters it through PVH); the bzImage is the fallback.
pub fn kernel_image(system_dir: &Path) -> PathBuf {
    let elf = system_dir.join("vmlinux");
    if elf.exists() {
        elf
    } else {
        system_dir.join("vmlinuz")
    }
}

/// Starts monitors and controls the VMMs under them.
pub struct Launcher {
    cfg: Arc<Config>,
    backends: Backends,
}

impl Launcher {
    pub fn new(cfg: Arc<Config>, backends: Backends) -> Self {
        Launcher { cfg, backends }
    }

    /// The backend driving instances of `kind`, or
    /// [`BackendError::Unavailable`] when this build has none.
    pub fn backend(&self, kind: HypervisorKind) -> Result<Backend, BackendError> {
        self.backends.get(kind)
    }

    /// The generic VM description of an instance. An instance on the
    /// default network gets one NIC on its TAP (made by the caller before
    /// the VMM starts); one without gets no network device at all.
    pub fn vm_config(
        &self,
        backend: &Backend,
        paths: &Paths,
        meta: &Metadata,
    ) -> Result<VmConfig, lodge_net::NetError> {
        let caps = backend.capabilities();
        let nics = match &meta.network {
            Some(rec) => vec![NicConfig {
                tap: lodge_net::tap_name(&meta.id)?.to_string(),
                mac: rec.mac()?.octets(),
            }],
            None => Vec::new(),
        };
        let mut disks = vec![
            DiskConfig::raw(
                meta.root_disk.clone().unwrap_or_else(|| paths.rootfs()),
                true,
            )
            .with_serial(lodge_guest::SERIAL_ROOT),
            DiskConfig::raw(paths.overlay(), false).with_serial(lodge_guest::SERIAL_OVERLAY),
            DiskConfig::raw(paths.config_disk(), true).with_serial(lodge_guest::SERIAL_CONFIG),
        ];
        for v in &meta.volumes {
            disks.extend(self.volume_disks(paths, v));
        }
        Ok(VmConfig {
            id: meta.id.clone(),
            name: meta.name.clone(),
            vcpus: meta.vcpus,
            memory_bytes: meta.memory_bytes,
            kernel: kernel_image(&self.cfg.system_dir),
            initrd: self.cfg.system_dir.join("initrd.img"),
            cmdline: kernel_cmdline(meta.console, &self.cfg.kernel_args),
            disks,
            control_socket: paths.control_socket(),
            // Unused while `status_fd` is set; kept valid for the config.
            status_file: paths.status_file(),
            status_fd: Some(STATUS_FD),
            console_fd: (meta.console == ConsoleKind::Virtio).then_some(CONSOLE_FD),
            // The guest agent's transport; without it the VM still runs,
            // and exec/cp are refused (see `Manager::agent_endpoint`).
            agent_channel: caps.virtio_serial.then(|| VirtioSerialChannel {
                socket: paths.agent_socket(),
                port_name: lodge_guest::agent::AGENT_PORT.to_string(),
            }),
            nics,
            hotplug_slots: HOTPLUG_SLOTS,
            balloon: meta.balloon,
            disk_bps: meta.disk_io_bps,
            memory_file: meta
                .standby
                .ram_file
                .then(|| paths.dir.join(super::store::RAM_FILE)),
        })
    }

    /// The disks of one volume attachment, each in its hot-plug slot: the
    /// volume's own (read-only unless attached read-write), and an
    /// overlay's upper disk in the instance directory.
    pub fn volume_disks(&self, paths: &Paths, v: &VolumeAttachment) -> Vec<DiskConfig> {
        let data = self
            .cfg
            .paths()
            .volumes()
            .join(&v.volume_id)
            .join(lodge_volumes::store::DATA);
        let mut out = vec![DiskConfig::raw(data, v.readonly || v.overlay)
            .with_serial(lodge_guest::serial_for_slot(v.slot))
            .with_slot(v.slot)];
        if let Some(up) = v.upper_slot {
            out.push(
                DiskConfig::raw(upper_disk(paths, up), false)
                    .with_serial(lodge_guest::serial_for_slot(up))
                    .with_slot(up),
            );
        }
        out
    }

    /// Fails unless the instance's backend can reach a guest agent.
    pub fn require_agent(&self, meta: &Metadata) -> Result<()> {
        let backend = self.backend(meta.hypervisor)?;
        backend
            .capabilities()
            .require(backend.kind(), Feature::VirtioSerial)?;
        Ok(())
    }

    /// Starts `lodge supervise … -- <vmm argv>` detached and waits until the
    /// monitor holds its lock (so a follower attached right after sees it).
    pub async fn start(&self, paths: &Paths, meta: &Metadata) -> Result<()> {
        let backend = self.backend(meta.hypervisor)?;
        let vm = self.vm_config(&backend, paths, meta)?;
        let argv = backend.vmm_command(&vm)?;
        self.spawn_monitor(paths, &vm, argv).await
    }

    /// [`Launcher::start`] with the VMM waiting for a saved state instead
    /// of booting (the backend's `restore_command`); its console appends
    /// to the same logs.
    pub async fn start_restore(&self, paths: &Paths, meta: &Metadata) -> Result<()> {
        let backend = self.backend(meta.hypervisor)?;
        let vm = self.vm_config(&backend, paths, meta)?;
        let argv = backend.restore_command(&vm)?;
        self.spawn_monitor(paths, &vm, argv).await
    }

    async fn spawn_monitor(&self, paths: &Paths, vm: &VmConfig, argv: Vec<OsString>) -> Result<()> {
        let mut cmd = std::process::Command::new(&self.cfg.lodge_exe);
        cmd.arg("supervise")
            .arg("--log-dir")
            .arg(paths.logs())
            .arg("--max-size")
            .arg(self.cfg.log_max_size.to_string())
            .arg("--max-files")
            .arg(self.cfg.log_max_files.to_string())
            .arg("--status-fd")
            .arg(STATUS_FD.to_string());
        if let Some(fd) = vm.console_fd {
            cmd.arg("--console-fd").arg(fd.to_string());
        }
        cmd.arg("--").args(argv.iter().map(OsString::as_os_str));
        let stderr = File::create(paths.monitor_stderr()).map_err(MonitorError::ErrorFile)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .current_dir(&paths.dir);
        // SAFETY: setsid is async-signal-safe and touches no memory; it only
        // detaches the child into its own session before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(MonitorError::Spawn)?;
        let deadline = Instant::now() + MONITOR_START_TIMEOUT;
        loop {
            if monitor_alive(&paths.logs())
                && paths.logs().join(lodge_monitor::MONITOR_JSON).exists()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let msg = std::fs::read_to_string(paths.monitor_stderr()).unwrap_or_default();
                return Err(MonitorError::ExitedAtOnce {
                    status,
                    stderr: msg.trim().to_string(),
                }
                .into());
            }
            if Instant::now() > deadline {
                return Err(MonitorError::StartTimeout.into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Reap the monitor when it ends, as long as this daemon lives.
        tokio::spawn(async move {
            if let Err(e) = child.wait().await {
                tracing::warn!("reaping a monitor: {e}");
            }
        });
        Ok(())
    }

    /// Graceful power-down, then force after `timeout`. Returns whether the
    /// graceful path was enough. A backend without graceful shutdown goes
    /// straight to force.
    pub async fn stop(&self, paths: &Paths, meta: &Metadata, timeout: Duration) -> Result<bool> {
        let logs = paths.logs();
        if !monitor_alive(&logs) {
            return Ok(true);
        }
        let backend = self.backend(meta.hypervisor)?;
        if !backend.capabilities().has(Feature::GracefulShutdown) {
            self.force_stop(paths, meta).await?;
            return Ok(false);
        }
        let vm = self.vm_config(&backend, paths, meta)?;
        // A power-button press is lost if it lands before the guest watches
        // the button, so press again every second until the deadline.
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Err(e) = backend.shutdown(&vm).await {
                if e.vmm_gone() {
                    break;
                }
                tracing::warn!("graceful stop of {}: {e}", meta.id);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if wait_monitor_exit(&logs, left.min(Duration::from_secs(1))).await {
                return Ok(true);
            }
        }
        if wait_monitor_exit(&logs, Duration::from_millis(500)).await {
            return Ok(true);
        }
        self.force_stop(paths, meta).await?;
        Ok(false)
    }

    /// Ends the VMM at once: the backend's force stop, then SIGKILL of the
    /// VMM process.
    pub async fn force_stop(&self, paths: &Paths, meta: &Metadata) -> Result<()> {
        let logs = paths.logs();
        if !monitor_alive(&logs) {
            return Ok(());
        }
        match self.backend(meta.hypervisor) {
            Ok(backend) => match self.vm_config(&backend, paths, meta) {
                Ok(vm) => {
                    if let Err(e) = backend.force_stop(&vm).await {
                        if !e.vmm_gone() {
                            tracing::warn!("force stop of {}: {e}", meta.id);
                        }
                    }
                }
                // Killing the process below needs no config.
                Err(e) => tracing::warn!("force stop of {}: {e}", meta.id),
            },
            // Killing the process below needs no backend.
            Err(e) => tracing::warn!("force stop of {}: {e}", meta.id),
        }
        if wait_monitor_exit(&logs, Duration::from_secs(5)).await {
            return Ok(());
        }
        if let Some(pid) = child_pid(&logs) {
            // SAFETY: plain syscall on a pid read from the monitor's record.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if wait_monitor_exit(&logs, Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(MonitorError::VmmDidNotStop.into())
        }
    }
}

/// The VMM's pid from the monitor's record, if there is a readable one.
fn child_pid(log_dir: &Path) -> Option<i32> {
    match lodge_monitor::read_monitor_info(log_dir) {
        Ok(info) => info.and_then(|i| i32::try_from(i.child_pid).ok()),
        Err(e) => {
            tracing::warn!("reading the monitor record in {}: {e}", log_dir.display());
            None
        }
    }
}

async fn wait_monitor_exit(log_dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !monitor_alive(log_dir) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !monitor_alive(log_dir)
}

#[cfg(test)]
mod tests {
    /// The host names the fast console's port and the guest looks it up by
    /// that name: the two crates must agree.
    #[test]
    fn host_and_guest_agree_on_the_fast_console_port() {
        assert_eq!(
            lodge_hypervisor::qemu::args::FAST_CONSOLE_PORT,
            lodge_guest::FAST_CONSOLE_PORT
        );
    }
}
