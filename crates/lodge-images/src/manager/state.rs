//! The manager's shared state: the [`Images`] handle, the in-memory
//! bookkeeping of running pulls, leases and builds, and the startup pass
//! that settles what a previous daemon left behind. Pulls, queries and
//! leases are `impl Images` blocks in the sibling files.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lodge_common::paths::ImagePaths;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use super::options::{Options, UsersFn};
use crate::blobs::BlobStore;
use crate::digest::Digest;
use crate::error::{io, ErrorKind, Result};
use crate::store::{ImageRecord, Records, Status};
use crate::unpack::remove_tree;

/// Live progress of a pull.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Progress {
    pub layers_total: u32,
    pub layers_done: u32,
    /// Layers found in the cache (never fetched).
    pub layers_cached: u32,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

/// An image as callers see it: the record plus live progress.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub record: ImageRecord,
    pub progress: Option<Progress>,
}

pub(super) struct Job {
    pub(super) done: watch::Receiver<bool>,
    pub(super) progress: Arc<Mutex<Progress>>,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) jobs: HashMap<String, Job>,
    pub(super) leases: HashMap<Digest, usize>,
    /// Disks being built right now (not yet referenced by a record).
    pub(super) building: BTreeSet<Digest>,
}

pub struct Images {
    pub(super) dir: PathBuf,
    pub(super) blobs: BlobStore,
    pub(super) records: Records,
    pub(super) opts: Options,
    pub(super) users: UsersFn,
    pub(super) inner: Mutex<Inner>,
    pub(super) pulls: Semaphore,
    pub(super) builds: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) counters: super::stats::Counters,
}

impl Images {
    /// Opens the image store under `dir` (`<data dir>/images`). Pulls a
    /// previous daemon left unfinished are marked failed; temp debris and
    /// disks nothing refers to are removed.
    pub fn open(dir: &Path, opts: Options, users: UsersFn) -> Result<Arc<Self>> {
        let blobs = BlobStore::open(dir)
            .map_err(io(format!("opening the blob cache in {}", dir.display())))?;
        let records = Records::open(dir).map_err(io("opening image records"))?;
        let paths = ImagePaths::new(dir);
        for sub in [paths.disks(), paths.tmp()] {
            std::fs::create_dir_all(&sub).map_err(io(format!("creating {}", sub.display())))?;
        }
        if let Ok(entries) = std::fs::read_dir(paths.tmp()) {
            for e in entries.flatten() {
                if let Err(err) = remove_tree(&e.path()) {
                    tracing::warn!("removing {}: {err}", e.path().display());
                }
            }
        }
        let parallel_pulls = opts.parallel_pulls.max(1);
        let images = Arc::new(Images {
            dir: dir.to_path_buf(),
            blobs,
            records,
            opts,
            users,
            inner: Mutex::new(Inner::default()),
            pulls: Semaphore::new(parallel_pulls),
            builds: Mutex::new(HashMap::new()),
            counters: Default::default(),
        });
        const INTERRUPTED: &str = "the pull was interrupted by a daemon restart; pull again";
        for mut r in images.records.all().map_err(io("reading image records"))? {
            let mut changed = false;
            if let Some(p) = r.pull.as_mut().filter(|p| !p.status.is_final()) {
                p.status = Status::Failed;
                p.error = Some(INTERRUPTED.into());
                p.error_kind = Some(ErrorKind::Internal);
                p.finished_at = Some(lodge_common::time::now_rfc3339());
                changed = true;
            }
            if !r.status.is_final() {
                r.status = Status::Failed;
                r.error = Some(INTERRUPTED.into());
                r.error_kind = Some(ErrorKind::Internal);
                changed = true;
            }
            if changed {
                images
                    .records
                    .save(&r)
                    .map_err(io("writing an image record"))?;
            }
        }
        images.sweep_disks();
        Ok(images)
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn paths(&self) -> ImagePaths {
        ImagePaths::new(&self.dir)
    }

    pub(super) fn disks_dir(&self) -> PathBuf {
        self.paths().disks()
    }

    /// Pulls finished and bytes fetched since the store was opened.
    pub fn pull_stats(&self) -> super::stats::PullStats {
        self.counters.snapshot()
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Removes the disk of `digest` if no record, lease, build or instance
    /// refers to it.
    pub(super) fn release_if_unused(&self, digest: &Digest) {
        let inner = self.lock();
        if inner.leases.contains_key(digest) || inner.building.contains(digest) {
            return;
        }
        let referenced = self
            .records
            .all()
            .map(|all| all.iter().any(|r| r.digest.as_ref() == Some(digest)))
            .unwrap_or(true);
        if referenced || !(self.users)(&digest.to_string()).is_empty() {
            return;
        }
        for ext in ["ext4", "erofs", "json"] {
            let _ = std::fs::remove_file(self.disks_dir().join(format!("{}.{ext}", digest.hex())));
        }
        drop(inner);
    }

    /// At startup: drops disks no record or instance refers to, and temp disks.
    pub(super) fn sweep_disks(&self) {
        let Ok(entries) = std::fs::read_dir(self.disks_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let hex = name.split('.').next().unwrap_or("");
            if let Ok(d) = Digest::parse(&format!("sha256:{hex}")) {
                self.release_if_unused(&d);
            }
        }
    }
}
