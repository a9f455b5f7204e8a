//! Pull jobs and their status: a pull request starts (or joins) one
//! background job per name, whose record moves pending → pulling →
//! converting → ready or failed, while callers wait on it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::state::{ImageInfo, Images, Job, Progress};
use crate::archive;
use crate::error::{internal, io, Error, ErrorKind, Result};
use crate::platform::Platform;
use crate::reference::{canonical, Source};
use crate::registry::Credentials;
use crate::store::{ImageRecord, Status};
use crate::unpack::remove_tree;

/// A pull request (hypeman's `POST /images` body).
#[derive(Debug, Clone, Default)]
pub struct PullRequest {
    pub name: String,
    pub platform: Option<String>,
    pub credentials: Option<Credentials>,
    pub tags: BTreeMap<String, String>,
}

fn now() -> String {
    lodge_common::time::now_rfc3339()
}

impl Images {
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

    pub(super) fn start(
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

    pub(super) fn set_status(&self, record: &mut ImageRecord, status: Status) {
        record.status = status;
        if let Err(e) = self.records.save(record) {
            tracing::warn!("writing image record of {}: {e}", record.name);
        }
    }

    pub(super) async fn run(
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
}
