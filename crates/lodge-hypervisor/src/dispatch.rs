//! Choosing a backend: the one module that knows every backend lodge has.
//!
//! [`Backend`] is an enum rather than a boxed trait object so the async
//! verbs stay plain `async fn`s (static dispatch, no boxed futures).
//! [`Backends`] holds the backends this daemon was configured with (binary,
//! accelerator, timeouts), and hands out the one an instance's stored
//! [`HypervisorKind`] names, so each instance is driven by the hypervisor it
//! was created with. Adding a backend is one module beside `qemu/`, one arm
//! in each `match` here and one field in [`Backends`].

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::cloud_hypervisor::{self, CloudHypervisorBackend};
use crate::config::{DiskConfig, VmConfig};
use crate::hypervisor::{
    BackendError, Capabilities, Hypervisor, HypervisorKind, SnapshotIdentity, VmState,
};
use crate::qemu::QemuBackend;

/// Every backend lodge has, chosen at run time.
#[derive(Debug, Clone)]
pub enum Backend {
    /// QEMU.
    Qemu(QemuBackend),
    /// Cloud Hypervisor.
    CloudHypervisor(CloudHypervisorBackend),
}

impl Backend {
    /// The default backend of `kind`, or [`BackendError::Unavailable`].
    pub fn for_kind(kind: HypervisorKind) -> Result<Self, BackendError> {
        Backends::default().get(kind)
    }

    /// Asks a VM with a balloon ([`VmConfig::balloon`]) to shrink or grow
    /// to `target_bytes` of guest memory; returns once asked.
    pub async fn set_balloon(&self, cfg: &VmConfig, target_bytes: u64) -> Result<(), BackendError> {
        match self {
            Backend::Qemu(b) => b.set_balloon(cfg, target_bytes).await,
            Backend::CloudHypervisor(b) => b.set_balloon(cfg, target_bytes).await,
        }
    }

    /// The guest memory a VM with a balloon has now, in bytes.
    pub async fn balloon_actual(&self, cfg: &VmConfig) -> Result<u64, BackendError> {
        match self {
            Backend::Qemu(b) => b.balloon_actual(cfg).await,
            Backend::CloudHypervisor(b) => b.balloon_actual(cfg).await,
        }
    }
}

/// The configured backends of one daemon, by kind. Cloud Hypervisor is
/// either located (its binary found) or absent with the reason, which
/// [`Backends::get`] reports as [`BackendError::NotInstalled`].
#[derive(Debug, Clone)]
pub struct Backends {
    qemu: QemuBackend,
    cloud_hypervisor: Result<CloudHypervisorBackend, String>,
}

impl Default for Backends {
    /// QEMU from `PATH`; Cloud Hypervisor not configured.
    fn default() -> Self {
        Self::new(QemuBackend::default())
    }
}

impl Backends {
    /// Backends with QEMU configured as given (and no Cloud Hypervisor).
    pub fn new(qemu: QemuBackend) -> Self {
        Self {
            qemu,
            cloud_hypervisor: Err(String::new()),
        }
    }

    /// Adds Cloud Hypervisor: the located backend, or why it is absent
    /// (see [`CloudHypervisorBackend::locate`]).
    pub fn with_cloud_hypervisor(mut self, ch: Result<CloudHypervisorBackend, String>) -> Self {
        self.cloud_hypervisor = match ch {
            Err(reason) if reason.is_empty() => Err("not configured".to_string()),
            other => other,
        };
        self
    }

    /// Whether instances of `kind` can be started here.
    pub fn available(&self, kind: HypervisorKind) -> bool {
        self.get(kind).is_ok()
    }

    /// The backend for `kind`, or [`BackendError::Unavailable`] when this
    /// build has none of that kind, or [`BackendError::NotInstalled`] when
    /// its VMM was not found on this host.
    pub fn get(&self, kind: HypervisorKind) -> Result<Backend, BackendError> {
        match kind {
            HypervisorKind::Qemu => Ok(Backend::Qemu(self.qemu.clone())),
            HypervisorKind::CloudHypervisor => match &self.cloud_hypervisor {
                Ok(ch) => Ok(Backend::CloudHypervisor(ch.clone())),
                // `Backends::new` alone: this daemon has no Cloud
                // Hypervisor configured at all.
                Err(reason) if reason.is_empty() => Err(BackendError::Unavailable(kind)),
                Err(reason) => Err(BackendError::NotInstalled {
                    backend: kind,
                    reason: reason.clone(),
                }),
            },
        }
    }
}

/// Whether VMMs of `kind` report crashes in their log that their exit
/// code does not show, so [`crash_in_vmm_log`] is worth reading it for.
pub fn vmm_log_reports_crashes(kind: HypervisorKind) -> bool {
    kind == HypervisorKind::CloudHypervisor
}

/// The line of the VMM's own log (`vmm.log`) that reports a crash the
/// VMM's exit code does not show, for VMMs of `kind` that need this (Cloud
/// Hypervisor exits 0 after a vCPU failure). Needs no configured backend:
/// a stopped instance is read without its VMM.
pub fn crash_in_vmm_log(kind: HypervisorKind, log: &str) -> Option<String> {
    match kind {
        // QEMU's exit code and run state say it; its log is not parsed.
        HypervisorKind::Qemu => None,
        HypervisorKind::CloudHypervisor => cloud_hypervisor::crash_in_vmm_log(log),
    }
}

impl Hypervisor for Backend {
    fn kind(&self) -> HypervisorKind {
        match self {
            Backend::Qemu(b) => b.kind(),
            Backend::CloudHypervisor(b) => b.kind(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self {
            Backend::Qemu(b) => b.capabilities(),
            Backend::CloudHypervisor(b) => b.capabilities(),
        }
    }

    fn vmm_command(&self, cfg: &VmConfig) -> Result<Vec<OsString>, BackendError> {
        match self {
            Backend::Qemu(b) => b.vmm_command(cfg),
            Backend::CloudHypervisor(b) => b.vmm_command(cfg),
        }
    }

    async fn state(&self, cfg: &VmConfig) -> Result<VmState, BackendError> {
        match self {
            Backend::Qemu(b) => b.state(cfg).await,
            Backend::CloudHypervisor(b) => b.state(cfg).await,
        }
    }

    async fn shutdown(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        match self {
            Backend::Qemu(b) => b.shutdown(cfg).await,
            Backend::CloudHypervisor(b) => b.shutdown(cfg).await,
        }
    }

    async fn force_stop(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        match self {
            Backend::Qemu(b) => b.force_stop(cfg).await,
            Backend::CloudHypervisor(b) => b.force_stop(cfg).await,
        }
    }

    async fn pause(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        match self {
            Backend::Qemu(b) => b.pause(cfg).await,
            Backend::CloudHypervisor(b) => b.pause(cfg).await,
        }
    }

    async fn resume(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        match self {
            Backend::Qemu(b) => b.resume(cfg).await,
            Backend::CloudHypervisor(b) => b.resume(cfg).await,
        }
    }

    async fn attach_disk(&self, cfg: &VmConfig, disk: &DiskConfig) -> Result<(), BackendError> {
        match self {
            Backend::Qemu(b) => b.attach_disk(cfg, disk).await,
            Backend::CloudHypervisor(b) => b.attach_disk(cfg, disk).await,
        }
    }

    async fn detach_disk(
        &self,
        cfg: &VmConfig,
        slot: u32,
        timeout: std::time::Duration,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Qemu(b) => b.detach_disk(cfg, slot, timeout).await,
            Backend::CloudHypervisor(b) => b.detach_disk(cfg, slot, timeout).await,
        }
    }

    async fn snapshot_identity(&self) -> Result<SnapshotIdentity, BackendError> {
        match self {
            Backend::Qemu(b) => b.snapshot_identity().await,
            Backend::CloudHypervisor(b) => b.snapshot_identity().await,
        }
    }

    async fn save(
        &self,
        cfg: &VmConfig,
        state_file: &Path,
        timeout: Duration,
    ) -> Result<SnapshotIdentity, BackendError> {
        match self {
            Backend::Qemu(b) => b.save(cfg, state_file, timeout).await,
            Backend::CloudHypervisor(b) => b.save(cfg, state_file, timeout).await,
        }
    }

    async fn abort_save(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        match self {
            Backend::Qemu(b) => b.abort_save(cfg).await,
            Backend::CloudHypervisor(b) => b.abort_save(cfg).await,
        }
    }

    fn restore_command(&self, cfg: &VmConfig) -> Result<Vec<OsString>, BackendError> {
        match self {
            Backend::Qemu(b) => b.restore_command(cfg),
            Backend::CloudHypervisor(b) => b.restore_command(cfg),
        }
    }

    async fn load(
        &self,
        cfg: &VmConfig,
        state_file: &Path,
        saved: &SnapshotIdentity,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Qemu(b) => b.load(cfg, state_file, saved, timeout).await,
            Backend::CloudHypervisor(b) => b.load(cfg, state_file, saved, timeout).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_hypervisor_is_reported_unavailable() {
        let err = Backend::for_kind(HypervisorKind::CloudHypervisor).expect_err("not built");
        assert_eq!(
            err.to_string(),
            "the cloud-hypervisor backend is not available in this build"
        );
        let qemu = Backend::for_kind(HypervisorKind::Qemu).expect("qemu is built in");
        assert_eq!(qemu.kind(), HypervisorKind::Qemu);
    }

    #[test]
    fn configured_backends_are_handed_out_by_kind() {
        let backends = Backends::new(QemuBackend::new().with_binary("/opt/q/qemu"));
        match backends.get(HypervisorKind::Qemu) {
            Ok(Backend::Qemu(q)) => assert_eq!(q.binary(), "/opt/q/qemu"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            backends.get(HypervisorKind::CloudHypervisor),
            Err(BackendError::Unavailable(HypervisorKind::CloudHypervisor))
        ));
    }

    #[test]
    fn cloud_hypervisor_is_handed_out_when_located_and_refused_with_the_reason_if_not() {
        let located = Backends::new(QemuBackend::new())
            .with_cloud_hypervisor(Ok(CloudHypervisorBackend::new("/opt/ch/cloud-hypervisor")));
        assert!(located.available(HypervisorKind::CloudHypervisor));
        match located.get(HypervisorKind::CloudHypervisor) {
            Ok(Backend::CloudHypervisor(ch)) => {
                assert_eq!(ch.binary(), "/opt/ch/cloud-hypervisor")
            }
            other => panic!("unexpected {other:?}"),
        }
        let missing = Backends::new(QemuBackend::new()).with_cloud_hypervisor(Err(
            "no cloud-hypervisor on PATH and LODGE_CH_BINARY is not set".into(),
        ));
        assert!(!missing.available(HypervisorKind::CloudHypervisor));
        assert!(missing.available(HypervisorKind::Qemu));
        let err = missing
            .get(HypervisorKind::CloudHypervisor)
            .expect_err("not installed");
        assert_eq!(
            err.to_string(),
            "cloud-hypervisor is not available on this host: no cloud-hypervisor on PATH and \
             LODGE_CH_BINARY is not set"
        );
    }

    #[test]
    fn only_cloud_hypervisor_logs_are_read_for_crashes() {
        let log = "cloud-hypervisor: 9.1s: <vcpu0> ERROR:vmm/src/cpu.rs:1487 -- VCPU generated \
                   error: VcpuRun(InternalError)\n";
        assert!(crash_in_vmm_log(HypervisorKind::CloudHypervisor, log).is_some());
        assert_eq!(crash_in_vmm_log(HypervisorKind::Qemu, log), None);
    }
}
