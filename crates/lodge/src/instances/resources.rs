//! What the host can give and what instances hold (hypeman's `GET
//! /resources`), and the admission of a boot against it (the limits and
//! the book of boots in flight are `admission`'s).
//!
//! Capacity is measured (CPUs, `MemTotal`, the data dir's file system) or,
//! for the network, configured; the effective limit is capacity × the
//! oversubscription ratio. An instance holds its vCPUs and memory while its
//! VMM may run: every state but Stopped and Standby. Only vCPUs and memory
//! are admitted; disk is guarded by the image store's free-space checks,
//! network limits are shares, not reservations.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::admission::{limit, Demand, Reservation};
use super::error::Result;
use super::manager::Manager;
use super::observe::observe;
use super::state::{self, State};

/// Disk blocks a tree uses (files and directories, symlinks not followed).
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                total += disk_usage(&e.path());
            }
        }
    }
    total
}

/// hypeman's `ResourceStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceStatus {
    #[serde(rename = "type")]
    pub kind: String,
    pub capacity: u64,
    pub effective_limit: u64,
    pub allocated: u64,
    pub available: u64,
    pub oversub_ratio: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl ResourceStatus {
    fn new(kind: &str, capacity: u64, ratio: f64, allocated: u64, source: &str) -> Self {
        let effective_limit = limit(capacity, ratio);
        ResourceStatus {
            kind: kind.to_string(),
            capacity,
            effective_limit,
            allocated,
            available: effective_limit.saturating_sub(allocated),
            oversub_ratio: ratio,
            source: Some(source.to_string()),
        }
    }
}

/// hypeman's `DiskBreakdown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiskBreakdown {
    pub images_bytes: u64,
    pub oci_cache_bytes: u64,
    pub overlays_bytes: u64,
    pub volumes_bytes: u64,
}

/// hypeman's `ResourceAllocation`: what one instance holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceAllocation {
    pub instance_id: String,
    pub instance_name: String,
    pub cpu: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_download_bps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_upload_bps: Option<u64>,
}

/// hypeman's `Resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resources {
    pub cpu: ResourceStatus,
    pub memory: ResourceStatus,
    pub disk: ResourceStatus,
    pub network: ResourceStatus,
    pub disk_breakdown: DiskBreakdown,
    pub allocations: Vec<ResourceAllocation>,
}

/// Whether an instance in `state` holds its vCPUs and memory.
fn holds(state: State) -> bool {
    !matches!(state, State::Stopped | State::Standby)
}

impl Manager {
    /// What every instance whose VMM may run holds, by id.
    fn running_demands(&self) -> Result<HashMap<String, Demand>> {
        Ok(self
            .all()?
            .iter()
            .filter(|m| holds(state::derive(&observe(&self.paths(&m.id), m))))
            .map(|m| (m.id.clone(), Demand::of(m)))
            .collect())
    }

    /// Admits a boot of `id` wanting `want`, or refuses it with
    /// [`Error::InsufficientResources`].
    pub(super) fn admit(&self, id: &str, want: Demand) -> Result<Reservation<'_>> {
        let running = self.running_demands()?;
        self.admission.reserve(id, want, &running)
    }

    /// The host's resources and what the instances hold.
    pub async fn resources(&self) -> Result<Resources> {
        let book = &self.admission;
        let all = self.all()?;
        let mut allocations = Vec::new();
        let (mut cpu, mut mem, mut net, mut overlays) = (0u64, 0u64, 0u64, 0u64);
        for m in &all {
            let paths = self.paths(&m.id);
            overlays += disk_usage(&paths.overlay());
            if !holds(state::derive(&observe(&paths, m))) {
                continue;
            }
            cpu += u64::from(m.vcpus);
            mem += m.memory_bytes;
            let limits = m.network.as_ref().and_then(|n| n.limits().ok());
            let down = limits
                .and_then(|l| l.download)
                .map(|b| b.bits_per_sec() / 8);
            let up = limits.and_then(|l| l.upload).map(|b| b.bits_per_sec() / 8);
            net += down.unwrap_or(0);
            allocations.push(ResourceAllocation {
                instance_id: m.id.clone(),
                instance_name: m.name.clone(),
                cpu: u64::from(m.vcpus),
                memory_bytes: m.memory_bytes,
                disk_bytes: m.overlay_bytes,
                network_download_bps: down,
                network_upload_bps: up,
            });
        }
        let images = self.cfg.paths().images();
        let breakdown = DiskBreakdown {
            images_bytes: disk_usage(&images.disks()),
            oci_cache_bytes: disk_usage(&images.blobs()),
            overlays_bytes: overlays,
            volumes_bytes: 0,
        };
        let fs_bytes = rustix::fs::statvfs(&self.cfg.data_dir)
            .map(|s| s.f_blocks.saturating_mul(s.f_frsize))
            .unwrap_or(0);
        let disk_allocated = all.iter().map(|m| m.overlay_bytes).sum::<u64>()
            + breakdown.images_bytes
            + breakdown.oci_cache_bytes;
        Ok(Resources {
            cpu: ResourceStatus::new("cpu", book.cpus, book.oversub.cpu, cpu, "detected"),
            memory: ResourceStatus::new(
                "memory",
                book.memory_bytes,
                book.oversub.memory,
                mem,
                "detected",
            ),
            disk: ResourceStatus::new(
                "disk",
                fs_bytes,
                book.oversub.disk,
                disk_allocated,
                "detected",
            ),
            network: ResourceStatus::new(
                "network",
                book.network_bps.0,
                book.oversub.network,
                net,
                book.network_bps.1,
            ),
            disk_breakdown: breakdown,
            allocations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_and_standby_instances_hold_nothing() {
        for st in [State::Stopped, State::Standby] {
            assert!(!holds(st), "{st:?}");
        }
        for st in [
            State::Created,
            State::Initializing,
            State::Running,
            State::Paused,
            State::Shutdown,
            State::Unknown,
        ] {
            assert!(holds(st), "{st:?}");
        }
    }

    #[test]
    fn statuses_report_what_is_left() {
        let s = ResourceStatus::new("cpu", 2, 4.0, 3, "detected");
        assert_eq!((s.effective_limit, s.available), (8, 5));
        let s = ResourceStatus::new("cpu", 2, 1.0, 3, "detected");
        assert_eq!(s.available, 0);
    }
}
