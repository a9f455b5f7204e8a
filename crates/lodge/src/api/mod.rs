//! The REST API: hypeman's paths and JSON shapes over axum.
//!
//! Handlers only translate: parse the request into a typed call on the
//! instance manager and render the result. Auth is one middleware in front of
//! everything but `/health` and `/spec.json`; every rejection, including
//! axum's own (bad JSON, oversized body, unknown route), is turned into the
//! `{code, message}` error shape.

mod capabilities;
mod cp;
mod error;
mod exec;
mod images;
pub mod instances;
pub mod logs;
pub mod server;
mod state;
pub mod types;
mod ws;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::OpenApi;

pub use error::ApiError;
pub use images::open as open_images;
use state::{reject_declared_oversize, require_token};
pub use state::{AppState, MAX_BODY};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lodge",
        description = "Run OCI images as VMs (hypeman-compatible API)"
    ),
    paths(
        health,
        capabilities::capabilities,
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
        images::load,
    ),
    components(schemas(
        crate::instances::Instance,
        crate::instances::InstanceNetwork,
        instances::CreateNetwork,
        capabilities::Capabilities,
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
        types::ImagePull,
        types::CreateImage,
        types::RegistryCredentials,
        Health,
    ))
)]
struct ApiDoc;

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/capabilities", get(capabilities::capabilities))
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
        // Archive uploads, bounded by the image size limit instead.
        .merge(images::upload_routes(state.clone()))
        .with_state(state)
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
