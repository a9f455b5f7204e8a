//! Snapshots made with the snapshots API: copies of an instance's disks
//! (kind `Stopped`), or of its disks and saved memory and device state
//! (kind `Standby`), kept under `<data dir>/snapshots/<id>/` apart from
//! the instance, so they outlive it; the state a plain standby keeps in
//! the instance directory is not one of these and goes with it.
//!
//! Taking one: a `Stopped` snapshot needs the instance Stopped (or in
//! Standby, the disks being at rest either way); a `Standby` snapshot of
//! a Running instance puts it in standby, copies, and restores it, all
//! under the instance lock. Files are copied by reflink where the
//! filesystem can, else sparsely (see `diskcopy`), into a staging
//! directory renamed into place once complete.
//!
//! Restoring one into its instance (which must not be running) puts the
//! copies back and then moves the instance to the target state: a
//! `Standby` snapshot makes the instance Standby (then restores it when
//! asked for Running, or drops the memory for Stopped); a `Stopped` one
//! leaves it Stopped (then boots it for Running).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::diskcopy::{copy_file, CopyKind};
use super::error::{io, Error, Result};
use super::manager::{Locked, Manager};
use super::naming::{new_id, Name};
use super::observe::observe;
use super::oplog::oplog;
use super::snapshot_store::{records_in, snapshots_dir_of, RECORD};
pub use super::snapshot_store::{Snapshot, SnapshotKind, SnapshotRecord};
use super::state::{self, State};
use super::store::{self, Metadata, Paths, SavedState, StandbyState};

/// A request to take a snapshot, parsed.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub kind: SnapshotKind,
    pub name: Option<Name>,
    pub tags: BTreeMap<String, String>,
    /// Taken by the instance's snapshot schedule.
    pub scheduled: bool,
}

/// Filters of `GET /snapshots` (all must match).
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    pub kind: Option<SnapshotKind>,
    pub name: Option<String>,
    pub source_instance_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl SnapshotFilter {
    pub fn matches(&self, r: &SnapshotRecord) -> bool {
        self.kind.is_none_or(|k| k == r.kind)
            && self
                .name
                .as_ref()
                .is_none_or(|n| r.name.as_ref() == Some(n))
            && self
                .source_instance_id
                .as_ref()
                .is_none_or(|s| *s == r.source.id)
            && self.tags.iter().all(|(k, v)| r.tags.get(k) == Some(v))
    }
}

/// The state a snapshot restore leaves the instance in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TargetState {
    Stopped,
    Standby,
    Running,
}

/// The saved device (and, without a RAM file, memory) state.
const STATE_FILE: &str = "memory";
/// The copy of the guest RAM file.
const RAM_FILE: &str = "memory.ram";

/// Allocated bytes of the files in `dir`.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// The disk files of an instance that a snapshot copies: its own root
/// disk (an image's shared disk is read-only and stays where it is), the
/// writable overlay, and the config disk.
fn disk_files(paths: &Paths, meta: &Metadata) -> Vec<String> {
    let mut files = Vec::new();
    if meta.root_disk.is_none() {
        files.push(paths.rootfs());
    }
    files.push(paths.overlay());
    files.push(paths.config_disk());
    files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

impl Manager {
    pub(super) fn snapshots_dir(&self) -> PathBuf {
        snapshots_dir_of(&self.cfg.data_dir)
    }

    /// Every snapshot record (unreadable ones are logged and skipped).
    pub(super) fn snapshot_records(&self) -> Vec<SnapshotRecord> {
        records_in(&self.snapshots_dir())
    }

    /// A snapshot by id (or unique id prefix).
    pub(super) fn snapshot_record(&self, key: &str) -> Result<SnapshotRecord> {
        let all = self.snapshot_records();
        if let Some(r) = all.iter().find(|r| r.id == key) {
            return Ok(r.clone());
        }
        let mut hits = all
            .into_iter()
            .filter(|r| !key.is_empty() && r.id.starts_with(key));
        match (hits.next(), hits.next()) {
            (Some(r), None) => Ok(r),
            (Some(_), Some(_)) => Err(Error::Ambiguous(key.to_string())),
            _ => Err(Error::SnapshotNotFound(key.to_string())),
        }
    }

    pub async fn list_snapshots(&self, filter: &SnapshotFilter) -> Vec<Snapshot> {
        self.snapshot_records()
            .iter()
            .filter(|r| filter.matches(r))
            .map(SnapshotRecord::view)
            .collect()
    }

    pub async fn get_snapshot(&self, key: &str) -> Result<Snapshot> {
        Ok(self.snapshot_record(key)?.view())
    }

    pub async fn delete_snapshot(&self, key: &str) -> Result<()> {
        self.delete_snapshot_now(key)
    }

    pub(super) fn delete_snapshot_now(&self, key: &str) -> Result<()> {
        let r = self.snapshot_record(key)?;
        let dir = self.snapshots_dir().join(&r.id);
        let trash = self.snapshots_dir().join(format!(".deleting-{}", r.id));
        std::fs::rename(&dir, &trash).map_err(io(format!("deleting snapshot {}", r.id)))?;
        std::fs::remove_dir_all(&trash).map_err(io(format!("removing {}", trash.display())))
    }

    /// Takes a snapshot of instance `key` (see the module doc).
    pub async fn create_snapshot(&self, key: &str, req: SnapshotRequest) -> Result<Snapshot> {
        let mut locked = self.lock_instance(key).await?;
        if let Some(name) = &req.name {
            let taken = self
                .snapshot_records()
                .iter()
                .any(|r| r.source.id == locked.id && r.name.as_deref() == Some(name.as_str()));
            if taken {
                return Err(Error::SnapshotNameTaken(name.to_string()));
            }
        }
        let state = state::derive(&observe(&locked.paths, &locked.meta));
        let wake = match (req.kind, state) {
            (SnapshotKind::Stopped, State::Stopped | State::Created | State::Standby) => false,
            (SnapshotKind::Standby, State::Standby) => false,
            (SnapshotKind::Standby, State::Running) => {
                self.standby_locked(&mut locked).await?;
                true
            }
            (kind, state) => {
                return Err(Error::WrongState {
                    id: locked.id.clone(),
                    state,
                    action: "a snapshot",
                    needs: match kind {
                        SnapshotKind::Stopped => "stopped or in standby",
                        SnapshotKind::Standby => "running or in standby",
                    },
                })
            }
        };
        if !wake {
            // The copy needs the saved memory as it loads.
            super::compress::ensure_uncompressed(&locked.paths, &mut locked.meta).await?;
        }
        let taken = self.copy_into_snapshot(&locked, &req).await;
        if wake {
            // The source goes on whatever happened to the copy.
            if let Err(e) = self.restore_locked(&mut locked).await {
                if let Ok(r) = &taken {
                    tracing::warn!("snapshot {} taken, but its source did not restore", r.id);
                }
                return Err(e);
            }
        }
        let record = taken?;
        oplog(
            &locked.paths,
            &format!(
                "snapshot {} ({:?}) taken, {} MiB",
                record.id,
                record.kind,
                record.size_bytes >> 20
            ),
        );
        Ok(record.view())
    }

    /// Copies the resting instance's files into a new snapshot directory.
    async fn copy_into_snapshot(
        &self,
        locked: &Locked,
        req: &SnapshotRequest,
    ) -> Result<SnapshotRecord> {
        let id = new_id();
        let staging = self.snapshots_dir().join(format!(".creating-{id}"));
        std::fs::create_dir_all(&staging).map_err(io(format!("creating {}", staging.display())))?;
        let mut source = locked.meta.clone();
        let saved = match req.kind {
            SnapshotKind::Standby => source.standby.snapshot.clone(),
            SnapshotKind::Stopped => None,
        };
        source.standby = StandbyState::default();
        let mut files: Vec<(PathBuf, PathBuf)> = disk_files(&locked.paths, &source)
            .into_iter()
            .map(|f| (locked.paths.dir.join(&f), staging.join(&f)))
            .collect();
        let state = saved.map(|s| {
            files.push((locked.paths.dir.join(&s.file), staging.join(STATE_FILE)));
            if let Some(ram) = &s.ram_file {
                files.push((locked.paths.dir.join(ram), staging.join(RAM_FILE)));
            }
            SavedState {
                file: PathBuf::from(STATE_FILE),
                ram_file: s.ram_file.as_ref().map(|_| PathBuf::from(RAM_FILE)),
                ..s
            }
        });
        let copied = copy_all(files).await;
        let result = copied.and_then(|kinds| {
            let record = SnapshotRecord {
                id: id.clone(),
                name: req.name.as_ref().map(|n| n.to_string()),
                kind: req.kind,
                created_at: lodge_common::time::now_rfc3339(),
                tags: req.tags.clone(),
                disks: disk_files(&locked.paths, &source),
                source,
                state,
                size_bytes: allocated(&staging),
                scheduled: req.scheduled,
            };
            let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other);
            json.and_then(|j| lodge_common::fsutil::write_atomic(&staging.join(RECORD), &j))
                .and_then(|()| std::fs::rename(&staging, self.snapshots_dir().join(&id)))
                .map_err(io("writing the snapshot"))?;
            tracing::debug!("snapshot {id}: copies {kinds:?}");
            Ok(record)
        });
        if result.is_err() {
            if let Err(e) = std::fs::remove_dir_all(&staging) {
                tracing::warn!("removing {}: {e}", staging.display());
            }
        }
        result
    }

    /// Restores snapshot `sid` into its instance `key` (see the module doc).
    pub async fn restore_snapshot(
        &self,
        key: &str,
        sid: &str,
        target: Option<TargetState>,
    ) -> Result<super::view::Instance> {
        let record = self.snapshot_record(sid)?;
        let mut locked = self.lock_instance(key).await?;
        if record.source.id != locked.id {
            return Err(Error::BadSnapshotRequest(format!(
                "snapshot {} is of instance {}, not {}; fork it to make a new instance",
                record.id, record.source.name, locked.meta.name
            )));
        }
        let target = target.unwrap_or(match record.kind {
            SnapshotKind::Standby => TargetState::Running,
            SnapshotKind::Stopped => TargetState::Stopped,
        });
        if record.kind == SnapshotKind::Stopped && target == TargetState::Standby {
            return Err(Error::BadSnapshotRequest(
                "a Stopped snapshot holds no memory: restore it to Stopped or Running".into(),
            ));
        }
        let state = state::derive(&observe(&locked.paths, &locked.meta));
        if !matches!(state, State::Stopped | State::Created | State::Standby) {
            return Err(Error::WrongState {
                id: locked.id.clone(),
                state,
                action: "restoring a snapshot",
                needs: "stopped or in standby",
            });
        }
        self.put_back(&mut locked, &record).await?;
        oplog(
            &locked.paths,
            &format!("snapshot {} ({:?}) restored", record.id, record.kind),
        );
        match (record.kind, target) {
            (SnapshotKind::Standby, TargetState::Running) => {
                self.restore_locked(&mut locked).await?
            }
            (SnapshotKind::Standby, TargetState::Stopped) => {
                drop_saved_state(&locked.paths, &mut locked.meta)?
            }
            (SnapshotKind::Stopped, TargetState::Running) => {
                let id = locked.id.clone();
                drop(locked);
                return self.start(&id, None, None).await;
            }
            _ => {}
        }
        Ok(self.view(&locked.meta))
    }

    /// Copies a snapshot's files over the instance's and records what they
    /// are (a saved state for a `Standby` snapshot, none for `Stopped`).
    async fn put_back(&self, locked: &mut Locked, record: &SnapshotRecord) -> Result<()> {
        let snap = self.snapshots_dir().join(&record.id);
        let paths = &locked.paths;
        drop_saved_state(paths, &mut locked.meta)?;
        let mut files: Vec<(PathBuf, PathBuf)> = record
            .disks
            .iter()
            .map(|f| (snap.join(f), paths.dir.join(f)))
            .collect();
        let standby_dir = paths.dir.join("standby");
        let saved = record.state.as_ref().map(|s| {
            files.push((snap.join(&s.file), standby_dir.join(STATE_FILE)));
            if let Some(ram) = &s.ram_file {
                files.push((snap.join(ram), paths.dir.join(RAM_FILE)));
            }
            SavedState {
                file: PathBuf::from("standby").join(STATE_FILE),
                ram_file: s.ram_file.as_ref().map(|_| PathBuf::from(RAM_FILE)),
                ..s.clone()
            }
        });
        if saved.is_some() {
            std::fs::create_dir_all(&standby_dir)
                .map_err(io(format!("creating {}", standby_dir.display())))?;
        }
        copy_all(files).await?;
        let meta = &mut locked.meta;
        // The VM as it was: its size and program come with its disks.
        meta.vcpus = record.source.vcpus;
        meta.memory_bytes = record.source.memory_bytes;
        meta.entrypoint = record.source.entrypoint.clone();
        meta.cmd = record.source.cmd.clone();
        meta.env = record.source.env.clone();
        meta.workdir = record.source.workdir.clone();
        meta.standby = StandbyState {
            ram_file: saved.as_ref().is_some_and(|s| s.ram_file.is_some()),
            snapshot: saved,
            ..StandbyState::default()
        };
        if meta.started_at.is_none() {
            meta.started_at = record.source.started_at;
        }
        store::save(paths, meta).map_err(io("writing instance record"))
    }
}

/// Forgets an instance's saved state (files and record): it will boot.
pub(super) fn drop_saved_state(paths: &Paths, meta: &mut Metadata) -> Result<()> {
    match std::fs::remove_dir_all(paths.dir.join("standby")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing the saved state")(e))
        }
        _ => {}
    }
    store::remove_ram_file(paths).map_err(io("removing the guest RAM file"))?;
    meta.standby.snapshot = None;
    meta.standby.error = None;
    store::save(paths, meta).map_err(io("writing instance record"))
}

/// Copies each `(from, to)` on a blocking thread.
async fn copy_all(files: Vec<(PathBuf, PathBuf)>) -> Result<Vec<CopyKind>> {
    tokio::task::spawn_blocking(move || {
        files
            .iter()
            .map(|(from, to)| {
                copy_file(from, to).map_err(io(format!(
                    "copying {} to {}",
                    from.display(),
                    to.display()
                )))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await
    .map_err(|e| Error::Task {
        what: "snapshot copy",
        source: Some(e),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_every_given_field() {
        let meta: Metadata = serde_json::from_str(include_str!(
            "../../tests/data/metadata-before-typed-hypervisor.json"
        ))
        .expect("a record");
        let r = SnapshotRecord {
            id: "s1".into(),
            name: Some("nightly".into()),
            kind: SnapshotKind::Stopped,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            tags: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            disks: vec![],
            state: None,
            size_bytes: 0,
            scheduled: false,
            source: meta.clone(),
        };
        assert!(SnapshotFilter::default().matches(&r));
        let f = SnapshotFilter {
            kind: Some(SnapshotKind::Stopped),
            name: Some("nightly".into()),
            source_instance_id: Some(meta.id.clone()),
            tags: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        };
        assert!(f.matches(&r));
        for f in [
            SnapshotFilter {
                kind: Some(SnapshotKind::Standby),
                ..Default::default()
            },
            SnapshotFilter {
                name: Some("other".into()),
                ..Default::default()
            },
            SnapshotFilter {
                tags: BTreeMap::from([("env".to_string(), "dev".to_string())]),
                ..Default::default()
            },
        ] {
            assert!(!f.matches(&r), "{f:?}");
        }
        let view = r.view();
        assert_eq!(view.source_instance_name, meta.name);
        assert_eq!(view.compression_state, "none");
    }
}
