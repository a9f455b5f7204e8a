//! The QEMU backend: [`args`] builds the command line, [`qmp`] speaks the
//! control protocol, [`options`] holds what only QEMU has a choice about,
//! and [`QemuBackend`] ties them to the [`Hypervisor`] verbs. QMP's errors
//! never leave this module as such: they become the source of a neutral
//! [`BackendError::Control`], which says whether the VMM is gone.
//!
//! Each control verb opens its own QMP session on the VM's control socket
//! and closes it when done. QEMU serves one QMP client at a time, so holding
//! a session open would lock out every other caller (and a restarted daemon);
//! the cost of a fresh session is a few milliseconds.

pub mod args;
pub mod balloon;
pub mod options;
pub mod qmp;
pub mod snapshot;
pub mod throttle;

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

pub use args::{build_argv, escape, CONSOLE_TTY, DEFAULT_QEMU_BINARY, STATUS_TTY};
pub use options::{
    Accel, MachineType, ParseAccelError, ParseMachineTypeError, QemuOptions,
    DEFAULT_TCG_TB_SIZE_MIB,
};
pub use qmp::{
    MigrationInfo, MigrationStatus, QmpClient, QmpError, QmpEvent, RunState, StatusInfo,
};

use crate::config::{ConfigError, DiskConfig, VmConfig};
use crate::hypervisor::{
    BackendError, Capabilities, Hypervisor, HypervisorKind, SnapshotIdentity, VmState,
};

/// Default time to wait for the QMP socket to accept a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default time for the greeting and each QMP command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    binary: OsString,
    options: QemuOptions,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl Default for QemuBackend {
    fn default() -> Self {
        Self {
            binary: OsString::from(DEFAULT_QEMU_BINARY),
            options: QemuOptions::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

impl QemuBackend {
    /// The backend with `qemu-system-x86_64` from `PATH`, q35 under TCG and
    /// default timeouts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses another QEMU binary (a path or a name looked up on `PATH`).
    pub fn with_binary(mut self, binary: impl Into<OsString>) -> Self {
        self.binary = binary.into();
        self
    }

    /// Uses `options` (machine type, accelerator) for every VM.
    pub fn with_options(mut self, options: QemuOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs guests under `accel`.
    pub fn with_accel(mut self, accel: Accel) -> Self {
        self.options.accel = accel;
        self
    }

    /// Sizes TCG's translation cache (`None`: QEMU's own default).
    pub fn with_tcg_tb_size(mut self, mib: Option<u32>) -> Self {
        self.options.tcg_tb_size_mib = mib;
        self
    }

    /// The QEMU-only options in use.
    pub fn options(&self) -> &QemuOptions {
        &self.options
    }

    /// Sets how long to wait for the control socket and for each command.
    pub fn with_timeouts(mut self, connect: Duration, command: Duration) -> Self {
        self.connect_timeout = connect;
        self.command_timeout = command;
        self
    }

    /// The QEMU binary in use.
    pub fn binary(&self) -> &OsStr {
        &self.binary
    }

    /// Opens a negotiated QMP session on `cfg`'s control socket.
    pub async fn connect(&self, cfg: &VmConfig) -> Result<QmpClient, BackendError> {
        QmpClient::connect(
            &cfg.control_socket,
            self.connect_timeout,
            self.command_timeout,
        )
        .await
        .map_err(|e| qmp_err(cfg, e))
    }
}

fn qmp_err(cfg: &VmConfig, source: QmpError) -> BackendError {
    BackendError::Control {
        backend: HypervisorKind::Qemu,
        vm: cfg.id.clone(),
        gone: vmm_gone(&source),
        source: Box::new(source),
    }
}

/// Whether a QMP failure means no QEMU is there to answer: its socket is
/// missing, refuses connections (left behind by a QEMU that died) or was
/// closed under us.
fn vmm_gone(err: &QmpError) -> bool {
    match err {
        QmpError::Connect { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ),
        QmpError::Closed => true,
        _ => false,
    }
}

/// How lodge reads QEMU's run state.
pub fn vm_state(state: &RunState) -> VmState {
    match state {
        RunState::Running => VmState::Running,
        RunState::Prelaunch | RunState::InMigrate => VmState::Created,
        RunState::Paused
        | RunState::IoError
        | RunState::Watchdog
        | RunState::Suspended
        | RunState::PostMigrate
        | RunState::Debug => VmState::Paused,
        RunState::Shutdown => VmState::Shutdown,
        RunState::GuestPanicked | RunState::InternalError => VmState::Crashed,
        RunState::Other(_) => VmState::Unknown,
    }
}

impl Hypervisor for QemuBackend {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::Qemu
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause_resume: true,
            graceful_shutdown: true,
            // Migration to a file (see `snapshot`).
            snapshot: true,
            virtio_serial: true,
            // No /dev/vhost-vsock on lodge's hosts; not wired up.
            vsock: false,
            disk_hotplug: true,
        }
    }

    fn vmm_command(&self, cfg: &VmConfig) -> Result<Vec<OsString>, BackendError> {
        Ok(build_argv(&self.binary, &self.options, cfg)?)
    }

    async fn state(&self, cfg: &VmConfig) -> Result<VmState, BackendError> {
        let mut qmp = self.connect(cfg).await?;
        let status = qmp.query_status().await.map_err(|e| qmp_err(cfg, e))?;
        Ok(vm_state(&status.status))
    }

    async fn shutdown(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        let mut qmp = self.connect(cfg).await?;
        qmp.system_powerdown().await.map_err(|e| qmp_err(cfg, e))
    }

    async fn force_stop(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        let qmp = self.connect(cfg).await?;
        qmp.quit().await.map_err(|e| qmp_err(cfg, e))
    }

    async fn pause(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        let mut qmp = self.connect(cfg).await?;
        qmp.stop().await.map_err(|e| qmp_err(cfg, e))
    }

    async fn resume(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        let mut qmp = self.connect(cfg).await?;
        qmp.cont().await.map_err(|e| qmp_err(cfg, e))
    }

    /// `blockdev-add` then `device_add` on the slot's bus, with the same
    /// node, id and place as `build_argv` gives a disk in that slot at
    /// boot. A failed `device_add` removes the node again. QEMU's image
    /// locking refuses a read-write open of a file another QEMU holds.
    async fn attach_disk(&self, cfg: &VmConfig, disk: &DiskConfig) -> Result<(), BackendError> {
        let slot = match disk.slot {
            Some(slot) if slot < cfg.hotplug_slots => slot,
            other => {
                return Err(BackendError::Config(ConfigError::DiskSlot {
                    index: cfg.disks.len(),
                    slot: other.unwrap_or(u32::MAX),
                }))
            }
        };
        let mut qmp = self.connect(cfg).await?;
        let node = args::slot_node(slot);
        match cfg.disk_bps {
            None => {
                qmp.blockdev_add_raw(&node, &disk.path, disk.read_only)
                    .await
            }
            Some(_) => match throttle::blockdev_args(&node, &disk.path, disk.read_only, slot) {
                Ok(a) => qmp.execute_raw("blockdev-add", Some(a)).await.map(drop),
                Err(e) => Err(e),
            },
        }
        .map_err(|e| qmp_err(cfg, e))?;
        let (bus, addr) = args::slot_bus(self.options.machine, slot);
        let mut dev = serde_json::json!({
            "driver": "virtio-blk-pci",
            "disable-legacy": "off",
            "write-cache": "on",
            "id": args::slot_device(slot),
            "drive": node,
            "bus": bus,
        });
        if let Some(addr) = addr {
            dev["addr"] = addr.into();
        }
        if let Some(serial) = &disk.serial {
            dev["serial"] = serial.clone().into();
        }
        if let Err(e) = qmp.device_add(dev).await {
            if let Err(c) = qmp.blockdev_del(&node).await {
                tracing::warn!("removing block node {node} after a failed device_add: {c}");
            }
            return Err(qmp_err(cfg, e));
        }
        Ok(())
    }

    /// `device_del`, waits for `DEVICE_DELETED` of the slot's device (the
    /// guest has let go of it), then `blockdev-del`.
    async fn detach_disk(
        &self,
        cfg: &VmConfig,
        slot: u32,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let mut qmp = self.connect(cfg).await?;
        let id = args::slot_device(slot);
        qmp.device_del(&id).await.map_err(|e| qmp_err(cfg, e))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = qmp
                .wait_event("DEVICE_DELETED", left)
                .await
                .map_err(|e| qmp_err(cfg, e))?;
            if ev.data.get("device").and_then(|d| d.as_str()) == Some(id.as_str()) {
                break;
            }
        }
        qmp.blockdev_del(&args::slot_node(slot))
            .await
            .map_err(|e| qmp_err(cfg, e))
    }

    async fn snapshot_identity(&self) -> Result<SnapshotIdentity, BackendError> {
        self.binary_identity().await
    }

    async fn save(
        &self,
        cfg: &VmConfig,
        state_file: &Path,
        timeout: Duration,
    ) -> Result<SnapshotIdentity, BackendError> {
        self.save_state(cfg, state_file, timeout).await
    }

    async fn abort_save(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        self.abort_state_save(cfg).await
    }

    fn restore_command(&self, cfg: &VmConfig) -> Result<Vec<OsString>, BackendError> {
        Ok(snapshot::restore_argv(self.vmm_command(cfg)?))
    }

    async fn load(
        &self,
        cfg: &VmConfig,
        state_file: &Path,
        saved: &SnapshotIdentity,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        self.load_state(cfg, state_file, saved, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_states_map_to_vm_states() {
        assert_eq!(vm_state(&RunState::Running), VmState::Running);
        assert_eq!(vm_state(&RunState::Prelaunch), VmState::Created);
        assert_eq!(vm_state(&RunState::Paused), VmState::Paused);
        assert_eq!(vm_state(&RunState::IoError), VmState::Paused);
        assert_eq!(vm_state(&RunState::Shutdown), VmState::Shutdown);
        assert_eq!(vm_state(&RunState::GuestPanicked), VmState::Crashed);
        assert_eq!(vm_state(&RunState::Other("colo".into())), VmState::Unknown);
    }

    #[test]
    fn vmm_command_uses_the_configured_binary_and_validates() {
        let backend = QemuBackend::new().with_binary("/opt/q/qemu");
        let mut cfg = VmConfig::new("i", "n", "/k", "/i", "/q.sock", "/s.log");
        let argv = backend.vmm_command(&cfg).expect("valid");
        assert_eq!(argv[0], "/opt/q/qemu");
        let kvm = backend.clone().with_accel(Accel::Kvm);
        let argv = kvm.vmm_command(&cfg).expect("valid");
        assert!(argv.windows(2).any(|w| w[0] == "-accel" && w[1] == "kvm"));
        cfg.memory_bytes = 1;
        assert!(matches!(
            backend.vmm_command(&cfg),
            Err(BackendError::Config(_))
        ));
    }

    #[tokio::test]
    async fn control_verbs_on_a_missing_socket_fail_fast_and_typed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = VmConfig::new(
            "gone",
            "gone",
            "/k",
            "/i",
            dir.path().join("qmp.sock"),
            dir.path().join("status.log"),
        );
        let backend =
            QemuBackend::new().with_timeouts(Duration::from_millis(100), Duration::from_secs(1));
        let started = std::time::Instant::now();
        let err = backend.state(&cfg).await.expect_err("no vmm");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(err.vmm_gone(), "{err:?}");
        match err {
            BackendError::Control {
                backend: HypervisorKind::Qemu,
                vm,
                gone: true,
                source,
            } => {
                assert_eq!(vm, "gone");
                assert!(
                    matches!(
                        source.downcast_ref::<QmpError>(),
                        Some(QmpError::Connect { .. })
                    ),
                    "{source:?}"
                );
            }
            other => panic!("unexpected error {other:?}"),
        }
    }
}
