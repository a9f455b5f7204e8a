//! `GET /resources`: hypeman's view of host capacity, effective limits and
//! what each instance holds. The numbers are the instance manager's
//! (`instances::resources`); this file only renders them.

use axum::extract::State;
use axum::Json;

use super::error::ApiError;
use super::state::AppState;
use crate::instances::Resources;

/// Host capacity, oversubscribed limits, allocations, disk use.
#[utoipa::path(get, path = "/resources", responses((status = 200, body = Resources)))]
pub async fn resources(State(state): State<AppState>) -> Result<Json<Resources>, ApiError> {
    Ok(Json(state.manager.resources().await?))
}

/// hypeman's `POST /resources/memory/reclaim` body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReclaimMemory {
    /// Total bytes of guest memory to reclaim across running VMs; 0 gives
    /// back what an earlier reclaim holds.
    pub reclaim_bytes: u64,
    /// Plan only: no balloon is touched and no hold made.
    #[serde(default)]
    pub dry_run: bool,
    /// How long the memory stays reclaimed (Go duration; default 5m).
    #[serde(default)]
    pub hold_for: Option<String>,
    /// Why, for the daemon's log.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The longest hold: a day (a longer one is a configuration, not a hold).
const MAX_HOLD_SECS: f64 = 86_400.0;

/// Inflate running guests' balloons to give the host memory back, for
/// `hold_for`; each VM's step says what it gave.
#[utoipa::path(post, path = "/resources/memory/reclaim", request_body = ReclaimMemory,
    responses((status = 200, body = crate::instances::reclaim::MemoryReclaimResponse),
        (status = 400, body = super::error::ErrorBody)))]
pub async fn reclaim_memory(
    State(state): State<AppState>,
    super::state::ApiJson(body): super::state::ApiJson<ReclaimMemory>,
) -> Result<Json<crate::instances::reclaim::MemoryReclaimResponse>, ApiError> {
    let hold_for = match body.hold_for.as_deref().map(str::trim) {
        None | Some("") => std::time::Duration::from_secs(300),
        Some(text) => crate::instances::policy::parse_go_duration_at_most(text, MAX_HOLD_SECS)
            .map_err(|why| ApiError::bad_request(format!("hold_for {text:?}: {why}")))?,
    };
    let req = crate::instances::reclaim::ReclaimRequest {
        reclaim_bytes: body.reclaim_bytes,
        dry_run: body.dry_run,
        hold_for,
        reason: body.reason,
    };
    Ok(Json(state.manager.reclaim_memory(req).await?))
}
