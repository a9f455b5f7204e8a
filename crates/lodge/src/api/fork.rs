//! Fork handlers: hypeman's `InstanceForkParams` / `SnapshotForkParams`
//! in, the new instance out (201).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::state::{ApiJson, AppState};
use crate::instances::naming::Name;
use crate::instances::snapshots::TargetState;
use crate::instances::{ForkRequest, Instance};

/// hypeman's fork body (both routes; `from_running` only for instances,
/// `target_hypervisor` only for snapshots).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkInstance {
    /// Name of the new instance.
    pub name: String,
    /// Allow forking a running source: it is put in standby for the copy
    /// and restored right after.
    #[serde(default)]
    pub from_running: Option<bool>,
    /// The fork's state when done (default: the source's, or by snapshot
    /// kind: Running for Standby, Stopped for Stopped).
    #[serde(default)]
    pub target_state: Option<TargetState>,
    /// Only `qemu` (the snapshot's own hypervisor) is supported.
    #[serde(default)]
    pub target_hypervisor: Option<String>,
}

impl ForkInstance {
    fn into_request(self, from_running_allowed: bool) -> Result<ForkRequest, ApiError> {
        if let Some(h) = self.target_hypervisor.as_deref() {
            if h != "qemu" {
                return Err(ApiError::bad_request(format!(
                    "target_hypervisor {h:?}: lodge forks with qemu only"
                )));
            }
        }
        if self.from_running.is_some() && !from_running_allowed {
            return Err(ApiError::bad_request(
                "`from_running` applies to forks of instances, not snapshots",
            ));
        }
        Ok(ForkRequest {
            name: Name::parse(&self.name).map_err(|e| ApiError::bad_request(e.to_string()))?,
            from_running: self.from_running.unwrap_or(false),
            target: self.target_state,
        })
    }
}

/// Fork an instance into a new one (own id, name, disks, logs, address).
#[utoipa::path(post, path = "/instances/{id}/fork", request_body = ForkInstance,
    responses((status = 201, body = Instance), (status = 409, body = super::error::ErrorBody)))]
pub async fn fork_instance(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ForkInstance>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body.into_request(true)?;
    let inst = state.manager.fork_instance(&id, req).await?;
    Ok((StatusCode::CREATED, Json(inst)))
}

/// Make a new instance from a snapshot.
#[utoipa::path(post, path = "/snapshots/{id}/fork", request_body = ForkInstance,
    responses((status = 201, body = Instance), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn fork_snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ForkInstance>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body.into_request(false)?;
    let inst = state.manager.fork_snapshot(&id, req).await?;
    Ok((StatusCode::CREATED, Json(inst)))
}
