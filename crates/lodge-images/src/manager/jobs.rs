//! Pull jobs and their status: a pull request starts (or joins) one
//! background job per name; the job's progress is the record's `pull`
//! (pending → pulling → converting → ready or failed), while callers wait
//! on it.
//!
//! A job always ends, and always says how: its work runs under
//! `catch_unwind`, so a panic anywhere in it (a client library's `unwrap`
//! on a registry's answer) ends the pull `failed` with a message, its work
//! directory removed and its job slot freed, like any other error.
//!
//! A pull of a name that already holds a ready image is a refresh: the
//! image stays ready and bootable throughout, and is replaced only by a
//! pull that succeeds. A refresh that fails, or a pull of another
//! platform that fails, is reported on `pull` alone.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use tokio::sync::watch;

use super::sources::{Origin, Upload};
use super::state::{ImageInfo, Images, Job, Progress};
use crate::archive::{self, ArchiveFormat, ArchiveInput};
use crate::error::{internal, io, Error, ErrorKind, Result};
use crate::platform::Platform;
use crate::reference::{canonical, Source};
use crate::registry::Credentials;
use crate::store::{ImageRecord, PullState, Status};
use crate::unpack::remove_tree;

/// A pull request (hypeman's `POST /images` body).
#[derive(Debug, Clone, Default)]
pub struct PullRequest {
    pub name: String,
    pub platform: Option<String>,
    pub credentials: Option<Credentials>,
    pub tags: BTreeMap<String, String>,
}

/// An archive import from an upload (docker's `load`).
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub format: ArchiveFormat,
    /// Picks one image of an archive holding several (as `PATH:REF` does).
    pub reference: Option<String>,
    /// The archive's file name on the client, for images the archive does
    /// not name (`localhost/<stem>:latest`) and for messages.
    pub file_name: Option<String>,
    pub platform: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// What a job is started with.
struct Start {
    origin: Origin,
    /// What was asked for, as the record shows it.
    source: String,
    platform: Platform,
    creds: Option<Credentials>,
    tags: BTreeMap<String, String>,
}

fn now() -> String {
    lodge_common::time::now_rfc3339()
}

fn parse_platform(p: Option<&str>) -> Result<Platform> {
    match p.map(str::trim) {
        None | Some("") => Ok(Platform::host()),
        Some(p) => Platform::parse(p).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidPlatform,
                format!("invalid platform {p:?}: expected os/arch[/variant] with os linux and arch amd64 or arm64"),
            )
        }),
    }
}

/// The text of a panic's payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

fn crashed(payload: &(dyn std::any::Any + Send)) -> Error {
    internal(format!(
        "the pull crashed (panic: {}); pull again, and report it if it repeats",
        panic_text(payload)
    ))
}

/// A file name from a client, reduced to its last component.
fn upload_label(name: Option<&str>) -> String {
    name.and_then(|n| n.rsplit(['/', '\\']).next())
        .map(|n| n.trim())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("upload.tar")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

impl Images {
    /// Starts (or joins) a pull and returns the image as it is now.
    /// Malformed names, platforms and credentials, and archive paths
    /// outside the import directory, fail here, before anything is written.
    pub async fn pull(self: &Arc<Self>, req: PullRequest) -> Result<ImageInfo> {
        let source = Source::parse(req.name.trim())?;
        let platform = parse_platform(req.platform.as_deref())?;
        if let Some(c) = &req.credentials {
            c.validate()?;
        }
        let (name, origin) = match source {
            Source::Registry(r) => (canonical(&r), Origin::Registry(r)),
            Source::OciArchive { path, reference } | Source::DockerArchive { path, reference } => {
                let format = if req.name.trim().starts_with("oci-archive:") {
                    ArchiveFormat::Oci
                } else {
                    ArchiveFormat::Docker
                };
                let this = self.clone();
                let picked = reference.clone();
                let (input, name) = tokio::task::spawn_blocking(move || -> Result<_> {
                    let file = this.open_import(&path)?;
                    let input = ArchiveInput::new(file, path);
                    let name = archive::local_name(format, &input, picked.as_deref())?;
                    Ok((input, name))
                })
                .await
                .map_err(|e| internal(format!("reading the archive: {e}")))??;
                let origin = Origin::Archive {
                    format,
                    input: Arc::new(input),
                    reference,
                };
                (name, origin)
            }
        };
        self.start(
            name,
            Start {
                origin,
                source: req.name.trim().to_string(),
                platform,
                creds: req.credentials,
                tags: req.tags,
            },
        )
    }

    /// Imports an uploaded archive (see [`Images::begin_upload`]) as a pull.
    pub async fn load(self: &Arc<Self>, upload: Upload, req: LoadRequest) -> Result<ImageInfo> {
        let platform = parse_platform(req.platform.as_deref())?;
        let label = upload_label(req.file_name.as_deref());
        let file = upload.finish().await?;
        let input = ArchiveInput::new(file, &label);
        let (format, reference) = (req.format, req.reference.clone());
        let (input, name) = tokio::task::spawn_blocking(move || -> Result<_> {
            let name = archive::local_name(format, &input, reference.as_deref())?;
            Ok((input, name))
        })
        .await
        .map_err(|e| internal(format!("reading the archive: {e}")))??;
        self.start(
            name,
            Start {
                origin: Origin::Archive {
                    format,
                    input: Arc::new(input),
                    reference: req.reference,
                },
                source: format!("{}{label} (uploaded)", format.prefix()),
                platform,
                creds: None,
                tags: req.tags,
            },
        )
    }

    fn start(self: &Arc<Self>, name: String, s: Start) -> Result<ImageInfo> {
        let mut inner = self.lock();
        if inner.jobs.contains_key(&name) {
            drop(inner);
            return self.get(&name);
        }
        let prev = self
            .records
            .load(&name)
            .map_err(io("reading an image record"))?;
        let started = now();
        let mut record = prev.unwrap_or_else(|| ImageRecord {
            name: name.clone(),
            source: String::new(),
            status: Status::Pending,
            error: None,
            error_kind: None,
            digest: None,
            index_digest: None,
            platform: String::new(),
            created_at: started.clone(),
            config: Default::default(),
            user: None,
            size_bytes: None,
            layers: Vec::new(),
            tags: BTreeMap::new(),
            disk: None,
            pull: None,
        });
        // A ready image stays as it is until a pull replaces it.
        if !record.usable() {
            record.source = s.source.clone();
            record.status = Status::Pending;
            record.error = None;
            record.error_kind = None;
            record.platform = s.platform.to_string();
        }
        if !s.tags.is_empty() {
            record.tags = s.tags.clone();
        }
        record.pull = Some(PullState {
            status: Status::Pending,
            error: None,
            error_kind: None,
            platform: s.platform.to_string(),
            source: s.source.clone(),
            started_at: started,
            finished_at: None,
        });
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
        let rec = record.clone();
        // The pull's span (a child of the request's, when traced) lasts as
        // long as the pull, past the 202.
        let span = tracing::info_span!("image.pull", image = %name);
        let job = async move {
            // Frees the job slot however the job ends (even cancelled).
            let _slot = JobSlot {
                images: this.clone(),
                name: name.clone(),
                done: tx,
            };
            let job = AssertUnwindSafe(this.run(rec, s, progress)).catch_unwind();
            if let Err(payload) = job.await {
                // `run` catches its own work's panics; this is the last resort.
                let e = crashed(payload.as_ref());
                tracing::error!("pull of {name}: {}", e.message);
                this.record_outcome_by_name(&name, e);
            }
        };
        tokio::spawn(tracing::Instrument::instrument(job, span));
        Ok(self.info(record))
    }

    /// Waits for the pull of `name` to end, if one is running.
    pub async fn wait(&self, name: &str) {
        let rx = self.lock().jobs.get(name).map(|j| j.done.clone());
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    /// Moves a pull on; the image's own status follows only while the name
    /// holds no ready image.
    pub(super) fn set_status(&self, record: &mut ImageRecord, status: Status) {
        if let Some(p) = record.pull.as_mut() {
            p.status = status;
        }
        if !record.usable() {
            record.status = status;
        }
        if let Err(e) = self.records.save(record) {
            tracing::warn!("writing image record of {}: {e}", record.name);
        }
    }

    /// Records a failed pull: on `pull` always, on the image only if it
    /// is not a ready one (which stays ready).
    fn fail(&self, record: &mut ImageRecord, e: Error) {
        tracing::warn!("pull of {} failed: {}", record.name, e.message);
        if let Some(p) = record.pull.as_mut() {
            p.status = Status::Failed;
            p.error = Some(e.message.clone());
            p.error_kind = Some(e.kind);
            p.finished_at = Some(now());
        }
        if !record.usable() {
            record.status = Status::Failed;
            record.error = Some(e.message);
            record.error_kind = Some(e.kind);
        }
        if let Err(e) = self.records.save(record) {
            tracing::error!("writing image record of {}: {e}", record.name);
        }
    }

    /// [`Self::fail`] for a job whose record was lost with its panic.
    fn record_outcome_by_name(&self, name: &str, e: Error) {
        match self.records.load(name) {
            Ok(Some(mut r)) => self.fail(&mut r, e),
            Ok(None) => {}
            Err(err) => tracing::error!("reading image record of {name}: {err}"),
        }
    }

    async fn run(
        self: &Arc<Self>,
        mut record: ImageRecord,
        s: Start,
        progress: Arc<Mutex<Progress>>,
    ) {
        let _permit = self.pulls.acquire().await;
        self.set_status(&mut record, Status::Pulling);
        let old_digest = record.digest.clone();
        let tmp = self
            .paths()
            .tmp()
            .join(format!("pull-{:016x}", rand::random::<u64>()));
        let work = AssertUnwindSafe(self.work(&mut record, &s, &progress, &tmp)).catch_unwind();
        let result = match work.await {
            Ok(r) => r,
            Err(payload) => {
                let e = crashed(payload.as_ref());
                tracing::error!("pull of {}: {}", record.name, e.message);
                Err(e)
            }
        };
        let cleanup = tmp.clone();
        let removed = tokio::task::spawn_blocking(move || match remove_tree(&cleanup) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("removing {}: {e}", tmp.display()),
            Err(e) => tracing::warn!("removing {}: {e}", tmp.display()),
        }
        self.counters.finished(result.is_ok());
        match result {
            Ok(b) => {
                record.status = Status::Ready;
                record.error = None;
                record.error_kind = None;
                record.digest = Some(b.manifest_digest.clone());
                record.index_digest = b.index_digest;
                record.config = b.config.config;
                record.user = b.user;
                record.size_bytes = Some(b.size);
                record.layers = b.layers;
                record.disk = Some(b.disk);
                record.platform = s.platform.to_string();
                record.source = s.source.clone();
                if let Some(p) = record.pull.as_mut() {
                    p.status = Status::Ready;
                    p.finished_at = Some(now());
                }
                if let Err(e) = self.records.save(&record) {
                    tracing::error!("writing image record of {}: {e}", record.name);
                }
                self.lock().building.remove(&b.manifest_digest);
                tracing::info!("image {} ready ({})", record.name, b.manifest_digest);
                if let Some(old) = old_digest.filter(|o| o != &b.manifest_digest) {
                    self.release_if_unused(&old);
                }
            }
            Err(e) => self.fail(&mut record, e),
        }
    }

    /// The job's work: free space first, then the source, then the layers.
    async fn work(
        self: &Arc<Self>,
        record: &mut ImageRecord,
        s: &Start,
        progress: &Arc<Mutex<Progress>>,
        tmp: &Path,
    ) -> Result<super::build::Built> {
        self.ensure_free(0, "pulling")?;
        self.fetch_and_build(
            record,
            &s.origin,
            &s.platform,
            s.creds.as_ref(),
            progress,
            tmp,
        )
        .await
    }
}

/// The job's entry in the running set, removed (and waiters woken) when
/// the job's task ends, however it ends.
struct JobSlot {
    images: Arc<Images>,
    name: String,
    done: watch::Sender<bool>,
}

impl Drop for JobSlot {
    fn drop(&mut self) {
        self.images.lock().jobs.remove(&self.name);
        self.done.send_replace(true);
    }
}
