//! The Cloud Hypervisor backend: [`args`] builds the command line, [`api`]
//! speaks its REST API over the VM's control socket, and
//! [`CloudHypervisorBackend`] ties them to the [`Hypervisor`] verbs. The
//! API's errors never leave this module as such: they become the source of
//! a neutral [`BackendError::Control`], which says whether the VMM is gone.
//!
//! What it does not do yet, it says in [`Capabilities`] and refuses with
//! [`BackendError::Unsupported`]: saving and restoring a VM (standby), disk
//! hot-plug, and the guest agent (Cloud Hypervisor has no virtio-serial
//! port; its hybrid vsock is not wired up).
//!
//! Cloud Hypervisor ends with exit code 0 when a vCPU fails (it treats the
//! failure like a guest reset it will not perform), so its exit code does
//! not tell a crash from a shutdown. [`crash_in_vmm_log`] finds the error
//! line it writes to its stderr (the monitor's `vmm.log`) instead.

pub mod api;
pub mod args;

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

pub use api::{ApiClient, ApiError, ChVmState, Endpoint, VmInfo, VmResize, VmmPing};
pub use args::{build_argv, DEFAULT_CH_BINARY, EARLY_CONSOLE};

use crate::config::{DiskConfig, VmConfig};
use crate::hypervisor::{
    BackendError, Capabilities, Feature, Hypervisor, HypervisorKind, SnapshotIdentity, VmState,
};

/// The environment variable naming the Cloud Hypervisor binary.
pub const BINARY_ENV: &str = "LODGE_CH_BINARY";

/// Default time for each API call (connect, request and answer).
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(5);

const KIND: HypervisorKind = HypervisorKind::CloudHypervisor;

/// The Cloud Hypervisor backend.
#[derive(Debug, Clone)]
pub struct CloudHypervisorBackend {
    binary: OsString,
    api_timeout: Duration,
}

impl CloudHypervisorBackend {
    /// The backend running `binary` (a path or a name looked up on `PATH`).
    pub fn new(binary: impl Into<OsString>) -> Self {
        Self {
            binary: binary.into(),
            api_timeout: DEFAULT_API_TIMEOUT,
        }
    }

    /// Sets how long each API call may take.
    pub fn with_api_timeout(mut self, timeout: Duration) -> Self {
        self.api_timeout = timeout;
        self
    }

    /// The binary in use.
    pub fn binary(&self) -> &OsStr {
        &self.binary
    }

    /// Finds the binary: `configured` (the value of [`BINARY_ENV`]) if
    /// given, else `cloud-hypervisor` on `path` (the value of `PATH`).
    /// The error says, in one sentence, what is missing.
    pub fn locate(configured: Option<&OsStr>, path: Option<&OsStr>) -> Result<Self, String> {
        if let Some(bin) = configured.filter(|b| !b.is_empty()) {
            let bin = Path::new(bin);
            return if is_executable(bin) {
                Ok(Self::new(bin))
            } else {
                Err(format!(
                    "{BINARY_ENV}={} is not an executable file",
                    bin.display()
                ))
            };
        }
        path.into_iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(DEFAULT_CH_BINARY))
            .find(|p| is_executable(p))
            .map(Self::new)
            .ok_or_else(|| format!("no {DEFAULT_CH_BINARY} on PATH and {BINARY_ENV} is not set"))
    }

    /// A client of `cfg`'s control socket.
    pub fn client(&self, cfg: &VmConfig) -> ApiClient {
        ApiClient::new(&cfg.control_socket, self.api_timeout)
    }

    /// Asks the balloon to leave the guest `target_bytes` of its memory.
    pub async fn set_balloon(&self, cfg: &VmConfig, target_bytes: u64) -> Result<(), BackendError> {
        let body = VmResize {
            desired_balloon: Some(cfg.memory_bytes.saturating_sub(target_bytes)),
        };
        self.client(cfg)
            .resize(&body)
            .await
            .map_err(|e| api_err(cfg, e))
    }

    /// The guest memory left by the balloon, in bytes.
    pub async fn balloon_actual(&self, cfg: &VmConfig) -> Result<u64, BackendError> {
        let info = self.client(cfg).info().await.map_err(|e| api_err(cfg, e))?;
        Ok(info.memory_actual_size.unwrap_or(cfg.memory_bytes))
    }

    async fn action(&self, cfg: &VmConfig, endpoint: Endpoint) -> Result<(), BackendError> {
        self.client(cfg)
            .action(endpoint)
            .await
            .map_err(|e| api_err(cfg, e))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn api_err(cfg: &VmConfig, source: ApiError) -> BackendError {
    BackendError::Control {
        backend: KIND,
        vm: cfg.id.clone(),
        gone: source.vmm_gone(),
        source: Box::new(source),
    }
}

/// How lodge reads Cloud Hypervisor's VM state.
pub fn vm_state(state: &ChVmState) -> VmState {
    match state {
        ChVmState::Created => VmState::Created,
        ChVmState::Running => VmState::Running,
        ChVmState::Paused | ChVmState::BreakPoint => VmState::Paused,
        ChVmState::Shutdown => VmState::Shutdown,
        ChVmState::Other(_) => VmState::Unknown,
    }
}

/// The messages Cloud Hypervisor logs (at error level) when a vCPU fails;
/// the VMM then ends, with exit code 0.
const VCPU_FAILURES: [&str; 2] = ["VCPU generated error", "vCPU thread panicked"];

/// The report of a vCPU failure in Cloud Hypervisor's log (`vmm.log`,
/// its stderr), if `log` has one: the last error line naming one, with the
/// `Caused by:` lines its error chain prints below it (not the backtrace),
/// joined into one line of at most 300 bytes.
pub fn crash_in_vmm_log(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines
        .iter()
        .rposition(|l| l.contains("ERROR:") && VCPU_FAILURES.iter().any(|m| l.contains(m)))?;
    let mut report = lines[at].trim().to_string();
    for line in &lines[at + 1..] {
        let line = line.trim();
        if line.starts_with("Stack backtrace") || line.starts_with("cloud-hypervisor:") {
            break;
        }
        if line.is_empty() || line == "Caused by:" {
            continue;
        }
        report.push_str(" -- ");
        report.push_str(line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ':'));
    }
    let mut end = report.len().min(300);
    while !report.is_char_boundary(end) {
        end -= 1;
    }
    report.truncate(end);
    Some(report)
}

impl Hypervisor for CloudHypervisorBackend {
    fn kind(&self) -> HypervisorKind {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause_resume: true,
            // The ACPI power button (`vm.power-button`).
            graceful_shutdown: true,
            snapshot: false,
            virtio_serial: false,
            vsock: false,
            disk_hotplug: false,
        }
    }

    fn vmm_command(&self, cfg: &VmConfig) -> Result<Vec<OsString>, BackendError> {
        if cfg.agent_channel.is_some() {
            return Err(BackendError::Unsupported {
                backend: KIND,
                feature: Feature::VirtioSerial,
            });
        }
        if cfg.memory_file.is_some() {
            return Err(BackendError::Unsupported {
                backend: KIND,
                feature: Feature::Snapshot,
            });
        }
        Ok(build_argv(&self.binary, cfg)?)
    }

    async fn state(&self, cfg: &VmConfig) -> Result<VmState, BackendError> {
        let info = self.client(cfg).info().await.map_err(|e| api_err(cfg, e))?;
        Ok(vm_state(&info.state))
    }

    async fn shutdown(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        self.action(cfg, Endpoint::VmPowerButton).await
    }

    /// `vmm.shutdown`: the VMM stops the VM and exits. It may close the
    /// connection before answering; a VMM gone by then has done as asked.
    async fn force_stop(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        match self.action(cfg, Endpoint::VmmShutdown).await {
            Err(e) if e.vmm_gone() => Ok(()),
            other => other,
        }
    }

    async fn pause(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        self.action(cfg, Endpoint::VmPause).await
    }

    async fn resume(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        self.action(cfg, Endpoint::VmResume).await
    }

    async fn attach_disk(&self, _cfg: &VmConfig, _disk: &DiskConfig) -> Result<(), BackendError> {
        Err(unsupported(Feature::DiskHotplug))
    }

    async fn detach_disk(
        &self,
        _cfg: &VmConfig,
        _slot: u32,
        _timeout: Duration,
    ) -> Result<(), BackendError> {
        Err(unsupported(Feature::DiskHotplug))
    }

    async fn snapshot_identity(&self) -> Result<SnapshotIdentity, BackendError> {
        Err(unsupported(Feature::Snapshot))
    }

    async fn save(
        &self,
        _cfg: &VmConfig,
        _state_file: &Path,
        _timeout: Duration,
    ) -> Result<SnapshotIdentity, BackendError> {
        Err(unsupported(Feature::Snapshot))
    }

    async fn abort_save(&self, _cfg: &VmConfig) -> Result<(), BackendError> {
        Err(unsupported(Feature::Snapshot))
    }

    fn restore_command(&self, _cfg: &VmConfig) -> Result<Vec<OsString>, BackendError> {
        Err(unsupported(Feature::Snapshot))
    }

    async fn load(
        &self,
        _cfg: &VmConfig,
        _state_file: &Path,
        _saved: &SnapshotIdentity,
        _timeout: Duration,
    ) -> Result<(), BackendError> {
        Err(unsupported(Feature::Snapshot))
    }
}

fn unsupported(feature: Feature) -> BackendError {
    BackendError::Unsupported {
        backend: KIND,
        feature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_vm_states() {
        assert_eq!(vm_state(&ChVmState::Running), VmState::Running);
        assert_eq!(vm_state(&ChVmState::Created), VmState::Created);
        assert_eq!(vm_state(&ChVmState::Paused), VmState::Paused);
        assert_eq!(vm_state(&ChVmState::BreakPoint), VmState::Paused);
        assert_eq!(vm_state(&ChVmState::Shutdown), VmState::Shutdown);
        assert_eq!(vm_state(&ChVmState::Other("x".into())), VmState::Unknown);
    }

    #[test]
    fn a_vcpu_error_in_the_log_is_a_crash_and_a_warning_is_not() {
        let log = "cloud-hypervisor:   0.26s: <vcpu0> WARN:vmm/src/cpu.rs:278 -- Kernel lacks \
                   CONFIG_SCHED_CORE support - no SMT isolation\n\
                   cloud-hypervisor:  61.02s: <vcpu0> ERROR:vmm/src/cpu.rs:1487 -- VCPU generated \
                   error: VcpuRun(Failed to run vcpu: InternalError)\n";
        let line = crash_in_vmm_log(log).expect("crash");
        assert!(line.contains("VCPU generated error: VcpuRun"), "{line}");
        assert!(line.starts_with("cloud-hypervisor:  61.02s"), "{line}");
        // As Cloud Hypervisor prints it: the cause below, then a backtrace.
        let chained = "cloud-hypervisor:  82.48s: <vcpu0> ERROR:vmm/src/cpu.rs:1487 -- VCPU \
                       generated error: VcpuRun(Failed to run vcpu\n\nCaused by:\n    \
                       Unexpected exit reason on vcpu run: InternalError\n\nStack backtrace:\n   \
                       0: <unknown>\n   4: start_thread\n";
        assert_eq!(
            crash_in_vmm_log(chained).as_deref(),
            Some(
                "cloud-hypervisor:  82.48s: <vcpu0> ERROR:vmm/src/cpu.rs:1487 -- VCPU generated \
                 error: VcpuRun(Failed to run vcpu -- Unexpected exit reason on vcpu run: \
                 InternalError"
            )
        );
        assert_eq!(crash_in_vmm_log(log.lines().next().unwrap_or("")), None);
        assert_eq!(crash_in_vmm_log(""), None);
        // Text that only mentions the message without CH's error level is
        // not taken for one.
        assert_eq!(crash_in_vmm_log("VCPU generated error"), None);
        let long = format!("ERROR:x -- vCPU thread panicked {}", "é".repeat(400));
        let cut = crash_in_vmm_log(&long).expect("crash");
        assert!(cut.len() <= 300);
    }

    #[test]
    fn locate_prefers_the_configured_binary_and_says_what_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join(DEFAULT_CH_BINARY);
        std::fs::write(&bin, "#!/bin/sh\n").expect("write");
        let err = CloudHypervisorBackend::locate(Some(bin.as_os_str()), None)
            .expect_err("not executable");
        assert!(err.contains("is not an executable file"), "{err}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let found =
            CloudHypervisorBackend::locate(Some(bin.as_os_str()), None).expect("configured");
        assert_eq!(found.binary(), bin.as_os_str());
        let path =
            std::env::join_paths(["/nonexistent", &dir.path().to_string_lossy()]).expect("join");
        let found = CloudHypervisorBackend::locate(None, Some(&path)).expect("on PATH");
        assert_eq!(found.binary(), bin.as_os_str());
        let err = CloudHypervisorBackend::locate(None, Some(OsStr::new("/nonexistent")))
            .expect_err("absent");
        assert_eq!(
            err,
            "no cloud-hypervisor on PATH and LODGE_CH_BINARY is not set"
        );
    }

    #[test]
    fn unsupported_features_are_refused_typed() {
        let backend = CloudHypervisorBackend::new("ch");
        let caps = backend.capabilities();
        assert!(caps.pause_resume && caps.graceful_shutdown);
        assert!(!caps.snapshot && !caps.virtio_serial && !caps.disk_hotplug);
        let mut cfg = VmConfig::new("i", "n", "/k", "/i", "/c.sock", "/s.log");
        assert!(backend.vmm_command(&cfg).is_ok());
        assert!(matches!(
            backend.restore_command(&cfg),
            Err(BackendError::Unsupported {
                feature: Feature::Snapshot,
                ..
            })
        ));
        cfg.agent_channel = Some(crate::config::VirtioSerialChannel {
            socket: "/a.sock".into(),
            port_name: "agent".into(),
        });
        assert!(matches!(
            backend.vmm_command(&cfg),
            Err(BackendError::Unsupported {
                feature: Feature::VirtioSerial,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn control_verbs_on_a_missing_socket_fail_fast_and_say_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = VmConfig::new(
            "gone",
            "gone",
            "/k",
            "/i",
            dir.path().join("ch.sock"),
            dir.path().join("status.log"),
        );
        let backend = CloudHypervisorBackend::new("ch");
        let err = backend.state(&cfg).await.expect_err("no vmm");
        assert!(err.vmm_gone(), "{err:?}");
        assert!(backend.force_stop(&cfg).await.is_ok(), "gone is stopped");
        assert!(backend.pause(&cfg).await.expect_err("no vmm").vmm_gone());
    }
}
