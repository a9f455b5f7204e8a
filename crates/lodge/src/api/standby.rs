//! Handlers for waiting on an instance's state and for standby / restore:
//! parse, one typed manager call, render. hypeman's shapes: `wait` answers
//! `WaitForStateResponse` (200 also on timeout, with `timed_out`), standby
//! and restore answer the instance.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::state::AppState;
use crate::instances::state::State as InstanceState;
use crate::instances::wait::{WaitOutcome, DEFAULT_WAIT, MAX_WAIT};
use crate::instances::Instance;

#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    state: Option<String>,
    timeout: Option<String>,
}

/// Wait until the instance is in `state`, the timeout (Go duration, default
/// 60s, at most 5m) expires, or the instance is Unknown.
#[utoipa::path(get, path = "/instances/{id}/wait",
    params(
        ("state" = String, Query, description = "target state"),
        ("timeout" = Option<String>, Query, description = "Go duration, e.g. 30s; default 60s, capped at 5m"),
    ),
    responses((status = 200, body = WaitOutcome), (status = 404, body = super::error::ErrorBody)))]
pub async fn wait(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<WaitOutcome>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let target = match q.state.as_deref() {
        None | Some("") => return Err(ApiError::bad_request("`state` is required")),
        Some(s) => InstanceState::parse(s)
            .ok_or_else(|| ApiError::bad_request(format!("unknown state {s:?}")))?,
    };
    let timeout = match q.timeout.as_deref() {
        None | Some("") => DEFAULT_WAIT,
        Some(t) => parse_go_duration(t)
            .map_err(|e| ApiError::bad_request(format!("timeout {t:?}: {e}")))?
            .min(MAX_WAIT),
    };
    Ok(Json(state.manager.wait(&id, target, timeout).await?))
}

/// Put an instance in standby: pause it, save its memory and device state
/// beside its disks, and let the VMM exit.
#[utoipa::path(post, path = "/instances/{id}/standby", request_body = Option<Object>,
    responses((status = 200, body = Instance), (status = 409, body = super::error::ErrorBody)))]
pub async fn standby(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Instance>, ApiError> {
    refuse_compression(&body)?;
    Ok(Json(state.manager.standby(&id).await?))
}

/// Restore an instance from standby: its VMM starts again from the saved
/// state and the guest continues where it was.
#[utoipa::path(post, path = "/instances/{id}/restore",
    responses((status = 200, body = Instance), (status = 409, body = super::error::ErrorBody)))]
pub async fn restore(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(state.manager.restore(&id).await?))
}

/// hypeman's `StandbyInstanceRequest`: an empty body, `{}`, or compression
/// settings, which lodge does not have yet and refuses when they ask for it.
fn refuse_compression(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    for (key, value) in obj {
        match key.as_str() {
            "compression" => {
                let asks = match value {
                    serde_json::Value::Null => false,
                    serde_json::Value::Object(o) => o.get("enabled").is_some_and(|e| e != false),
                    _ => true,
                };
                if asks {
                    return Err(ApiError::bad_request(
                        "snapshot compression is not supported yet",
                    ));
                }
            }
            "compression_delay" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown field `{other}` in the standby request"
                )))
            }
        }
    }
    Ok(())
}

/// A Go duration (`300ms`, `30s`, `2m`, `1m30s`, `1h`): one or more
/// decimal numbers, each with a unit of ns, us (µs), ms, s, m or h.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.starts_with('-') {
        return Err("a duration cannot be negative".into());
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit after {rest:?}"))?;
        if num_len == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("bad number {:?}", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return Err("duration too long".into());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = |s: &str| parse_go_duration(s).expect(s);
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in ["", "30", "s", "-1s", "3x", "1s2", "abc"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn standby_bodies() {
        assert!(refuse_compression(b"").is_ok());
        assert!(refuse_compression(b"{}").is_ok());
        assert!(refuse_compression(br#"{"compression": {"enabled": false}}"#).is_ok());
        assert!(refuse_compression(br#"{"compression_delay": "30s"}"#).is_ok());
        let e = refuse_compression(br#"{"compression": {"enabled": true}}"#).expect_err("asks");
        assert!(e.message.contains("not supported"), "{}", e.message);
        assert!(refuse_compression(br#"{"bogus": 1}"#).is_err());
        assert!(refuse_compression(b"[1]").is_err());
    }
}
