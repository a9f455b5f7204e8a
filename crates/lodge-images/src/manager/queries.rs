//! Reading and deleting what the store holds: one image, all images,
//! another name for an image (tag), and deletion guarded by the instances
//! and leases that use a disk.

use super::state::{ImageInfo, Images};
use crate::error::{io, Error, ErrorKind, Result};
use crate::reference::{lookup_key, Source};
use crate::store::ImageRecord;

impl Images {
    pub(super) fn info(&self, record: ImageRecord) -> ImageInfo {
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

    /// Gives the ready image `name` a second name, `target` (a registry
    /// reference with a tag), without pulling: both names share the one
    /// disk, as `docker tag`. An existing `target` is repointed; one being
    /// pulled is refused.
    pub fn tag(&self, name: &str, target: &str) -> Result<ImageInfo> {
        let key = lookup_key(name)?;
        let invalid =
            |why: &str| Error::new(ErrorKind::Invalid, format!("target {target:?}: {why}"));
        let target_key = match Source::parse(target.trim())? {
            Source::Registry(_) if target.contains('@') => {
                return Err(invalid("a tag cannot be a digest reference"))
            }
            Source::Registry(r) => crate::reference::canonical(&r),
            _ => return Err(invalid("must be an image reference with a tag")),
        };
        let inner = self.lock();
        if inner.jobs.contains_key(&target_key) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("image {target_key} is being pulled; tag it when the pull has ended"),
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
        if !record.usable() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "image {key} is {}, not ready: it cannot be tagged yet",
                    record.status.as_str()
                ),
            ));
        }
        let tagged = ImageRecord {
            name: target_key,
            created_at: lodge_common::time::now_rfc3339(),
            pull: None,
            ..record
        };
        self.records
            .save(&tagged)
            .map_err(io("writing an image record"))?;
        drop(inner);
        Ok(self.info(tagged))
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
}
