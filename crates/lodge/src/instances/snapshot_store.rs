//! Snapshot records on disk (`<data dir>/snapshots/<id>/snapshot.json`)
//! and their API shape: the part of `snapshots` that the instance records'
//! readers need too (the image store asks which snapshots boot from an
//! image), kept apart so that `manager` and `snapshots` both depend on it
//! and not on each other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::{Metadata, SavedState};

/// The record file in each snapshot directory.
pub(super) const RECORD: &str = "snapshot.json";

/// hypeman's snapshot kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum SnapshotKind {
    /// Disks plus memory and device state: restores to a running guest.
    Standby,
    /// Disks only: restores to a stopped instance that boots afresh.
    Stopped,
}

/// A snapshot as the API shows it: hypeman's `Snapshot` shape.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub id: String,
    /// RFC 3339.
    pub created_at: String,
    pub kind: SnapshotKind,
    /// Bytes of the snapshot's files (allocated, so sparse disks count
    /// what they hold).
    pub size_bytes: u64,
    pub source_hypervisor: String,
    pub source_instance_id: String,
    pub source_instance_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Always `none`: lodge does not compress snapshots yet.
    pub compression_state: String,
}

/// What a snapshot holds, in `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: Option<String>,
    pub kind: SnapshotKind,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The instance's record when the snapshot was taken.
    pub source: Metadata,
    /// The disk files copied (names in the instance directory and here).
    pub disks: Vec<String>,
    /// The saved memory and device state (paths relative to the snapshot
    /// directory); `Standby` snapshots only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SavedState>,
    pub size_bytes: u64,
    /// Taken by the instance's snapshot schedule (its retention applies).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scheduled: bool,
}

impl SnapshotRecord {
    pub fn view(&self) -> Snapshot {
        Snapshot {
            id: self.id.clone(),
            created_at: self.created_at.clone(),
            kind: self.kind,
            size_bytes: self.size_bytes,
            source_hypervisor: self.source.hypervisor.to_string(),
            source_instance_id: self.source.id.clone(),
            source_instance_name: self.source.name.clone(),
            name: self.name.clone(),
            tags: self.tags.clone(),
            compression_state: "none".into(),
        }
    }
}

/// The snapshots directory under `data_dir`.
pub(super) fn snapshots_dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// Every snapshot record under `dir` (unreadable ones are logged and
/// skipped), oldest first.
pub(super) fn records_in(dir: &Path) -> Vec<SnapshotRecord> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        match std::fs::read(e.path().join(RECORD)) {
            Ok(bytes) => match serde_json::from_slice::<SnapshotRecord>(&bytes) {
                Ok(r) => out.push(r),
                Err(err) => tracing::warn!("snapshot {name}: unreadable record: {err}"),
            },
            Err(err) => tracing::warn!("snapshot {name}: {err}"),
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    out
}

/// Names of the snapshots (as `snapshot <id> of <instance>`) whose
/// instance booted from the image disk of manifest `digest`: the image
/// store keeps such an image (see `manager::image_users`).
pub(super) fn image_users(data_dir: &Path, digest: &str) -> Vec<String> {
    records_in(&snapshots_dir_of(data_dir))
        .into_iter()
        .filter(|r| r.source.image_digest.as_deref() == Some(digest))
        .map(|r| format!("snapshot {} of {}", r.id, r.source.name))
        .collect()
}
