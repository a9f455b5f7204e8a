//! The [`Manager`] itself: what it holds, how a key (id, name or id prefix)
//! becomes an instance, the per-instance locks, and the read-only verbs
//! (list, get, where the logs and the guest agent are).
//!
//! The verbs that change an instance live beside this file, one family per
//! file (`create`, `lifecycle`), as further `impl Manager` blocks; this file
//! imports none of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lodge_hypervisor::{Accel, Backends, CloudHypervisorBackend, HypervisorKind, QemuBackend};
use tokio::sync::Mutex as AsyncMutex;

use super::error::{io, Error, Result};
use super::monitor::Launcher;
use super::naming::Claims;
use super::net::{self, DaemonNet};
use super::observe::{monitor_alive, observe};
use super::state::{self, State};
use super::store::{self, Metadata, Paths};
use super::view::Instance;
use crate::config::Config;

/// The daemon's instance manager.
pub struct Manager {
    pub(super) cfg: Arc<Config>,
    pub(super) launcher: Launcher,
    /// Images instances boot from; the manager resolves create requests
    /// against it.
    pub(super) images: Arc<lodge_images::Images>,
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    /// Names claimed by creates still preparing their disks.
    pub(super) claims: Claims,
    /// Connections to the guest agents of running instances.
    agents: crate::agent::Pool,
    /// The default network; `None` when the daemon runs without one.
    pub(super) net: Option<Arc<DaemonNet>>,
    /// Resource limits and the boots in flight (`resources`).
    pub(super) admission: super::admission::Admission,
    /// Health check results of running instances (`health_checks`).
    pub(super) health: super::health::Book,
    /// Auto-standby's standbys under way (`auto_standby_watch`).
    pub(super) auto_standby: super::auto_standby::Book,
    /// Volumes instances attach; their attachments live in the records.
    pub(super) volumes: Arc<lodge_volumes::Volumes>,
}

/// Where a running instance's guest agent is reached.
#[derive(Debug, Clone)]
pub struct AgentEndpoint {
    pub id: String,
    pub socket: PathBuf,
}

/// An instance held under its lock, with its record as read under it.
pub(super) struct Locked {
    pub(super) _guard: tokio::sync::OwnedMutexGuard<()>,
    pub(super) id: String,
    pub(super) paths: Paths,
    pub(super) meta: Metadata,
}

impl Manager {
    /// A manager of the instances under `cfg`'s data dir, running QEMU
    /// guests under `accel` and booting images from `images`.
    pub fn new(
        cfg: Arc<Config>,
        accel: Accel,
        images: Arc<lodge_images::Images>,
        net: Option<Arc<DaemonNet>>,
        volumes: Arc<lodge_volumes::Volumes>,
    ) -> Result<Self> {
        std::fs::create_dir_all(cfg.guests_dir())
            .map_err(io(format!("creating {}", cfg.guests_dir().display())))?;
        let backends = Backends::new(
            QemuBackend::new()
                .with_binary(&cfg.qemu_binary)
                .with_accel(accel)
                .with_tcg_tb_size(cfg.tcg_tb_size_mib),
        )
        .with_cloud_hypervisor(CloudHypervisorBackend::locate(
            cfg.ch_binary.as_deref().map(|p| p.as_os_str()),
            cfg.path.as_deref(),
        ));
        Ok(Manager {
            launcher: Launcher::new(cfg.clone(), backends),
            cfg,
            images,
            locks: Mutex::new(HashMap::new()),
            claims: Claims::default(),
            agents: crate::agent::Pool::default(),
            net,
            admission: super::admission::Admission::from_env().map_err(Error::BadConfig)?,
            health: super::health::Book::default(),
            auto_standby: super::auto_standby::Book::default(),
            volumes,
        })
    }

    /// The guest agent of a running instance (exec, cp, stat); any other
    /// state is refused as `action` needing it running.
    pub fn agent_endpoint(&self, key: &str, action: &'static str) -> Result<AgentEndpoint> {
        let id = self.resolve(key)?;
        let paths = self.paths(&id);
        let meta = store::load(&paths).map_err(|_| Error::NotFound(key.to_string()))?;
        let state = state::derive(&observe(&paths, &meta));
        if state != State::Running {
            return Err(Error::WrongState {
                id,
                state,
                action,
                needs: "running",
            });
        }
        self.launcher.require_agent(&meta)?;
        Ok(AgentEndpoint {
            socket: paths.agent_socket(),
            id,
        })
    }

    /// The daemon's connections to guest agents.
    pub fn agents(&self) -> &crate::agent::Pool {
        &self.agents
    }

    pub(super) fn paths(&self, id: &str) -> Paths {
        self.cfg.paths().guest(id)
    }

    /// Resolves `key`, takes the instance's lock and reads its record: the
    /// caller's operation is the only one on this instance until the guard
    /// drops.
    pub(super) async fn lock_instance(&self, key: &str) -> Result<Locked> {
        let id = self.resolve(key)?;
        let _guard = self.lock_for(&id).lock_owned().await;
        let paths = self.paths(&id);
        // Re-read under the lock: a delete may have won the race.
        let meta = store::load(&paths).map_err(|_| Error::NotFound(key.to_string()))?;
        Ok(Locked {
            _guard,
            id,
            paths,
            meta,
        })
    }

    pub(super) fn lock_for(&self, id: &str) -> Arc<AsyncMutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_string()).or_default().clone()
    }

    /// Forgets the lock of a deleted instance.
    pub(super) fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub(super) fn all(&self) -> Result<Vec<Metadata>> {
        all_records(&self.cfg.guests_dir())
    }

    /// Resolves an id, a name or a unique id prefix to an instance id.
    pub fn resolve(&self, key: &str) -> Result<String> {
        let all = self.all()?;
        if let Some(m) = all.iter().find(|m| m.id == key || m.name == key) {
            return Ok(m.id.clone());
        }
        let mut hits = all
            .iter()
            .filter(|m| !key.is_empty() && m.id.starts_with(key));
        match (hits.next(), hits.next()) {
            (Some(m), None) => Ok(m.id.clone()),
            (Some(_), Some(_)) => Err(Error::Ambiguous(key.to_string())),
            _ => Err(Error::NotFound(key.to_string())),
        }
    }

    pub(super) fn view(&self, meta: &Metadata) -> Instance {
        let observed = observe(&self.paths(&meta.id), meta);
        let mut instance = Instance::from_parts(meta, &observed);
        instance.health_status = self.health_of(meta, instance.state);
        instance
    }

    pub async fn list(&self, filter: Option<State>) -> Result<Vec<Instance>> {
        let mut out: Vec<Instance> = self.all()?.iter().map(|m| self.view(m)).collect();
        if let Some(state) = filter {
            out.retain(|i| i.state == state);
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(out)
    }

    pub async fn get(&self, key: &str) -> Result<Instance> {
        let id = self.resolve(key)?;
        let meta = store::load(&self.paths(&id)).map_err(|_| Error::NotFound(key.to_string()))?;
        Ok(self.view(&meta))
    }

    /// Directory holding an instance's logs (app, vmm, lodge).
    pub fn log_dir(&self, key: &str) -> Result<PathBuf> {
        let id = self.resolve(key)?;
        Ok(self.paths(&id).logs())
    }

    /// Whether instances of `kind` can be started on this host (its VMM
    /// is built in and installed).
    pub fn hypervisor_available(&self, kind: HypervisorKind) -> bool {
        self.launcher.backend(kind).is_ok()
    }

    /// The default network, when the daemon has one.
    pub fn network(&self) -> Option<&DaemonNet> {
        self.net.as_deref()
    }

    /// Removes network leftovers (see `net`): TAPs and leases of instances
    /// that have no record, and the TAP of an instance whose VM has ended
    /// by itself (nothing else stops it, so no verb deleted its TAP).
    /// Without a network there is nothing to do.
    pub async fn reap_network(&self) -> Result<()> {
        let Some(dn) = &self.net else {
            return Ok(());
        };
        let reaped = net::reap(dn, &self.cfg.guests_dir()).await?;
        for dev in &reaped.devices {
            tracing::info!("network: removed {dev}, left by an instance that is gone");
        }
        for lease in &reaped.leases {
            tracing::info!(
                "network: released {} of instance {}, which is gone",
                lease.ip,
                lease.instance_id
            );
        }
        for meta in self.all()? {
            if meta.network.is_none() || monitor_alive(&self.paths(&meta.id).logs()) {
                continue;
            }
            // Busy means a verb is working on it and will see to its TAP.
            let Ok(_guard) = self.lock_for(&meta.id).try_lock_owned() else {
                continue;
            };
            if !monitor_alive(&self.paths(&meta.id).logs())
                && lodge_net::delete_tap(&meta.id).await?
            {
                tracing::info!(
                    "network: removed the TAP of {}, whose VM has ended",
                    meta.id
                );
            }
        }
        Ok(())
    }

    /// Removes debris of creates or deletes interrupted by a crash, and
    /// names any VMM found running without its monitor (each is shown as
    /// Unknown and killed by stop or delete).
    pub fn sweep(&self) {
        for meta in self.all().unwrap_or_default() {
            if let Some(pid) = super::observe::orphan_vmm(&self.paths(&meta.id).logs()) {
                tracing::warn!(
                    "instance {}: its VMM (pid {pid}) runs without its monitor; stop or delete it",
                    meta.id
                );
            }
        }
        let Ok(entries) = std::fs::read_dir(self.cfg.guests_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".creating-") || name.starts_with(".deleting-") {
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!("removing {}: {e}", entry.path().display());
                }
            }
        }
    }
}

/// Every instance record under `guests` (records deleted while listing are
/// skipped).
fn all_records(guests: &Path) -> Result<Vec<Metadata>> {
    let ids = store::list_ids(guests).map_err(io(format!("listing {}", guests.display())))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match store::load(&Paths::new(guests.join(&id))) {
            Ok(m) => out.push(m),
            // Deleted between listing and reading.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("reading instance {id}"))(e)),
        }
    }
    Ok(out)
}

/// The attachments of volume `volume_id`, from the instance records under
/// `guests` (the volume store asks this before a delete, and shows it).
pub fn volume_users(
    guests: &Path,
    volume_id: &str,
) -> std::result::Result<Vec<lodge_volumes::Attachment>, String> {
    let all = all_records(guests).map_err(|e| e.to_string())?;
    Ok(all
        .iter()
        .flat_map(|m| {
            m.volumes
                .iter()
                .filter(|v| v.volume_id == volume_id)
                .map(|v| lodge_volumes::Attachment {
                    instance_id: m.id.clone(),
                    mount_path: v.mount_path.clone(),
                    readonly: v.readonly || v.overlay,
                })
        })
        .collect())
}

/// Names of the instances under `guests` booting from the image disk of
/// manifest `digest`. The image store asks this before deleting an image;
/// it reads the records directly, so the store can be opened before (and
/// handed to) the manager.
pub fn image_users(guests: &Path, digest: &str) -> Vec<String> {
    let mut users = match all_records(guests) {
        Ok(all) => all
            .into_iter()
            .filter(|m| m.image_digest.as_deref() == Some(digest))
            .map(|m| m.name)
            .collect(),
        // Unknown users: keep the image rather than risk a dangling disk.
        Err(e) => vec![format!("(instance records unreadable: {e})")],
    };
    // Snapshots boot from the image's disk too when restored or forked.
    if let Some(data_dir) = guests.parent() {
        users.extend(super::snapshot_store::image_users(data_dir, digest));
    }
    users
}
