//! Leases: how an instance being created holds an image's disk in place,
//! and [`Images::ensure`], which pulls first when the image is not local.

use std::path::PathBuf;
use std::sync::Arc;

use super::jobs::PullRequest;
use super::state::Images;
use crate::digest::Digest;
use crate::error::{internal, io, Error, ErrorKind, Result};
use crate::platform::Platform;
use crate::reference::lookup_key;
use crate::store::{ImageRecord, Status};

/// Holds an image's disk in place while an instance is being created
/// from it; the disk cannot be deleted until the lease is dropped.
pub struct ImageLease {
    pub(super) images: Arc<Images>,
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

impl Images {
    /// A lease on `name` if it is ready locally.
    pub(super) fn try_lease(self: &Arc<Self>, name: &str) -> Result<Option<ImageLease>> {
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
}
