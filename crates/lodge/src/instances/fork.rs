//! Fork: a new instance made from an instance (stopped, in standby, or
//! running when the caller allows a brief standby of it) or from a
//! snapshot, with its own id, name, disks, logs, MAC and address.
//!
//! The steps:
//! 1. validate the request (name, target state) before touching anything;
//! 2. gather the files to copy: the source's disks, plus its saved memory
//!    and device state when it is in standby (a running source is put in
//!    standby for the copy and restored right after, under its lock);
//! 3. claim the name, lease an address, copy the files into a staging
//!    directory (reflink or sparse, see `diskcopy`), write the fork's
//!    record and config disk (its own name and address), and move the
//!    directory into place;
//! 4. bring the fork to its target state: a fork with memory is in
//!    Standby and restores to Running (then the guest agent moves the
//!    guest onto the fork's address, see `standby`); one without boots.
//!
//! A failure in 3 leaves nothing behind (directory, lease); the source is
//! restored in any case.

use std::path::PathBuf;
use std::time::SystemTime;

use super::diskcopy::copy_file;
use super::error::{io, Error, Result};
use super::lifecycle::guest_config;
use super::manager::Manager;
use super::naming::{self, Name};
use super::observe::observe;
use super::oplog::oplog;
use super::snapshots::{SnapshotKind, TargetState};
use super::state::{self, State};
use super::store::{self, Metadata, NetworkRecord, Paths, SavedState, StandbyState};
use super::view::Instance;
use crate::disks;

/// A fork request, parsed.
#[derive(Debug, Clone)]
pub struct ForkRequest {
    pub name: Name,
    /// A running source may be put in standby briefly for the copy.
    pub from_running: bool,
    pub target: Option<TargetState>,
}

/// Where a fork's files come from.
struct Source {
    meta: Metadata,
    /// `(source path, file name in the fork's directory)`.
    files: Vec<(PathBuf, String)>,
    /// The saved state, with paths relative to the fork's directory.
    saved: Option<SavedState>,
}

/// The disk file names an instance directory holds (as `snapshots`).
fn disk_names(paths: &Paths, meta: &Metadata) -> Vec<String> {
    let mut files = Vec::new();
    if meta.root_disk.is_none() {
        files.push(paths.rootfs());
    }
    files.push(paths.overlay());
    files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Refuses a target a source without memory cannot reach.
fn check_target(has_memory: bool, target: Option<TargetState>) -> Result<()> {
    if !has_memory && target == Some(TargetState::Standby) {
        return Err(Error::BadSnapshotRequest(
            "a fork without memory (from a stopped source) cannot be in standby: ask for Stopped or Running"
                .into(),
        ));
    }
    Ok(())
}

impl Manager {
    /// Forks instance `key` (see the module doc).
    pub async fn fork_instance(&self, key: &str, req: ForkRequest) -> Result<Instance> {
        let mut locked = self.lock_instance(key).await?;
        let state = state::derive(&observe(&locked.paths, &locked.meta));
        let (woke, default) = match state {
            State::Stopped | State::Created => (false, TargetState::Stopped),
            State::Standby => (false, TargetState::Standby),
            State::Running if req.from_running => (true, TargetState::Running),
            state => {
                return Err(Error::WrongState {
                    id: locked.id.clone(),
                    state,
                    action: "fork",
                    needs: "stopped or in standby (or running, with from_running)",
                })
            }
        };
        check_target(
            state != State::Stopped && state != State::Created,
            req.target,
        )?;
        self.check_name_free(&req.name)?;
        if woke {
            self.standby_locked(&mut locked).await?;
        } else {
            // The copy needs the saved memory as it loads.
            super::compress::ensure_uncompressed(&locked.paths, &mut locked.meta).await?;
        }
        let paths = locked.paths.clone();
        let mut files: Vec<(PathBuf, String)> = disk_names(&paths, &locked.meta)
            .into_iter()
            .map(|n| (paths.dir.join(&n), n))
            .collect();
        let saved = locked.meta.standby.snapshot.clone().map(|s| {
            files.push((paths.dir.join(&s.file), "standby/memory".into()));
            if let Some(ram) = &s.ram_file {
                files.push((paths.dir.join(ram), super::store::RAM_FILE.into()));
            }
            SavedState {
                file: PathBuf::from("standby/memory"),
                ram_file: s.ram_file.as_ref().map(|_| super::store::RAM_FILE.into()),
                ..s
            }
        });
        let source = Source {
            meta: locked.meta.clone(),
            files,
            saved,
        };
        let made = self.make_fork(source, &req.name).await;
        if woke {
            // The source goes on whatever happened to the fork.
            self.restore_locked(&mut locked).await?;
        }
        oplog(
            &paths,
            &match &made {
                Ok(id) => format!("forked as {} ({id})", req.name),
                Err(e) => format!("fork {} failed: {e}", req.name),
            },
        );
        drop(locked);
        self.bring_to(&made?, req.target.unwrap_or(default)).await
    }

    /// Forks snapshot `sid` into a new instance.
    pub async fn fork_snapshot(&self, sid: &str, req: ForkRequest) -> Result<Instance> {
        let record = self.snapshot_record(sid)?;
        let has_memory = record.kind == SnapshotKind::Standby;
        check_target(has_memory, req.target)?;
        self.check_name_free(&req.name)?;
        let dir = self.snapshots_dir().join(&record.id);
        let mut files: Vec<(PathBuf, String)> = record
            .disks
            .iter()
            .filter(|n| !n.starts_with("config"))
            .map(|n| (dir.join(n), n.clone()))
            .collect();
        let saved = record.state.clone().map(|s| {
            files.push((dir.join(&s.file), "standby/memory".into()));
            if let Some(ram) = &s.ram_file {
                files.push((dir.join(ram), super::store::RAM_FILE.into()));
            }
            SavedState {
                file: PathBuf::from("standby/memory"),
                ram_file: s.ram_file.as_ref().map(|_| super::store::RAM_FILE.into()),
                ..s
            }
        });
        let id = self
            .make_fork(
                Source {
                    meta: record.source.clone(),
                    files,
                    saved,
                },
                &req.name,
            )
            .await?;
        let default = if has_memory {
            TargetState::Running
        } else {
            TargetState::Stopped
        };
        self.bring_to(&id, req.target.unwrap_or(default)).await
    }

    fn check_name_free(&self, name: &Name) -> Result<()> {
        if self.all()?.iter().any(|m| m.name == name.as_str()) {
            return Err(Error::NameTaken(name.to_string()));
        }
        Ok(())
    }

    /// Step 3 of the module doc; returns the fork's id.
    async fn make_fork(&self, source: Source, name: &Name) -> Result<String> {
        let _claim = self
            .claims
            .claim(name.as_str(), |n| {
                Ok::<_, Error>(self.all()?.iter().any(|m| m.name == n))
            })?
            .ok_or_else(|| Error::NameTaken(name.to_string()))?;
        let id = naming::new_id();
        let paths = self.paths(&id);
        let (gate, lease) = match (&self.net, &source.meta.network) {
            (Some(dn), Some(_)) => {
                let gate = dn.gate.read().await;
                let lease = dn.alloc.allocate(&id)?;
                (Some(gate), Some(lease))
            }
            (None, Some(_)) => return Err(Error::NetworkDisabled),
            _ => (None, None),
        };
        let staging = Paths {
            dir: self.cfg.paths().guest_creating(&id),
        };
        let mut meta = source.meta.clone();
        meta.id = id.clone();
        meta.name = name.to_string();
        meta.created_at = SystemTime::now();
        meta.paused = false;
        meta.stopped_at = None;
        meta.network = match (&lease, &source.meta.network) {
            (Some(l), Some(rec)) => Some(NetworkRecord::new(l, rec.limits()?)),
            _ => None,
        };
        meta.standby = StandbyState {
            ram_file: source.saved.as_ref().is_some_and(|s| s.ram_file.is_some()),
            snapshot: source.saved.clone(),
            // Its guest still has the source's address until told.
            readdress_from: source
                .saved
                .as_ref()
                .and(meta.network.as_ref())
                .and(source.meta.network.as_ref())
                .map(|rec| rec.ip),
            ..StandbyState::default()
        };
        let network = self.net.as_ref().map(|dn| dn.network.clone());
        let prepared = {
            let staging = staging.clone();
            let meta = meta.clone();
            let files = source.files;
            tokio::task::spawn_blocking(move || -> Result<()> {
                std::fs::create_dir_all(staging.logs())
                    .map_err(io(format!("creating {}", staging.dir.display())))?;
                std::fs::create_dir_all(staging.dir.join("standby"))
                    .map_err(io("creating the fork's state directory"))?;
                for (from, name) in &files {
                    copy_file(from, &staging.dir.join(name))
                        .map_err(io(format!("copying {} into the fork", from.display())))?;
                }
                disks::raw_image(
                    &staging.config_disk(),
                    &guest_config(&meta, network.as_ref())?.encode(),
                )?;
                store::save(&staging, &meta).map_err(io("writing the fork's record"))
            })
            .await
            .map_err(|e| Error::Task {
                what: "fork",
                source: Some(e),
            })
            .and_then(|r| r)
        };
        let placed = prepared.and_then(|()| {
            std::fs::rename(&staging.dir, &paths.dir)
                .map_err(io(format!("creating {}", paths.dir.display())))
        });
        if let Err(e) = placed {
            let mut cleanup = Vec::new();
            if let Err(c) = std::fs::remove_dir_all(&staging.dir) {
                if c.kind() != std::io::ErrorKind::NotFound {
                    cleanup.push(io("removing the fork's staging directory")(c));
                }
            }
            cleanup.extend(self.release_lease(&id).err());
            return Err(Error::with_cleanup(e, cleanup));
        }
        drop(gate);
        oplog(
            &paths,
            &format!(
                "created name={} as a fork of {} ({})",
                meta.name, source.meta.name, source.meta.id
            ),
        );
        Ok(id)
    }

    /// Step 4 of the module doc.
    async fn bring_to(&self, id: &str, target: TargetState) -> Result<Instance> {
        let has_memory = {
            let meta = store::load(&self.paths(id)).map_err(io("reading the fork's record"))?;
            meta.standby.snapshot.is_some()
        };
        match (has_memory, target) {
            (true, TargetState::Running) => self.restore(id).await,
            (true, TargetState::Stopped) => {
                let mut locked = self.lock_instance(id).await?;
                super::snapshots::drop_saved_state(&locked.paths, &mut locked.meta)?;
                locked.meta.standby.readdress_from = None;
                store::save(&locked.paths, &locked.meta).map_err(io("writing instance record"))?;
                Ok(self.view(&locked.meta))
            }
            (false, TargetState::Running) => self.start(id, None, None).await,
            _ => self.get(id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_without_memory_cannot_be_in_standby() {
        assert!(check_target(false, Some(TargetState::Standby)).is_err());
        assert!(check_target(false, Some(TargetState::Running)).is_ok());
        assert!(check_target(false, None).is_ok());
        assert!(check_target(true, Some(TargetState::Standby)).is_ok());
    }
}
