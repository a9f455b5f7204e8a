//! Choosing between KVM and software emulation (TCG), once per daemon start.
//!
//! `/dev/kvm` existing is not proof that KVM works: under nested
//! virtualisation without proper support, a Linux guest hangs or crawls after
//! decompression, and a user would wait forever. So the decision is:
//!
//! 1. `LODGE_ACCEL=kvm|tcg` wins (an invalid value is an error, not a guess).
//! 2. No `/dev/kvm`, or it cannot be opened read-write: TCG.
//! 3. Otherwise a bounded self-test: boot lodge's own kernel and initrd under
//!    KVM with `lodge.selftest` on the command line, read the console from a
//!    pipe and wait for the guest init's `lodge-selftest: ok` line. A working
//!    KVM gets there in about a second; after [`DEFAULT_SELFTEST_TIMEOUT`]
//!    QEMU is killed and lodge falls back to TCG, saying why.
//!
//! The result ([`ProbeResult`]) is serialisable so the daemon can persist it
//! and skip the probe on its next start; [`ProbeResult::is_definitive`] says
//! whether it is worth keeping. The self-test VM is built with the same
//! argument builder as every other VM, so the probe exercises the real path.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::{timeout, timeout_at, Instant};

use lodge_common::paths::SystemPaths;

use crate::config::{ConfigError, VmConfig, MIB};
use crate::qemu::args::{build_argv, DEFAULT_QEMU_BINARY};
use crate::qemu::{Accel, QemuOptions};

/// Environment variable that forces the accelerator.
pub const ACCEL_ENV: &str = "LODGE_ACCEL";

/// The KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Kernel command line of the self-test guest.
pub const SELFTEST_CMDLINE: &str = "console=ttyS0 quiet panic=-1 lodge.selftest";

/// The line lodge's guest init prints on the console when booted with
/// `lodge.selftest`, before powering off.
pub const SELFTEST_MARKER: &str = "lodge-selftest: ok";

/// How long the self-test guest may take to print [`SELFTEST_MARKER`].
pub const DEFAULT_SELFTEST_TIMEOUT: Duration = Duration::from_secs(8);

/// File names of the guest kernel and initrd inside lodge's system dir
/// (defined once, with the rest of the data-dir layout, in lodge-common).
pub use lodge_common::paths::{INITRD_FILE, KERNEL_FILE};

/// How long a self-test guest that printed the marker may take to power off
/// before it is killed.
const SELFTEST_EXIT_GRACE: Duration = Duration::from_secs(3);

/// Console bytes kept for error messages.
const CONSOLE_TAIL: usize = 4096;

/// Stderr bytes kept for error messages.
const STDERR_KEEP: usize = 4096;

/// Accelerator selection failures (only a bad `LODGE_ACCEL`; every probe
/// outcome is a [`ProbeResult`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccelError {
    /// `LODGE_ACCEL` is set to something other than `kvm` or `tcg`.
    #[error("invalid {ACCEL_ENV} value {0:?}, expected kvm or tcg")]
    InvalidEnv(String),
}

/// What the self-test needs.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initrd carrying lodge's init.
    pub initrd: PathBuf,
    /// QEMU binary.
    pub qemu_binary: OsString,
    /// Limit for the guest to print [`SELFTEST_MARKER`].
    pub timeout: Duration,
    /// The KVM device to check (tests point this elsewhere).
    pub kvm_device: PathBuf,
}

impl ProbeOptions {
    /// Options with defaults for the given kernel and initrd.
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: initrd.into(),
            qemu_binary: OsString::from(DEFAULT_QEMU_BINARY),
            timeout: DEFAULT_SELFTEST_TIMEOUT,
            kvm_device: PathBuf::from(KVM_DEVICE),
        }
    }

    /// Options for the kernel and initrd in lodge's system dir.
    pub fn for_system_dir(dir: &Path) -> Self {
        let system = SystemPaths::new(dir);
        Self::new(system.vmlinuz(), system.initrd())
    }
}

/// The decision and why it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The accelerator to use.
    pub accel: Accel,
    /// Why.
    pub reason: ProbeReason,
}

/// Why an accelerator was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeReason {
    /// Set by `LODGE_ACCEL`.
    Env,
    /// There is no KVM device.
    NoKvmDevice,
    /// The KVM device exists but cannot be opened.
    KvmInaccessible {
        /// The open error.
        error: String,
    },
    /// A test guest booted under KVM.
    SelfTestPassed {
        /// Milliseconds from starting QEMU to the marker line.
        boot_ms: u64,
    },
    /// KVM is there but a test guest did not boot under it.
    SelfTestFailed {
        /// What happened instead.
        detail: String,
    },
    /// KVM could not be tested (no kernel yet, QEMU missing).
    SelfTestNotRun {
        /// Why not.
        detail: String,
    },
}

impl ProbeResult {
    /// Whether the result describes the machine rather than a passing
    /// condition: false when KVM could not be tested at all, so the daemon
    /// should probe again next time instead of persisting this.
    pub fn is_definitive(&self) -> bool {
        !matches!(self.reason, ProbeReason::SelfTestNotRun { .. })
    }
}

impl std::fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let accel = self.accel;
        match &self.reason {
            ProbeReason::Env => write!(f, "using {accel}: set by {ACCEL_ENV}"),
            ProbeReason::NoKvmDevice => write!(
                f,
                "using {accel}: {KVM_DEVICE} does not exist, guests run under software emulation"
            ),
            ProbeReason::KvmInaccessible { error } => write!(
                f,
                "using {accel}: {KVM_DEVICE} cannot be opened ({error}), guests run under software emulation"
            ),
            ProbeReason::SelfTestPassed { boot_ms } => {
                write!(f, "using {accel}: a test guest booted under kvm in {boot_ms} ms")
            }
            ProbeReason::SelfTestFailed { detail } => write!(
                f,
                "using {accel}: {KVM_DEVICE} is present but a guest does not boot under it ({detail}); \
                 falling back to software emulation, set {ACCEL_ENV}=kvm to force kvm"
            ),
            ProbeReason::SelfTestNotRun { detail } => {
                write!(f, "using {accel}: kvm was not tested ({detail})")
            }
        }
    }
}

/// Why a self-test boot failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    /// The kernel or initrd is missing.
    #[error("{what} {path:?} not found")]
    Missing {
        /// `kernel` or `initrd`.
        what: &'static str,
        /// The path looked at.
        path: PathBuf,
    },
    /// The self-test VM config was rejected.
    #[error("invalid self-test vm configuration")]
    Config(#[from] ConfigError),
    /// A scratch directory could not be made.
    #[error("cannot create a scratch directory")]
    Scratch(#[source] std::io::Error),
    /// QEMU could not be started.
    #[error("cannot start {binary:?}")]
    Spawn {
        /// The binary.
        binary: OsString,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU ended before the guest printed the marker.
    #[error("qemu exited ({status}) before the guest reported; stderr: {stderr:?}; console: {console:?}")]
    Exited {
        /// QEMU's exit status.
        status: ExitStatus,
        /// The end of QEMU's stderr.
        stderr: String,
        /// The end of the console output.
        console: String,
    },
    /// The marker did not appear in time; QEMU was killed.
    #[error("no {SELFTEST_MARKER:?} on the console within {after:?}; console: {console:?}")]
    Timeout {
        /// The limit.
        after: Duration,
        /// The end of the console output.
        console: String,
    },
    /// Reading QEMU's output failed.
    #[error("reading the self-test console failed")]
    Io(#[source] std::io::Error),
}

impl Accel {
    /// The accelerator forced by `LODGE_ACCEL`, if any.
    pub fn from_env() -> Result<Option<Accel>, AccelError> {
        Self::from_env_value(std::env::var_os(ACCEL_ENV).as_deref())
    }

    /// Parses a `LODGE_ACCEL` value: unset or blank means "not forced".
    pub fn from_env_value(value: Option<&OsStr>) -> Result<Option<Accel>, AccelError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let Some(text) = value.to_str() else {
            return Err(AccelError::InvalidEnv(value.to_string_lossy().into_owned()));
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|_| AccelError::InvalidEnv(text.to_owned()))
    }

    /// `LODGE_ACCEL` if set, else [`probe`]. A daemon that persisted an
    /// earlier (definitive) [`ProbeResult`] should still check
    /// [`Accel::from_env`] first, so the variable always wins.
    pub async fn from_env_or_probe(opts: &ProbeOptions) -> Result<ProbeResult, AccelError> {
        if let Some(accel) = Self::from_env()? {
            let result = ProbeResult {
                accel,
                reason: ProbeReason::Env,
            };
            tracing::info!("{result}");
            return Ok(result);
        }
        Ok(probe(opts).await)
    }
}

/// Decides between KVM and TCG without looking at `LODGE_ACCEL`: checks the
/// KVM device, then boots a test guest under KVM. Logs the decision.
pub async fn probe(opts: &ProbeOptions) -> ProbeResult {
    let result = probe_inner(opts).await;
    match &result.reason {
        ProbeReason::SelfTestPassed { .. } | ProbeReason::NoKvmDevice | ProbeReason::Env => {
            tracing::info!("{result}")
        }
        _ => tracing::warn!("{result}"),
    }
    result
}

async fn probe_inner(opts: &ProbeOptions) -> ProbeResult {
    let tcg = |reason| ProbeResult {
        accel: Accel::Tcg,
        reason,
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&opts.kvm_device)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return tcg(ProbeReason::NoKvmDevice),
        Err(e) => {
            return tcg(ProbeReason::KvmInaccessible {
                error: e.to_string(),
            })
        }
    }
    match self_test(Accel::Kvm, opts).await {
        Ok(elapsed) => ProbeResult {
            accel: Accel::Kvm,
            reason: ProbeReason::SelfTestPassed {
                boot_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            },
        },
        Err(
            e @ (SelfTestError::Missing { .. }
            | SelfTestError::Spawn { .. }
            | SelfTestError::Scratch(_)
            | SelfTestError::Config(_)),
        ) => tcg(ProbeReason::SelfTestNotRun {
            detail: error_chain(&e),
        }),
        Err(e) => tcg(ProbeReason::SelfTestFailed {
            detail: error_chain(&e),
        }),
    }
}

/// Boots the self-test guest under `accel` and waits for
/// [`SELFTEST_MARKER`] on its console. Returns the time from starting QEMU to
/// the marker. QEMU never outlives this call, nor the calling thread (it
/// gets SIGKILL when the thread that spawned it exits; call this from a
/// thread that lives as long as the process, such as the main thread or a
/// runtime worker, not from `spawn_blocking`).
pub async fn self_test(accel: Accel, opts: &ProbeOptions) -> Result<Duration, SelfTestError> {
    for (what, path) in [("kernel", &opts.kernel), ("initrd", &opts.initrd)] {
        if !path.is_file() {
            return Err(SelfTestError::Missing {
                what,
                path: path.clone(),
            });
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix("lodge-selftest-")
        .tempdir()
        .map_err(SelfTestError::Scratch)?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let mut cfg = VmConfig::new(
        "selftest",
        "lodge-selftest",
        abs(&opts.kernel),
        abs(&opts.initrd),
        scratch.path().join("qmp.sock"),
        scratch.path().join("status.log"),
    );
    cfg.memory_bytes = 256 * MIB;
    cfg.cmdline = SELFTEST_CMDLINE.to_owned();
    let argv = build_argv(&opts.qemu_binary, &QemuOptions::new(accel), &cfg)?;

    // QEMU has no deadline of its own, so three things bound its life:
    // the deadline below (killed by us), `kill_on_drop` (our future is
    // dropped, e.g. on shutdown), and for when we cannot act at all (the
    // daemon is SIGKILLed or dies on SIGTERM mid-probe) the kernel: SIGKILL
    // when its parent dies, and a CPU-time limit as its own last deadline.
    let mut std_cmd = std::process::Command::new(&argv[0]);
    std_cmd
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    lodge_common::process::die_with_parent(&mut std_cmd);
    lodge_common::process::limit_cpu_seconds(&mut std_cmd, selftest_cpu_limit(opts.timeout));
    let started = Instant::now();
    let mut child = Command::from(std_cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SelfTestError::Spawn {
            binary: opts.qemu_binary.clone(),
            source,
        })?;
    let stderr_task = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = STDERR_KEEP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            kept
        })
    });
    let Some(mut console) = child.stdout.take() else {
        return Err(SelfTestError::Io(std::io::Error::other("no stdout pipe")));
    };

    let deadline = started + opts.timeout;
    let marker = SELFTEST_MARKER.as_bytes();
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    let found = loop {
        match timeout_at(deadline, console.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Err(e)) => return Err(SelfTestError::Io(e)),
            Ok(Ok(0)) => {
                // QEMU closed its stdout: it is exiting.
                let status = match timeout(SELFTEST_EXIT_GRACE, child.wait()).await {
                    Ok(res) => res.map_err(SelfTestError::Io)?,
                    Err(_) => {
                        let _ = child.kill().await;
                        child.wait().await.map_err(SelfTestError::Io)?
                    }
                };
                let stderr = match stderr_task {
                    Some(task) => task.await.unwrap_or_default(),
                    None => Vec::new(),
                };
                return Err(SelfTestError::Exited {
                    status,
                    stderr: printable(&stderr),
                    console: printable(&tail),
                });
            }
            Ok(Ok(n)) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.windows(marker.len()).any(|w| w == marker) {
                    break true;
                }
                if tail.len() > CONSOLE_TAIL {
                    tail.drain(..tail.len() - CONSOLE_TAIL);
                }
            }
        }
    };
    let elapsed = started.elapsed();
    if found {
        // The guest powers off by itself; give it a moment, then make sure.
        drop(console);
        if timeout(SELFTEST_EXIT_GRACE, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
        tracing::debug!(?elapsed, %accel, "self-test guest reported");
        Ok(elapsed)
    } else {
        let _ = child.kill().await;
        Err(SelfTestError::Timeout {
            after: opts.timeout,
            console: printable(&tail),
        })
    }
}

/// CPU seconds the self-test QEMU may use before the kernel kills it: four
/// busy threads for the whole timeout plus the exit grace, at least 10 s.
/// Far above what a passing probe uses (about a second), and a bound on a
/// QEMU nobody is left to kill.
fn selftest_cpu_limit(timeout: Duration) -> u64 {
    let wall = timeout + SELFTEST_EXIT_GRACE;
    (wall.as_secs() + 1).saturating_mul(4).max(10)
}

/// The last few hundred bytes of `bytes` as one line of printable text.
fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    let joined = words.join(" ");
    let keep = 300;
    match joined.char_indices().rev().nth(keep - 1) {
        Some((start, _)) => format!("…{}", &joined[start..]),
        None => joined,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_value_parsing() {
        assert_eq!(Accel::from_env_value(None), Ok(None));
        assert_eq!(Accel::from_env_value(Some(OsStr::new(""))), Ok(None));
        assert_eq!(Accel::from_env_value(Some(OsStr::new("  "))), Ok(None));
        assert_eq!(
            Accel::from_env_value(Some(OsStr::new("kvm"))),
            Ok(Some(Accel::Kvm))
        );
        assert_eq!(
            Accel::from_env_value(Some(OsStr::new("TCG"))),
            Ok(Some(Accel::Tcg))
        );
        assert_eq!(
            Accel::from_env_value(Some(OsStr::new("hvf"))),
            Err(AccelError::InvalidEnv("hvf".into()))
        );
        let err = Accel::from_env_value(Some(OsStr::new("kvm,tcg"))).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "invalid LODGE_ACCEL value \"kvm,tcg\", expected kvm or tcg"
        );
    }

    #[test]
    fn env_value_non_utf8_is_invalid() {
        use std::os::unix::ffi::OsStrExt;
        let v = OsStr::from_bytes(b"kv\xffm");
        assert!(matches!(
            Accel::from_env_value(Some(v)),
            Err(AccelError::InvalidEnv(_))
        ));
    }

    #[tokio::test]
    async fn missing_kvm_device_means_tcg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = ProbeOptions::new("/nonexistent/vmlinuz", "/nonexistent/initrd.img");
        opts.kvm_device = dir.path().join("kvm");
        let result = probe(&opts).await;
        assert_eq!(result.accel, Accel::Tcg);
        assert_eq!(result.reason, ProbeReason::NoKvmDevice);
        assert!(result.is_definitive());
        assert!(result.to_string().contains("does not exist"), "{result}");
    }

    #[tokio::test]
    async fn unopenable_kvm_device_means_tcg() {
        // A directory cannot be opened for writing, whoever we run as.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = ProbeOptions::new("/nonexistent/vmlinuz", "/nonexistent/initrd.img");
        opts.kvm_device = dir.path().to_owned();
        let result = probe(&opts).await;
        assert_eq!(result.accel, Accel::Tcg);
        assert!(
            matches!(result.reason, ProbeReason::KvmInaccessible { .. }),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn missing_kernel_is_not_definitive() {
        // A regular file stands in for an openable KVM device.
        let dev = tempfile::NamedTempFile::new().expect("tempfile");
        let mut opts = ProbeOptions::new("/nonexistent/vmlinuz", "/nonexistent/initrd.img");
        opts.kvm_device = dev.path().to_owned();
        let result = probe(&opts).await;
        assert_eq!(result.accel, Accel::Tcg);
        assert!(
            matches!(&result.reason, ProbeReason::SelfTestNotRun { detail } if detail.contains("kernel")),
            "{result:?}"
        );
        assert!(!result.is_definitive());
    }

    #[test]
    fn probe_result_round_trips_as_json() {
        let r = ProbeResult {
            accel: Accel::Tcg,
            reason: ProbeReason::SelfTestFailed {
                detail: "timeout".into(),
            },
        };
        let json = serde_json::to_string(&r).expect("serialize");
        assert_eq!(
            json,
            r#"{"accel":"tcg","reason":{"kind":"self_test_failed","detail":"timeout"}}"#
        );
        assert_eq!(
            serde_json::from_str::<ProbeResult>(&json).expect("deserialize"),
            r
        );
        assert!(r
            .to_string()
            .contains("is present but a guest does not boot under it"));
    }

    #[test]
    fn printable_flattens_and_cuts() {
        assert_eq!(printable(b"a\r\n\x1b[0mb\x00 c"), "a [0mb c");
        let long = "x".repeat(1000);
        let p = printable(long.as_bytes());
        assert!(p.starts_with('…'));
        assert_eq!(p.chars().count(), 301);
    }

    #[test]
    fn cpu_limit_covers_the_whole_probe() {
        assert_eq!(selftest_cpu_limit(DEFAULT_SELFTEST_TIMEOUT), 48);
        assert_eq!(selftest_cpu_limit(Duration::ZERO), 16);
        assert!(selftest_cpu_limit(Duration::from_secs(60)) > 60);
    }
}
