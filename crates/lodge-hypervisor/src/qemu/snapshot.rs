//! Saving a running QEMU to a file and loading it back (lodge's standby).
//!
//! QEMU 7.2 has no `file:` migration target and no `mapped-ram`, so the
//! state goes through a migration stream: `migrate` to `exec:cat > FILE`
//! saves it (guest paused first, so one pass sends every page and nothing
//! is dirtied meanwhile), and a QEMU started with the same arguments plus
//! `-incoming defer` loads it with `migrate-incoming exec:cat FILE`.
//! `defer` makes the load start when lodge asks, after the QMP session is
//! up: `query-migrate` answers `none` before that, which is not "done"
//! (hypeman's bug #49 took it for done); only `completed` is.
//!
//! The stream's RAM is throttled by QEMU's default `max-bandwidth`
//! (128 MiB/s); a save to a local file lifts it. Zero pages cost a few
//! bytes each in the stream, so the file is about the size of the memory
//! the guest has touched.
//!
//! With `VmConfig::memory_file` the guest RAM is a file mapped shared, and
//! the `x-ignore-shared` capability (on both sides) leaves it out of the
//! stream: the save is the device state only, and the restored QEMU maps
//! the same file, faulting pages in as the guest touches them (QEMU 7.2's
//! nearest to `mapped-ram`; measured in scripts/bench-standby.sh).
//!
//! The saved state only loads into the same QEMU version, machine type
//! and CPU model: the identity ([`SnapshotIdentity`]) is read from the
//! running QEMU at save time and checked again before a load.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::qmp::{MigrationStatus, QmpClient};
use super::{qmp_err, QemuBackend};
use crate::config::VmConfig;
use crate::hypervisor::{BackendError, SnapshotIdentity};

/// How often a migration's progress is asked while waiting for it.
const POLL: Duration = Duration::from_millis(10);

/// The migration capability that leaves shared RAM (a VM whose memory is
/// a file, see `VmConfig::memory_file`) out of the stream.
const IGNORE_SHARED: &str = "x-ignore-shared";

/// `max-bandwidth` for a save to a local file: no throttle to speak of.
const UNTHROTTLED: u64 = 1 << 40;

/// `sh` single-quoting: the path as one word, whatever it holds.
fn sh_quote(path: &OsStr) -> Result<String, BackendError> {
    let text = path.to_str().ok_or_else(|| BackendError::StateTransfer {
        op: "saving",
        vm: String::new(),
        reason: format!("the state file path {path:?} is not UTF-8"),
    })?;
    Ok(format!("'{}'", text.replace('\'', r"'\''")))
}

/// The migration URI that writes the stream to `file`.
pub fn save_uri(file: &Path) -> Result<String, BackendError> {
    Ok(format!("exec:cat > {}", sh_quote(file.as_os_str())?))
}

/// The migration URI that reads the stream from `file`.
pub fn load_uri(file: &Path) -> Result<String, BackendError> {
    Ok(format!("exec:cat {}", sh_quote(file.as_os_str())?))
}

/// The argv of [`QemuBackend::vmm_command`] plus `-incoming defer`.
pub fn restore_argv(mut argv: Vec<OsString>) -> Vec<OsString> {
    argv.push("-incoming".into());
    argv.push("defer".into());
    argv
}

/// The version line of `qemu --version` (`QEMU emulator version 7.2.22
/// (Debian …)`), as [`QmpClient::query_version`] spells it.
pub fn parse_version_output(out: &str) -> Option<String> {
    let line = out.lines().next()?;
    let rest = line.split("version ").nth(1)?.trim();
    Some(rest.to_string())
}

/// `err` and its causes, as one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Polls `query-migrate` until `completed`, failing on `failed` or
/// `cancelled` or when `deadline` passes.
async fn wait_completed(
    qmp: &mut QmpClient,
    cfg: &VmConfig,
    op: &'static str,
    deadline: Instant,
) -> Result<(), BackendError> {
    loop {
        let info = qmp.query_migrate().await.map_err(|e| qmp_err(cfg, e))?;
        match info.status {
            MigrationStatus::Completed => return Ok(()),
            MigrationStatus::Failed | MigrationStatus::Cancelled => {
                return Err(BackendError::StateTransfer {
                    op,
                    vm: cfg.id.clone(),
                    reason: info
                        .error
                        .unwrap_or_else(|| format!("migration {:?}", info.status)),
                })
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(BackendError::StateTransfer {
                op,
                vm: cfg.id.clone(),
                reason: format!("not finished in time (migration {:?})", info.status),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

impl QemuBackend {
    /// The identity a state saved by this backend's binary would carry.
    pub(super) async fn binary_identity(&self) -> Result<SnapshotIdentity, BackendError> {
        let out = tokio::process::Command::new(&self.binary)
            .arg("--version")
            .output()
            .await
            .map_err(|e| BackendError::StateTransfer {
                op: "checking",
                vm: String::new(),
                reason: format!("running {:?} --version: {e}", self.binary),
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let vmm_version =
            parse_version_output(&text).ok_or_else(|| BackendError::StateTransfer {
                op: "checking",
                vm: String::new(),
                reason: format!("unexpected {:?} --version output {text:?}", self.binary),
            })?;
        Ok(SnapshotIdentity {
            vmm_version,
            machine: self.options.machine.arg().to_string(),
            accel: self.options.accel.as_str().to_string(),
            cpu_model: String::new(),
        })
    }

    /// The running VM's identity, asked over `qmp`.
    async fn running_identity(
        &self,
        qmp: &mut QmpClient,
        cfg: &VmConfig,
    ) -> Result<SnapshotIdentity, BackendError> {
        let vmm_version = qmp.query_version().await.map_err(|e| qmp_err(cfg, e))?;
        let cpu_model = qmp.query_cpu_model().await.map_err(|e| qmp_err(cfg, e))?;
        Ok(SnapshotIdentity {
            vmm_version,
            machine: self.options.machine.arg().to_string(),
            accel: self.options.accel.as_str().to_string(),
            cpu_model,
        })
    }

    pub(super) async fn save_state(
        &self,
        cfg: &VmConfig,
        file: &Path,
        timeout: Duration,
    ) -> Result<SnapshotIdentity, BackendError> {
        let deadline = Instant::now() + timeout;
        let uri = save_uri(file)?;
        let mut qmp = self.connect(cfg).await?;
        let identity = self.running_identity(&mut qmp, cfg).await?;
        qmp.stop().await.map_err(|e| qmp_err(cfg, e))?;
        qmp.set_migration_bandwidth(UNTHROTTLED)
            .await
            .map_err(|e| qmp_err(cfg, e))?;
        if cfg.memory_file.is_some() {
            // The RAM file stays where it is: save only the devices.
            qmp.set_migration_capability(IGNORE_SHARED, true)
                .await
                .map_err(|e| qmp_err(cfg, e))?;
        }
        qmp.migrate(&uri).await.map_err(|e| qmp_err(cfg, e))?;
        wait_completed(&mut qmp, cfg, "saving", deadline).await?;
        Ok(identity)
    }

    pub(super) async fn abort_state_save(&self, cfg: &VmConfig) -> Result<(), BackendError> {
        let mut qmp = self.connect(cfg).await?;
        if let Err(e) = qmp.migrate_cancel().await {
            tracing::warn!("cancelling the save of {}: {e}", cfg.id);
        }
        // A cancel takes effect asynchronously; `cont` is refused until the
        // migration has left its active states.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let info = qmp.query_migrate().await.map_err(|e| qmp_err(cfg, e))?;
            let settled = matches!(
                info.status,
                MigrationStatus::None
                    | MigrationStatus::Completed
                    | MigrationStatus::Failed
                    | MigrationStatus::Cancelled
            );
            if settled || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        qmp.cont().await.map_err(|e| qmp_err(cfg, e))
    }

    pub(super) async fn load_state(
        &self,
        cfg: &VmConfig,
        file: &Path,
        saved: &SnapshotIdentity,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let deadline = Instant::now() + timeout;
        let uri = load_uri(file)?;
        let mut qmp = self.connect(cfg).await?;
        let now = self.running_identity(&mut qmp, cfg).await?;
        saved.check(&now)?;
        if cfg.memory_file.is_some() {
            qmp.set_migration_capability(IGNORE_SHARED, true)
                .await
                .map_err(|e| qmp_err(cfg, e))?;
        }
        let loaded = match qmp.migrate_incoming(&uri).await {
            Ok(()) => wait_completed(&mut qmp, cfg, "loading", deadline).await,
            Err(e) => Err(qmp_err(cfg, e)),
        };
        // QEMU exits when a load fails: its control channel breaks.
        loaded.map_err(|e| match e {
            BackendError::Control { .. } => BackendError::StateTransfer {
                op: "loading",
                vm: cfg.id.clone(),
                reason: format!("the VMM ended while loading it ({})", error_chain(&e)),
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_quote_the_path_for_sh() {
        assert_eq!(
            save_uri(Path::new("/d/my vms,2/x/memory")).expect("utf-8"),
            "exec:cat > '/d/my vms,2/x/memory'"
        );
        assert_eq!(
            load_uri(Path::new("/d/it's/memory")).expect("utf-8"),
            r"exec:cat '/d/it'\''s/memory'"
        );
    }

    #[test]
    fn restore_argv_waits_for_the_state() {
        let argv = restore_argv(vec!["qemu".into(), "-m".into(), "256".into()]);
        assert_eq!(argv, ["qemu", "-m", "256", "-incoming", "defer"]);
    }

    #[test]
    fn version_output_is_parsed() {
        assert_eq!(
            parse_version_output(
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022\n"
            )
            .as_deref(),
            Some("7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)")
        );
        assert_eq!(parse_version_output("garbage"), None);
    }

    #[test]
    fn identities_are_checked_field_by_field() {
        let saved = SnapshotIdentity {
            vmm_version: "7.2.22".into(),
            machine: "q35".into(),
            accel: "tcg".into(),
            cpu_model: "qemu64-x86_64-cpu".into(),
        };
        let mut now = saved.clone();
        now.cpu_model.clear();
        assert!(
            saved.check(&now).is_ok(),
            "an unknown CPU model is checked later"
        );
        now.vmm_version = "8.2.0".into();
        let err = saved.check(&now).expect_err("another version");
        assert_eq!(
            err.to_string(),
            "the saved state needs VMM version \"7.2.22\", but this host has \"8.2.0\""
        );
        let mut now = saved.clone();
        now.cpu_model = "host-x86_64-cpu".into();
        assert!(matches!(
            saved.check(&now),
            Err(BackendError::Incompatible {
                what: "CPU model",
                ..
            })
        ));
    }
}
