//! The image manager: pulls run as background tasks whose status is
//! persisted (pending → pulling → converting → ready, or failed), while
//! callers poll, wait, lease or delete.
//!
//! One pull per name at a time; a second request for the same name joins
//! the first. Blobs are fetched through the shared cache (a cached blob is
//! never fetched again), layers download concurrently and are applied in
//! order as soon as each and all before it are present, so unpacking
//! overlaps the downloads. The root disk is keyed by manifest digest and
//! shared by every name and every instance of that manifest; a pull whose
//! manifest already has a disk fetches nothing but the manifest.
//!
//! Deletion is refused while an instance uses the disk: the daemon passes a
//! `users` callback that names the instances recorded with a digest, and
//! [`ImageLease`]s cover instances being created right now. All work
//! happens under `<images>/tmp/` and lands by rename, so a failed pull leaves
//! no tree, no disk and no unverified blob.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt};
use lodge_common::paths::ImagePaths;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::archive;
use crate::blobs::BlobStore;
use crate::digest::Digest;
use crate::disk::{self, DiskFormat};
use crate::error::{internal, io, Error, ErrorKind, Result};
use crate::oci::{is_layer_type, AnyManifest, ImageConfigFile, Manifest};
use crate::platform::Platform;
use crate::reference::{canonical, lookup_key, Source};
use crate::registry::{Credentials, RegistryOptions, Remote, MAX_MANIFEST};
use crate::runconfig::resolve_user;
use crate::store::{ImageRecord, Records, Status};
use crate::unpack::{remove_tree, Unpacker};

/// Manager settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub registry: RegistryOptions,
    pub format: DiskFormat,
    /// Layers fetched at once by one pull.
    pub parallel_downloads: usize,
    /// Pulls running at once; more wait with status `pending`.
    pub parallel_pulls: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            registry: RegistryOptions::default(),
            format: DiskFormat::Ext4,
            parallel_downloads: 4,
            parallel_pulls: 2,
        }
    }
}

impl Options {
    /// Registry settings from the environment (see [`RegistryOptions::from_env`])
    /// and `LODGE_IMAGE_FORMAT` (`ext4`, the default, or `erofs`).
    pub fn from_env() -> Result<Self> {
        let format = match std::env::var("LODGE_IMAGE_FORMAT") {
            Ok(s) if !s.is_empty() => DiskFormat::parse(&s).ok_or_else(|| {
                crate::error::invalid(format!("LODGE_IMAGE_FORMAT {s:?}: expected ext4 or erofs"))
            })?,
            _ => DiskFormat::Ext4,
        };
        Ok(Options {
            registry: RegistryOptions::from_env(),
            format,
            ..Default::default()
        })
    }
}

/// Names of the instances whose records use a manifest digest.
pub type UsersFn = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// A pull request (hypeman's `POST /images` body).
#[derive(Debug, Clone, Default)]
pub struct PullRequest {
    pub name: String,
    pub platform: Option<String>,
    pub credentials: Option<Credentials>,
    pub tags: BTreeMap<String, String>,
}

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

struct Job {
    done: watch::Receiver<bool>,
    progress: Arc<Mutex<Progress>>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Job>,
    leases: HashMap<Digest, usize>,
    /// Disks being built right now (not yet referenced by a record).
    building: BTreeSet<Digest>,
}

pub struct Images {
    dir: PathBuf,
    blobs: BlobStore,
    records: Records,
    opts: Options,
    users: UsersFn,
    inner: Mutex<Inner>,
    pulls: Semaphore,
    builds: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds an image's disk in place while an instance is being created
/// from it; the disk cannot be deleted until the lease is dropped.
pub struct ImageLease {
    images: Arc<Images>,
    pub digest: Digest,
    /// The shared read-only root disk.
    pub disk: PathBuf,
    pub record: ImageRecord,
}

impl Drop for ImageLease {
    fn drop(&mut self) {
        let mut inner = self.images.lock();
        if let Some(n) = inner.leases.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                inner.leases.remove(&self.digest);
            }
        }
    }
}

/// What a finished build produced.
struct Built {
    manifest_digest: Digest,
    index_digest: Option<Digest>,
    config: ImageConfigFile,
    layers: Vec<Digest>,
    disk: String,
    size: u64,
    user: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct DiskMeta {
    #[serde(default)]
    user: Option<String>,
}

fn now() -> String {
    lodge_common::time::now_rfc3339()
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
                let _ = remove_tree(&e.path());
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
        });
        for mut r in images.records.all().map_err(io("reading image records"))? {
            if !r.status.is_final() {
                r.status = Status::Failed;
                r.error = Some("the pull was interrupted by a daemon restart; pull again".into());
                r.error_kind = Some(ErrorKind::Internal);
                images
                    .records
                    .save(&r)
                    .map_err(io("writing an image record"))?;
            }
        }
        images.sweep_disks();
        Ok(images)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn paths(&self) -> ImagePaths {
        ImagePaths::new(&self.dir)
    }

    fn disks_dir(&self) -> PathBuf {
        self.paths().disks()
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn info(&self, record: ImageRecord) -> ImageInfo {
        let progress = self
            .lock()
            .jobs
            .get(&record.name)
            .map(|j| j.progress.lock().unwrap_or_else(|p| p.into_inner()).clone());
        ImageInfo { record, progress }
    }

    /// One image by (normalised) name.
    pub fn get(&self, name: &str) -> Result<ImageInfo> {
        let key = lookup_key(name)?;
        match self
            .records
            .load(&key)
            .map_err(io("reading an image record"))?
        {
            Some(r) => Ok(self.info(r)),
            None => Err(Error::new(
                ErrorKind::NotFound,
                format!("image {key} not found"),
            )),
        }
    }

    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        Ok(self
            .records
            .all()
            .map_err(io("reading image records"))?
            .into_iter()
            .map(|r| self.info(r))
            .collect())
    }

    /// Starts (or joins) a pull and returns the image as it is now.
    /// Malformed names and platforms fail here, before anything is written.
    pub async fn pull(self: &Arc<Self>, req: PullRequest) -> Result<ImageInfo> {
        let source = Source::parse(req.name.trim())?;
        let platform = match req.platform.as_deref().map(str::trim) {
            None | Some("") => Platform::host(),
            Some(p) => Platform::parse(p).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidPlatform,
                    format!("invalid platform {p:?}: expected os/arch[/variant] with os linux and arch amd64 or arm64"),
                )
            })?,
        };
        let name = match &source {
            Source::Registry(r) => canonical(r),
            _ => {
                let s = source.clone();
                tokio::task::spawn_blocking(move || archive::local_name(&s))
                    .await
                    .map_err(|e| internal(format!("reading the archive: {e}")))??
            }
        };
        self.start(name, req, source, platform)
    }

    fn start(
        self: &Arc<Self>,
        name: String,
        req: PullRequest,
        source: Source,
        platform: Platform,
    ) -> Result<ImageInfo> {
        let mut inner = self.lock();
        if inner.jobs.contains_key(&name) {
            drop(inner);
            return self.get(&name);
        }
        let prev = self
            .records
            .load(&name)
            .map_err(io("reading an image record"))?;
        let mut record = prev.clone().unwrap_or_else(|| ImageRecord {
            name: name.clone(),
            source: String::new(),
            status: Status::Pending,
            error: None,
            error_kind: None,
            digest: None,
            index_digest: None,
            platform: String::new(),
            created_at: now(),
            config: Default::default(),
            user: None,
            size_bytes: None,
            layers: Vec::new(),
            tags: BTreeMap::new(),
            disk: None,
        });
        record.source = req.name.trim().to_string();
        record.status = Status::Pending;
        record.error = None;
        record.error_kind = None;
        record.platform = platform.to_string();
        if !req.tags.is_empty() {
            record.tags = req.tags.clone();
        }
        self.records
            .save(&record)
            .map_err(io("writing an image record"))?;
        let (tx, rx) = watch::channel(false);
        let progress = Arc::new(Mutex::new(Progress::default()));
        inner.jobs.insert(
            name.clone(),
            Job {
                done: rx,
                progress: progress.clone(),
            },
        );
        drop(inner);
        let this = self.clone();
        let creds = req.credentials;
        let rec = record.clone();
        tokio::spawn(async move {
            this.run(rec, source, platform, creds, progress).await;
            this.lock().jobs.remove(&name);
            let _ = tx.send(true);
        });
        Ok(self.info(record))
    }

    /// Waits for the pull of `name` to end, if one is running.
    pub async fn wait(&self, name: &str) {
        let rx = self.lock().jobs.get(name).map(|j| j.done.clone());
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    fn set_status(&self, record: &mut ImageRecord, status: Status) {
        record.status = status;
        if let Err(e) = self.records.save(record) {
            tracing::warn!("writing image record of {}: {e}", record.name);
        }
    }

    async fn run(
        self: &Arc<Self>,
        mut record: ImageRecord,
        source: Source,
        platform: Platform,
        creds: Option<Credentials>,
        progress: Arc<Mutex<Progress>>,
    ) {
        let _permit = self.pulls.acquire().await;
        self.set_status(&mut record, Status::Pulling);
        let old_digest = record.digest.clone();
        let tmp = self
            .paths()
            .tmp()
            .join(format!("pull-{:016x}", rand::random::<u64>()));
        let result = self
            .fetch_and_build(
                &mut record,
                &source,
                &platform,
                creds.as_ref(),
                &progress,
                &tmp,
            )
            .await;
        let cleanup = tmp.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if cleanup.exists() {
                let _ = remove_tree(&cleanup);
            }
        })
        .await;
        match result {
            Ok(b) => {
                record.status = Status::Ready;
                record.digest = Some(b.manifest_digest.clone());
                record.index_digest = b.index_digest;
                record.config = b.config.config;
                record.user = b.user;
                record.size_bytes = Some(b.size);
                record.layers = b.layers;
                record.disk = Some(b.disk);
                if let Err(e) = self.records.save(&record) {
                    tracing::error!("writing image record of {}: {e}", record.name);
                }
                self.lock().building.remove(&b.manifest_digest);
                tracing::info!("image {} ready ({})", record.name, b.manifest_digest);
                if let Some(old) = old_digest.filter(|o| o != &b.manifest_digest) {
                    self.release_if_unused(&old);
                }
            }
            Err(e) => {
                tracing::warn!("pull of {} failed: {}", record.name, e.message);
                record.status = Status::Failed;
                record.error = Some(e.message);
                record.error_kind = Some(e.kind);
                if let Err(e) = self.records.save(&record) {
                    tracing::error!("writing image record of {}: {e}", record.name);
                }
            }
        }
    }

    async fn fetch_and_build(
        self: &Arc<Self>,
        record: &mut ImageRecord,
        source: &Source,
        platform: &Platform,
        creds: Option<&Credentials>,
        progress: &Arc<Mutex<Progress>>,
        tmp: &Path,
    ) -> Result<Built> {
        std::fs::create_dir_all(tmp).map_err(io("creating a work directory"))?;
        match source {
            Source::Registry(reference) => {
                let remote = Remote::new(reference, &self.opts.registry, creds);
                let (bytes, digest) = remote.manifest(None).await?;
                self.store_small(&digest, &bytes)?;
                let parsed = AnyManifest::parse(&bytes)
                    .map_err(|e| Error::new(ErrorKind::Registry, format!("{reference}: {e}")))?;
                let (manifest_digest, manifest, index_digest) = match parsed {
                    AnyManifest::Image(m) => (digest, m, None),
                    AnyManifest::Index(idx) => {
                        let chosen = idx
                            .select(platform)
                            .map_err(|e| {
                                Error::new(ErrorKind::PlatformNotFound, format!("{reference}: {e}"))
                            })?
                            .digest
                            .clone();
                        let (b, d) = remote.manifest(Some(&chosen)).await?;
                        self.store_small(&d, &b)?;
                        match AnyManifest::parse(&b).map_err(|e| {
                            Error::new(ErrorKind::Registry, format!("{reference}: {e}"))
                        })? {
                            AnyManifest::Image(m) => (d, m, Some(digest)),
                            AnyManifest::Index(_) => {
                                return Err(Error::new(
                                    ErrorKind::Unsupported,
                                    format!("{reference}: nested image indexes are not supported"),
                                ))
                            }
                        }
                    }
                };
                if !self
                    .blobs
                    .has(&manifest.config.digest, Some(manifest.config.size))
                {
                    let _g = self.blobs.lock(&manifest.config.digest).await;
                    if !self
                        .blobs
                        .has(&manifest.config.digest, Some(manifest.config.size))
                    {
                        remote
                            .blob_into(&manifest.config, &self.blobs, |_| {})
                            .await?;
                    }
                }
                self.build(
                    record,
                    manifest_digest,
                    index_digest,
                    manifest,
                    platform,
                    Some(&remote),
                    progress,
                    tmp,
                )
                .await
            }
            Source::OciArchive { .. } | Source::DockerArchive { .. } => {
                let (s, stage, p) = (source.clone(), tmp.join("stage"), platform.clone());
                let this = self.clone();
                let resolved = tokio::task::spawn_blocking(move || {
                    archive::import(&s, &stage, &this.blobs, &p)
                })
                .await
                .map_err(|e| internal(format!("import task: {e}")))??;
                let _ = std::fs::remove_dir_all(tmp.join("stage"));
                self.build(
                    record,
                    resolved.manifest_digest,
                    resolved.index_digest,
                    resolved.manifest,
                    platform,
                    None,
                    progress,
                    tmp,
                )
                .await
            }
        }
    }

    fn store_small(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        if !self.blobs.has(digest, Some(bytes.len() as u64)) {
            self.blobs
                .put_reader(digest, Some(bytes.len() as u64), bytes)?;
        }
        Ok(())
    }

    fn build_lock(&self, d: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(d.clone()).or_default().clone()
    }

    #[allow(clippy::too_many_arguments)]
    async fn build(
        self: &Arc<Self>,
        record: &mut ImageRecord,
        manifest_digest: Digest,
        index_digest: Option<Digest>,
        manifest: Manifest,
        platform: &Platform,
        remote: Option<&Remote>,
        progress: &Arc<Mutex<Progress>>,
        tmp: &Path,
    ) -> Result<Built> {
        let config_bytes = self
            .blobs
            .read_small(&manifest.config.digest, MAX_MANIFEST)?;
        let config: ImageConfigFile = serde_json::from_slice(&config_bytes).map_err(|e| {
            Error::new(
                ErrorKind::Registry,
                format!("image config {}: {e}", manifest.config.digest),
            )
        })?;
        if !config.architecture.is_empty()
            && !platform.matches(&config.os, &config.architecture, config.variant.as_deref())
        {
            let variant = config
                .variant
                .as_deref()
                .map(|v| format!("/{v}"))
                .unwrap_or_default();
            return Err(Error::new(
                ErrorKind::PlatformNotFound,
                format!(
                    "the image is {}/{}{variant}, not {platform}",
                    config.os, config.architecture
                ),
            ));
        }
        for l in &manifest.layers {
            if !is_layer_type(&l.media_type) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "layer {} has media type {:?}, which is not an image layer",
                        l.digest, l.media_type
                    ),
                ));
            }
        }
        self.lock().building.insert(manifest_digest.clone());
        let result = self
            .build_disk(
                record,
                &manifest_digest,
                index_digest,
                &manifest,
                &config,
                remote,
                progress,
                tmp,
            )
            .await;
        if result.is_err() {
            self.lock().building.remove(&manifest_digest);
        }
        result
    }

    /// The disk of one manifest: reused if built before, else made from
    /// its layers (fetched as needed) in `tmp`.
    #[allow(clippy::too_many_arguments)]
    async fn build_disk(
        self: &Arc<Self>,
        record: &mut ImageRecord,
        manifest_digest: &Digest,
        index_digest: Option<Digest>,
        manifest: &Manifest,
        config: &ImageConfigFile,
        remote: Option<&Remote>,
        progress: &Arc<Mutex<Progress>>,
        tmp: &Path,
    ) -> Result<Built> {
        let ext = match self.opts.format {
            DiskFormat::Ext4 => "ext4",
            DiskFormat::Erofs => "erofs",
        };
        let disk_name = format!("{}.{ext}", manifest_digest.hex());
        let disk_path = self.disks_dir().join(&disk_name);
        let meta_path = self
            .disks_dir()
            .join(format!("{}.json", manifest_digest.hex()));
        let layers: Vec<Digest> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        let lock = self.build_lock(manifest_digest);
        let _g = lock.lock().await;

        let finish = |size: u64, user: Option<String>| Built {
            manifest_digest: manifest_digest.clone(),
            index_digest: index_digest.clone(),
            config: config.clone(),
            layers: layers.clone(),
            disk: disk_name.clone(),
            size,
            user,
        };
        if let Ok(m) = std::fs::metadata(&disk_path) {
            // Another name (or an earlier pull) already built this manifest.
            let meta: DiskMeta = std::fs::read(&meta_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let n = manifest.layers.len() as u32;
            *progress.lock().unwrap_or_else(|p| p.into_inner()) = Progress {
                layers_total: n,
                layers_done: n,
                layers_cached: n,
                bytes_total: 0,
                bytes_done: 0,
            };
            return Ok(finish(m.len(), meta.user));
        }

        let rootfs = tmp.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io("creating the unpack directory"))?;
        {
            let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
            p.layers_total = manifest.layers.len() as u32;
            p.bytes_total = manifest.layers.iter().map(|l| l.size).sum();
        }
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let mut missing = Vec::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            if self.blobs.has(&l.digest, Some(l.size)) {
                let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
                p.layers_done += 1;
                p.layers_cached += 1;
                p.bytes_done += l.size;
                let _ = tx.send(i);
            } else {
                missing.push(i);
            }
        }
        if !missing.is_empty() && remote.is_none() {
            return Err(internal("layers missing from the cache after the import"));
        }
        let paths: Vec<PathBuf> = manifest
            .layers
            .iter()
            .map(|l| self.blobs.path(&l.digest))
            .collect();
        let unpack_root = rootfs.clone();
        let mut unpack = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut u = Unpacker::new(&unpack_root).map_err(io("opening the unpack directory"))?;
            let mut ready = BTreeSet::new();
            let mut next = 0;
            while next < paths.len() {
                match rx.recv() {
                    Ok(i) => {
                        ready.insert(i);
                    }
                    // The downloads stopped (their error is reported).
                    Err(_) => return Err(internal("layer downloads were abandoned")),
                }
                while ready.remove(&next) {
                    let f =
                        std::fs::File::open(&paths[next]).map_err(io("opening a cached layer"))?;
                    u.apply(f)
                        .map_err(|e| Error::from(e).context(format!("layer {}", next + 1)))?;
                    next += 1;
                }
            }
            u.finish()?;
            Ok(())
        });

        let blobs = &self.blobs;
        let descs = &manifest.layers;
        let downloads = async move {
            let tx = tx;
            futures_util::stream::iter(missing)
                .map(|i| {
                    let tx = tx.clone();
                    async move {
                        let d = &descs[i];
                        let _g = blobs.lock(&d.digest).await;
                        if !blobs.has(&d.digest, Some(d.size)) {
                            if let Some(remote) = remote {
                                remote
                                    .blob_into(d, blobs, |n| {
                                        progress
                                            .lock()
                                            .unwrap_or_else(|p| p.into_inner())
                                            .bytes_done += n;
                                    })
                                    .await?;
                            }
                        } else {
                            let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
                            p.bytes_done += d.size;
                            p.layers_cached += 1;
                        }
                        progress
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .layers_done += 1;
                        let _ = tx.send(i);
                        Ok::<(), Error>(())
                    }
                })
                .buffer_unordered(self.opts.parallel_downloads.max(1))
                .try_collect::<()>()
                .await
        };
        tokio::pin!(downloads);
        let join = |r: std::result::Result<Result<()>, tokio::task::JoinError>| {
            r.map_err(|e| internal(format!("unpack task: {e}")))?
        };
        let (fetched, unpacked) = tokio::select! {
            d = &mut downloads => (d, join((&mut unpack).await)),
            u = &mut unpack => {
                let u = join(u);
                if u.is_err() {
                    // No point fetching the rest.
                    (Ok(()), u)
                } else {
                    ((&mut downloads).await, u)
                }
            }
        };
        fetched?;
        unpacked?;

        self.set_status(record, Status::Converting);
        let format = self.opts.format;
        let image_user = config.config.user.clone().filter(|u| !u.is_empty());
        let disk_tmp = self
            .disks_dir()
            .join(format!(".tmp-{disk_name}-{:08x}", rand::random::<u32>()));
        let (dp, mp) = (disk_path.clone(), meta_path.clone());
        let user = tokio::task::spawn_blocking(move || -> Result<Option<String>> {
            let user = image_user.and_then(|u| resolve_user(&rootfs, &u));
            let built = disk::build(format, &rootfs, &disk_tmp);
            let _ = remove_tree(&rootfs);
            if let Err(e) = built {
                let _ = std::fs::remove_file(&disk_tmp);
                return Err(e.into());
            }
            let meta = serde_json::to_vec(&DiskMeta { user: user.clone() })
                .map_err(|e| internal(e.to_string()))?;
            lodge_common::fsutil::write_atomic(&mp, &meta).map_err(io("writing disk metadata"))?;
            std::fs::rename(&disk_tmp, &dp).map_err(|e| {
                let _ = std::fs::remove_file(&disk_tmp);
                io("placing the root disk")(e)
            })?;
            Ok(user)
        })
        .await
        .map_err(|e| internal(format!("disk build task: {e}")))??;
        let size = std::fs::metadata(&disk_path)
            .map_err(io("reading the root disk"))?
            .len();
        Ok(finish(size, user))
    }

    /// A lease on `name` if it is ready locally.
    fn try_lease(self: &Arc<Self>, name: &str) -> Result<Option<ImageLease>> {
        let Some(record) = self
            .records
            .load(name)
            .map_err(io("reading an image record"))?
        else {
            return Ok(None);
        };
        let (Status::Ready, Some(digest), Some(disk)) =
            (record.status, record.digest.clone(), record.disk.clone())
        else {
            return Ok(None);
        };
        let disk = self.disks_dir().join(disk);
        let mut inner = self.lock();
        if !disk.is_file() {
            return Ok(None);
        }
        *inner.leases.entry(digest.clone()).or_default() += 1;
        drop(inner);
        Ok(Some(ImageLease {
            images: self.clone(),
            digest,
            disk,
            record,
        }))
    }

    /// The image `input` names, ready to boot: local if it is (for
    /// `platform`, default the host's), else pulled and waited for.
    /// Failures carry the pull's error class.
    pub async fn ensure(
        self: &Arc<Self>,
        input: &str,
        platform: Option<&str>,
    ) -> Result<ImageLease> {
        let key = lookup_key(input.trim())?;
        // Without a platform, the host's: an image pulled for another
        // platform cannot boot here, so it is pulled again.
        let wanted = match platform.map(str::trim).filter(|p| !p.is_empty()) {
            None => Platform::host(),
            Some(p) => Platform::parse(p).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidPlatform,
                    format!("invalid platform {p:?}"),
                )
            })?,
        }
        .to_string();
        if let Some(l) = self.try_lease(&key)? {
            if l.record.platform == wanted {
                return Ok(l);
            }
        }
        let running = self.lock().jobs.contains_key(&key);
        let name = if running {
            key
        } else {
            self.pull(PullRequest {
                name: input.to_string(),
                platform: Some(wanted),
                ..Default::default()
            })
            .await?
            .record
            .name
        };
        self.wait(&name).await;
        if let Some(l) = self.try_lease(&name)? {
            return Ok(l);
        }
        match self
            .records
            .load(&name)
            .map_err(io("reading an image record"))?
        {
            Some(r) if r.status == Status::Failed => Err(Error::new(
                r.error_kind.unwrap_or(ErrorKind::Internal),
                format!("pulling {name}: {}", r.error.unwrap_or_default()),
            )),
            _ => Err(internal(format!("image {name} did not become ready"))),
        }
    }

    /// Deletes a local image name. Refused while it is being pulled, or
    /// while an instance uses its disk and no other name keeps it.
    pub fn delete(&self, name: &str) -> Result<()> {
        let key = lookup_key(name)?;
        let inner = self.lock();
        if inner.jobs.contains_key(&key) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("image {key} is being pulled; delete it when the pull has ended"),
            ));
        }
        let Some(record) = self
            .records
            .load(&key)
            .map_err(io("reading an image record"))?
        else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("image {key} not found"),
            ));
        };
        let mut last_name = false;
        if let Some(d) = &record.digest {
            let all = self.records.all().map_err(io("reading image records"))?;
            last_name = !all
                .iter()
                .any(|r| r.name != key && r.digest.as_ref() == Some(d));
            if last_name {
                let users = (self.users)(&d.to_string());
                if !users.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "image {key} is used by instance(s) {}; delete them first",
                            users.join(", ")
                        ),
                    ));
                }
                if inner.leases.contains_key(d) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("image {key} is in use by an instance being created"),
                    ));
                }
            }
        }
        self.records
            .remove(&key)
            .map_err(io("removing an image record"))?;
        drop(inner);
        if let (true, Some(d)) = (last_name, &record.digest) {
            self.release_if_unused(d);
        }
        Ok(())
    }

    /// Removes the disk of `digest` if no record, lease, build or instance
    /// refers to it.
    fn release_if_unused(&self, digest: &Digest) {
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
    fn sweep_disks(&self) {
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
