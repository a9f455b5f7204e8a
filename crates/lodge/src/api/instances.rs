//! `/instances` handlers: JSON in, a typed manager call, JSON out.
//!
//! A handler only parses: the create body becomes a [`CreateRequest`]
//! (names, sizes and the hypervisor parsed, nothing looked up); resolving
//! the image, defaults and limits are the manager's.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use lodge_hypervisor::HypervisorKind;

use super::error::ApiError;
use super::state::{ApiJson, AppState};
use crate::instances::naming::Name;
use crate::instances::spec::NetworkRequest;
use crate::instances::state::State as InstanceState;
use crate::instances::{self, CreateRequest, Instance, RootRequest, RunOverrides};
use crate::instances::{health, policy};
use crate::sizes::parse_size;
use lodge_net::{Bandwidth, Limits};

/// hypeman's create body, plus lodge's `rootfs` and `workdir`.
/// The daemon parses it; `lodge run` builds it (unset options are left out).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateInstance {
    pub name: String,
    /// Image reference. Use `rootfs` instead to boot a host directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// lodge extension: absolute path of a directory to use as the root file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Memory, e.g. `1GB` or `512MB` (binary units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// lodge extension: working directory of the program (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// hypeman's hypervisor name (`qemu`, `cloud-hypervisor`); default qemu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<String>,
    /// hypeman's network settings; absent means the default network when
    /// the daemon has one (hypeman's default), none otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<CreateNetwork>,
    /// hypeman's user tags: at most 50, see `crate::tags` for the rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Every other hypeman field: the ones lodge cannot honour yet are
    /// refused when set; the rest (hints) are accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// hypeman's `network` on create.
#[derive(Debug, Default, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateNetwork {
    /// Attach to the default network (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// host→guest limit, hypeman's syntax: `"100Mbps"`, `"1Gbps"`, `"125MB/s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_download: Option<String>,
    /// guest→host limit, same syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_upload: Option<String>,
    /// Other hypeman fields (`egress`): refused when they ask for something.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl CreateNetwork {
    fn into_request(self) -> Result<NetworkRequest, ApiError> {
        if let Some(egress) = self.other.get("egress") {
            let asks = match egress {
                serde_json::Value::Null => false,
                serde_json::Value::Object(o) => o.get("enabled").is_some_and(|e| e != false),
                _ => true,
            };
            if asks {
                return Err(ApiError::bad_request(
                    "`network.egress` (mediated egress) is not supported yet",
                ));
            }
        }
        // An empty string is hypeman's "no limit".
        let rate = |field: &str, v: Option<String>| {
            v.filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.parse::<Bandwidth>()
                        .map_err(|e| ApiError::bad_request(format!("network.{field}: {e}")))
                })
                .transpose()
        };
        Ok(NetworkRequest {
            enabled: self.enabled,
            limits: Limits {
                download: rate("bandwidth_download", self.bandwidth_download)?,
                upload: rate("bandwidth_upload", self.bandwidth_upload)?,
            },
        })
    }
}

/// hypeman create fields whose effect lodge does not provide yet.
const UNSUPPORTED: &[&str] = &[
    "volumes",
    "devices",
    "gpu",
    "credentials",
    "snapshot_policy",
    "auto_standby",
    "hotplug_size",
    "disk_io_bps",
];

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
fn expiry(
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
fn health_check(
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

fn restart_policy(
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

impl CreateInstance {
    /// The typed create call: every field parsed, nothing resolved (the
    /// manager resolves the image and applies defaults).
    fn into_request(self) -> Result<CreateRequest, ApiError> {
        let name = Name::parse(&self.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(key) = UNSUPPORTED
            .iter()
            .find(|k| self.other.get(**k).is_some_and(|v| !v.is_null()))
        {
            return Err(ApiError::bad_request(format!(
                "`{key}` is not supported yet"
            )));
        }
        // Whether the named hypervisor is built in is the manager's answer.
        let hypervisor = match &self.hypervisor {
            None => instances::spec::DEFAULT_HYPERVISOR,
            Some(h) => h
                .parse::<HypervisorKind>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        };
        let root = match (self.rootfs, self.image.as_deref().map(str::trim)) {
            (Some(dir), _) => RootRequest::Dir(PathBuf::from(dir)),
            (None, Some(image)) if !image.is_empty() => RootRequest::Image {
                reference: image.to_string(),
                platform: self
                    .other
                    .get("platform")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            },
            _ => {
                return Err(ApiError::bad_request(
                    "one of `image` or `rootfs` is required",
                ))
            }
        };
        let memory_bytes = self
            .size
            .as_deref()
            .map(|s| parse_size(s).map_err(|e| ApiError::invalid_size(format!("size: {e}"))))
            .transpose()?;
        let overlay_bytes = self
            .overlay_size
            .as_deref()
            .map(|s| {
                parse_size(s).map_err(|e| ApiError::invalid_size(format!("overlay_size: {e}")))
            })
            .transpose()?;
        let network = self
            .network
            .map(CreateNetwork::into_request)
            .transpose()?
            .unwrap_or_default();
        let tags = self.tags.unwrap_or_default();
        crate::tags::validate(&tags).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let expires_at = expiry(self.other.get("ttl"), self.other.get("expires_at"))?.flatten();
        let restart_policy = restart_policy(self.other.get("restart_policy"))?.flatten();
        let health_check = health_check(self.other.get("health_check"))?.flatten();
        Ok(CreateRequest {
            network,
            tags,
            expires_at,
            restart_policy,
            health_check,
            name,
            hypervisor,
            root,
            vcpus: self.vcpus,
            memory_bytes,
            overlay_bytes,
            run: RunOverrides {
                entrypoint: self.entrypoint,
                cmd: self.cmd,
                env: self.env.unwrap_or_default(),
                workdir: self.workdir,
            },
        })
    }
}

/// Create an instance and boot it.
#[utoipa::path(post, path = "/instances", request_body = CreateInstance,
    responses((status = 201, body = Instance), (status = 400, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateInstance>,
) -> Result<impl IntoResponse, ApiError> {
    let instance = state.manager.create(body.into_request()?).await?;
    Ok((StatusCode::CREATED, Json(instance)))
}

/// List instances, optionally only those in one state and carrying every
/// given tag.
#[utoipa::path(get, path = "/instances", params(("state" = Option<String>, Query, description = "filter by state"),
        ("tags" = Option<BTreeMap<String, String>>, Query, style = DeepObject, explode, description = "tags[key]=value: only instances carrying every pair")),
    responses((status = 200, body = Vec<Instance>)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Instance>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let tags = crate::tags::filter_from_query(&q);
    let filter = match q.get("state").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(
            InstanceState::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("unknown state {s:?}")))?,
        ),
    };
    let mut all = state.manager.list(filter).await?;
    all.retain(|i| crate::tags::matches(&i.tags, &tags));
    Ok(Json(all))
}

/// Get an instance by id, name or unique id prefix.
#[utoipa::path(get, path = "/instances/{id}", responses((status = 200, body = Instance), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(state.manager.get(&id).await?))
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    graceful_shutdown: Option<bool>,
}

/// Stop (if needed) and delete an instance.
#[utoipa::path(delete, path = "/instances/{id}", responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state
        .manager
        .delete(&id, q.graceful_shutdown.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stop an instance: graceful power-down, then force after a timeout.
#[utoipa::path(post, path = "/instances/{id}/stop", responses((status = 200, body = Instance), (status = 409, body = super::error::ErrorBody)))]
pub async fn stop(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(state.manager.stop(&id).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartInstance {
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
}

/// Boot a stopped instance again; its logs are appended to.
#[utoipa::path(post, path = "/instances/{id}/start", request_body = Option<StartInstance>,
    responses((status = 200, body = Instance), (status = 409, body = super::error::ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Instance>, ApiError> {
    // The body is optional, so it is parsed by hand rather than by `Json`.
    let req: StartInstance = if body.iter().all(u8::is_ascii_whitespace) {
        StartInstance::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    Ok(Json(
        state.manager.start(&id, req.entrypoint, req.cmd).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> CreateInstance {
        serde_json::from_value(json).expect("a create body")
    }

    #[test]
    fn hypervisor_is_parsed_here_and_checked_by_the_manager() {
        let req = body(serde_json::json!({"name": "a", "rootfs": "/r"}))
            .into_request()
            .expect("valid");
        assert_eq!(req.hypervisor, HypervisorKind::Qemu);
        let req = body(
            serde_json::json!({"name": "a", "rootfs": "/r", "hypervisor": "cloud-hypervisor"}),
        )
        .into_request()
        .expect("a known name");
        assert_eq!(req.hypervisor, HypervisorKind::CloudHypervisor);
        let err = body(serde_json::json!({"name": "a", "rootfs": "/r", "hypervisor": "xen"}))
            .into_request()
            .expect_err("unknown");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(
            err.message.contains("unknown hypervisor \"xen\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn root_sizes_and_overrides_are_translated() {
        let req = body(serde_json::json!({
            "name": "a", "image": " busybox ", "platform": "linux/amd64",
            "size": "512MB", "cmd": ["sh"], "env": {"A": "1"}
        }))
        .into_request()
        .expect("valid");
        match req.root {
            RootRequest::Image {
                reference,
                platform,
            } => {
                assert_eq!(reference, "busybox");
                assert_eq!(platform.as_deref(), Some("linux/amd64"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(req.memory_bytes, parse_size("512MB").ok());
        assert_eq!(req.overlay_bytes, None);
        assert_eq!(req.run.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(req.run.env.get("A").map(String::as_str), Some("1"));
        let err = body(serde_json::json!({"name": "a", "image": "  "}))
            .into_request()
            .expect_err("no root");
        assert_eq!(err.message, "one of `image` or `rootfs` is required");
        let err = body(serde_json::json!({"name": "a", "rootfs": "/r", "volumes": [1]}))
            .into_request()
            .expect_err("unsupported");
        assert_eq!(err.message, "`volumes` is not supported yet");
    }

    #[test]
    fn network_is_parsed_with_hypemans_defaults() {
        let req = body(serde_json::json!({"name": "a", "rootfs": "/r"}))
            .into_request()
            .expect("valid");
        assert_eq!(req.network, NetworkRequest::default());
        let req = body(serde_json::json!({"name": "a", "rootfs": "/r", "network": null}))
            .into_request()
            .expect("null is absent");
        assert_eq!(req.network.enabled, None);
        let req = body(serde_json::json!({"name": "a", "rootfs": "/r",
            "network": {"enabled": true, "bandwidth_download": "10Mbps", "bandwidth_upload": "1MB/s"}}))
        .into_request()
        .expect("valid");
        assert_eq!(req.network.enabled, Some(true));
        assert_eq!(
            req.network.limits.download.map(|b| b.bits_per_sec()),
            Some(10_000_000)
        );
        assert_eq!(
            req.network.limits.upload.map(|b| b.bits_per_sec()),
            Some(8 << 20)
        );
        let req = body(serde_json::json!({"name": "a", "rootfs": "/r",
            "network": {"enabled": false, "bandwidth_download": "", "egress": {"enabled": false}}}))
        .into_request()
        .expect("valid");
        assert_eq!(req.network.enabled, Some(false));
        assert_eq!(req.network.limits, Limits::default());
        for bad in [
            serde_json::json!({"bandwidth_download": "fast"}),
            serde_json::json!({"bandwidth_upload": "0Mbps"}),
            serde_json::json!({"egress": {"enabled": true}}),
        ] {
            let err = body(serde_json::json!({"name": "a", "rootfs": "/r", "network": bad}))
                .into_request()
                .expect_err("bad network");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.code, "bad_request");
            assert!(
                err.message.starts_with("`network.") || err.message.starts_with("network."),
                "{}",
                err.message
            );
        }
    }
}

/// What a running instance costs the host: CPU time and memory of its VMM,
/// its network bytes, its allocation.
#[utoipa::path(get, path = "/instances/{id}/stats",
    responses((status = 200, body = crate::instances::InstanceStats), (status = 409, body = super::error::ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::instances::InstanceStats>, ApiError> {
    Ok(Json(state.manager.stats(&id).await?))
}

/// hypeman's update body. lodge honours `ttl`/`expires_at` (`"0s"` or
/// `null` clears the expiry), `restart_policy` (`null` clears it) and
/// `tags` (a lodge extension: the whole set is replaced), and refuses
/// hypeman's other fields clearly.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// hypeman's `env`: only keys bound to credentials may change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// hypeman's other fields: `ttl`, `expires_at`, `restart_policy`
    /// honoured; `health_check`, `auto_standby` refused when set.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// hypeman update fields lodge does not provide yet.
const UPDATE_UNSUPPORTED: &[&str] = &["auto_standby"];

/// hypeman update fields lodge honours beside `tags`.
const UPDATE_SUPPORTED: &[&str] = &["ttl", "expires_at", "restart_policy", "health_check"];

impl UpdateInstance {
    fn into_update(self) -> Result<crate::instances::InstanceUpdate, ApiError> {
        if let Some(key) = self
            .other
            .keys()
            .find(|k| !UPDATE_SUPPORTED.contains(&k.as_str()))
        {
            return Err(if UPDATE_UNSUPPORTED.contains(&key.as_str()) {
                ApiError::bad_request(format!("`{key}` is not supported yet"))
            } else {
                ApiError::bad_request(format!("unknown field `{key}`"))
            });
        }
        if let Some(key) = self.env.as_ref().and_then(|e| e.keys().next()) {
            // hypeman accepts only keys bound to credentials; lodge has none.
            return Err(ApiError::bad_request(format!(
                "env {key:?}: only environment variables bound to credentials can be updated, and this instance has none"
            )));
        }
        if let Some(tags) = &self.tags {
            crate::tags::validate(tags).map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        Ok(crate::instances::InstanceUpdate {
            tags: self.tags,
            expires_at: expiry(self.other.get("ttl"), self.other.get("expires_at"))?,
            restart_policy: restart_policy(self.other.get("restart_policy"))?,
            health_check: health_check(self.other.get("health_check"))?,
        })
    }
}

/// Change an instance without touching its VM (tags).
#[utoipa::path(patch, path = "/instances/{id}", request_body = UpdateInstance,
    responses((status = 200, body = Instance), (status = 400, body = super::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Instance>, ApiError> {
    // An empty body is an update of nothing (hypeman's client sends `{}`).
    let req: UpdateInstance = if body.iter().all(u8::is_ascii_whitespace) {
        UpdateInstance::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    Ok(Json(state.manager.update(&id, req.into_update()?).await?))
}

#[cfg(test)]
mod policy_tests {
    use super::*;

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
