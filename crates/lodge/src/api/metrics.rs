//! `GET /metrics`: Prometheus text. The numbers and their reading are
//! `crate::metrics`'s; this file gathers the instance list and the image
//! counters and hands them over, off the async threads (the scrape reads
//! a few small files per instance).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::instances::State as InstanceState;
use crate::metrics::{self, InstanceFacts};

/// Every state, reported even when no instance is in it.
const STATES: [InstanceState; 8] = [
    InstanceState::Created,
    InstanceState::Initializing,
    InstanceState::Running,
    InstanceState::Paused,
    InstanceState::Shutdown,
    InstanceState::Stopped,
    InstanceState::Standby,
    InstanceState::Unknown,
];

fn state_name(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Created => "Created",
        InstanceState::Initializing => "Initializing",
        InstanceState::Running => "Running",
        InstanceState::Paused => "Paused",
        InstanceState::Shutdown => "Shutdown",
        InstanceState::Stopped => "Stopped",
        InstanceState::Standby => "Standby",
        InstanceState::Unknown => "Unknown",
    }
}

/// The daemon's metrics in Prometheus text format 0.0.4. Needs the token
/// unless the daemon runs with `LODGE_METRICS_PUBLIC=1`.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let instances = state.manager.list(None).await?;
    let facts: Vec<InstanceFacts> = instances
        .into_iter()
        .map(|i| InstanceFacts {
            id: i.id,
            name: i.name,
            state: state_name(i.state),
            started_at: i.started_at,
        })
        .collect();
    let pulls = state.images.pull_stats();
    let text = tokio::task::spawn_blocking(move || {
        metrics::render(&facts, &STATES.map(state_name), pulls)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the scrape failed: {e}")))?
    .map_err(|e| ApiError::internal(format!("encoding the metrics: {e}")))?;
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}
