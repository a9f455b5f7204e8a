//! `/volumes` handlers and the attach/detach routes of an instance:
//! hypeman's volume API over the volume store (lodge-volumes) and the
//! instance manager (which owns attachments).
//!
//! `POST /volumes/from-archive` takes the tar.gz as the request body,
//! bounded by the unpacker (the volume's `size_gb`, or
//! `LODGE_VOLUME_MAX_ARCHIVE`), not by the API's 1 MiB limit, so it sits
//! apart from the other routes like the image upload. The body is handed
//! to the store's blocking unpacker as it arrives, a few chunks at a time:
//! nothing is buffered whole.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::state::{ApiJson, AppState};
use crate::instances::Instance;

/// hypeman's `Volume`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub size_gb: u64,
    /// RFC 3339.
    pub created_at: String,
    /// Where it is attached (empty when it is not).
    pub attachments: Vec<VolumeAttachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// hypeman's `VolumeAttachment`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeAttachment {
    pub instance_id: String,
    pub mount_path: String,
    pub readonly: bool,
}

impl From<lodge_volumes::Volume> for Volume {
    fn from(v: lodge_volumes::Volume) -> Self {
        let r = v.record;
        Volume {
            id: r.id,
            name: r.name,
            size_gb: r.size_gb,
            created_at: r.created_at,
            attachments: v
                .attachments
                .into_iter()
                .map(|a| VolumeAttachment {
                    instance_id: a.instance_id,
                    mount_path: a.mount_path,
                    readonly: a.readonly,
                })
                .collect(),
            tags: Some(r.tags).filter(|t| !t.is_empty()),
        }
    }
}

/// hypeman's create body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    /// Whole gigabytes (a number, or a string holding one).
    #[schema(value_type = u64)]
    pub size_gb: serde_json::Value,
    /// A custom id (generated when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// hypeman's attach body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolume {
    pub mount_path: String,
    #[serde(default)]
    pub readonly: bool,
}

/// `tags[key]=value` pairs of a query string (hypeman's tag encoding).
fn tags_of(query: &HashMap<String, String>) -> BTreeMap<String, String> {
    query
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("tags[")?.strip_suffix(']')?;
            Some((key.to_string(), v.clone()))
        })
        .collect()
}

/// Create an empty volume (a sparse ext4 disk).
#[utoipa::path(post, path = "/volumes", request_body = CreateVolume,
    responses((status = 201, body = Volume), (status = 400, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 507, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateVolume>,
) -> Result<impl IntoResponse, ApiError> {
    let size_gb = lodge_volumes::rules::size_gb_from_json(&body.size_gb)?;
    let vol = state
        .volumes
        .create(lodge_volumes::CreateRequest {
            id: body.id,
            name: body.name,
            size_gb: Some(size_gb),
            tags: body.tags.unwrap_or_default(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(Volume::from(vol))))
}

/// A blocking reader over the request body's chunks, for the unpacker.
struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    chunk: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _consumed = self.chunk.split_to(n);
        Ok(n)
    }
}

/// Create a volume from a tar archive (gzip, zstd or plain) sent as the
/// body: unpacked safely (no entry outside the volume, bounded size), and
/// sized from its content when `size_gb` is absent.
#[utoipa::path(post, path = "/volumes/from-archive",
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    params(
        ("name" = String, Query, description = "volume name"),
        ("size_gb" = Option<u64>, Query, description = "size in GB; the content must fit (default: sized from the content)"),
        ("id" = Option<String>, Query, description = "a custom id"),
    ),
    responses((status = 201, body = Volume), (status = 400, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 413, body = super::error::ErrorBody),
        (status = 507, body = super::error::ErrorBody)))]
pub async fn from_archive(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> Result<impl IntoResponse, ApiError> {
    let name = query
        .get("name")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("the `name` query parameter is required"))?;
    let size_gb = match query.get("size_gb").map(|s| s.trim()) {
        None | Some("") => None,
        Some(s) => Some(lodge_volumes::rules::parse_size_gb(s)?),
    };
    let req = lodge_volumes::CreateRequest {
        id: query.get("id").cloned().filter(|s| !s.is_empty()),
        name,
        size_gb,
        tags: tags_of(&query),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let reader = BodyReader {
        rx,
        chunk: Bytes::new(),
    };
    let pump = async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(|e| format!("receiving the archive: {e}"));
            let failed = item.is_err();
            // The store stopped reading (it failed): stop sending.
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    };
    let (_, created) = tokio::join!(
        pump,
        state.volumes.create_from_archive(req, Box::new(reader))
    );
    Ok((StatusCode::CREATED, Json(Volume::from(created?))))
}

/// List volumes, optionally only those carrying all the given tags
/// (`tags[key]=value`).
#[utoipa::path(get, path = "/volumes", responses((status = 200, body = Vec<Volume>)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Volume>>, ApiError> {
    let filter = tags_of(&query);
    let vols = state
        .volumes
        .list()?
        .into_iter()
        .filter(|v| {
            filter
                .iter()
                .all(|(k, val)| v.record.tags.get(k) == Some(val))
        })
        .map(Volume::from)
        .collect();
    Ok(Json(vols))
}

/// Get a volume by id or name.
#[utoipa::path(get, path = "/volumes/{id}",
    responses((status = 200, body = Volume), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Volume>, ApiError> {
    Ok(Json(state.volumes.get(&id)?.into()))
}

/// Delete a volume; refused (409) while it is attached.
#[utoipa::path(delete, path = "/volumes/{id}",
    responses((status = 204), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.volumes.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Attach a volume: to a stopped instance at once (mounted at its next
/// boot), or hot-plugged into a running one and mounted by its guest.
#[utoipa::path(post, path = "/instances/{id}/volumes/{volume_id}", request_body = AttachVolume,
    responses((status = 200, body = Instance), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 502, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)))]
pub async fn attach(
    State(state): State<AppState>,
    Path((id, volume_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<AttachVolume>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(
        state
            .manager
            .attach_volume(&id, &volume_id, &body.mount_path, body.readonly)
            .await?,
    ))
}

/// Detach a volume; from a running instance once its guest has unmounted
/// it (409 while it is busy there).
#[utoipa::path(delete, path = "/instances/{id}/volumes/{volume_id}",
    responses((status = 200, body = Instance), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody),
        (status = 503, body = super::error::ErrorBody)))]
pub async fn detach(
    State(state): State<AppState>,
    Path((id, volume_id)): Path<(String, String)>,
) -> Result<Json<Instance>, ApiError> {
    Ok(Json(state.manager.detach_volume(&id, &volume_id).await?))
}

/// The archive route, apart from the others (see the module doc); it is
/// authenticated like every other route.
pub fn upload_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/volumes/from-archive",
            post(from_archive)
                // A volume named `from-archive` stays reachable.
                .get(|st: State<AppState>| get_one(st, Path("from-archive".to_string())))
                .delete(|st: State<AppState>| delete(st, Path("from-archive".to_string()))),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            super::state::require_token,
        ))
}

/// Opens the volume store under `<data dir>/volumes`; a volume's
/// attachments are read from the instance records.
pub fn open(cfg: &crate::config::Config) -> anyhow::Result<std::sync::Arc<lodge_volumes::Volumes>> {
    let opts = lodge_volumes::Options::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let guests = cfg.guests_dir();
    let users: lodge_volumes::AttachmentsFn =
        std::sync::Arc::new(move |id: &str| crate::instances::volume_users(&guests, id));
    let volumes = lodge_volumes::Volumes::open(&cfg.paths().volumes(), opts, users)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(std::sync::Arc::new(volumes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_in_chunks_and_errors_pass_through() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"hello ")))
            .expect("send");
        tx.try_send(Ok(Bytes::from_static(b"world"))).expect("send");
        drop(tx);
        let mut r = BodyReader {
            rx,
            chunk: Bytes::new(),
        };
        let mut s = String::new();
        r.read_to_string(&mut s).expect("read");
        assert_eq!(s, "hello world");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Err("cut".to_string())).expect("send");
        let mut r = BodyReader {
            rx,
            chunk: Bytes::new(),
        };
        assert!(r.read(&mut [0u8; 4]).is_err());
    }

    #[test]
    fn create_bodies_take_numbers_or_strings() {
        let b: CreateVolume = serde_json::from_str(r#"{"name":"d","size_gb":2}"#).expect("json");
        assert_eq!(
            lodge_volumes::rules::size_gb_from_json(&b.size_gb).ok(),
            Some(2)
        );
        assert!(serde_json::from_str::<CreateVolume>(r#"{"name":"d","size_gb":1,"x":1}"#).is_err());
    }
}
