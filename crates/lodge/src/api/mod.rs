//! The REST API: hypeman's paths and JSON shapes over axum.
//!
//! Handlers only translate: parse the request into a typed call on the
//! instance manager and render the result. Auth is one middleware in front of
//! everything but `/health` and `/spec.json`; every rejection, including
//! axum's own (bad JSON, oversized body, unknown route), is turned into the
//! `{code, message}` error shape.

mod cp;
mod error;
mod exec;
mod images;
pub mod instances;
pub mod logs;
pub mod server;
pub mod types;
mod ws;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::OpenApi;

pub use error::ApiError;
pub use images::open as open_images;

use crate::auth::Auth;
use crate::instances::Manager;

/// Largest request body accepted (create requests are small).
pub const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub auth: Arc<Auth>,
    pub images: Arc<lodge_images::Images>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lodge",
        description = "Run OCI images as VMs (hypeman-compatible API)"
    ),
    paths(
        health,
        instances::create,
        instances::list,
        instances::get_one,
        instances::delete,
        instances::stop,
        instances::start,
        logs::logs,
        exec::exec,
        exec::stat,
        cp::cp,
        cp::throughput,
        images::create,
        images::list,
        images::get_one,
        images::delete,
    ),
    components(schemas(
        crate::instances::Instance,
        crate::instances::state::State,
        instances::CreateInstance,
        instances::StartInstance,
        error::ErrorBody,
        types::ExecRequest,
        types::PathInfo,
        types::CpRequest,
        types::Throughput,
        types::Image,
        types::ImageProgress,
        types::CreateImage,
        types::RegistryCredentials,
        Health,
    ))
)]
struct ApiDoc;

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/instances", post(instances::create).get(instances::list))
        .route(
            "/instances/{id}",
            get(instances::get_one).delete(instances::delete),
        )
        .route("/instances/{id}/stop", post(instances::stop))
        .route("/instances/{id}/start", post(instances::start))
        .route("/instances/{id}/logs", get(logs::logs))
        .route("/instances/{id}/exec", get(exec::exec))
        .route("/instances/{id}/cp", get(cp::cp))
        .route("/instances/{id}/stat", get(exec::stat))
        .route("/instances/{id}/agent/throughput", get(cp::throughput))
        .route("/images", post(images::create).get(images::list))
        .route(
            "/images/{name}",
            get(images::get_one).delete(images::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/spec.json", get(spec))
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(reject_declared_oversize))
        .with_state(state)
}

/// Refuses a body whose declared length is over the limit before reading
/// it (bodies without a length are cut off by `DefaultBodyLimit`).
async fn reject_declared_oversize(req: Request, next: Next) -> Response {
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

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.auth.verify_header(header) {
        Ok(()) => next.run(req).await,
        Err(why) => ApiError::unauthorized(why).into_response(),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// Liveness; needs no token.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn spec() -> Response {
    match ApiDoc::openapi().to_pretty_json() {
        Ok(s) => ([(axum::http::header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
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
