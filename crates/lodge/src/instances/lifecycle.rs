//! The verbs that move an existing instance through its life: boot (used by
//! create and start), stop, start and delete. Each runs under the
//! instance's lock and re-derives the state first, so a verb that does not
//! fit the state is refused with [`Error::WrongState`].
//!
//! An instance on the default network has its TAP exactly while its VMM
//! may run: made by `boot` just before the VMM starts, deleted by stop
//! (once the VMM has exited) and delete; delete also returns the address.

use lodge_hypervisor::Hypervisor;
use std::time::{Duration, SystemTime};

use super::error::{io, Error, Result};
use super::manager::{Locked, Manager};
use super::net;
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
    #[tracing::instrument(name = "instance.boot", skip_all, fields(instance = %meta.id))]
    pub(super) async fn boot(&self, paths: &Paths, mut meta: Metadata) -> Result<()> {
        // Status lines of a previous boot must not leak into this one (the
        // monitor also starts its record afresh).
        let record = paths.logs().join(lodge_monitor::GUEST_STATUS_JSON);
        for stale in [paths.status_file(), record] {
            match std::fs::remove_file(stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("clearing the status channel")(e)),
            }
        }
        meta.paused = false;
        // A fresh boot: its monitor sees the program's start line itself,
        // and its RAM starts empty. The RAM file only serves standby, so a
        // backend that cannot save a VM gets none.
        meta.standby.resumed = false;
        meta.standby.ram_file = self.cfg.memory_file
            && self
                .launcher
                .backend(meta.hypervisor)
                .is_ok_and(|b| b.capabilities().snapshot);
        store::remove_ram_file(paths).map_err(io("removing the guest RAM file"))?;
        meta.started_at = Some(SystemTime::now());
        meta.stopped_at = None;
        store::save(paths, &meta).map_err(io("writing instance record"))?;
        if let Some(rec) = &meta.network {
            let dn = self.net.as_deref().ok_or(Error::NetworkDisabled)?;
            net::tap_up(dn, &meta, rec).await?;
        }
        crate::metrics::boot_started();
        self.launcher.start(paths, &meta).await?;
        oplog(paths, "started");
        Ok(())
    }

    #[tracing::instrument(name = "instance.stop", skip_all, fields(instance = %key))]
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
        // The VMM has exited: nothing holds the TAP any more, nor its RAM.
        self.tap_down(&meta).await?;
        store::remove_ram_file(&paths).map_err(io("removing the guest RAM file"))?;
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

    #[tracing::instrument(name = "instance.start", skip_all, fields(instance = %key))]
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
        let _room = self.admit(&id, super::admission::Demand::of(&meta))?;
        let network = self.net.as_deref().map(|dn| &dn.network);
        disks::raw_image(
            &paths.config_disk(),
            &guest_config(&meta, network)?.encode(),
        )?;
        if let Err(e) = self.boot(&paths, meta.clone()).await {
            // Back to stopped: no VMM, no TAP.
            let mut cleanup = Vec::new();
            if let Err(c) = self.launcher.force_stop(&paths, &meta).await {
                cleanup.push(c);
            }
            if let Err(c) = self.tap_down(&meta).await {
                cleanup.push(c);
            }
            return Err(Error::with_cleanup(e, cleanup));
        }
        let meta = store::load(&paths).map_err(io("reading instance record"))?;
        Ok(self.view(&meta))
    }

    /// Stops the VM if needed and removes everything of the instance.
    #[tracing::instrument(name = "instance.delete", skip_all, fields(instance = %key))]
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
        // Before the record goes, so a failure here can be retried.
        self.tap_down(&meta).await?;
        // Renamed first so that a crash mid-removal leaves no half record.
        let trash = self.cfg.paths().guest_deleting(&id);
        std::fs::rename(&paths.dir, &trash).map_err(io(format!("deleting instance {id}")))?;
        std::fs::remove_dir_all(&trash).map_err(io(format!("removing {}", trash.display())))?;
        self.forget_lock(&id);
        // Last: the address is free only once no record names it (if this
        // fails, the reaper releases it, as the instance is gone).
        self.release_lease(&id)
    }

    /// Deletes the instance's TAP (and its traffic control state), if it
    /// is on the network. Call only once its VMM has exited.
    pub(super) async fn tap_down(&self, meta: &Metadata) -> Result<()> {
        if meta.network.is_none() {
            return Ok(());
        }
        if self.net.is_none() {
            tracing::warn!(
                "instance {} has a network but this daemon runs without one; its TAP (if any) is left for a daemon with networking on",
                meta.id
            );
            return Ok(());
        }
        lodge_net::delete_tap(&meta.id).await?;
        Ok(())
    }

    /// Gives the instance's address back (nothing to do without one).
    pub(super) fn release_lease(&self, id: &str) -> Result<()> {
        if let Some(dn) = &self.net {
            dn.alloc.release(id)?;
        }
        Ok(())
    }
}

/// What the guest init runs, from the record, and (for an instance on the
/// default network `net`) how it configures its NIC.
pub(super) fn guest_config(
    meta: &Metadata,
    net: Option<&lodge_net::Network>,
) -> Result<lodge_guest::GuestConfig> {
    let mut argv = meta.entrypoint.clone();
    argv.extend(meta.cmd.iter().cloned());
    let network = match (&meta.network, net) {
        (None, _) => None,
        (Some(rec), Some(net)) => Some(lodge_guest::NetworkConfig {
            mac: lodge_guest::MacAddr(rec.mac()?.octets()),
            ip: rec.ip,
            prefix_len: net.prefix_len(),
            gateway: net.gateway(),
            mtu: Some(net.mtu()),
            // glibc and musl read only the first three.
            dns: net
                .dns
                .iter()
                .take(lodge_guest::network::MAX_DNS_SERVERS)
                .copied()
                .collect(),
            name: meta.name.clone(),
        }),
        (Some(_), None) => return Err(Error::NetworkDisabled),
    };
    Ok(lodge_guest::GuestConfig {
        argv,
        env: meta.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        workdir: meta.workdir.clone(),
        hostname: Some(meta.name.clone()),
        user: meta.user.clone(),
        network,
        volumes: super::volumes::guest_volumes(meta),
    })
}
