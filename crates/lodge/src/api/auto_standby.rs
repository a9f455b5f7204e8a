//! hypeman's auto-standby routes: the diagnostic status of an instance and
//! a hold that keeps it from auto-standby for a while; plus the parser of
//! the `auto_standby` field of a create or update. Parse, one typed
//! manager call, render (the decision lives in `instances::auto_standby`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::state::AppState;
use crate::instances::auto_standby::{AutoStandbyPolicy, StatusView};
use crate::instances::policy::parse_go_duration_at_most;

/// Longest hold asked for explicitly (a year).
const MAX_HOLD_SECS: f64 = 366.0 * 86_400.0;

/// `auto_standby` of a create or update: `None` absent, `Some(None)`
/// `null` (none), else the normalised policy.
pub fn policy(
    v: Option<&serde_json::Value>,
) -> Result<Option<Option<AutoStandbyPolicy>>, ApiError> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Null) => Ok(Some(None)),
        Some(v) => AutoStandbyPolicy::parse(v)
            .map(|p| Some(Some(p)))
            .map_err(ApiError::bad_request),
    }
}

/// Where auto-standby stands for an instance: whether it applies, how
/// many inbound connections keep it awake, since when it has been idle,
/// when it will go to standby, any hold.
#[utoipa::path(get, path = "/instances/{id}/auto-standby/status",
    responses((status = 200, body = StatusView), (status = 404, body = super::error::ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatusView>, ApiError> {
    Ok(Json(state.manager.auto_standby_status(&id).await?))
}

/// The hold body: hypeman sends none (the hold lasts the policy's
/// `idle_timeout`); lodge also takes `{"duration": "10m"}` (a Go duration;
/// `0s` releases the hold).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    #[serde(default)]
    pub duration: Option<String>,
}

/// Keep an instance from auto-standby until `hold_until` (each hold
/// replaces the previous one). 409 when it is in standby; an instance
/// without an enabled policy is answered its status.
#[utoipa::path(post, path = "/instances/{id}/auto-standby/hold", request_body = Option<HoldRequest>,
    responses((status = 200, body = StatusView), (status = 409, body = super::error::ErrorBody)))]
pub async fn hold(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<StatusView>, ApiError> {
    let req: HoldRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HoldRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid hold request: {e}")))?
    };
    let duration: Option<Duration> = req
        .duration
        .as_deref()
        .map(|t| {
            parse_go_duration_at_most(t, MAX_HOLD_SECS)
                .map_err(|e| ApiError::bad_request(format!("duration {t:?}: {e}")))
        })
        .transpose()?;
    Ok(Json(state.manager.auto_standby_hold(&id, duration).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_field_is_absent_null_or_a_policy() {
        assert_eq!(policy(None).expect("absent"), None);
        assert_eq!(policy(Some(&json!(null))).expect("null"), Some(None));
        let p = policy(Some(&json!({"enabled": true, "idle_timeout": "2s"})))
            .expect("valid")
            .flatten()
            .expect("a policy");
        assert_eq!(p.timeout(), Some(Duration::from_secs(2)));
        assert!(policy(Some(&json!({"enabled": true}))).is_err());
    }
}
