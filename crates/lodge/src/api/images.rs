//! `/images` handlers: hypeman's image API over the image manager.
//!
//! Image names travel percent-encoded in paths
//! (`/images/127.0.0.1:5000%2Fteam%2Fapp:v1`); axum decodes the segment.
//! `POST /images` answers at once (202) with the image as it is; the pull
//! runs in the background and its status moves pending → pulling →
//! converting → ready, or failed with `error`.
//!
//! A pull of a name that already holds a ready image is a refresh: the
//! image keeps `status: ready` (and boots) throughout; the refresh's own
//! progress and outcome are the image's `pull` object, so a refresh that
//! fails (registry down, another platform missing) never breaks the image.
//!
//! Archives: an API client reads no host file. `POST /images/load` takes
//! the archive as the request body (docker's `load`; bounded by
//! `LODGE_MAX_IMAGE_SIZE`), which is how `lodge pull oci-archive:PATH`
//! sends it, so it works against a remote daemon too. `POST /images` with
//! `oci-archive:PATH` reads only files beneath the daemon's import
//! directory (`LODGE_IMPORT_DIR`, default `<data dir>/import`).

use std::collections::{BTreeMap, HashMap};

use super::error::ApiError;
use super::state::{ApiJson, AppState};
use super::types::{CreateImage, Image, ImageProgress, ImagePull};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use futures_util::StreamExt;
use lodge_images::{ArchiveFormat, Credentials, ErrorKind, ImageInfo, LoadRequest, PullRequest};
use serde::{Deserialize, Serialize};

impl From<ImageInfo> for Image {
    fn from(i: ImageInfo) -> Self {
        let r = i.record;
        let c = r.config;
        Image {
            digest: r.digest.map(|d| d.to_string()).unwrap_or_default(),
            status: r.status.as_str().to_string(),
            error: r.error,
            created_at: r.created_at,
            platform: Some(r.platform).filter(|p| !p.is_empty()),
            queue_position: None,
            size_bytes: r.size_bytes,
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env.map(|e| lodge_images::runconfig::env_map(&e)),
            working_dir: c.working_dir,
            tags: Some(r.tags).filter(|t| !t.is_empty()),
            user: r.user.or(c.user),
            source: r.source,
            pull: r.pull.map(|p| ImagePull {
                status: p.status.as_str().to_string(),
                error: p.error,
                code: p.error_kind.map(|k| status_of(k).1.to_string()),
                platform: p.platform,
                source: p.source,
                started_at: p.started_at,
                finished_at: p.finished_at,
            }),
            progress: i.progress.map(|p| ImageProgress {
                layers_total: p.layers_total,
                layers_done: p.layers_done,
                layers_cached: p.layers_cached,
                bytes_total: p.bytes_total,
                bytes_done: p.bytes_done,
            }),
            name: r.name,
        }
    }
}

/// The HTTP status and error code of an image error class.
fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorKind::InvalidPlatform => (StatusCode::BAD_REQUEST, "invalid_platform"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::PlatformNotFound => (StatusCode::NOT_FOUND, "platform_not_found"),
        ErrorKind::Unauthorized => (StatusCode::FORBIDDEN, "registry_denied"),
        ErrorKind::Unreachable => (StatusCode::BAD_GATEWAY, "registry_unreachable"),
        ErrorKind::Registry => (StatusCode::BAD_GATEWAY, "registry_error"),
        ErrorKind::Integrity => (StatusCode::BAD_GATEWAY, "digest_mismatch"),
        ErrorKind::UnsafeLayer => (StatusCode::UNPROCESSABLE_ENTITY, "unsafe_layer"),
        ErrorKind::Unsupported => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_image"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
        ErrorKind::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    }
}

impl From<lodge_images::Error> for ApiError {
    fn from(e: lodge_images::Error) -> Self {
        if e.kind == ErrorKind::Internal {
            tracing::error!("{}", e.message);
        }
        let (status, code) = status_of(e.kind);
        ApiError {
            status,
            code,
            message: e.message,
        }
    }
}

/// Pull and convert an image (asynchronous).
#[utoipa::path(post, path = "/images", request_body = CreateImage,
    responses((status = 202, body = Image), (status = 400, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateImage>,
) -> Result<impl IntoResponse, ApiError> {
    let req = PullRequest {
        name: body.name,
        platform: body.platform,
        credentials: body.credentials.map(|c| Credentials {
            username: c.username,
            password: c.password,
            registry_token: c.registry_token,
        }),
        tags: body.tags.unwrap_or_default(),
    };
    crate::tags::validate(&req.tags).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let info = state.images.pull(req).await?;
    Ok((StatusCode::ACCEPTED, Json(Image::from(info))))
}

/// Import an image archive sent as the request body (docker's `load`).
///
/// Query: `format` (`oci`, the default, or `docker`), `reference` (picks
/// one image of an archive holding several), `file` (the archive's file
/// name, naming images the archive does not name), `platform`. Answers as
/// `POST /images` does, once the body is received.
#[utoipa::path(post, path = "/images/load",
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    params(
        ("format" = Option<String>, Query, description = "oci (default) or docker"),
        ("reference" = Option<String>, Query, description = "which image of the archive"),
        ("file" = Option<String>, Query, description = "the archive's file name"),
        ("platform" = Option<String>, Query, description = "os/arch[/variant]"),
    ),
    responses((status = 202, body = Image), (status = 400, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody), (status = 507, body = super::error::ErrorBody)))]
pub async fn load(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<impl IntoResponse, ApiError> {
    let format = match query.get("format").map(|f| f.trim()) {
        None | Some("") => ArchiveFormat::Oci,
        Some(f) => ArchiveFormat::parse(f).ok_or_else(|| {
            ApiError::bad_request(format!("format {f:?}: expected oci or docker"))
        })?,
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut upload = state.images.begin_upload(declared)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("receiving the archive: {e}")))?;
        upload.write(&chunk).await?;
    }
    if upload.written() == 0 {
        return Err(ApiError::bad_request(
            "no archive in the request body: send the tar as the body",
        ));
    }
    let opt = |k: &str| {
        query
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let info = state
        .images
        .load(
            upload,
            LoadRequest {
                format,
                reference: opt("reference"),
                file_name: opt("file"),
                platform: opt("platform"),
                tags: BTreeMap::new(),
            },
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Image::from(info))))
}

/// The upload route, apart from the others: its body is an archive bounded
/// by the image size limit, not by the API's 1 MiB request limit. It is
/// authenticated like every other route.
pub fn upload_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/images/load",
            post(load)
                // An image named `load` stays reachable by its short name.
                .get(|st: State<AppState>| get_one(st, Path("load".to_string())))
                .delete(|st: State<AppState>| delete(st, Path("load".to_string()))),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            super::state::require_token,
        ))
}

/// `tags[key]=value` pairs of a query string (hypeman's tag filter).
fn tag_filter(query: &HashMap<String, String>) -> BTreeMap<String, String> {
    crate::tags::filter_from_query(query)
}

/// List images, optionally only those carrying all the given tags.
#[utoipa::path(get, path = "/images", responses((status = 200, body = Vec<Image>)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Image>>, ApiError> {
    let filter = tag_filter(&query);
    let images = state
        .images
        .list()?
        .into_iter()
        .filter(|i| filter.iter().all(|(k, v)| i.record.tags.get(k) == Some(v)))
        .map(Image::from)
        .collect();
    Ok(Json(images))
}

/// Get an image by name (normalised as docker does: `alpine` finds
/// `docker.io/library/alpine:latest`).
#[utoipa::path(get, path = "/images/{name}",
    responses((status = 200, body = Image), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Image>, ApiError> {
    Ok(Json(state.images.get(&name)?.into()))
}

/// Delete an image; refused (409) while an instance uses it.
#[utoipa::path(delete, path = "/images/{name}",
    responses((status = 204), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let images = state.images.clone();
    tokio::task::spawn_blocking(move || images.delete(&name))
        .await
        .map_err(|e| ApiError::internal(format!("delete task: {e}")))??;
    Ok(StatusCode::NO_CONTENT)
}

/// Opens the image store under `<data dir>/images`; an image's users are
/// the instances whose records name its digest.
pub fn open(cfg: &crate::config::Config) -> anyhow::Result<std::sync::Arc<lodge_images::Images>> {
    let default_import = cfg.data_dir.join("import");
    let opts =
        lodge_images::Options::from_env(&default_import).map_err(|e| anyhow::anyhow!("{e}"))?;
    if opts.import_dir.as_deref() == Some(default_import.as_path()) {
        std::fs::create_dir_all(&default_import)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", default_import.display()))?;
    }
    let guests = cfg.guests_dir();
    let users: lodge_images::UsersFn =
        std::sync::Arc::new(move |digest: &str| crate::instances::image_users(&guests, digest));
    lodge_images::Images::open(&cfg.paths().images().dir, opts, users)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_filters_from_query_keys() {
        let q: HashMap<String, String> = [
            ("tags[team]".to_string(), "a".to_string()),
            ("other".to_string(), "x".to_string()),
        ]
        .into();
        assert_eq!(
            tag_filter(&q),
            [("team".to_string(), "a".to_string())].into()
        );
    }
}

/// `POST /images/{name}/tag`'s body (hypeman's).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TagImage {
    /// The new name: an image reference with a tag.
    pub target: String,
}

/// Give a ready image another name, without pulling (as `docker tag`).
#[utoipa::path(post, path = "/images/{name}/tag", request_body = TagImage,
    responses((status = 200, body = Image), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn tag(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<TagImage>,
) -> Result<Json<Image>, ApiError> {
    Ok(Json(Image::from(state.images.tag(&name, &body.target)?)))
}
