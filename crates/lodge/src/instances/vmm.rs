//! The bridge from an instance record to a running VMM: builds the
//! hypervisor's command line, starts it under a detached monitor, and stops it.
//!
//! The monitor (`lodge supervise`) is started in its own session so that it,
//! the VMM and the console capture survive the daemon being restarted or
//! killed. Liveness is the monitor's lock on `logs/monitor.lock`, which the
//! kernel releases however the monitor ends, so no pid can go stale.

#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lodge_hypervisor::{Accel, Backend, Hypervisor, QemuBackend};

use super::state::GuestProgress;
use super::store::{Metadata, Paths};
use super::Error;
use crate::config::Config;

/// Whether a monitor currently owns the log directory (an unreadable lock
/// counts as no monitor: nothing can be controlled through it anyway).
pub fn monitor_alive(log_dir: &Path) -> bool {
    lodge_logs::monitor_alive(log_dir).unwrap_or(false)
}

/// The last thing guest init reported on its status channel.
pub fn read_guest_progress(status_file: &Path) -> GuestProgress {
    let Ok(text) = std::fs::read(status_file) else {
        return GuestProgress::NotStarted;
    };
    let mut progress = GuestProgress::NotStarted;
    for line in String::from_utf8_lossy(&text).lines() {
        let Some(event) = lodge_guest::parse_status_line(line.trim_end_matches('\r')) else {
            continue;
        };
        progress = match event {
            lodge_guest::StatusEvent::Started { .. } => GuestProgress::Started,
            lodge_guest::StatusEvent::Exited { code } => GuestProgress::Exited(code),
            lodge_guest::StatusEvent::Signaled { signal } => GuestProgress::Signaled(signal),
            lodge_guest::StatusEvent::Error(msg) => GuestProgress::Failed(msg),
        };
    }
    progress
}

/// Console on the first serial port; the kernel stays quiet so the console
/// log is the program's output.
const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// The uncompressed ELF kernel boots ~2 s faster under TCG (no in-guest
/// decompression; QEMU enters it through PVH); the bzImage is the fallback.
pub fn kernel_image(system_dir: &Path) -> std::path::PathBuf {
    let elf = system_dir.join("vmlinux");
    if elf.exists() {
        elf
    } else {
        system_dir.join("vmlinuz")
    }
}

/// How the VMM process ended: the monitor's `exit.json`.
pub type VmmExit = lodge_monitor::ExitInfo;

pub fn read_vmm_exit(log_dir: &Path) -> Option<VmmExit> {
    let text = std::fs::read(log_dir.join(lodge_monitor::EXIT_JSON)).ok()?;
    serde_json::from_slice(&text).ok()
}

pub struct Vmm {
    cfg: Arc<Config>,
    accel: Accel,
    backend: Backend,
}

impl Vmm {
    pub fn new(cfg: Arc<Config>, accel: Accel) -> Result<Self, Error> {
        let backend = Backend::Qemu(QemuBackend::new().with_binary(&cfg.qemu_binary));
        Ok(Vmm {
            cfg,
            accel,
            backend,
        })
    }

    pub fn vm_config(&self, paths: &Paths, meta: &Metadata) -> lodge_hypervisor::VmConfig {
        use lodge_hypervisor::{DiskConfig, MachineType, VmConfig};
        VmConfig {
            id: meta.id.clone(),
            name: meta.name.clone(),
            vcpus: meta.vcpus,
            memory_bytes: meta.memory_bytes,
            kernel: kernel_image(&self.cfg.system_dir),
            initrd: self.cfg.system_dir.join("initrd.img"),
            cmdline: KERNEL_CMDLINE.to_string(),
            disks: vec![
                DiskConfig::raw(
                    meta.root_disk.clone().unwrap_or_else(|| paths.rootfs()),
                    true,
                )
                .with_serial(lodge_guest::SERIAL_ROOT),
                DiskConfig::raw(paths.overlay(), false).with_serial(lodge_guest::SERIAL_OVERLAY),
                DiskConfig::raw(paths.config_disk(), true).with_serial(lodge_guest::SERIAL_CONFIG),
            ],
            machine: MachineType::Q35,
            accel: self.accel,
            control_socket: paths.qmp_socket(),
            status_file: paths.status_file(),
            agent_channel: Some(lodge_hypervisor::VirtioSerialChannel {
                socket: paths.agent_socket(),
                port_name: lodge_guest::agent::AGENT_PORT.to_string(),
            }),
        }
    }

    /// Starts `lodge supervise … -- <vmm argv>` detached and waits until the
    /// monitor holds its lock (so a follower attached right after sees it).
    pub async fn start(&self, paths: &Paths, meta: &Metadata) -> Result<(), Error> {
        let vm = self.vm_config(paths, meta);
        let argv = self
            .backend
            .vmm_command(&vm)
            .map_err(|e| Error::Vmm(e.to_string()))?;
        let mut cmd = std::process::Command::new(&self.cfg.lodge_exe);
        cmd.arg("supervise")
            .arg("--log-dir")
            .arg(paths.logs())
            .arg("--max-size")
            .arg(self.cfg.log_max_size.to_string())
            .arg("--max-files")
            .arg(self.cfg.log_max_files.to_string())
            .arg("--")
            .args(argv.iter().map(OsString::as_os_str));
        let stderr = File::create(paths.monitor_stderr())
            .map_err(|e| Error::Vmm(format!("creating monitor error file: {e}")))?;
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
            .map_err(|e| Error::Vmm(format!("starting the monitor: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if monitor_alive(&paths.logs())
                && paths.logs().join(lodge_monitor::MONITOR_JSON).exists()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let msg = std::fs::read_to_string(paths.monitor_stderr()).unwrap_or_default();
                return Err(Error::Vmm(format!(
                    "the monitor exited at once ({status}): {}",
                    msg.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Vmm("the monitor did not start within 10s".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Reap the monitor when it ends, as long as this daemon lives.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// Graceful power-down, then force after `timeout`. Returns whether the
    /// graceful path was enough.
    pub async fn stop(
        &self,
        paths: &Paths,
        meta: &Metadata,
        timeout: Duration,
    ) -> Result<bool, Error> {
        let logs = paths.logs();
        if !monitor_alive(&logs) {
            return Ok(true);
        }
        let vm = self.vm_config(paths, meta);
        // A power-button press is lost if it lands before the guest watches
        // the button, so press again every second until the deadline.
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Err(e) = self.backend.shutdown(&vm).await {
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

    /// Ends the VMM at once: QMP quit, then SIGKILL of the VMM process.
    pub async fn force_stop(&self, paths: &Paths, meta: &Metadata) -> Result<(), Error> {
        let logs = paths.logs();
        if !monitor_alive(&logs) {
            return Ok(());
        }
        let vm = self.vm_config(paths, meta);
        if let Err(e) = self.backend.force_stop(&vm).await {
            if !e.vmm_gone() {
                tracing::warn!("force stop of {}: {e}", meta.id);
            }
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
            Err(Error::Vmm("the VMM did not stop".into()))
        }
    }
}

fn child_pid(log_dir: &Path) -> Option<i32> {
    let text = std::fs::read(log_dir.join(lodge_monitor::MONITOR_JSON)).ok()?;
    let info: lodge_monitor::MonitorInfo = serde_json::from_slice(&text).ok()?;
    i32::try_from(info.child_pid).ok()
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
