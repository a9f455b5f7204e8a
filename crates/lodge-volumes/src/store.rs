//! On-disk layout and records of the volume store:
//!
//! ```text
//! <data dir>/volumes/
//!   <id>/volume.json          the record (written atomically)
//!   <id>/data.raw             the sparse ext4 disk the guest mounts
//!   .creating-<id>/           a volume being made (renamed into place)
//!   .deleting-<id>/           a volume being removed
//! ```
//!
//! A volume exists exactly when `<id>/volume.json` does: it is written last
//! in the staging directory, and the directory is renamed into place whole,
//! so a crash or a failure never leaves a record without its disk nor a
//! disk without its record (no orphan `data.raw`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What lodge remembers about a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    pub name: String,
    pub size_gb: u64,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

pub const RECORD: &str = "volume.json";
pub const DATA: &str = "data.raw";
const CREATING: &str = ".creating-";
const DELETING: &str = ".deleting-";

/// Paths of one volume store.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn volume(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }
    pub fn data(&self, id: &str) -> PathBuf {
        self.volume(id).join(DATA)
    }
    pub fn creating(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{CREATING}{id}"))
    }
    pub fn deleting(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{DELETING}{id}"))
    }

    /// Every record in the store (directories without one are skipped).
    pub fn records(&self) -> std::io::Result<Vec<VolumeRecord>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || crate::rules::check_id(name).is_err() {
                continue;
            }
            match load(&entry.path()) {
                Ok(r) => out.push(r),
                // Removed while listing, or a directory without a record.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes the debris of creates and deletes a crash interrupted.
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(CREATING) || name.starts_with(DELETING) {
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!("removing {}: {e}", entry.path().display());
                }
            }
        }
    }
}

pub fn save(dir: &Path, rec: &VolumeRecord) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
    lodge_common::fsutil::write_atomic(&dir.join(RECORD), &json)
}

pub fn load(dir: &Path) -> std::io::Result<VolumeRecord> {
    let path = dir.join(RECORD);
    let bytes = std::fs::read(&path)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}
