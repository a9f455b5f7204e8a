//! `/instances` handlers: JSON in, a typed manager call, JSON out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::{ApiError, ApiJson, AppState};
use crate::instances::naming::Name;
use crate::instances::state::State as InstanceState;
use crate::instances::{self, CreateSpec, Instance, RootSource};
use crate::sizes::parse_size;

/// hypeman's create body, plus lodge's `rootfs` and `workdir`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateInstance {
    pub name: String,
    /// Image reference. Use `rootfs` instead to boot a host directory.
    #[serde(default)]
    pub image: Option<String>,
    /// lodge extension: absolute path of a directory to use as the root file system.
    #[serde(default)]
    pub rootfs: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Memory, e.g. `1GB` or `512MB` (binary units).
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub overlay_size: Option<String>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// lodge extension: working directory of the program (default `/`).
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub hypervisor: Option<String>,
    /// Every other hypeman field: the ones lodge cannot honour yet are
    /// refused when set; the rest (tags, hints) are accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// hypeman create fields whose effect lodge does not provide yet.
const UNSUPPORTED: &[&str] = &[
    "volumes",
    "devices",
    "gpu",
    "network",
    "credentials",
    "snapshot_policy",
    "restart_policy",
    "health_check",
    "auto_standby",
    "hotplug_size",
    "disk_io_bps",
    "expires_at",
    "ttl",
];

impl CreateInstance {
    /// The checks that need no image: done before pulling one.
    fn precheck(&self) -> Result<Name, ApiError> {
        let name = Name::parse(&self.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(key) = UNSUPPORTED
            .iter()
            .find(|k| self.other.get(**k).is_some_and(|v| !v.is_null()))
        {
            return Err(ApiError::bad_request(format!(
                "`{key}` is not supported yet"
            )));
        }
        if let Some(h) = &self.hypervisor {
            if h != "qemu" {
                return Err(ApiError::bad_request(format!(
                    "hypervisor {h:?} is not supported yet; lodge runs \"qemu\""
                )));
            }
        }
        if self.rootfs.is_none() && self.image().is_none() {
            return Err(ApiError::bad_request(
                "one of `image` or `rootfs` is required",
            ));
        }
        Ok(name)
    }

    /// The image to boot, unless a host directory (`rootfs`) is given.
    fn image(&self) -> Option<&str> {
        match (&self.rootfs, self.image.as_deref().map(str::trim)) {
            (None, Some(i)) if !i.is_empty() => Some(i),
            _ => None,
        }
    }

    /// hypeman's `platform` for the image (os/arch[/variant]).
    fn platform(&self) -> Option<&str> {
        self.other.get("platform").and_then(|v| v.as_str())
    }

    /// The create spec; with an image, its configuration supplies the
    /// defaults that the request's fields override (docker's rules).
    fn into_spec(self, image: Option<&lodge_images::ImageLease>) -> Result<CreateSpec, ApiError> {
        let name = self.precheck()?;
        let (root, run) = match (self.rootfs, image) {
            (Some(dir), _) => (
                RootSource::Dir(PathBuf::from(dir)),
                lodge_images::runconfig::RunConfig {
                    entrypoint: self.entrypoint.unwrap_or_default(),
                    cmd: self.cmd.unwrap_or_default(),
                    env: self.env.unwrap_or_default(),
                    workdir: self.workdir.unwrap_or_else(|| "/".to_string()),
                    user: None,
                },
            ),
            (None, Some(lease)) => {
                let overrides = lodge_images::runconfig::Overrides {
                    entrypoint: self.entrypoint,
                    cmd: self.cmd,
                    env: self.env.unwrap_or_default(),
                    workdir: self.workdir,
                    user: None,
                };
                let run = lodge_images::runconfig::resolve(
                    &lease.record.config,
                    lease.record.user.as_deref(),
                    overrides,
                )
                .map_err(|e| ApiError::bad_request(format!("image {}: {e}", lease.record.name)))?;
                let root = RootSource::Image {
                    name: lease.record.name.clone(),
                    digest: lease.digest.to_string(),
                    disk: lease.disk.clone(),
                };
                (root, run)
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "one of `image` or `rootfs` is required",
                ))
            }
        };
        let memory_bytes = match &self.size {
            Some(s) => parse_size(s).map_err(|e| ApiError::bad_request(format!("size: {e}")))?,
            None => instances::DEFAULT_MEMORY,
        };
        let overlay_bytes = match &self.overlay_size {
            Some(s) => {
                parse_size(s).map_err(|e| ApiError::bad_request(format!("overlay_size: {e}")))?
            }
            None => instances::DEFAULT_OVERLAY,
        };
        Ok(CreateSpec {
            name,
            root,
            vcpus: self.vcpus.unwrap_or(instances::DEFAULT_VCPUS),
            memory_bytes,
            overlay_bytes,
            entrypoint: run.entrypoint,
            cmd: run.cmd,
            env: run.env,
            workdir: run.workdir,
            user: run.user,
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
    body.precheck()?;
    // An image that is not local is pulled first; the lease keeps its disk
    // from being deleted until the instance record names it.
    let lease = match body.image() {
        Some(image) => Some(state.images.ensure(image, body.platform()).await?),
        None => None,
    };
    let spec = body.into_spec(lease.as_ref())?;
    let instance = state.manager.create(spec).await?;
    drop(lease);
    Ok((StatusCode::CREATED, Json(instance)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
}

/// List instances, optionally only those in one state.
#[utoipa::path(get, path = "/instances", params(("state" = Option<String>, Query, description = "filter by state")),
    responses((status = 200, body = Vec<Instance>)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Instance>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            InstanceState::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("unknown state {s:?}")))?,
        ),
    };
    Ok(Json(state.manager.list(filter).await?))
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
