//! The verbs that move an existing instance through its life: boot (used by
//! create and start), stop, start and delete. Each runs under the
//! instance's lock and re-derives the state first, so a verb that does not
//! fit the state is refused with [`Error::WrongState`].

use std::time::{Duration, SystemTime};

use super::error::{io, Error, Result};
use super::manager::{Locked, Manager};
use super::observe::{kill_orphan_vmm, monitor_alive, observe};
use super::oplog::oplog;
use super::spec::check_runnable;
use super::state::{self, State};
use super::store::{self, Metadata, Paths};
use super::view::Instance;
use crate::disks;

/// How long a graceful stop may take before the VMM is stopped by force.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

impl Manager {
    /// Starts the monitor + VMM for a prepared instance.
    pub(super) async fn boot(&self, paths: &Paths, mut meta: Metadata) -> Result<()> {
        // Status lines of a previous boot must not leak into this one.
        match std::fs::remove_file(paths.status_file()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("clearing the status channel")(e)),
        }
        meta.paused = false;
        meta.started_at = Some(SystemTime::now());
        meta.stopped_at = None;
        store::save(paths, &meta).map_err(io("writing instance record"))?;
        self.launcher.start(paths, &meta).await?;
        oplog(paths, "started");
        Ok(())
    }

    pub async fn stop(&self, key: &str) -> Result<Instance> {
        let Locked {
            _guard,
            id,
            paths,
            mut meta,
        } = self.lock_instance(key).await?;
        let state = state::derive(&observe(&paths, &meta));
        if matches!(state, State::Stopped | State::Created | State::Standby) {
            return Err(Error::WrongState {
                id,
                state,
                action: "stop",
                needs: "running",
            });
        }
        oplog(&paths, "stopping");
        // A VMM whose monitor is gone cannot be asked to stop: kill it.
        kill_orphan_vmm(&paths.logs())
            .await
            .map_err(io("stopping a VMM left without its monitor"))?;
        let graceful = self.launcher.stop(&paths, &meta, STOP_TIMEOUT).await?;
        meta.paused = false;
        meta.stopped_at = Some(SystemTime::now());
        store::save(&paths, &meta).map_err(io("writing instance record"))?;
        oplog(
            &paths,
            if graceful {
                "stopped"
            } else {
                "stopped by force after the graceful stop timed out"
            },
        );
        Ok(self.view(&meta))
    }

    pub async fn start(
        &self,
        key: &str,
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
    ) -> Result<Instance> {
        let Locked {
            _guard,
            id,
            paths,
            mut meta,
        } = self.lock_instance(key).await?;
        let state = state::derive(&observe(&paths, &meta));
        if !matches!(state, State::Stopped | State::Created) {
            return Err(Error::WrongState {
                id,
                state,
                action: "start",
                needs: "stopped",
            });
        }
        if let Some(e) = entrypoint {
            meta.entrypoint = e;
        }
        if let Some(c) = cmd {
            meta.cmd = c;
        }
        check_runnable(&meta.entrypoint, &meta.cmd)?;
        disks::raw_image(&paths.config_disk(), &guest_config(&meta).encode())?;
        self.boot(&paths, meta).await?;
        let meta = store::load(&paths).map_err(io("reading instance record"))?;
        Ok(self.view(&meta))
    }

    /// Stops the VM if needed and removes everything of the instance.
    pub async fn delete(&self, key: &str, graceful: bool) -> Result<()> {
        let Locked {
            _guard,
            id,
            paths,
            meta,
        } = self.lock_instance(key).await?;
        if monitor_alive(&paths.logs()) {
            if graceful {
                self.launcher.stop(&paths, &meta, STOP_TIMEOUT).await?;
            } else {
                self.launcher.force_stop(&paths, &meta).await?;
            }
        }
        // Never remove disks under a VMM left running without its monitor.
        kill_orphan_vmm(&paths.logs())
            .await
            .map_err(io("stopping a VMM left without its monitor"))?;
        // Renamed first so that a crash mid-removal leaves no half record.
        let trash = self.cfg.paths().guest_deleting(&id);
        std::fs::rename(&paths.dir, &trash).map_err(io(format!("deleting instance {id}")))?;
        std::fs::remove_dir_all(&trash).map_err(io(format!("removing {}", trash.display())))?;
        self.forget_lock(&id);
        Ok(())
    }
}

/// What the guest init runs, from the record.
pub(super) fn guest_config(meta: &Metadata) -> lodge_guest::GuestConfig {
    let mut argv = meta.entrypoint.clone();
    argv.extend(meta.cmd.iter().cloned());
    lodge_guest::GuestConfig {
        argv,
        env: meta.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        workdir: meta.workdir.clone(),
        hostname: Some(meta.name.clone()),
        user: meta.user.clone(),
        network: None,
    }
}
