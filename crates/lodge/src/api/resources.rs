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
