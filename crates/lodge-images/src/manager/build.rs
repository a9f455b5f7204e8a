//! The layer pipeline: layers download concurrently and are applied in
//! order as soon as each and all before it are present, so unpacking
//! overlaps the downloads; the tree then becomes the root disk, keyed by
//! manifest digest and reused by every later pull of the same manifest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt};

use super::state::{Images, Progress};
use crate::digest::Digest;
use crate::disk::{self, DiskFormat};
use crate::error::{internal, io, json_failure, Error, ErrorKind, Result};
use crate::oci::{is_layer_type, ImageConfigFile, Manifest};
use crate::platform::Platform;
use crate::registry::{Remote, MAX_MANIFEST};
use crate::runconfig::resolve_user;
use crate::store::{ImageRecord, Status};
use crate::unpack::{remove_tree, Limits, Unpacker};

/// What a finished build produced.
pub(super) struct Built {
    pub(super) manifest_digest: Digest,
    pub(super) index_digest: Option<Digest>,
    pub(super) config: ImageConfigFile,
    pub(super) layers: Vec<Digest>,
    pub(super) disk: String,
    pub(super) size: u64,
    pub(super) user: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct DiskMeta {
    #[serde(default)]
    user: Option<String>,
}

/// Removes a temp file, logging (not returning) a failure: the caller is
/// already reporting the error that made it debris.
fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("removing {}: {e}", path.display())
        }
        _ => {}
    }
}

/// A manifest digest in the `building` set, taken out again when the
/// build fails or panics (a built disk stays in until its record names it).
struct Building<'a> {
    images: &'a Images,
    digest: Digest,
    keep: bool,
}

impl Drop for Building<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.images.lock().building.remove(&self.digest);
        }
    }
}

impl Images {
    pub(super) fn build_lock(&self, d: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(d.clone()).or_default().clone()
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn build(
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
                json_failure(&format!("image config {}", manifest.config.digest), &e),
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
        let mut building = Building {
            images: self,
            digest: manifest_digest.clone(),
            keep: false,
        };
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
        // Kept on success: the job drops it once the record names the disk.
        building.keep = result.is_ok();
        result
    }

    /// The disk of one manifest: reused if built before, else made from
    /// its layers (fetched as needed) in `tmp`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn build_disk(
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
        let to_fetch: u64 = missing.iter().map(|&i| manifest.layers[i].size).sum();
        self.ensure_free(to_fetch, "downloading the layers")?;
        let limits = Limits {
            max_bytes: self.opts.max_image_size,
            min_free: self.opts.min_free,
        };
        let paths: Vec<PathBuf> = manifest
            .layers
            .iter()
            .map(|l| self.blobs.path(&l.digest))
            .collect();
        let unpack_root = rootfs.clone();
        let mut unpack = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut u = Unpacker::new(&unpack_root)
                .map_err(io("opening the unpack directory"))?
                .with_limits(limits);
            let mut unpacked = 0u64;
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
                    let stats = u
                        .apply(f)
                        .map_err(|e| Error::from(e).context(format!("layer {}", next + 1)))?;
                    unpacked = unpacked.saturating_add(stats.bytes);
                    next += 1;
                }
            }
            u.finish()?;
            Ok(unpacked)
        });

        let blobs = &self.blobs;
        let counters = &self.counters;
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
                                        counters.fetched(n);
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
        let join = |r: std::result::Result<Result<u64>, tokio::task::JoinError>| {
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
        let unpacked = unpacked?;
        // The disk holds the tree, plus file system overhead.
        self.ensure_free(unpacked + unpacked / 8, "building the root disk")?;

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
            if let Err(e) = remove_tree(&rootfs) {
                tracing::warn!("removing {}: {e}", rootfs.display());
            }
            if let Err(e) = built {
                remove_quietly(&disk_tmp);
                return Err(e.into());
            }
            let meta = serde_json::to_vec(&DiskMeta { user: user.clone() })
                .map_err(|e| internal(e.to_string()))?;
            lodge_common::fsutil::write_atomic(&mp, &meta).map_err(io("writing disk metadata"))?;
            std::fs::rename(&disk_tmp, &dp).map_err(|e| {
                remove_quietly(&disk_tmp);
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
}
