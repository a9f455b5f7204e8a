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
use crate::instances::store::CompressionAlgorithm;
use crate::instances::wait::{WaitOutcome, DEFAULT_WAIT, MAX_WAIT};
use crate::instances::{CompressionSpec, Instance};

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
    let compression = parse_standby_body(&body)?;
    Ok(Json(state.manager.standby(&id, compression).await?))
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

/// hypeman's `StandbyInstanceRequest`: an empty body, `{}`, or
/// `compression {enabled, algorithm, level}` and `compression_delay`.
fn parse_standby_body(body: &[u8]) -> Result<Option<CompressionSpec>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        compression: Option<Compression>,
        #[serde(default)]
        compression_delay: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Compression {
        enabled: bool,
        #[serde(default)]
        algorithm: Option<CompressionAlgorithm>,
        #[serde(default)]
        level: Option<u32>,
    }
    let b: Body = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid standby request: {e}")))?;
    let Some(c) = b.compression.filter(|c| c.enabled) else {
        return Ok(None);
    };
    let delay = match b.compression_delay.as_deref() {
        None | Some("") => Duration::ZERO,
        Some(t) => parse_go_duration(t)
            .map_err(|e| ApiError::bad_request(format!("compression_delay {t:?}: {e}")))?,
    };
    CompressionSpec::new(
        c.algorithm.unwrap_or(CompressionAlgorithm::Zstd),
        c.level,
        delay,
    )
    .map(Some)
    .map_err(ApiError::bad_request)
}

/// A Go duration (`300ms`, `30s`, `2m`, `1m30s`, `1h`) of at most 1e9 s.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    crate::instances::policy::parse_go_duration_at_most(text, 1e9)
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
        assert_eq!(parse_standby_body(b"").expect("empty"), None);
        assert_eq!(parse_standby_body(b"{}").expect("{}"), None);
        assert_eq!(
            parse_standby_body(br#"{"compression": {"enabled": false}}"#).expect("off"),
            None
        );
        let spec = parse_standby_body(
            br#"{"compression": {"enabled": true, "algorithm": "lz4", "level": 3}, "compression_delay": "2s"}"#,
        )
        .expect("valid")
        .expect("asked");
        assert_eq!(spec.algorithm, CompressionAlgorithm::Lz4);
        assert_eq!((spec.level, spec.delay), (3, Duration::from_secs(2)));
        let spec = parse_standby_body(br#"{"compression": {"enabled": true}}"#)
            .expect("valid")
            .expect("asked");
        assert_eq!(
            (spec.algorithm, spec.level),
            (CompressionAlgorithm::Zstd, 1)
        );
        for bad in [
            &br#"{"compression": {"enabled": true, "level": 40}}"#[..],
            br#"{"compression": {"enabled": true, "algorithm": "gzip"}}"#,
            br#"{"bogus": 1}"#,
            b"[1]",
        ] {
            assert!(
                parse_standby_body(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
