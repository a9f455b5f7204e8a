//! `/instances/{id}/snapshot-schedule` handlers: hypeman's
//! `SnapshotScheduleUpdateParams` parsed and validated here (durations,
//! minimum interval, retention, prefix), the schedule out.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::standby::parse_go_duration;
use super::state::{ApiJson, AppState};
use crate::instances::naming::Name;
use crate::instances::schedule::{
    min_interval, Retention, ScheduleSpec, SnapshotSchedule, MAX_PREFIX_LEN,
};

/// hypeman's schedule body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSchedule {
    /// Go duration, at least 1m.
    pub interval: String,
    /// At least one of `max_count` or `max_age`.
    pub retention: Retention,
    #[serde(default)]
    pub name_prefix: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl PutSchedule {
    fn into_spec(self) -> Result<ScheduleSpec, ApiError> {
        let interval = parse_go_duration(&self.interval)
            .map_err(|e| ApiError::bad_request(format!("interval {:?}: {e}", self.interval)))?;
        let min = min_interval();
        if interval < min {
            return Err(ApiError::bad_request(format!(
                "interval {:?} is shorter than the minimum {}s",
                self.interval,
                min.as_secs()
            )));
        }
        let max_age = self
            .retention
            .max_age
            .filter(|s| !s.is_empty())
            .map(|s| {
                parse_go_duration(&s)
                    .map(|d| (d, s.clone()))
                    .map_err(|e| ApiError::bad_request(format!("retention.max_age {s:?}: {e}")))
            })
            .transpose()?;
        let max_count = self.retention.max_count.filter(|n| *n > 0);
        if max_count.is_none() && max_age.is_none() {
            return Err(ApiError::bad_request(
                "retention needs max_count or max_age",
            ));
        }
        let name_prefix = self.name_prefix.filter(|p| !p.is_empty());
        if let Some(p) = &name_prefix {
            if p.len() > MAX_PREFIX_LEN {
                return Err(ApiError::bad_request(format!(
                    "name_prefix is longer than {MAX_PREFIX_LEN} characters"
                )));
            }
            Name::parse(p).map_err(|e| ApiError::bad_request(format!("name_prefix: {e}")))?;
        }
        Ok(ScheduleSpec {
            interval,
            interval_text: self.interval,
            max_count,
            max_age,
            name_prefix,
            metadata: self.metadata.unwrap_or_default(),
        })
    }
}

/// The instance's snapshot schedule.
#[utoipa::path(get, path = "/instances/{id}/snapshot-schedule",
    responses((status = 200, body = SnapshotSchedule), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SnapshotSchedule>, ApiError> {
    Ok(Json(state.manager.get_schedule(&id).await?))
}

/// Set the instance's snapshot schedule (the first run is one interval away).
#[utoipa::path(put, path = "/instances/{id}/snapshot-schedule", request_body = PutSchedule,
    responses((status = 200, body = SnapshotSchedule), (status = 400, body = super::error::ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PutSchedule>,
) -> Result<Json<SnapshotSchedule>, ApiError> {
    let spec = body.into_spec()?;
    Ok(Json(state.manager.put_schedule(&id, spec).await?))
}

/// Remove the instance's snapshot schedule (its snapshots stay).
#[utoipa::path(delete, path = "/instances/{id}/snapshot-schedule",
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.manager.delete_schedule(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: serde_json::Value) -> Result<ScheduleSpec, ApiError> {
        serde_json::from_value::<PutSchedule>(v)
            .expect("shape")
            .into_spec()
    }

    #[test]
    fn schedules_are_validated() {
        let ok = put(
            serde_json::json!({"interval": "1h", "retention": {"max_count": 3},
            "name_prefix": "nightly", "metadata": {"a": "b"}}),
        )
        .expect("valid");
        assert_eq!(ok.interval.as_secs(), 3600);
        assert_eq!(ok.max_count, Some(3));
        let ok = put(serde_json::json!({"interval": "2m", "retention": {"max_age": "24h"}}))
            .expect("valid");
        assert_eq!(ok.max_age.map(|(d, _)| d.as_secs()), Some(86400));
        for bad in [
            serde_json::json!({"interval": "30s", "retention": {"max_count": 1}}),
            serde_json::json!({"interval": "soon", "retention": {"max_count": 1}}),
            serde_json::json!({"interval": "1h", "retention": {}}),
            serde_json::json!({"interval": "1h", "retention": {"max_count": 0}}),
            serde_json::json!({"interval": "1h", "retention": {"max_age": "old"}}),
            serde_json::json!({"interval": "1h", "retention": {"max_count": 1}, "name_prefix": "Bad"}),
        ] {
            assert!(put(bad.clone()).is_err(), "{bad}");
        }
    }
}
