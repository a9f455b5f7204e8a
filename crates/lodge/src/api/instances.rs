//! `/instances` handlers: JSON in, a typed manager call, JSON out.
//!
//! A handler only parses: the create body becomes a [`CreateRequest`]
//! (names, sizes and the hypervisor parsed, nothing looked up); resolving
//! the image, defaults and limits are the manager's.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use lodge_hypervisor::HypervisorKind;

use super::error::ApiError;
use super::policies::{expiry, health_check, restart_policy};
use super::state::{ApiJson, AppState};
use crate::instances::naming::Name;
use crate::instances::spec::NetworkRequest;
use crate::instances::state::State as InstanceState;
use crate::instances::{self, CreateRequest, Instance, RootRequest, RunOverrides, VolumeMount};
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
    /// hypeman's volumes to attach at create, mounted before the program
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<VolumeMount>>,
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

/// A create's volume as the manager takes it: sizes parsed.
fn volume_request(m: VolumeMount) -> Result<instances::VolumeRequest, ApiError> {
    let overlay = match (m.overlay, m.overlay_size.as_deref()) {
        (false, _) => None,
        (true, None) => {
            return Err(ApiError::bad_request(format!(
                "volumes: {}: overlay needs overlay_size",
                m.mount_path
            )))
        }
        (true, Some(s)) => Some(parse_size(s).map_err(|e| {
            ApiError::bad_request(format!("volumes: {}: overlay_size: {e}", m.mount_path))
        })?),
    };
    Ok(instances::VolumeRequest {
        volume: m.volume_id,
        mount_path: m.mount_path,
        readonly: m.readonly,
        overlay,
    })
}

/// The slowest disk limit taken: below this a guest cannot even boot.
const MIN_DISK_BPS: u64 = 1 << 20;

/// hypeman's `disk_io_bps` (`"100MB/s"`; `/s` optional), in bytes per second.
fn disk_io_bps(v: Option<&serde_json::Value>) -> Result<Option<u64>, ApiError> {
    let text = match v {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.trim(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "disk_io_bps: expected a rate such as \"100MB/s\", got {other}"
            )))
        }
    };
    let size = text
        .strip_suffix("/s")
        .or_else(|| text.strip_suffix("/S"))
        .unwrap_or(text)
        .trim();
    let bps = parse_size(size)
        .map_err(|e| ApiError::invalid_size(format!("disk_io_bps {text:?}: {e}")))?;
    if bps < MIN_DISK_BPS {
        return Err(ApiError::bad_request(format!(
            "disk_io_bps {text:?}: at least 1MB/s"
        )));
    }
    Ok(Some(bps))
}

/// hypeman create fields whose effect lodge does not provide yet.
const UNSUPPORTED: &[&str] = &["gpu", "credentials", "snapshot_policy", "hotplug_size"];

impl CreateInstance {
    /// The typed create call: every field parsed, nothing resolved (the
    /// manager resolves the image and applies defaults).
    fn into_request(self) -> Result<CreateRequest, ApiError> {
        let name = Name::parse(&self.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(key) = UNSUPPORTED
            .iter()
            .find(|k| self.other.get(**k).is_some_and(|v| !v.is_null()))
        {
            if *key == "hotplug_size" {
                return Err(ApiError::bad_request(
                    "`hotplug_size` is not supported: QEMU can hot-plug memory here, but no hypeman call grows a running instance's memory, so the reserve would stay unused; create the instance with the `size` it needs",
                ));
            }
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
        let auto_standby = super::auto_standby::policy(self.other.get("auto_standby"))?.flatten();
        let disk_io_bps = disk_io_bps(self.other.get("disk_io_bps"))?;
        let volumes = self
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(volume_request)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CreateRequest {
            disk_io_bps,
            volumes,
            auto_standby,
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

/// hypeman's `devices` on create: ids or names of registered devices.
fn device_keys(v: Option<&serde_json::Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::bad_request("devices: expected a list of device ids or names");
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// A create naming devices: each is resolved and checked for passthrough
/// (IOMMU group, vfio-pci, `/dev/vfio`, a viable group, not in use), and
/// the first missing piece refused with its name (4xx). When every check
/// passes the answer is still 501: handing the device to QEMU
/// (`-device vfio-pci,host=…`, built by `devices::passthrough`) is not
/// wired into the boot yet, as no host here has an IOMMU to test it on.
async fn refuse_devices(state: &AppState, keys: Vec<String>) -> ApiError {
    let devices = state.devices.clone();
    let planned = tokio::task::spawn_blocking(move || {
        keys.iter()
            .map(|k| devices.plan_attach(k).map(|(d, _arg)| d.record.name))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match planned {
        Err(_) => ApiError::from(crate::devices::Error::Task { what: "attach check" }),
        Ok(Err(e)) => ApiError::from(e),
        Ok(Ok(names)) => ApiError {
            status: StatusCode::NOT_IMPLEMENTED,
            code: "not_implemented",
            message: format!(
                "device(s) {} are ready for passthrough, but lodge does not pass host devices to the VM yet",
                names.join(", ")
            ),
        },
    }
}

/// Create an instance and boot it.
#[utoipa::path(post, path = "/instances", request_body = CreateInstance,
    description = "Creates and starts an instance, pulling its image first when it is not stored. \
A failed pull answers with the image error codes: 403 registry_denied, 404 not_found, \
413 image_too_large, 422 unsafe_layer or unsupported_image, 502 registry_unreachable, \
registry_error or digest_mismatch, 507 insufficient_storage.",
    responses((status = 201, body = Instance), (status = 400, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 413, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody),
        (status = 507, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateInstance>,
) -> Result<impl IntoResponse, ApiError> {
    let devices = device_keys(body.other.get("devices"))?;
    let req = body.into_request()?;
    if !devices.is_empty() {
        return Err(refuse_devices(&state, devices).await);
    }
    let instance = state.manager.create(req).await?;
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
    let target = state.manager.get(&id).await?.id;
    state
        .manager
        .delete(&target, q.graceful_shutdown.unwrap_or(false))
        .await?;
    state.ingresses.forget_ports_of(&target).await;
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
        let err = device_keys(Some(&serde_json::json!([1]))).expect_err("not names");
        assert_eq!(
            err.message,
            "devices: expected a list of device ids or names"
        );
        assert_eq!(
            device_keys(Some(&serde_json::json!(["gpu", "n"]))).expect("names"),
            vec!["gpu", "n"]
        );
    }

    #[test]
    fn volumes_are_parsed_as_hypeman_sends_them() {
        let req = body(serde_json::json!({"name": "a", "rootfs": "/r", "volumes": [
            {"volume_id": "data", "mount_path": "/data"},
            {"volume_id": "base", "mount_path": "/base", "readonly": true,
             "overlay": true, "overlay_size": "64MB"}
        ]}))
        .into_request()
        .expect("valid");
        assert_eq!(req.volumes.len(), 2);
        assert!(!req.volumes[0].readonly && req.volumes[0].overlay.is_none());
        assert_eq!(req.volumes[1].overlay, Some(64 << 20));
        for bad in [
            serde_json::json!([{"volume_id": "b", "mount_path": "/b", "readonly": true, "overlay": true}]),
            serde_json::json!([{"volume_id": "b", "mount_path": "/b", "overlay": true, "overlay_size": "12XB"}]),
        ] {
            let err = body(serde_json::json!({"name": "a", "rootfs": "/r", "volumes": bad}))
                .into_request()
                .expect_err("bad volume");
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{}", err.message);
        }
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
/// `null` clears the expiry), `restart_policy`, `health_check` and
/// `auto_standby` (`null` clears each; an object replaces it whole) and
/// `tags` (a lodge extension: the whole set is replaced), and refuses
/// hypeman's other fields clearly.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// hypeman's `env`: only keys bound to credentials may change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// hypeman's other fields: `ttl`, `expires_at`, `restart_policy`,
    /// `health_check`, `auto_standby`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// hypeman update fields lodge honours beside `tags`.
const UPDATE_SUPPORTED: &[&str] = &[
    "ttl",
    "expires_at",
    "restart_policy",
    "health_check",
    "auto_standby",
];

impl UpdateInstance {
    fn into_update(self) -> Result<crate::instances::InstanceUpdate, ApiError> {
        if let Some(key) = self
            .other
            .keys()
            .find(|k| !UPDATE_SUPPORTED.contains(&k.as_str()))
        {
            return Err(ApiError::bad_request(format!("unknown field `{key}`")));
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
            auto_standby: super::auto_standby::policy(self.other.get("auto_standby"))?,
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
