//! The instance as the API shows it: hypeman's `Instance` JSON shape.

use std::collections::BTreeMap;

use lodge_common::size::format_hypeman as human_size;
use lodge_common::time::rfc3339;
use serde::{Deserialize, Serialize};

use super::net::DEFAULT_NETWORK_NAME;
use super::state::{self, Observed, State};
use super::store::Metadata;

/// Serialised by the daemon and read back by the CLI: one definition of the shape.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub started_at: Option<String>,
    pub stopped_at: Option<String>,
    pub exit_code: Option<i32>,
    pub exit_message: Option<String>,
    pub vcpus: u32,
    /// Memory, e.g. `1GB` (hypeman's field name).
    pub size: String,
    pub overlay_size: String,
    pub env: BTreeMap<String, String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub hypervisor: String,
    pub has_snapshot: bool,
    /// Always present, as in hypeman (`enabled: false` and null addresses
    /// for an instance without a network). Defaulted when reading a daemon
    /// from before networking.
    #[serde(default)]
    pub network: InstanceNetwork,
    /// hypeman's user tags; `{}` when none.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// RFC 3339: when the instance is stopped and deleted (hypeman's TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// hypeman's `RestartPolicy` (durations in Go's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub restart_policy: Option<RestartPolicyView>,
    /// hypeman's `RestartStatus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub restart_status: Option<super::policy::RestartState>,
    /// hypeman's `HealthCheck` (durations in Go's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub health_check: Option<serde_json::Value>,
    /// hypeman's `InstanceHealthStatus`; set by the manager, which keeps
    /// the results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<super::health::HealthStatus>,
    /// hypeman's `volumes`: what is attached where. Defaulted when reading
    /// a daemon from before volumes.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// hypeman's `AutoStandbyPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_standby: Option<super::auto_standby::AutoStandbyPolicy>,
    /// hypeman's `disk_io_bps` (`100MB/s`): each of the VM's disks'
    /// limit; absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_io_bps: Option<String>,
}

/// hypeman's `RestartPolicy` as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicyView {
    pub policy: super::policy::RestartMode,
    pub backoff: String,
    pub max_attempts: u32,
    pub stable_after: String,
}

impl RestartPolicyView {
    fn of(p: &super::policy::RestartPolicy) -> Self {
        use super::policy::format_go_duration as go;
        RestartPolicyView {
            policy: p.policy,
            backoff: go(p.backoff),
            max_attempts: p.max_attempts,
            stable_after: go(p.stable_after),
        }
    }
}

/// hypeman's `VolumeMount`: on create, and in an instance's `volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeMount {
    /// Volume id (or name).
    pub volume_id: String,
    /// Absolute path in the guest.
    pub mount_path: String,
    #[serde(default)]
    pub readonly: bool,
    /// A per-instance overlay over the read-only volume (needs
    /// `readonly: true` and `overlay_size`).
    #[serde(default)]
    pub overlay: bool,
    /// The overlay's size, e.g. `1GB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_size: Option<String>,
}

impl VolumeMount {
    fn of(v: &super::store::VolumeAttachment) -> Self {
        VolumeMount {
            volume_id: v.volume_id.clone(),
            mount_path: v.mount_path.clone(),
            readonly: v.readonly,
            overlay: v.overlay,
            overlay_size: v.overlay_bytes.map(human_size),
        }
    }
}

/// hypeman's `Instance.network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceNetwork {
    pub enabled: bool,
    /// Always `default`: lodge has one network.
    pub name: String,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub bandwidth_download: Option<String>,
    pub bandwidth_upload: Option<String>,
}

impl InstanceNetwork {
    fn of(meta: &Metadata) -> Self {
        let rec = meta.network.as_ref();
        InstanceNetwork {
            enabled: rec.is_some(),
            name: DEFAULT_NETWORK_NAME.to_string(),
            ip: rec.map(|r| r.ip.to_string()),
            mac: rec.map(|r| r.mac.clone()),
            bandwidth_download: rec.and_then(|r| r.bandwidth_download.clone()),
            bandwidth_upload: rec.and_then(|r| r.bandwidth_upload.clone()),
        }
    }
}

impl Instance {
    pub fn from_parts(meta: &Metadata, observed: &Observed) -> Self {
        let state = state::derive(observed);
        let (exit_code, exit_message) = if matches!(state, State::Stopped | State::Shutdown) {
            state::exit_report(observed)
        } else {
            (None, None)
        };
        Instance {
            id: meta.id.clone(),
            name: meta.name.clone(),
            image: meta.image.clone(),
            state,
            state_error: state::state_error(observed),
            created_at: rfc3339(meta.created_at),
            started_at: meta.started_at.map(rfc3339),
            stopped_at: meta.stopped_at.map(rfc3339).or_else(|| {
                // The program ended by itself: the monitor recorded when.
                (state == State::Stopped)
                    .then(|| observed.vmm_exit.as_ref().map(|e| e.finished_at.clone()))
                    .flatten()
            }),
            exit_code,
            exit_message,
            vcpus: meta.vcpus,
            size: human_size(meta.memory_bytes),
            overlay_size: human_size(meta.overlay_bytes),
            env: meta.env.clone(),
            entrypoint: meta.entrypoint.clone(),
            cmd: meta.cmd.clone(),
            hypervisor: meta.hypervisor.to_string(),
            has_snapshot: meta.standby.snapshot.is_some(),
            network: InstanceNetwork::of(meta),
            tags: meta.tags.clone(),
            expires_at: meta.expires_at.map(rfc3339),
            restart_policy: meta.restart_policy.as_ref().map(RestartPolicyView::of),
            restart_status: meta.restart_status.clone(),
            health_check: meta
                .health_check
                .as_ref()
                .map(super::health::HealthCheck::view),
            health_status: None,
            volumes: meta.volumes.iter().map(VolumeMount::of).collect(),
            auto_standby: meta.auto_standby.clone(),
            disk_io_bps: meta.disk_io_bps.map(|b| format!("{}/s", human_size(b))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes() {
        assert_eq!(human_size(1 << 30), "1GB");
        assert_eq!(human_size(512 << 20), "512MB");
        assert_eq!(human_size(1536 << 20), "1536MB");
        assert_eq!(human_size(1000), "1000B");
    }
}
