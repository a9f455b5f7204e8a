//! Instances: create, boot, stop, start, delete, and what state each is in.
//!
//! The manager owns no VM process: each VM runs under its own detached
//! monitor (`lodge supervise`), which outlives the daemon. The manager only
//! writes records, prepares disks, starts monitors and talks to VMMs over
//! their control sockets; the state it reports is derived from the files and
//! locks those processes leave (see `state`). Operations on one instance are
//! serialised by a per-instance lock; different instances proceed in parallel.

pub mod naming;
pub mod state;
pub mod store;
mod view;
mod vmm;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex as AsyncMutex;

use crate::config::Config;
use crate::disks;
use naming::Name;
use state::{Observed, State};
use store::{Metadata, Paths};
pub use view::Instance;

/// Default resources, as hypeman's.
pub const DEFAULT_VCPUS: u32 = 2;
pub const DEFAULT_MEMORY: u64 = 1 << 30;
pub const DEFAULT_OVERLAY: u64 = 1 << 30;
pub const MAX_VCPUS: u32 = 64;
const MIN_MEMORY: u64 = 64 << 20;
const MIN_OVERLAY: u64 = 16 << 20;
/// How long a graceful stop may take before the VMM is stopped by force.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("instance {0:?} not found")]
    NotFound(String),
    #[error("{0:?} matches more than one instance; use more of the id")]
    Ambiguous(String),
    #[error(transparent)]
    InvalidName(#[from] naming::NameError),
    #[error("an instance named {0:?} already exists")]
    NameTaken(String),
    #[error("{0}")]
    Invalid(String),
    #[error("instance {id} is {state:?}: {action} needs it {needs}")]
    WrongState {
        id: String,
        state: State,
        action: &'static str,
        needs: &'static str,
    },
    #[error("{0}")]
    Disk(#[from] disks::DiskError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Vmm(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Where the root file system of a new instance comes from.
#[derive(Debug, Clone)]
pub enum RootSource {
    /// A host directory, made into a disk for this instance (`--rootfs`).
    Dir(PathBuf),
    /// A pulled image: the instance boots the image's shared read-only
    /// disk in place (never copied); its writes go to the overlay disk.
    Image {
        name: String,
        digest: String,
        disk: PathBuf,
    },
}

/// A validated create request.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub name: Name,
    pub root: RootSource,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub overlay_bytes: u64,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    /// Numeric `uid[:gid]` to run as (an image's `User`); `None` is root.
    pub user: Option<String>,
}

impl CreateSpec {
    /// Checks the limits that do not depend on other instances.
    pub fn validate(&self) -> Result<()> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(Error::Invalid(format!(
                "vcpus must be between 1 and {MAX_VCPUS}, got {}",
                self.vcpus
            )));
        }
        if self.memory_bytes < MIN_MEMORY {
            return Err(Error::Invalid(format!(
                "memory must be at least 64MiB, got {} bytes",
                self.memory_bytes
            )));
        }
        if self.overlay_bytes < MIN_OVERLAY {
            return Err(Error::Invalid(format!(
                "overlay size must be at least 16MiB, got {} bytes",
                self.overlay_bytes
            )));
        }
        if self.entrypoint.is_empty() && self.cmd.is_empty() {
            return Err(Error::Invalid(
                "nothing to run: give a command or an entrypoint".into(),
            ));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(Error::Invalid(format!(
                    "invalid environment variable name {key:?}"
                )));
            }
        }
        if !self.workdir.starts_with('/') {
            return Err(Error::Invalid(format!(
                "working directory must be absolute, got {:?}",
                self.workdir
            )));
        }
        match &self.root {
            RootSource::Dir(dir) => {
                if !dir.is_absolute() {
                    return Err(Error::Invalid(format!(
                        "rootfs path must be absolute, got {}",
                        dir.display()
                    )));
                }
                if !dir.is_dir() {
                    return Err(Error::Invalid(format!(
                        "rootfs {} is not a directory",
                        dir.display()
                    )));
                }
            }
            RootSource::Image { name, disk, .. } => {
                if !disk.is_file() {
                    return Err(Error::Invalid(format!("image {name} has no root disk")));
                }
            }
        }
        Ok(())
    }
}

/// The daemon's instance manager.
pub struct Manager {
    cfg: Arc<Config>,
    vmm: vmm::Vmm,
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    /// Names claimed by creates still preparing their disks.
    reserved: Mutex<std::collections::HashSet<String>>,
    /// Connections to the guest agents of running instances.
    agents: crate::agent::Pool,
}

/// Where a running instance's guest agent is reached.
#[derive(Debug, Clone)]
pub struct AgentEndpoint {
    pub id: String,
    pub socket: PathBuf,
}

impl Manager {
    pub fn new(cfg: Arc<Config>, accel: lodge_hypervisor::Accel) -> Result<Self> {
        std::fs::create_dir_all(cfg.guests_dir())
            .map_err(io(format!("creating {}", cfg.guests_dir().display())))?;
        let vmm = vmm::Vmm::new(cfg.clone(), accel)?;
        Ok(Manager {
            cfg,
            vmm,
            locks: Mutex::new(HashMap::new()),
            reserved: Mutex::new(std::collections::HashSet::new()),
            agents: crate::agent::Pool::default(),
        })
    }

    /// The guest agent of a running instance (exec, cp, stat); any other
    /// state is refused as `action` needing it running.
    pub fn agent_endpoint(&self, key: &str, action: &'static str) -> Result<AgentEndpoint> {
        let id = self.resolve(key)?;
        let paths = self.paths(&id);
        let meta = store::load(&paths).map_err(|_| Error::NotFound(key.to_string()))?;
        let state = state::derive(&self.observe(&meta));
        if state != State::Running {
            return Err(Error::WrongState {
                id,
                state,
                action,
                needs: "running",
            });
        }
        Ok(AgentEndpoint {
            socket: paths.agent_socket(),
            id,
        })
    }

    /// The daemon's connections to guest agents.
    pub fn agents(&self) -> &crate::agent::Pool {
        &self.agents
    }

    fn paths(&self, id: &str) -> Paths {
        Paths::new(&self.cfg.guests_dir(), id)
    }

    /// Resolves `key`, takes the instance's lock and reads its record: the
    /// caller's operation is the only one on this instance until the guard
    /// drops.
    async fn lock_instance(&self, key: &str) -> Result<Locked> {
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

    fn lock_for(&self, id: &str) -> Arc<AsyncMutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_string()).or_default().clone()
    }

    /// Reserves `name` until the returned guard drops (the record is on
    /// disk by then, so the name stays taken).
    fn claim_name(&self, name: &str) -> Result<NameClaim<'_>> {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if reserved.contains(name) || self.all()?.iter().any(|m| m.name == name) {
            return Err(Error::NameTaken(name.to_string()));
        }
        reserved.insert(name.to_string());
        Ok(NameClaim {
            manager: self,
            name: name.to_string(),
        })
    }

    fn all(&self) -> Result<Vec<Metadata>> {
        let guests = self.cfg.guests_dir();
        let ids = store::list_ids(&guests).map_err(io(format!("listing {}", guests.display())))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match store::load(&self.paths(&id)) {
                Ok(m) => out.push(m),
                // Deleted between listing and reading.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("reading instance {id}"))(e)),
            }
        }
        Ok(out)
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

    fn observe(&self, meta: &Metadata) -> Observed {
        let paths = self.paths(&meta.id);
        Observed {
            monitor_alive: vmm::monitor_alive(&paths.logs()),
            ever_started: meta.started_at.is_some(),
            paused: meta.paused,
            guest: vmm::read_guest_progress(&paths.status_file()),
            vmm_exit: vmm::read_vmm_exit(&paths.logs()),
        }
    }

    fn view(&self, meta: &Metadata) -> Instance {
        let observed = self.observe(meta);
        Instance::from_parts(meta, &observed)
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

    /// Creates the instance's disks and record, then boots it.
    pub async fn create(&self, spec: CreateSpec) -> Result<Instance> {
        spec.validate()?;
        // Claim the name, so slow disk preparation runs outside any lock
        // while a second create of the same name is refused at once.
        let _claim = self.claim_name(spec.name.as_str())?;
        let id = naming::new_id();
        let paths = self.paths(&id);
        // Prepared under a staging name that listing ignores, then renamed
        // into place, so a failed create leaves nothing behind.
        let staging = Paths {
            dir: self.cfg.guests_dir().join(format!(".creating-{id}")),
        };
        let prepared = {
            let staging = staging.clone();
            let spec = spec.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || prepare(&staging, &id, &spec))
                .await
                .map_err(|e| Error::Vmm(format!("create task failed: {e}")))?
        };
        let meta = match prepared {
            Ok(meta) => meta,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging.dir);
                return Err(e);
            }
        };
        std::fs::rename(&staging.dir, &paths.dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staging.dir);
            io(format!("creating {}", paths.dir.display()))(e)
        })?;
        oplog(
            &paths,
            &format!("created name={} image={}", meta.name, meta.image),
        );

        let lock = self.lock_for(&id);
        let _guard = lock.lock().await;
        if let Err(e) = self.boot(&paths, meta.clone()).await {
            // Do not leave a half-booted instance behind a failed create.
            let _ = self.vmm.force_stop(&paths, &meta).await;
            let _ = std::fs::remove_dir_all(&paths.dir);
            return Err(e);
        }
        let meta = store::load(&paths).map_err(io("reading instance record"))?;
        Ok(self.view(&meta))
    }

    /// Starts the monitor + VMM for a prepared instance.
    async fn boot(&self, paths: &Paths, mut meta: Metadata) -> Result<()> {
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
        self.vmm.start(paths, &meta).await?;
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
        let state = state::derive(&self.observe(&meta));
        if matches!(state, State::Stopped | State::Created | State::Standby) {
            return Err(Error::WrongState {
                id,
                state,
                action: "stop",
                needs: "running",
            });
        }
        oplog(&paths, "stopping");
        let graceful = self.vmm.stop(&paths, &meta, STOP_TIMEOUT).await?;
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
        let state = state::derive(&self.observe(&meta));
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
        if meta.entrypoint.is_empty() && meta.cmd.is_empty() {
            return Err(Error::Invalid(
                "nothing to run: give a command or an entrypoint".into(),
            ));
        }
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
        if vmm::monitor_alive(&paths.logs()) {
            if graceful {
                self.vmm.stop(&paths, &meta, STOP_TIMEOUT).await?;
            } else {
                self.vmm.force_stop(&paths, &meta).await?;
            }
        }
        // Renamed first so that a crash mid-removal leaves no half record.
        let trash = self.cfg.guests_dir().join(format!(".deleting-{id}"));
        std::fs::rename(&paths.dir, &trash).map_err(io(format!("deleting instance {id}")))?;
        std::fs::remove_dir_all(&trash).map_err(io(format!("removing {}", trash.display())))?;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(())
    }

    /// Removes debris of creates or deletes interrupted by a crash.
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(self.cfg.guests_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".creating-") || name.starts_with(".deleting-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Names of the instances (in any state) booting from the image disk
    /// of manifest `digest`; the image may not be deleted while any exist.
    pub fn instances_using_image(&self, digest: &str) -> Vec<String> {
        match self.all() {
            Ok(all) => all
                .into_iter()
                .filter(|m| m.image_digest.as_deref() == Some(digest))
                .map(|m| m.name)
                .collect(),
            // Unknown users: keep the image rather than risk a dangling disk.
            Err(e) => vec![format!("(instance records unreadable: {e})")],
        }
    }
}

/// An instance held under its lock, with its record as read under it.
struct Locked {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    id: String,
    paths: Paths,
    meta: Metadata,
}

struct NameClaim<'a> {
    manager: &'a Manager,
    name: String,
}

impl Drop for NameClaim<'_> {
    fn drop(&mut self) {
        self.manager
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

/// Builds the instance directory's contents: record, disks, log dir.
fn prepare(dir: &Paths, id: &str, spec: &CreateSpec) -> Result<Metadata> {
    std::fs::create_dir_all(dir.logs()).map_err(io(format!("creating {}", dir.dir.display())))?;
    // The two disks are independent: make them side by side.
    let overlay = {
        let path = dir.overlay();
        let size = spec.overlay_bytes;
        std::thread::spawn(move || disks::empty_ext4(&path, size))
    };
    let image = match &spec.root {
        RootSource::Dir(src) => lodge_images::disk::ext4(src, &dir.rootfs())
            .map(|()| format!("rootfs:{}", src.display()))
            .map_err(disks::DiskError::from),
        RootSource::Image { name, .. } => Ok(name.clone()),
    };
    let (root_disk, image_digest) = match &spec.root {
        RootSource::Dir(_) => (None, None),
        RootSource::Image { digest, disk, .. } => (Some(disk.clone()), Some(digest.clone())),
    };
    // Joined before any error returns, so nothing writes into the staging
    // directory once the caller removes it.
    let overlay = overlay
        .join()
        .map_err(|_| Error::Vmm("overlay disk task panicked".into()))?;
    let image = image?;
    overlay?;
    let meta = Metadata {
        id: id.to_string(),
        name: spec.name.to_string(),
        image,
        created_at: SystemTime::now(),
        vcpus: spec.vcpus,
        memory_bytes: spec.memory_bytes,
        overlay_bytes: spec.overlay_bytes,
        hypervisor: "qemu".into(),
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.cmd.clone(),
        env: spec.env.clone(),
        workdir: spec.workdir.clone(),
        user: spec.user.clone(),
        root_disk,
        image_digest,
        paused: false,
        started_at: None,
        stopped_at: None,
    };
    disks::raw_image(&dir.config_disk(), &guest_config(&meta).encode())?;
    store::save(dir, &meta).map_err(io("writing instance record"))?;
    Ok(meta)
}

/// What the guest init runs, from the record.
fn guest_config(meta: &Metadata) -> lodge_guest::GuestConfig {
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

/// Appends one line to the instance's `lodge` log (lodge's own actions).
fn oplog(paths: &Paths, msg: &str) {
    let line = format!(
        "{} {msg}\n",
        humantime::format_rfc3339_millis(SystemTime::now())
    );
    if let Err(e) = append_oplog(&paths.logs(), line.as_bytes()) {
        tracing::warn!("writing the lodge log of {}: {e}", paths.dir.display());
    }
}

fn append_oplog(dir: &Path, line: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = lodge_logs::RotatingWriter::open(dir, lodge_logs::Source::Lodge, 10 << 20, 2)
        .map_err(std::io::Error::other)?;
    w.write_all(line)?;
    w.finish()
}
