//! The narrow interface every hypervisor backend implements.
//!
//! A backend does two things. First it turns a [`VmConfig`] into the VMM's
//! command line ([`Hypervisor::vmm_command`]); lodge's monitor process, not
//! the backend, starts that command, so the console pipe and the VMM's exit
//! status belong to the monitor and outlive daemon restarts. Then it controls
//! the running VMM over the VMM's own control channel (QMP for QEMU, the REST
//! socket for Cloud Hypervisor): a handful of lifecycle verbs and a state
//! query. The control verbs hold no connection between calls, so a freshly
//! restarted daemon controls VMs it did not start.
//!
//! This file names no backend: the backends depend on it, never the other
//! way round, and [`crate::dispatch`] is the one place that knows them all.
//! Errors are neutral too: a backend wraps its control-protocol error as the
//! [`BackendError::Control`] source and says whether the VMM is gone, so
//! callers never see QMP (or Cloud Hypervisor's REST) types. What a backend
//! cannot do it says in [`Capabilities`] and, if asked anyway, answers with
//! [`BackendError::Unsupported`], never a panic.

use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, DiskConfig, VmConfig};

/// Which hypervisor a backend drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HypervisorKind {
    /// QEMU (`qemu-system-x86_64`), controlled over QMP.
    Qemu,
    /// Cloud Hypervisor, controlled over its REST API.
    CloudHypervisor,
}

impl HypervisorKind {
    /// The name hypeman's API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            HypervisorKind::Qemu => "qemu",
            HypervisorKind::CloudHypervisor => "cloud-hypervisor",
        }
    }
}

impl std::fmt::Display for HypervisorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hypervisor name lodge does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hypervisor {0:?}, expected qemu or cloud-hypervisor")]
pub struct ParseHypervisorKindError(pub String);

impl FromStr for HypervisorKind {
    type Err = ParseHypervisorKindError;

    /// hypeman's names, exactly (`qemu`, `cloud-hypervisor`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [HypervisorKind::Qemu, HypervisorKind::CloudHypervisor]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ParseHypervisorKindError(s.to_owned()))
    }
}

/// The VM's state as its VMM reports it (lodge's instance states are built on
/// top of this plus the monitor's knowledge of whether the VMM process lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The VMM is up but the guest has not started running (e.g. QEMU `-S`,
    /// or waiting for an incoming snapshot).
    Created,
    /// Guest CPUs are running.
    Running,
    /// Guest CPUs are stopped; [`Hypervisor::resume`] continues them. Also
    /// covers stops the VMM made on its own (I/O error, watchdog, suspend).
    Paused,
    /// The guest shut down and the VMM is about to exit.
    Shutdown,
    /// The guest panicked or the VMM hit an internal error.
    Crashed,
    /// A state this backend does not know how to classify.
    Unknown,
}

/// Optional features, as named in [`BackendError::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Pausing and resuming guest CPUs.
    PauseResume,
    /// Asking the guest to shut down (ACPI power button or equivalent).
    GracefulShutdown,
    /// Saving the VM to disk and restoring it.
    Snapshot,
    /// A virtio-serial channel for the guest agent.
    VirtioSerial,
    /// A vsock device for the guest agent.
    Vsock,
    /// Adding and removing disks while the VM runs.
    DiskHotplug,
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Feature::PauseResume => "pause/resume",
            Feature::GracefulShutdown => "graceful shutdown",
            Feature::Snapshot => "snapshot",
            Feature::VirtioSerial => "virtio-serial channels",
            Feature::Vsock => "vsock",
            Feature::DiskHotplug => "disk hot-plug",
        })
    }
}

/// What a backend can do; callers check this before offering a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// [`Hypervisor::pause`] and [`Hypervisor::resume`] work.
    pub pause_resume: bool,
    /// [`Hypervisor::shutdown`] asks the guest to power off.
    pub graceful_shutdown: bool,
    /// The VM can be saved to disk and restored (standby).
    pub snapshot: bool,
    /// [`VmConfig::agent_channel`] (virtio-serial) is honoured.
    pub virtio_serial: bool,
    /// A vsock device can be attached.
    pub vsock: bool,
    /// [`Hypervisor::attach_disk`] and [`Hypervisor::detach_disk`] work.
    #[serde(default)]
    pub disk_hotplug: bool,
}

impl Capabilities {
    /// Whether `feature` is available.
    pub fn has(&self, feature: Feature) -> bool {
        match feature {
            Feature::PauseResume => self.pause_resume,
            Feature::GracefulShutdown => self.graceful_shutdown,
            Feature::Snapshot => self.snapshot,
            Feature::VirtioSerial => self.virtio_serial,
            Feature::Vsock => self.vsock,
            Feature::DiskHotplug => self.disk_hotplug,
        }
    }

    /// `Ok(())` if `feature` is available, else [`BackendError::Unsupported`].
    pub fn require(&self, backend: HypervisorKind, feature: Feature) -> Result<(), BackendError> {
        if self.has(feature) {
            Ok(())
        } else {
            Err(BackendError::Unsupported { backend, feature })
        }
    }
}

/// Backend failures.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The VM configuration is invalid.
    #[error("invalid vm configuration")]
    Config(#[from] ConfigError),
    /// The backend lacks a feature.
    #[error("{backend} does not support {feature}")]
    Unsupported {
        /// The backend asked.
        backend: HypervisorKind,
        /// The missing feature.
        feature: Feature,
    },
    /// No backend of this kind is built into lodge.
    #[error("the {0} backend is not available in this build")]
    Unavailable(HypervisorKind),
    /// The backend is built in but its VMM is not installed on this host.
    #[error("{backend} is not available on this host: {reason}")]
    NotInstalled {
        /// The backend asked.
        backend: HypervisorKind,
        /// What is missing, in one sentence.
        reason: String,
    },
    /// A saved state cannot be loaded by this VMM.
    #[error("the saved state needs {what} {saved:?}, but this host has {found:?}")]
    Incompatible {
        /// The field that differs (`VMM version`, `machine type`, …).
        what: &'static str,
        /// The value recorded with the state.
        saved: String,
        /// The value here.
        found: String,
    },
    /// Saving or loading the VM's state failed (the VMM said why).
    #[error("{op} the state of vm {vm} failed: {reason}")]
    StateTransfer {
        /// `saving` or `loading`.
        op: &'static str,
        /// The VM's id.
        vm: String,
        /// The VMM's reason.
        reason: String,
    },
    /// The VMM's control channel did not answer as expected.
    #[error("{backend} control channel of vm {vm} failed")]
    Control {
        /// The backend that failed.
        backend: HypervisorKind,
        /// The VM's id.
        vm: String,
        /// Whether the VMM is not there to answer: its control socket is
        /// missing, refuses connections (left behind by a VMM that died) or
        /// was closed under us.
        gone: bool,
        /// The backend's own protocol error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What a saved VM state depends on besides the VM's own configuration:
/// a state is only loaded by a VMM that matches it on every field (a QEMU
/// migration stream is only promised to load into the same QEMU, machine
/// type and CPU model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotIdentity {
    /// The VMM's version, e.g. `7.2.22 (Debian 1:7.2+dfsg-7)`.
    pub vmm_version: String,
    /// The machine type with its properties, e.g.
    /// `q35,sata=off,smbus=off,vmport=off,i8042=off,smm=off`.
    pub machine: String,
    /// The accelerator, e.g. `tcg`.
    pub accel: String,
    /// The guest CPU model, as the running VMM names it; empty when not
    /// known yet (an identity asked of the VMM binary before it runs).
    #[serde(default)]
    pub cpu_model: String,
}

impl SnapshotIdentity {
    /// `Ok` if a state saved under `self` may be loaded by `now`; else the
    /// first field that differs. An empty CPU model on either side is not
    /// compared (it is checked again once the VMM runs).
    pub fn check(&self, now: &SnapshotIdentity) -> Result<(), BackendError> {
        let fields = [
            ("VMM version", &self.vmm_version, &now.vmm_version),
            ("machine type", &self.machine, &now.machine),
            ("accelerator", &self.accel, &now.accel),
            ("CPU model", &self.cpu_model, &now.cpu_model),
        ];
        for (what, saved, found) in fields {
            if what == "CPU model" && (saved.is_empty() || found.is_empty()) {
                continue;
            }
            if saved != found {
                return Err(BackendError::Incompatible {
                    what,
                    saved: saved.clone(),
                    found: found.clone(),
                });
            }
        }
        Ok(())
    }
}

impl BackendError {
    /// Whether the error says the VMM is not there to answer (see
    /// [`BackendError::Control`]). Callers then trust the monitor's record
    /// of the VMM's exit rather than report a failure.
    pub fn vmm_gone(&self) -> bool {
        matches!(self, BackendError::Control { gone: true, .. })
    }
}

/// Lifecycle verbs of one hypervisor. Async verbs return `Send` futures, so
/// callers may run them on any tokio task.
pub trait Hypervisor {
    /// Which hypervisor this is.
    fn kind(&self) -> HypervisorKind;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// The VMM's full argv (binary first) for `cfg`, to be started by lodge's
    /// monitor with the console on its stdout. Validates `cfg`.
    fn vmm_command(&self, cfg: &VmConfig) -> Result<Vec<OsString>, BackendError>;

    /// The VM's state, asked of the VMM.
    fn state(&self, cfg: &VmConfig) -> impl Future<Output = Result<VmState, BackendError>> + Send;

    /// Asks the guest to power off (ACPI power button). Returns once the
    /// request is delivered; the caller waits for the VMM to exit and falls
    /// back to [`Hypervisor::force_stop`] after its own timeout.
    fn shutdown(&self, cfg: &VmConfig) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Makes the VMM exit now, without asking the guest.
    fn force_stop(&self, cfg: &VmConfig) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Stops guest CPUs.
    fn pause(&self, cfg: &VmConfig) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Continues guest CPUs.
    fn resume(&self, cfg: &VmConfig) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Plugs `disk` (whose [`DiskConfig::slot`] is one of `cfg`'s free
    /// hot-plug slots) into the running VM. Returns once the VMM has added
    /// the device; the guest notices it in its own time.
    fn attach_disk(
        &self,
        cfg: &VmConfig,
        disk: &DiskConfig,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Unplugs the disk in hot-plug `slot` and waits until the VMM has
    /// released it (the guest acknowledged the removal) or `timeout` passed.
    fn detach_disk(
        &self,
        cfg: &VmConfig,
        slot: u32,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The identity a state saved now would carry, asked of the VMM binary
    /// without starting a VM (the CPU model is left empty), so a restore is
    /// checked before anything starts.
    fn snapshot_identity(
        &self,
    ) -> impl Future<Output = Result<SnapshotIdentity, BackendError>> + Send;

    /// Pauses the guest and saves its memory and device state to
    /// `state_file`, within `timeout`. The VMM stays, paused, for the
    /// caller to end (or to continue with [`Hypervisor::abort_save`]).
    fn save(
        &self,
        cfg: &VmConfig,
        state_file: &Path,
        timeout: Duration,
    ) -> impl Future<Output = Result<SnapshotIdentity, BackendError>> + Send;

    /// Abandons a save in progress (or done) and continues the guest.
    fn abort_save(&self, cfg: &VmConfig) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The VMM's argv that starts `cfg` waiting for a saved state instead
    /// of booting: [`Hypervisor::vmm_command`] plus what makes it wait.
    fn restore_command(&self, cfg: &VmConfig) -> Result<Vec<OsString>, BackendError>;

    /// Loads `state_file` into a VMM started from
    /// [`Hypervisor::restore_command`], within `timeout`, after checking the
    /// running VMM against `saved`. The guest is left paused;
    /// [`Hypervisor::resume`] continues it.
    fn load(
        &self,
        cfg: &VmConfig,
        state_file: &Path,
        saved: &SnapshotIdentity,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_reports_missing_feature() {
        let caps = Capabilities {
            pause_resume: true,
            graceful_shutdown: true,
            snapshot: false,
            virtio_serial: true,
            vsock: false,
            disk_hotplug: false,
        };
        assert!(caps
            .require(HypervisorKind::Qemu, Feature::PauseResume)
            .is_ok());
        let err = caps
            .require(HypervisorKind::Qemu, Feature::Snapshot)
            .expect_err("snapshot is missing");
        assert!(matches!(
            err,
            BackendError::Unsupported {
                feature: Feature::Snapshot,
                ..
            }
        ));
        assert_eq!(err.to_string(), "qemu does not support snapshot");
    }

    #[test]
    fn kind_serde_names_match_hypeman() {
        assert_eq!(
            serde_json::to_string(&HypervisorKind::CloudHypervisor).expect("serialize"),
            "\"cloud-hypervisor\""
        );
        assert_eq!(
            serde_json::from_str::<HypervisorKind>("\"qemu\"").expect("deserialize"),
            HypervisorKind::Qemu
        );
    }

    #[test]
    fn kind_parses_hypemans_names_only() {
        assert_eq!("qemu".parse(), Ok(HypervisorKind::Qemu));
        assert_eq!(
            "cloud-hypervisor".parse(),
            Ok(HypervisorKind::CloudHypervisor)
        );
        let err = "firecracker"
            .parse::<HypervisorKind>()
            .expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown hypervisor \"firecracker\", expected qemu or cloud-hypervisor"
        );
    }

    #[test]
    fn only_a_gone_control_error_says_vmm_gone() {
        let control = |gone| BackendError::Control {
            backend: HypervisorKind::Qemu,
            vm: "v".into(),
            gone,
            source: "boom".into(),
        };
        assert!(control(true).vmm_gone());
        assert!(!control(false).vmm_gone());
        assert!(!BackendError::Unavailable(HypervisorKind::Qemu).vmm_gone());
        assert_eq!(
            control(false).to_string(),
            "qemu control channel of vm v failed"
        );
    }
}
