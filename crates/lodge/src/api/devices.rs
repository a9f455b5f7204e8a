//! `/devices` handlers: hypeman's device passthrough API over the device
//! registry (`crate::devices`).
//!
//! `GET /devices/available` lists every PCI device sysfs shows, with the
//! fields hypeman's `AvailableDevice` has; hypeman's `iommu_group` is a
//! required integer, so a device without one (a host without an IOMMU) is
//! reported with `-1` rather than left out, and can still be registered:
//! whether it can be passed through is decided (and refused with the
//! missing piece named) when an instance asks for it.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::state::{ApiJson, AppState};

/// `iommu_group` of a device that has none.
pub const NO_IOMMU_GROUP: i64 = -1;

/// hypeman's `Device`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Device {
    pub id: String,
    pub name: String,
    pub pci_address: String,
    /// PCI vendor id, 4 hex digits.
    pub vendor_id: String,
    /// PCI device id, 4 hex digits.
    pub device_id: String,
    /// `gpu` (a display controller) or `pci`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The IOMMU group, `-1` when the device has none (no IOMMU).
    pub iommu_group: i64,
    /// Whether the device is bound to vfio-pci now (lodge never binds it).
    pub bound_to_vfio: bool,
    /// The instance using it, if any.
    pub attached_to: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

impl From<crate::devices::Device> for Device {
    fn from(d: crate::devices::Device) -> Self {
        let iommu_group = d.iommu_group().map_or(NO_IOMMU_GROUP, i64::from);
        let bound_to_vfio = d.bound_to_vfio();
        let r = d.record;
        Device {
            id: r.id,
            name: r.name,
            pci_address: r.pci_address,
            vendor_id: r.vendor_id,
            device_id: r.device_id,
            kind: r.kind,
            iommu_group,
            bound_to_vfio,
            attached_to: d.attached_to.into_iter().next(),
            created_at: r.created_at,
            tags: Some(r.tags).filter(|t| !t.is_empty()),
        }
    }
}

/// hypeman's `AvailableDevice`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AvailableDevice {
    pub pci_address: String,
    pub vendor_id: String,
    pub device_id: String,
    /// The IOMMU group, `-1` when the device has none (no IOMMU).
    pub iommu_group: i64,
    /// The bound driver, null if none.
    pub current_driver: Option<String>,
    /// Not known to lodge (no PCI name database): null.
    pub vendor_name: Option<String>,
    /// Not known to lodge (no PCI name database): null.
    pub device_name: Option<String>,
}

impl From<crate::devices::PciDevice> for AvailableDevice {
    fn from(d: crate::devices::PciDevice) -> Self {
        AvailableDevice {
            pci_address: d.address.to_string(),
            vendor_id: d.vendor_id,
            device_id: d.device_id,
            iommu_group: d.iommu_group.map_or(NO_IOMMU_GROUP, i64::from),
            current_driver: d.driver,
            vendor_name: None,
            device_name: None,
        }
    }
}

/// hypeman's create body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    /// `DDDD:BB:DD.F`, e.g. `0000:a2:00.0`.
    pub pci_address: String,
    /// Default `pci-<address>` (`pci-0000-a2-00-0`); instance names' rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// Register a host PCI device for passthrough.
#[utoipa::path(post, path = "/devices", request_body = CreateDevice,
    responses((status = 201, body = Device),
        (status = 400, body = super::error::ErrorBody, description = "malformed address, name or tags"),
        (status = 404, body = super::error::ErrorBody, description = "no PCI device at that address"),
        (status = 409, body = super::error::ErrorBody, description = "the name or address is already registered")))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateDevice>,
) -> Result<impl IntoResponse, ApiError> {
    let devices = state.devices.clone();
    let dev = tokio::task::spawn_blocking(move || {
        devices.register(crate::devices::RegisterRequest {
            pci_address: body.pci_address,
            name: body.name,
            tags: body.tags.unwrap_or_default(),
        })
    })
    .await
    .map_err(|_| crate::devices::Error::Task { what: "register" })??;
    Ok((StatusCode::CREATED, Json(Device::from(dev))))
}

/// List registered devices, optionally only those carrying all the given
/// tags (`tags[key]=value`).
#[utoipa::path(get, path = "/devices", responses((status = 200, body = Vec<Device>)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Device>>, ApiError> {
    let filter = crate::tags::filter_from_query(&query);
    let devices = state.devices.clone();
    let all = tokio::task::spawn_blocking(move || devices.list())
        .await
        .map_err(|_| crate::devices::Error::Task { what: "list" })??;
    Ok(Json(
        all.into_iter()
            .filter(|d| crate::tags::matches(&d.record.tags, &filter))
            .map(Device::from)
            .collect(),
    ))
}

/// The host's PCI devices, as sysfs shows them now.
#[utoipa::path(get, path = "/devices/available",
    responses((status = 200, body = Vec<AvailableDevice>)))]
pub async fn available(
    State(state): State<AppState>,
) -> Result<Json<Vec<AvailableDevice>>, ApiError> {
    let devices = state.devices.clone();
    let all = tokio::task::spawn_blocking(move || devices.available())
        .await
        .map_err(|_| crate::devices::Error::Task { what: "scan" })??;
    Ok(Json(all.into_iter().map(AvailableDevice::from).collect()))
}

/// Get a registered device by id or name.
#[utoipa::path(get, path = "/devices/{id}",
    responses((status = 200, body = Device), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let devices = state.devices.clone();
    let dev = tokio::task::spawn_blocking(move || devices.get(&id))
        .await
        .map_err(|_| crate::devices::Error::Task { what: "get" })??;
    Ok(Json(dev.into()))
}

/// Unregister a device; refused (409) while an instance uses it.
#[utoipa::path(delete, path = "/devices/{id}",
    responses((status = 204), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let devices = state.devices.clone();
    tokio::task::spawn_blocking(move || devices.delete(&id))
        .await
        .map_err(|_| crate::devices::Error::Task { what: "delete" })??;
    Ok(StatusCode::NO_CONTENT)
}

/// The daemon's registry: `<data dir>/devices`, the host's `/sys` and
/// `/dev`.
pub fn open(
    cfg: &crate::config::Config,
) -> anyhow::Result<std::sync::Arc<crate::devices::Devices>> {
    // Instances cannot hold a device in this build (a create naming one
    // is refused before anything is made: see `instances::create`'s
    // caller), so no device is ever in use.
    let users: crate::devices::UsersFn = std::sync::Arc::new(|_id: &str| Ok(Vec::new()));
    let devices = crate::devices::Devices::open(
        &cfg.data_dir.join("devices"),
        crate::devices::Sysfs::default(),
        std::path::Path::new("/dev"),
        users,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(std::sync::Arc::new(devices))
}
