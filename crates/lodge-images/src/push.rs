//! Image pushes: a ready local image (the manifest, config and layers its
//! pull left in the blob cache) sent to a registry reference, as a
//! background job with persisted status (queued → pushing → pushed, or
//! failed with an error).
//!
//! The bytes sent are exactly the cached blobs, so the pushed manifest has
//! the same digest as the local image and a pull of the target gets the
//! same disk. Only the platform manifest is pushed (lodge keeps no other
//! platform's content), never an index. Blobs the registry already has are
//! skipped (a HEAD first); the rest are streamed from the cache file in
//! chunks, never read whole into memory. Credentials are handled as pulls
//! handle them: the request's are kept in memory for the job only, else the
//! docker-style auth file is read; `insecure` adds plain HTTP for the
//! target's registry as loopback registries already have.
//!
//! Records live in `<images>/pushes/<id>.json` (written by rename); a job
//! a previous daemon left running is marked failed on open. The list is
//! kept whole in memory: pushes are few and small, and only the latest
//! [`KEEP_FINISHED`] finished ones are kept.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use oci_client::errors::OciDistributionError;
use oci_client::RegistryOperation;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use crate::digest::Digest;
use crate::error::{internal, io, json_failure, Error, ErrorKind, Result};
use crate::manager::Images;
use crate::oci::{AnyManifest, Descriptor, OCI_MANIFEST};
use crate::reference::{canonical, parse_registry};
use crate::registry::{classify, Credentials, RegistryOptions, Remote, MAX_MANIFEST};

/// Pushes sent at once; later ones wait, `queued`.
pub const PARALLEL_PUSHES: usize = 2;

/// Finished pushes kept (the oldest beyond this are forgotten).
pub const KEEP_FINISHED: usize = 200;

/// Bytes read from a cached blob per upload chunk.
const CHUNK: usize = 4 << 20;

const INTERRUPTED: &str = "the push was interrupted by a daemon restart; push again";

/// hypeman's push job states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushStatus {
    Queued,
    Pushing,
    Pushed,
    Failed,
}

impl PushStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PushStatus::Queued => "queued",
            PushStatus::Pushing => "pushing",
            PushStatus::Pushed => "pushed",
            PushStatus::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, PushStatus::Pushed | PushStatus::Failed)
    }
}

/// One push job as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushRecord {
    pub id: String,
    /// The local image's normalised name.
    pub image: String,
    /// The normalised target reference.
    pub target: String,
    /// The manifest digest pushed (the local image's).
    pub digest: String,
    pub status: PushStatus,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default)]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
    /// Layers in the image.
    pub layers: u32,
    /// Compressed layer bytes sent or found already in the registry.
    pub bytes: u64,
    /// Compressed layer bytes of the image.
    pub bytes_total: u64,
    /// Blobs (config and layers) the registry already had.
    #[serde(default)]
    pub blobs_skipped: u32,
}

/// A push request (hypeman's `POST /pushes` body).
#[derive(Debug, Clone, Default)]
pub struct PushRequest {
    pub image: String,
    pub target: String,
    pub credentials: Option<Credentials>,
    /// Plain HTTP to the target's registry.
    pub insecure: bool,
}

struct Inner {
    records: BTreeMap<String, PushRecord>,
    /// Layer bytes done of running jobs (updated as chunks are read).
    live: BTreeMap<String, Arc<AtomicU64>>,
}

pub struct Pushes {
    dir: PathBuf,
    images: Arc<Images>,
    registry: RegistryOptions,
    inner: Mutex<Inner>,
    slots: Semaphore,
}

fn now() -> String {
    lodge_common::time::now_rfc3339()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Pushes {
    /// Opens the push records under `images_dir/pushes`; jobs a previous
    /// daemon left unfinished are marked failed.
    pub fn open(
        images_dir: &Path,
        images: Arc<Images>,
        registry: RegistryOptions,
    ) -> Result<Arc<Self>> {
        let dir = images_dir.join("pushes");
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut records = BTreeMap::new();
        for e in std::fs::read_dir(&dir)
            .map_err(io(format!("reading {}", dir.display())))?
            .flatten()
        {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                if let Err(err) = std::fs::remove_file(&path) {
                    tracing::warn!("removing {}: {err}", path.display());
                }
                continue;
            }
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                Err(err) => {
                    tracing::warn!("reading {}: {err}", path.display());
                    continue;
                }
            };
            match serde_json::from_slice::<PushRecord>(&text) {
                Ok(r) if valid_id(&r.id) => {
                    records.insert(r.id.clone(), r);
                }
                Ok(_) => tracing::warn!("{}: a push record with a bad id", path.display()),
                Err(err) => tracing::warn!(
                    "{}",
                    json_failure(&format!("push record {}", path.display()), &err)
                ),
            }
        }
        let pushes = Pushes {
            dir,
            images,
            registry,
            inner: Mutex::new(Inner {
                records,
                live: BTreeMap::new(),
            }),
            slots: Semaphore::new(PARALLEL_PUSHES),
        };
        let stale: Vec<PushRecord> = pushes
            .lock()
            .records
            .values()
            .filter(|r| !r.status.is_final())
            .cloned()
            .collect();
        for mut r in stale {
            r.status = PushStatus::Failed;
            r.error = Some(INTERRUPTED.into());
            r.error_kind = Some(ErrorKind::Internal);
            r.completed_at = Some(now());
            pushes.save(&r)?;
        }
        pushes.prune();
        Ok(Arc::new(pushes))
    }

    /// Forgets the oldest finished pushes beyond [`KEEP_FINISHED`].
    fn prune(&self) {
        let mut inner = self.lock();
        let mut done: Vec<(String, String)> = inner
            .records
            .values()
            .filter(|r| r.status.is_final())
            .map(|r| (r.created_at.clone(), r.id.clone()))
            .collect();
        if done.len() <= KEEP_FINISHED {
            return;
        }
        done.sort();
        let excess = done.len() - KEEP_FINISHED;
        for (_, id) in done.into_iter().take(excess) {
            inner.records.remove(&id);
            let path = self.dir.join(format!("{id}.json"));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("removing {}: {e}", path.display());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a record (temp file, sync, rename) and keeps it in memory.
    fn save(&self, r: &PushRecord) -> Result<()> {
        let path = self.dir.join(format!("{}.json", r.id));
        let bytes = serde_json::to_vec_pretty(r)
            .map_err(|e| internal(format!("encoding push record: {e}")))?;
        lodge_common::fsutil::write_atomic(&path, &bytes)
            .map_err(io(format!("writing {}", path.display())))?;
        self.lock().records.insert(r.id.clone(), r.clone());
        Ok(())
    }

    /// A record as shown: live progress of a running job folded in.
    fn view(&self, inner: &Inner, r: &PushRecord) -> PushRecord {
        let mut r = r.clone();
        if let Some(done) = inner.live.get(&r.id) {
            r.bytes = done.load(Ordering::Relaxed).min(r.bytes_total);
        }
        r
    }

    /// Every push, newest first, and each queued one's place in the queue
    /// (1 = next).
    pub fn list(&self) -> Vec<(PushRecord, Option<u32>)> {
        let inner = self.lock();
        let mut all: Vec<PushRecord> = inner
            .records
            .values()
            .map(|r| self.view(&inner, r))
            .collect();
        drop(inner);
        all.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        let mut queued: Vec<&PushRecord> = all
            .iter()
            .filter(|r| r.status == PushStatus::Queued)
            .collect();
        queued.reverse();
        let places: BTreeMap<String, u32> = queued
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i as u32 + 1))
            .collect();
        all.into_iter()
            .map(|r| {
                let place = places.get(&r.id).copied();
                (r, place)
            })
            .collect()
    }

    /// One push by id.
    pub fn get(&self, id: &str) -> Result<(PushRecord, Option<u32>)> {
        self.list()
            .into_iter()
            .find(|(r, _)| r.id == id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("push {id:?} not found")))
    }

    /// Checks the request and starts the job; answers the push as queued.
    /// An unknown image is `NotFound`, one not ready `Conflict`, a target
    /// that is not a tag reference or bad credentials `Invalid`.
    pub fn start(self: &Arc<Self>, req: PushRequest) -> Result<(PushRecord, Option<u32>)> {
        let info = self.images.get(req.image.trim())?;
        let record = info.record;
        let digest = match (&record.digest, record.usable()) {
            (Some(d), true) => d.clone(),
            _ => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "image {} is {}, not ready: only ready images can be pushed",
                        record.name,
                        record.status.as_str()
                    ),
                ))
            }
        };
        let target_text = req.target.trim();
        if target_text.contains('@') {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("target {target_text:?}: push to a tag, not a digest (the digest is the image's own)"),
            ));
        }
        let target = parse_registry(target_text)?;
        if let Some(c) = &req.credentials {
            c.validate()?;
        }
        let mut opts = self.registry.clone();
        if req.insecure {
            opts.insecure.insert(target.registry().to_string());
        }
        // Fails on credentials from the auth file that cannot be sent.
        let remote = Remote::new(&target, &opts, req.credentials.as_ref())?;
        let id = loop {
            let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
            if !self.lock().records.contains_key(&id) {
                break id;
            }
        };
        let rec = PushRecord {
            id: id.clone(),
            image: record.name.clone(),
            target: canonical(&target),
            digest: digest.to_string(),
            status: PushStatus::Queued,
            created_at: now(),
            completed_at: None,
            error: None,
            error_kind: None,
            layers: record.layers.len() as u32,
            bytes: 0,
            bytes_total: 0,
            blobs_skipped: 0,
        };
        self.save(&rec)?;
        let done = Arc::new(AtomicU64::new(0));
        self.lock().live.insert(id.clone(), done.clone());
        let this = self.clone();
        let answer = id.clone();
        tokio::spawn(async move {
            let job = AssertUnwindSafe(this.run(rec, remote, digest, done)).catch_unwind();
            if let Err(payload) = job.await {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                tracing::error!("push {id} crashed: {what}");
                let stored = this.lock().records.get(&id).cloned();
                if let Some(mut r) = stored {
                    this.finish(
                        &mut r,
                        Err(internal(format!("the push crashed (panic: {what})"))),
                    );
                }
            }
            this.lock().live.remove(&id);
        });
        self.get(&answer)
    }

    async fn run(
        self: &Arc<Self>,
        mut rec: PushRecord,
        remote: Remote,
        digest: Digest,
        done: Arc<AtomicU64>,
    ) {
        let _permit = self.slots.acquire().await;
        rec.status = PushStatus::Pushing;
        if let Err(e) = self.save(&rec) {
            tracing::warn!("push {}: {e}", rec.id);
        }
        let result = self.work(&mut rec, &remote, &digest, &done).await;
        rec.bytes = done.load(Ordering::Relaxed).min(rec.bytes_total);
        self.finish(&mut rec, result);
    }

    fn finish(&self, rec: &mut PushRecord, result: Result<()>) {
        match result {
            Ok(()) => {
                rec.status = PushStatus::Pushed;
                tracing::info!("pushed {} to {} ({})", rec.image, rec.target, rec.digest);
            }
            Err(e) => {
                tracing::warn!("push of {} to {} failed: {}", rec.image, rec.target, e);
                rec.status = PushStatus::Failed;
                rec.error = Some(e.message);
                rec.error_kind = Some(e.kind);
            }
        }
        rec.completed_at = Some(now());
        if let Err(e) = self.save(rec) {
            tracing::error!("push {}: {e}", rec.id);
        }
        self.prune();
    }

    /// The upload: config and layers (skipping those the registry has),
    /// then the manifest, byte for byte as cached.
    async fn work(
        &self,
        rec: &mut PushRecord,
        remote: &Remote,
        digest: &Digest,
        done: &Arc<AtomicU64>,
    ) -> Result<()> {
        let blobs = self.images.blobs();
        let manifest_bytes = blobs.read_small(digest, MAX_MANIFEST)?;
        let manifest = match AnyManifest::parse(&manifest_bytes)
            .map_err(|e| internal(format!("the cached manifest {digest}: {e}")))?
        {
            AnyManifest::Image(m) => m,
            AnyManifest::Index(_) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("{digest} is an index; lodge pushes image manifests only"),
                ))
            }
        };
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let content_type = http::HeaderValue::from_str(&media_type)
            .map_err(|_| internal(format!("manifest media type {media_type:?}")))?;
        let mut all: Vec<(&Descriptor, bool)> = vec![(&manifest.config, false)];
        all.extend(manifest.layers.iter().map(|l| (l, true)));
        for (d, _) in &all {
            if !blobs.has(&d.digest, Some(d.size)) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "blob {} of {} is no longer in lodge's cache; pull the image again, then push",
                        d.digest, rec.image
                    ),
                ));
            }
        }
        rec.layers = manifest.layers.len() as u32;
        rec.bytes_total = manifest.layers.iter().map(|l| l.size).sum();
        self.save(rec)?;

        let target = remote.reference().clone();
        let (client, auth) = remote.parts();
        client
            .auth(&target, auth, RegistryOperation::Push)
            .await
            .map_err(|e| classify(e, &target))?;
        for (d, is_layer) in all {
            let name = d.digest.to_string();
            let present = client
                .blob_exists(&target, &name)
                .await
                .map_err(|e| classify(e, &target).context(format!("checking blob {name}")))?;
            if present {
                rec.blobs_skipped += 1;
                if is_layer {
                    done.fetch_add(d.size, Ordering::Relaxed);
                }
                continue;
            }
            let file = tokio::fs::File::open(blobs.path(&d.digest))
                .await
                .map_err(io(format!("reading blob {name}")))?;
            let counter = is_layer.then(|| done.clone());
            client
                .push_blob_stream(&target, file_chunks(file, counter), &name, Some(d.size))
                .await
                .map_err(|e| classify(e, &target).context(format!("uploading blob {name}")))?;
        }
        client
            .push_manifest_raw(&target, manifest_bytes, content_type)
            .await
            .map_err(|e| classify(e, &target).context("uploading the manifest"))?;
        Ok(())
    }
}

/// A cached blob as a stream of chunks, counting the bytes read.
fn file_chunks(
    file: tokio::fs::File,
    counter: Option<Arc<AtomicU64>>,
) -> impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>>
       + Send
       + 'static {
    futures_util::stream::unfold(Some(file), move |file| {
        let counter = counter.clone();
        async move {
            let mut f = file?;
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0;
            // Fill the chunk (reads may come back short).
            while n < CHUNK {
                match f.read(&mut buf[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Some((Err(OciDistributionError::IoError(e)), None)),
                }
            }
            if n == 0 {
                return None;
            }
            buf.truncate(n);
            if let Some(c) = &counter {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
            Some((Ok(bytes::Bytes::from(buf)), Some(f)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, created_at: &str, status: PushStatus) -> PushRecord {
        PushRecord {
            id: id.into(),
            image: "docker.io/library/a:1".into(),
            target: "127.0.0.1:5000/a:1".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            status,
            created_at: created_at.into(),
            completed_at: None,
            error: None,
            error_kind: None,
            layers: 1,
            bytes: 0,
            bytes_total: 0,
            blobs_skipped: 0,
        }
    }

    fn open(dir: &Path) -> Arc<Pushes> {
        let images = Images::open(
            dir,
            crate::manager::Options::default(),
            Arc::new(|_: &str| Vec::new()),
        )
        .expect("images");
        Pushes::open(dir, images, RegistryOptions::default()).expect("pushes")
    }

    #[tokio::test]
    async fn a_restart_fails_unfinished_pushes_and_lists_newest_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pushes = tmp.path().join("pushes");
        std::fs::create_dir_all(&pushes).expect("mkdir");
        for r in [
            record("aaa", "2026-01-01T00:00:00Z", PushStatus::Pushed),
            record("bbb", "2026-01-02T00:00:00Z", PushStatus::Pushing),
            record("ccc", "2026-01-03T00:00:00Z", PushStatus::Queued),
            record("ddd", "2026-01-04T00:00:00Z", PushStatus::Queued),
        ] {
            let text = serde_json::to_vec(&r).expect("json");
            std::fs::write(pushes.join(format!("{}.json", r.id)), text).expect("write");
        }
        std::fs::write(pushes.join("junk.json"), b"{").expect("write");
        std::fs::write(pushes.join(".x.json.tmp-1"), b"half").expect("write");

        let p = open(tmp.path());
        let list = p.list();
        let ids: Vec<&str> = list.iter().map(|(r, _)| r.id.as_str()).collect();
        assert_eq!(ids, ["ddd", "ccc", "bbb", "aaa"]);
        for (r, place) in &list {
            assert!(r.status.is_final(), "{r:?}");
            assert_eq!(*place, None);
            if r.id != "aaa" {
                assert_eq!(r.error.as_deref(), Some(INTERRUPTED), "{r:?}");
                assert!(r.completed_at.is_some());
            }
        }
        assert!(!pushes.join(".x.json.tmp-1").exists(), "debris stays");
        // The failure was written, not only shown.
        let again = open(tmp.path());
        assert_eq!(again.get("bbb").expect("bbb").0.status, PushStatus::Failed);
        assert_eq!(
            again.get("nope").expect_err("missing").kind,
            ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn only_the_latest_finished_pushes_are_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pushes = tmp.path().join("pushes");
        std::fs::create_dir_all(&pushes).expect("mkdir");
        let n = KEEP_FINISHED + 5;
        for i in 0..n {
            let r = record(
                &format!("p{i:04}"),
                &format!("2026-01-01T00:{:02}:{:02}Z", i / 60, i % 60),
                PushStatus::Pushed,
            );
            let text = serde_json::to_vec(&r).expect("json");
            std::fs::write(pushes.join(format!("{}.json", r.id)), text).expect("write");
        }
        let p = open(tmp.path());
        let list = p.list();
        assert_eq!(list.len(), KEEP_FINISHED);
        assert_eq!(list[0].0.id, format!("p{:04}", n - 1), "newest kept");
        assert!(p.get("p0004").is_err() && p.get("p0005").is_ok());
        assert!(!pushes.join("p0000.json").exists());
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_a_job_exists() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = open(tmp.path());
        let req = |image: &str, target: &str| PushRequest {
            image: image.into(),
            target: target.into(),
            ..Default::default()
        };
        assert_eq!(
            p.start(req("nosuch:1", "127.0.0.1:5000/x:1"))
                .expect_err("no image")
                .kind,
            ErrorKind::NotFound
        );
        assert!(p.list().is_empty());
    }
}
