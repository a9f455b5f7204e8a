//! `/images` handlers: hypeman's image API over the image manager.
//!
//! Image names travel percent-encoded in paths
//! (`/images/127.0.0.1:5000%2Fteam%2Fapp:v1`); axum decodes the segment.
//! `POST /images` answers at once (202) with the image as it is; the pull
//! runs in the background and its status moves pending → pulling →
//! converting → ready, or failed with `error`.

use std::collections::{BTreeMap, HashMap};

use super::types::{CreateImage, Image, ImageProgress};
use super::{ApiError, ApiJson, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use lodge_images::{Credentials, ErrorKind, ImageInfo, PullRequest};

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

impl From<lodge_images::Error> for ApiError {
    fn from(e: lodge_images::Error) -> Self {
        let (status, code) = match e.kind {
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
            ErrorKind::Internal => {
                tracing::error!("{}", e.message);
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        };
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
    let info = state.images.pull(req).await?;
    Ok((StatusCode::ACCEPTED, Json(Image::from(info))))
}

/// `tags[key]=value` pairs of a query string (hypeman's tag filter).
fn tag_filter(query: &HashMap<String, String>) -> BTreeMap<String, String> {
    query
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("tags[")?.strip_suffix(']')?;
            Some((key.to_string(), v.clone()))
        })
        .collect()
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
    let opts = lodge_images::Options::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
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
