//! What every handler shares: the daemon's state, the JSON body extractor
//! whose rejections use lodge's error shape, and the middleware for the
//! token and the body size. Its own file so that the resource files and the
//! router in `mod.rs` both depend on it and not on each other.

use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::Auth;
use crate::instances::Manager;

/// Largest request body accepted (create requests are small).
pub const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub auth: Arc<Auth>,
    pub images: Arc<lodge_images::Images>,
    pub pushes: Arc<lodge_images::push::Pushes>,
    pub volumes: Arc<lodge_volumes::Volumes>,
    pub devices: Arc<crate::devices::Devices>,
    pub ingresses: Arc<crate::ingress::Ingresses>,
    /// Whether the benchmark-only routes are served (see `Config`).
    pub bench_endpoints: bool,
}

/// Refuses a body whose declared length is over the limit before reading
/// it (bodies without a length are cut off by `DefaultBodyLimit`).
pub async fn reject_declared_oversize(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_BODY as u64 => ApiError {
            status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: format!("request body of {len} bytes is over the {MAX_BODY}-byte limit"),
        }
        .into_response(),
        _ => next.run(req).await,
    }
}

pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.auth.verify_header(header) {
        Ok(()) => next.run(req).await,
        Err(why) => ApiError::unauthorized(why).into_response(),
    }
}

/// `Json<T>` whose rejections use lodge's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else if status == axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    "unsupported_media_type"
                } else if status == axum::http::StatusCode::UNPROCESSABLE_ENTITY {
                    // Valid JSON of the wrong shape (axum's answer for it).
                    "unprocessable_entity"
                } else {
                    "bad_request"
                };
                Err(ApiError {
                    status,
                    code,
                    message: rejection.body_text(),
                })
            }
        }
    }
}
