//! hypeman's lifecycle policy fields as clients send them (`ttl`,
//! `expires_at`, `restart_policy`, `health_check`), parsed once into the
//! manager's typed policies for create and `PATCH /instances/{id}`.
//! Durations are Go's (`90s`, `1h30m`), times RFC 3339 with `Z` or an
//! offset; every refusal is a 400 naming the field.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::instances::{health, policy};

/// hypeman's `RestartPolicy` as clients send it (durations in Go's form).
#[derive(Debug, Default, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicyBody {
    /// `never`, `always` or `on_failure` (default `never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Delay before each attempt (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Consecutive attempts before giving up; 0 (the default) is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Running this long resets the count (default `1m`; `0s`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_after: Option<String>,
}

impl RestartPolicyBody {
    fn into_policy(self) -> Result<policy::RestartPolicy, ApiError> {
        let mode = match self.policy.as_deref().unwrap_or("never") {
            "never" => policy::RestartMode::Never,
            "always" => policy::RestartMode::Always,
            "on_failure" | "on-failure" => policy::RestartMode::OnFailure,
            other => {
                return Err(ApiError::bad_request(format!(
                    "restart_policy.policy {other:?}: use never, always or on_failure"
                )))
            }
        };
        let dur = |field: &str, v: Option<String>, default: Duration| {
            v.map(|s| {
                policy::parse_go_duration(&s)
                    .map_err(|e| ApiError::bad_request(format!("restart_policy.{field}: {e}")))
            })
            .transpose()
            .map(|d| d.unwrap_or(default))
        };
        Ok(policy::RestartPolicy {
            policy: mode,
            backoff: dur("backoff", self.backoff, Duration::from_secs(5))?,
            max_attempts: self.max_attempts.unwrap_or(0),
            stable_after: dur("stable_after", self.stable_after, Duration::from_secs(60))?,
        })
    }
}

/// hypeman's `ttl` (a Go duration from now; `0s` is none) or `expires_at`
/// (RFC 3339, in the future): at most one. `Ok(None)`: neither given;
/// `Ok(Some(None))`: no expiry.
pub fn expiry(
    ttl: Option<&serde_json::Value>,
    expires_at: Option<&serde_json::Value>,
) -> Result<Option<Option<SystemTime>>, ApiError> {
    let text = |field: &str, v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request(format!("`{field}` must be a string")))
    };
    let ttl = ttl.filter(|v| !v.is_null());
    let expires_at = expires_at.filter(|v| !v.is_null());
    match (ttl, expires_at) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "`ttl` and `expires_at` are mutually exclusive",
        )),
        (Some(t), None) => {
            let d = policy::parse_go_duration(&text("ttl", t)?)
                .map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?;
            Ok(Some((!d.is_zero()).then(|| SystemTime::now() + d)))
        }
        (None, Some(e)) => {
            let at = policy::parse_time(&text("expires_at", e)?)
                .map_err(|e| ApiError::bad_request(format!("expires_at: {e}")))?;
            if at <= SystemTime::now() {
                return Err(ApiError::bad_request("`expires_at` must be in the future"));
            }
            Ok(Some(Some(at)))
        }
        (None, None) => Ok(None),
    }
}

/// hypeman's `HealthCheck` as clients send it (durations in Go's form).
#[derive(Debug, Default, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckBody {
    /// `none`, `http`, `tcp` or `exec`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub http: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tcp: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub exec: Option<serde_json::Value>,
    /// Between checks (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Per check (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// After a boot, failures do not count for this long (default `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    /// Consecutive failures to become unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Consecutive successes to become healthy (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpProbeBody {
    port: u16,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    expected_status: Option<u16>,
    #[serde(default)]
    scheme: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpProbeBody {
    port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecProbeBody {
    command: Vec<String>,
    #[serde(default)]
    working_dir: Option<String>,
}

/// One probe's settings, required for its type.
fn probe_part<T: serde::de::DeserializeOwned>(
    name: &str,
    v: Option<serde_json::Value>,
) -> Result<T, ApiError> {
    let v = v.ok_or_else(|| {
        ApiError::bad_request(format!("health_check.{name} is required for type {name}"))
    })?;
    serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("health_check.{name}: {e}")))
}

impl HealthCheckBody {
    /// The validated check; `None` for type `none`.
    fn into_check(self) -> Result<Option<health::HealthCheck>, ApiError> {
        let bad = |m: String| ApiError::bad_request(format!("health_check.{m}"));
        let kind = self.kind.clone().unwrap_or_else(|| {
            // Without a type, the one probe given names it.
            match (&self.http, &self.tcp, &self.exec) {
                (Some(_), None, None) => "http",
                (None, Some(_), None) => "tcp",
                (None, None, Some(_)) => "exec",
                _ => "none",
            }
            .to_string()
        });
        let probe = match kind.as_str() {
            "none" => return Ok(None),
            "http" => {
                let h: HttpProbeBody = probe_part("http", self.http)?;
                if h.scheme.as_deref().is_some_and(|s| s != "http") {
                    return Err(bad("http.scheme: only http probes are supported".into()));
                }
                let path = h.path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/') || path.chars().any(char::is_control) {
                    return Err(bad(format!("http.path {path:?}: must start with /")));
                }
                health::Probe::Http {
                    port: h.port,
                    path,
                    expected_status: h.expected_status,
                }
            }
            "tcp" => {
                let t: TcpProbeBody = probe_part("tcp", self.tcp)?;
                health::Probe::Tcp { port: t.port }
            }
            "exec" => {
                let e: ExecProbeBody = probe_part("exec", self.exec)?;
                if e.command.first().is_none_or(|c| c.is_empty()) {
                    return Err(bad("exec.command: the command is empty".into()));
                }
                if e.working_dir
                    .as_deref()
                    .is_some_and(|d| !d.starts_with('/'))
                {
                    return Err(bad("exec.working_dir: must be absolute".into()));
                }
                health::Probe::Exec {
                    command: e.command,
                    working_dir: e.working_dir,
                }
            }
            other => return Err(bad(format!("type {other:?}: use none, http, tcp or exec"))),
        };
        let dur = |field: &str, v: Option<String>, default: Duration| {
            v.map(|s| policy::parse_go_duration(&s).map_err(|e| bad(format!("{field}: {e}"))))
                .transpose()
                .map(|d| d.unwrap_or(default))
        };
        let interval = dur("interval", self.interval, Duration::from_secs(10))?;
        let timeout = dur("timeout", self.timeout, Duration::from_secs(5))?;
        if interval < Duration::from_millis(100) || timeout < Duration::from_millis(10) {
            return Err(bad(
                "interval must be at least 100ms and timeout at least 10ms".into(),
            ));
        }
        Ok(Some(health::HealthCheck {
            probe,
            interval,
            timeout,
            start_period: dur("start_period", self.start_period, Duration::ZERO)?,
            failure_threshold: self.failure_threshold.unwrap_or(3).max(1),
            success_threshold: self.success_threshold.unwrap_or(1).max(1),
        }))
    }
}

/// `health_check` of a create or update: `Ok(None)` absent, `Some(None)`
/// off (`null` or type `none`).
pub fn health_check(
    v: Option<&serde_json::Value>,
) -> Result<Option<Option<health::HealthCheck>>, ApiError> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Null) => Ok(Some(None)),
        Some(v) => {
            let body: HealthCheckBody = serde_json::from_value(v.clone())
                .map_err(|e| ApiError::bad_request(format!("health_check: {e}")))?;
            Ok(Some(body.into_check()?))
        }
    }
}

pub fn restart_policy(
    v: Option<&serde_json::Value>,
) -> Result<Option<Option<policy::RestartPolicy>>, ApiError> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Null) => Ok(Some(None)),
        Some(v) => {
            let body: RestartPolicyBody = serde_json::from_value(v.clone())
                .map_err(|e| ApiError::bad_request(format!("restart_policy: {e}")))?;
            Ok(Some(Some(body.into_policy()?)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn health_checks_parse_with_defaults_and_refuse_what_cannot_run() {
        let check = health_check(Some(&serde_json::json!({
            "type": "exec", "exec": {"command": ["test", "-f", "/ok"]}, "interval": "500ms"
        })))
        .expect("valid")
        .flatten()
        .expect("a check");
        assert_eq!(check.interval, Duration::from_millis(500));
        assert_eq!(check.timeout, Duration::from_secs(5));
        assert_eq!((check.failure_threshold, check.success_threshold), (3, 1));
        let tcp = health_check(Some(&serde_json::json!({"tcp": {"port": 80}})))
            .expect("type inferred")
            .flatten()
            .expect("a check");
        assert_eq!(tcp.probe, health::Probe::Tcp { port: 80 });
        assert_eq!(
            health_check(Some(&serde_json::json!({"type": "none"}))).expect("off"),
            Some(None)
        );
        for bad in [
            serde_json::json!({"type": "http"}),
            serde_json::json!({"type": "http", "http": {"port": 80, "scheme": "https"}}),
            serde_json::json!({"type": "http", "http": {"port": 80, "path": "x"}}),
            serde_json::json!({"type": "exec", "exec": {"command": []}}),
            serde_json::json!({"type": "tcp", "tcp": {"port": 80}, "interval": "1ms"}),
            serde_json::json!({"type": "grpc"}),
            serde_json::json!({"type": "tcp", "tcp": {"port": 80}, "retries": 3}),
        ] {
            let e = health_check(Some(&bad)).expect_err("refused");
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.starts_with("health_check"), "{}", e.message);
        }
    }

    #[test]
    fn expiry_and_restart_policy_parse() {
        let ttl = serde_json::json!("1h");
        let at = expiry(Some(&ttl), None)
            .expect("ttl")
            .flatten()
            .expect("set");
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        assert!(left > Duration::from_secs(3590), "{left:?}");
        assert_eq!(
            expiry(Some(&serde_json::json!("0s")), None).expect("off"),
            Some(None)
        );
        assert!(expiry(Some(&ttl), Some(&serde_json::json!("2099-01-01T00:00:00Z"))).is_err());
        assert!(expiry(None, Some(&serde_json::json!("2001-01-01T00:00:00Z"))).is_err());
        assert!(expiry(Some(&serde_json::json!(5)), None).is_err());
        let p = restart_policy(Some(&serde_json::json!({"policy": "always"})))
            .expect("valid")
            .flatten()
            .expect("set");
        assert_eq!(p.backoff, Duration::from_secs(5));
        assert!(restart_policy(Some(&serde_json::json!({"policy": "sometimes"}))).is_err());
        assert!(restart_policy(Some(&serde_json::json!({"backoff": "fast"}))).is_err());
    }
}
