//! Image records: `<images>/records/<sha256 of the name>.json`, one per
//! local image name, holding its status and, once ready, its digest and run
//! configuration. The file name is a hash because image names hold `/` and
//! `:` and may be longer than a file name may be.
//!
//! `status` and `error` describe the image the name holds; `pull`, the
//! latest pull of that name. They differ only for a refresh: while a ready
//! image is pulled again it stays `ready` (and bootable), and a refresh that
//! fails is a failed `pull`, not a failed image.
//!
//! Writes go to a temp file, are synced and renamed, so a reader or a crash
//! sees the old record or the new one. The disk an image boots from is
//! `<images>/disks/<manifest hex>.<format>`, shared by every name (and every
//! instance) of that manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lodge_common::paths::ImagePaths;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::oci::ContainerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Pulling,
    Converting,
    Ready,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Pulling => "pulling",
            Status::Converting => "converting",
            Status::Ready => "ready",
            Status::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Ready | Status::Failed)
    }
}

/// The latest pull of one name, apart from the image it names: a refresh
/// of a ready image that fails is reported here and leaves the image (its
/// `status`, digest and disk) as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullState {
    /// pending → pulling → converting → ready, or failed.
    pub status: Status,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
    /// The platform asked for.
    pub platform: String,
    /// What was asked for.
    pub source: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, once the pull has ended.
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// What lodge remembers about one image name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Normalised reference (`docker.io/library/alpine:latest`).
    pub name: String,
    /// What was asked for (a reference, or `oci-archive:/path`).
    pub source: String,
    pub status: Status,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
    /// Manifest digest of the platform image, once resolved.
    #[serde(default)]
    pub digest: Option<Digest>,
    /// Digest of the multi-platform index the manifest was chosen from.
    #[serde(default)]
    pub index_digest: Option<Digest>,
    pub platform: String,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default)]
    pub config: ContainerConfig,
    /// The image's user as numeric `uid[:gid]` when its name could be
    /// resolved in the image's `/etc/passwd`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub layers: Vec<Digest>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Root disk file name under `disks/`.
    #[serde(default)]
    pub disk: Option<String>,
    /// The latest pull of this name (absent in records written before
    /// lodge reported pulls apart from images).
    #[serde(default)]
    pub pull: Option<PullState>,
}

impl ImageRecord {
    /// Whether the image can boot: ready, with a digest and a disk.
    pub fn usable(&self) -> bool {
        self.status == Status::Ready && self.digest.is_some() && self.disk.is_some()
    }
}

pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn open(images_dir: &Path) -> std::io::Result<Self> {
        let dir = ImagePaths::new(images_dir).records();
        std::fs::create_dir_all(&dir)?;
        Ok(Records { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    pub fn save(&self, r: &ImageRecord) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
        lodge_common::fsutil::write_atomic(&self.path(&r.name), &json)
    }

    pub fn load(&self, name: &str) -> std::io::Result<Option<ImageRecord>> {
        match std::fs::read(self.path(name)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("image record of {name}: {e}"),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// All records; unreadable ones are skipped with a warning.
    pub fn all(&self) -> std::io::Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                if e.file_name().to_string_lossy().contains(".tmp-") {
                    let _ = std::fs::remove_file(&p);
                }
                continue;
            }
            match std::fs::read(&p).map(|b| serde_json::from_slice::<ImageRecord>(&b)) {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(err)) => {
                    tracing::warn!("skipping unreadable image record {}: {err}", p.display())
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(out)
    }
}
