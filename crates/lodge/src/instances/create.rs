//! The create verb: resolve the request (pull the image if needed), claim
//! the name, prepare the instance directory under a staging name, move it
//! into place and boot it.
//!
//! A failed create leaves nothing behind (directory, TAP, address lease);
//! when undoing it fails too, the caller gets both errors
//! ([`Error::with_cleanup`]) instead of a cleanup silently dropped.

use std::time::SystemTime;

use super::error::{io, Error, Result};
use super::lifecycle::guest_config;
use super::manager::Manager;
use super::naming;
use super::net::NetworkRecord;
use super::oplog::oplog;
use super::spec::{CreateRequest, CreateSpec, RootRequest, RootSource};
use super::store::{self, Metadata, Paths};
use super::view::Instance;
use super::volumes::make_upper_disks;
use crate::disks;

impl Manager {
    /// Creates the instance's disks and record, then boots it.
    #[tracing::instrument(name = "instance.create", skip_all, fields(name = %req.name))]
    pub async fn create(&self, req: CreateRequest) -> Result<Instance> {
        // Asked first, before any pull: is the request valid at all, and is
        // this hypervisor built in?
        req.validate()?;
        self.launcher.backend(req.hypervisor)?;
        // An image that is not local is pulled first; the lease keeps its
        // disk from being deleted until the instance record names it.
        let lease = match &req.root {
            RootRequest::Image {
                reference,
                platform,
            } => Some(self.images.ensure(reference, platform.as_deref()).await?),
            RootRequest::Dir(_) => None,
        };
        let spec = CreateSpec::resolve(req, lease.as_ref())?;
        let instance = self.create_from_spec(spec).await;
        drop(lease);
        instance
    }

    async fn create_from_spec(&self, spec: CreateSpec) -> Result<Instance> {
        spec.validate()?;
        let attach = self.attach_network(&spec)?;
        // Claim the name, so slow disk preparation runs outside any lock
        // while a second create of the same name is refused at once.
        let name = spec.name.as_str();
        let _claim = self
            .claims
            .claim(name, |n| {
                Ok::<_, Error>(self.all()?.iter().any(|m| m.name == n))
            })?
            .ok_or_else(|| Error::NameTaken(name.to_string()))?;
        let id = naming::new_id();
        // Room for the VM, held until its boot is over (then its state
        // counts it).
        let _room = self.admit(
            &id,
            super::admission::Demand {
                vcpus: u64::from(spec.vcpus),
                memory_bytes: spec.memory_bytes,
            },
        )?;
        let paths = self.paths(&id);
        // Volumes are decided under the volume lock, held until this
        // instance's record (which settles them) is in place.
        let (volume_guard, volumes) = self.plan_volumes(&id, &spec.volumes).await?;
        // The lease is taken first (the guest's config disk carries the
        // address) and the reaper is kept out until the record is in place.
        let (gate, lease) = match (&self.net, attach) {
            (Some(dn), true) => {
                let gate = dn.gate.read().await;
                let lease = dn.alloc.allocate(&id)?;
                (Some(gate), Some(lease))
            }
            _ => (None, None),
        };
        let record = lease
            .as_ref()
            .map(|l| NetworkRecord::new(l, spec.network.limits));
        let network = self.net.as_ref().map(|dn| dn.network.clone());
        let console = self.cfg.console;
        // Prepared under a staging name that listing ignores, then renamed
        // into place, so a failed create leaves nothing behind.
        let staging = Paths {
            dir: self.cfg.paths().guest_creating(&id),
        };
        let prepared = {
            let staging = staging.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || {
                prepare(
                    &staging,
                    &id,
                    &spec,
                    record,
                    network.as_ref(),
                    console,
                    volumes,
                )
            })
            .await
            .map_err(|e| Error::Task {
                what: "create",
                source: Some(e),
            })
            .and_then(|r| r)
        };
        let meta = match prepared {
            Ok(meta) => meta,
            Err(e) => {
                let mut cleanup: Vec<Error> = remove_dir(&staging).err().into_iter().collect();
                cleanup.extend(self.release_lease(&id).err());
                return Err(Error::with_cleanup(e, cleanup));
            }
        };
        // The instance's lock is held from before its record appears until
        // its boot is done: a delete racing this create either finds no
        // record (404) or waits and deletes a fully created instance, and
        // never removes the directory under the boot.
        let lock = self.lock_for(&id);
        let _guard = lock.lock().await;
        if let Err(e) = std::fs::rename(&staging.dir, &paths.dir) {
            let run = io(format!("creating {}", paths.dir.display()))(e);
            let mut cleanup: Vec<Error> = remove_dir(&staging).err().into_iter().collect();
            cleanup.extend(self.release_lease(&id).err());
            return Err(Error::with_cleanup(run, cleanup));
        }
        drop(gate);
        drop(volume_guard);
        oplog(
            &paths,
            &format!("created name={} image={}", meta.name, meta.image),
        );

        if let Err(e) = self.boot(&paths, meta.clone()).await {
            // Do not leave a half-booted instance behind a failed create.
            let mut cleanup = Vec::new();
            if let Err(c) = self.launcher.force_stop(&paths, &meta).await {
                cleanup.push(c);
            }
            if let Err(c) = self.tap_down(&meta).await {
                cleanup.push(c);
            }
            if let Err(c) = remove_dir(&paths) {
                cleanup.push(c);
            }
            // Only once the record is gone, so the address is never
            // handed out while this instance still names it.
            if let Err(c) = self.release_lease(&id) {
                cleanup.push(c);
            }
            return Err(Error::with_cleanup(e, cleanup));
        }
        let meta = store::load(&paths).map_err(io("reading instance record"))?;
        Ok(self.view(&meta))
    }
}

impl Manager {
    /// Whether the new instance goes on the default network: hypeman's
    /// default is yes, so an unsaid `enabled` follows the daemon, while an
    /// explicit request for a network the daemon lacks is refused.
    fn attach_network(&self, spec: &CreateSpec) -> Result<bool> {
        let req = spec.network;
        let limited = req.limits.download.is_some() || req.limits.upload.is_some();
        match (req.enabled, self.net.is_some()) {
            (Some(false), _) => Ok(false),
            (_, true) => Ok(true),
            (Some(true), false) => Err(Error::NetworkDisabled),
            (None, false) if limited => Err(Error::NetworkDisabled),
            (None, false) => Ok(false),
        }
    }
}

/// Removes an instance (or staging) directory.
fn remove_dir(paths: &Paths) -> Result<()> {
    match std::fs::remove_dir_all(&paths.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", paths.dir.display()))(e)),
    }
}

/// Builds the instance directory's contents: record, disks, log dir.
fn prepare(
    dir: &Paths,
    id: &str,
    spec: &CreateSpec,
    network: Option<NetworkRecord>,
    net: Option<&lodge_net::Network>,
    console: super::store::ConsoleKind,
    volumes: Vec<store::VolumeAttachment>,
) -> Result<Metadata> {
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
    let overlay = overlay.join().map_err(|_| Error::Task {
        what: "overlay disk",
        source: None,
    })?;
    let image = image?;
    overlay?;
    make_upper_disks(dir, &volumes)?;
    let meta = Metadata {
        id: id.to_string(),
        name: spec.name.to_string(),
        image,
        created_at: SystemTime::now(),
        vcpus: spec.vcpus,
        memory_bytes: spec.memory_bytes,
        overlay_bytes: spec.overlay_bytes,
        hypervisor: spec.hypervisor,
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
        network,
        tags: spec.tags.clone(),
        expires_at: spec.expires_at,
        restart_policy: spec.restart_policy.clone(),
        restart_status: None,
        health_check: spec.health_check.clone(),
        console,
        standby: Default::default(),
        volumes,
        auto_standby: spec.auto_standby.clone(),
        auto_standby_runtime: Default::default(),
        balloon: true,
        disk_io_bps: spec.disk_io_bps,
    };
    disks::raw_image(&dir.config_disk(), &guest_config(&meta, net)?.encode())?;
    store::save(dir, &meta).map_err(io("writing instance record"))?;
    Ok(meta)
}
