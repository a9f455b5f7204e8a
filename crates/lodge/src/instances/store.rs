//! On-disk instance records: `<data dir>/guests/<id>/metadata.json`.
//!
//! The files are the source of truth, so a restarted daemon finds every
//! instance again. Each write goes to a temp file that is fsynced and renamed
//! over the old one: a reader (or a crash) sees the old record or the new one,
//! never half of either.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use lodge_hypervisor::HypervisorKind;

pub use crate::config::ConsoleKind;
use serde::{Deserialize, Serialize};

/// What lodge remembers about an instance between operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub id: String,
    pub name: String,
    /// Image reference, or `rootfs:<dir>` for a VM booted from a directory.
    pub image: String,
    #[serde(with = "humantime_serde_compat")]
    pub created_at: SystemTime,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub overlay_bytes: u64,
    /// The hypervisor the instance was created with and is always driven
    /// by; stored under hypeman's name (e.g. `qemu`), as records always were.
    pub hypervisor: HypervisorKind,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    /// Numeric `uid[:gid]` the program runs as; `None` is root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// An image's shared read-only disk the VM boots; `None` means the
    /// instance's own `rootfs.ext4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk: Option<PathBuf>,
    /// Manifest digest of the image behind `root_disk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Set while a VM has been paused by lodge (QMP stop).
    #[serde(default)]
    pub paused: bool,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub started_at: Option<SystemTime>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub stopped_at: Option<SystemTime>,
    /// The instance's address on the default network; `None` for an
    /// instance without a network (and every record from before networking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRecord>,
    /// hypeman's user tags (validated where the API takes them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// When the instance is stopped and deleted (hypeman's TTL).
    #[serde(
        default,
        with = "humantime_serde_compat::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<SystemTime>,
    /// hypeman's restart policy and where it stands (`policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<super::policy::RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_status: Option<super::policy::RestartState>,
    /// hypeman's workload health check (`health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<super::health::HealthCheck>,
    /// Where the workload's output goes; records from before the fast
    /// console have none and keep the serial console (a standby snapshot
    /// must be restored into the same devices).
    #[serde(default)]
    pub console: ConsoleKind,
    /// Standby: the saved state while the instance sleeps, and what a
    /// standby or restore left behind.
    #[serde(default, skip_serializing_if = "StandbyState::is_empty")]
    pub standby: StandbyState,
    /// Volumes attached to the instance, at create or while running; the
    /// one record of who holds a volume (lodge-volumes reads it back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeAttachment>,
    /// hypeman's auto-standby policy (`auto_standby`), and where its idle
    /// countdown and hold stand, kept across daemon restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_standby: Option<super::auto_standby::AutoStandbyPolicy>,
    #[serde(
        default,
        skip_serializing_if = "super::auto_standby::AutoStandbyRuntime::is_empty"
    )]
    pub auto_standby_runtime: super::auto_standby::AutoStandbyRuntime,
    /// The VM has a memory balloon (`reclaim`); records from before it
    /// have none and keep booting without (a standby snapshot must be
    /// restored into the same devices).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub balloon: bool,
    /// hypeman's `disk_io_bps`: the limit of each of the VM's disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_io_bps: Option<u64>,
}

/// What an instance's record says about standby (see `standby`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyState {
    /// The saved memory and device state, while the instance is in standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SavedState>,
    /// The running VMM was restored from a state saved after the guest
    /// program had started (its start line went to an earlier monitor).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// The VMM runs (or was saved) with its RAM in the instance's memory
    /// file, mapped shared, rather than in anonymous memory (decided at
    /// each boot; see `VmConfig::memory_file`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ram_file: bool,
    /// The guest was saved with another instance's address, this one (a
    /// fork): after its next restore, the guest agent moves it onto the
    /// instance's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readdress_from: Option<std::net::Ipv4Addr>,
    /// Why the last restore failed; cleared by the next standby or restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A standby or restore under way (or cut short by a daemon crash:
    /// the daemon finishes or undoes it when it starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingOp>,
    /// Set by a standby once its save has completed (the state file is
    /// whole, still under its temporary name): what the state needs, so a
    /// daemon restarted before the commit can finish it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_identity: Option<lodge_hypervisor::SnapshotIdentity>,
}

impl StandbyState {
    pub fn is_empty(&self) -> bool {
        *self == StandbyState::default()
    }
}

/// A saved VM state: where it is and what can load it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// The state file, relative to the instance directory.
    pub file: PathBuf,
    /// Bytes of the state file.
    pub size_bytes: u64,
    /// The guest RAM file the state goes with (relative to the instance
    /// directory), when the VM's memory is a file; its pages are not in
    /// the state file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_file: Option<PathBuf>,
    #[serde(with = "humantime_serde_compat")]
    pub created_at: SystemTime,
    /// The VMM version, machine type, accelerator and CPU model it needs.
    pub identity: lodge_hypervisor::SnapshotIdentity,
    /// Compression of the state's memory, when asked for (see `compress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

/// How a saved state's memory is compressed, and how far that got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: CompressionAlgorithm,
    pub level: u32,
    pub state: CompressionState,
    /// Bytes of the memory before and after, once compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// hypeman's compression algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    Zstd,
    Lz4,
}

/// hypeman's `compression_state` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionState {
    /// Waiting for its delay, or running.
    Compressing,
    Compressed,
    Error,
}

/// An operation that changes whether a VMM runs, recorded while under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingOp {
    Standby,
    Restore,
}

/// One volume attached to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    pub volume_id: String,
    pub mount_path: String,
    pub readonly: bool,
    /// Mounted as the lower layer of an overlay whose writes go to the
    /// instance's own upper disk ([`upper_disk`]); the volume is read-only.
    #[serde(default)]
    pub overlay: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_bytes: Option<u64>,
    /// The hot-plug slot of the volume's disk (its serial, its place in
    /// the VM): the same at every boot, and after a restore.
    pub slot: u32,
    /// The slot of the overlay's upper disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_slot: Option<u32>,
}

/// The writable upper disk of the overlay attachment in `slot`.
pub fn upper_disk(paths: &Paths, slot: u32) -> PathBuf {
    paths.dir.join(format!("volume-{slot}-upper.ext4"))
}

/// An instance's place on the default network, persisted in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub ip: std::net::Ipv4Addr,
    /// `02:4c:…` (lodge-net derives it from the address).
    pub mac: String,
    /// hypeman's rate strings, in lodge's canonical bit-rate form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_download: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_upload: Option<String>,
}

impl NetworkRecord {
    pub fn new(lease: &lodge_net::Lease, limits: lodge_net::Limits) -> Self {
        NetworkRecord {
            ip: lease.ip,
            mac: lease.mac.to_string(),
            bandwidth_download: limits.download.map(|b| b.to_string()),
            bandwidth_upload: limits.upload.map(|b| b.to_string()),
        }
    }

    pub fn mac(&self) -> Result<lodge_net::MacAddr, lodge_net::NetError> {
        self.mac
            .parse()
            .map_err(|reason: String| lodge_net::NetError::Io {
                op: format!("reading the instance's MAC {:?}", self.mac),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
            })
    }

    pub fn limits(&self) -> Result<lodge_net::Limits, lodge_net::NetError> {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .map(str::parse::<lodge_net::Bandwidth>)
                .transpose()
        };
        Ok(lodge_net::Limits {
            download: parse(&self.bandwidth_download)?,
            upload: parse(&self.bandwidth_upload)?,
        })
    }
}

/// Layout of one instance directory: lodge-common's, the one definition.
pub use lodge_common::paths::GuestPaths as Paths;

/// The guest RAM file of a VM whose memory is a file (see `standby`), in
/// the instance directory beside the disks.
pub const RAM_FILE: &str = "memory.ram";

/// Removes the guest RAM file of a VM that has ended (nothing to keep).
pub fn remove_ram_file(paths: &Paths) -> std::io::Result<()> {
    match std::fs::remove_file(paths.dir.join(RAM_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn save(paths: &Paths, meta: &Metadata) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    lodge_common::fsutil::write_atomic(&paths.metadata(), &json)
}

pub fn load(paths: &Paths) -> std::io::Result<Metadata> {
    let bytes = std::fs::read(paths.metadata())?;
    serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", paths.metadata().display()),
        )
    })
}

/// Ids of all instance directories that hold a record. Directories without
/// one (a create in progress, or debris) are skipped.
pub fn list_ids(guests_dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(guests_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if super::naming::is_id_like(&name) && entry.path().join("metadata.json").exists() {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

/// RFC 3339 timestamps in JSON, in lodge-common's one format.
mod humantime_serde_compat {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&lodge_common::time::rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        lodge_common::time::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| lodge_common::time::parse_rfc3339(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().join("abc123"));
        std::fs::create_dir_all(&paths.dir).expect("mkdir");
        let meta = Metadata {
            id: "abc123".into(),
            name: "web".into(),
            image: "rootfs:/x".into(),
            created_at: SystemTime::now(),
            vcpus: 1,
            memory_bytes: 1 << 30,
            overlay_bytes: 1 << 30,
            hypervisor: HypervisorKind::Qemu,
            entrypoint: vec![],
            cmd: vec!["echo".into(), "hi".into()],
            env: BTreeMap::new(),
            workdir: "/".into(),
            user: None,
            root_disk: None,
            image_digest: None,
            paused: false,
            started_at: None,
            stopped_at: Some(SystemTime::now()),
            console: ConsoleKind::Virtio,
            network: Some(NetworkRecord {
                ip: std::net::Ipv4Addr::new(10, 100, 0, 2),
                mac: "02:4c:0a:64:00:02".into(),
                bandwidth_download: Some("10Mbps".into()),
                bandwidth_upload: None,
            }),
            tags: BTreeMap::from([("team".to_string(), "web".to_string())]),
            expires_at: None,
            restart_policy: None,
            restart_status: None,
            health_check: None,
            standby: StandbyState::default(),
            balloon: true,
            disk_io_bps: Some(100 << 20),
            volumes: vec![VolumeAttachment {
                volume_id: "vol-1".into(),
                mount_path: "/data".into(),
                readonly: false,
                overlay: false,
                overlay_bytes: None,
                slot: 0,
                upper_slot: None,
            }],
            auto_standby: None,
            auto_standby_runtime: Default::default(),
        };
        save(&paths, &meta).expect("save");
        let back = load(&paths).expect("load");
        assert_eq!(back.name, "web");
        assert_eq!(back.hypervisor, HypervisorKind::Qemu);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(paths.metadata()).expect("read")).expect("json");
        assert_eq!(json["hypervisor"], HypervisorKind::Qemu.as_str());
        assert!(back.stopped_at.is_some());
        assert_eq!(back.network, meta.network);
        assert_eq!(json["network"]["ip"], "10.100.0.2");
        assert_eq!(back.volumes, meta.volumes);
        assert!(json["network"].get("bandwidth_upload").is_none());
        assert_eq!(back.tags, meta.tags);
        assert!(json.get("standby").is_none(), "no standby, no field");
        std::fs::create_dir_all(dir.path().join("nometa")).expect("mkdir");
        assert_eq!(
            list_ids(dir.path()).expect("list"),
            vec!["abc123".to_string()]
        );
    }

    /// A record written before the hypervisor was typed (a plain string)
    /// still loads, and is QEMU.
    #[test]
    fn old_records_still_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().join("old1"));
        std::fs::create_dir_all(&paths.dir).expect("mkdir");
        // A record as lodge wrote it when `hypervisor` was a plain string.
        let old = include_str!("../../tests/data/metadata-before-typed-hypervisor.json");
        std::fs::write(paths.metadata(), old).expect("write");
        let meta = load(&paths).expect("an old record loads");
        assert_eq!(meta.hypervisor, HypervisorKind::Qemu);
        assert!(!meta.paused);
        assert_eq!(meta.root_disk, None);
        assert_eq!(meta.network, None);
        assert!(meta.volumes.is_empty());
    }
}
