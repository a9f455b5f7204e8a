//! `/pushes` handlers: hypeman's image push jobs over
//! [`lodge_images::push::Pushes`].
//!
//! `POST /pushes` checks the request at once (the image exists and is
//! ready, the target is a tag reference, the credentials can be sent) and
//! answers 202 with the job `queued`; the upload runs in the background and
//! its `status` moves queued → pushing → pushed, or failed with `error`.
//! Credentials are used for that job only and never stored, as with pulls.

use super::error::ApiError;
use super::state::{ApiJson, AppState};
use super::types::RegistryCredentials;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use lodge_images::push::{PushRecord, PushRequest};
use lodge_images::Credentials;
use serde::{Deserialize, Serialize};

/// hypeman's push job, plus lodge's progress fields.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Push {
    pub id: String,
    /// The local image's normalised name.
    pub image: String,
    /// The remote reference pushed to.
    pub target: String,
    /// The manifest digest pushed (the local image's).
    pub digest: String,
    /// queued, pushing, pushed or failed.
    pub status: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Number of layers pushed.
    pub layers: u32,
    /// Compressed layer bytes pushed (or found already in the registry).
    pub bytes: u64,
    /// Compressed layer bytes of the image (0 until the job has started).
    pub bytes_total: u64,
    /// Blobs (config and layers) the registry already had.
    pub blobs_skipped: u32,
    /// Place in the push queue (1 = next), while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
}

impl From<(PushRecord, Option<u32>)> for Push {
    fn from((r, place): (PushRecord, Option<u32>)) -> Self {
        Push {
            id: r.id,
            image: r.image,
            target: r.target,
            digest: r.digest,
            status: r.status.as_str().to_string(),
            created_at: r.created_at,
            completed_at: r.completed_at,
            error: r.error,
            layers: r.layers,
            bytes: r.bytes,
            bytes_total: r.bytes_total,
            blobs_skipped: r.blobs_skipped,
            queue_position: place,
        }
    }
}

/// hypeman's `POST /pushes` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatePush {
    /// Local image name (tag or digest form).
    pub image: String,
    /// Full remote reference to push to (a tag; `:latest` when none).
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
    /// Plain HTTP to the target's registry (loopback registries always are).
    #[serde(default)]
    pub insecure: bool,
}

/// Push a ready local image to a registry (asynchronous).
#[utoipa::path(post, path = "/pushes", request_body = CreatePush,
    responses((status = 202, body = Push), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreatePush>,
) -> Result<impl IntoResponse, ApiError> {
    let req = PushRequest {
        image: body.image,
        target: body.target,
        credentials: body.credentials.map(|c| Credentials {
            username: c.username,
            password: c.password,
            registry_token: c.registry_token,
        }),
        insecure: body.insecure,
    };
    let push = state.pushes.start(req)?;
    Ok((StatusCode::ACCEPTED, Json(Push::from(push))))
}

/// Push jobs, newest first.
#[utoipa::path(get, path = "/pushes", responses((status = 200, body = Vec<Push>)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<Push>> {
    Json(state.pushes.list().into_iter().map(Push::from).collect())
}

/// One push job.
#[utoipa::path(get, path = "/pushes/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Push), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Push>, ApiError> {
    Ok(Json(Push::from(state.pushes.get(&id)?)))
}
