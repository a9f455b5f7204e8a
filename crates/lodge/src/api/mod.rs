//! The REST API: hypeman's paths and JSON shapes over axum.
//!
//! Handlers only translate: parse the request into a typed call on the
//! instance manager and render the result. Auth is one middleware in front of
//! everything but `/health` and `/spec.json`/`/spec.yaml` (and `/metrics` with
//! `LODGE_METRICS_PUBLIC=1`); every rejection, including
//! axum's own (bad JSON, oversized body, unknown route, wrong method), is
//! turned into the `{code, message}` error shape. The error statuses those
//! shared layers can answer are added to every operation of `/spec.json`
//! in one place ([`shared_errors`]) rather than repeated on each handler.
//! hypeman routes lodge lacks answer 501 `not_implemented` from one table
//! (`unimplemented.rs`) rather than 404.
//! Every answer is counted by `metrics::track` (route template, status).

mod auto_standby;
mod capabilities;
mod cp;
pub mod devices;
mod error;
mod exec;
mod fork;
mod images;
pub mod ingresses;
pub mod instances;
pub mod logs;
pub mod metrics;
mod policies;
pub mod pushes;
mod resources;
mod schedule;
pub mod server;
mod snapshots;
mod standby;
mod state;
pub mod types;
mod unimplemented;
pub mod volumes;
mod ws;
mod yaml;

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
        instances::stats,
        instances::update,
        resources::resources,
        resources::reclaim_memory,
        standby::wait,
        standby::standby,
        standby::restore,
        auto_standby::status,
        auto_standby::hold,
        snapshots::create,
        snapshots::list,
        snapshots::get_one,
        snapshots::delete,
        snapshots::restore,
        fork::fork_instance,
        fork::fork_snapshot,
        schedule::get_one,
        schedule::put,
        schedule::delete,
        logs::logs,
        metrics::metrics,
        exec::exec,
        exec::stat,
        cp::cp,
        images::create,
        images::list,
        images::get_one,
        images::delete,
        images::load,
        images::tag,
        pushes::create,
        pushes::list,
        pushes::get_one,
        volumes::create,
        volumes::from_archive,
        volumes::list,
        volumes::get_one,
        volumes::delete,
        volumes::attach,
        volumes::detach,
        ingresses::create,
        ingresses::list,
        ingresses::get_one,
        ingresses::delete,
        devices::create,
        devices::list,
        devices::available,
        devices::get_one,
        devices::delete,
    ),
    components(schemas(
        crate::instances::Instance,
        crate::instances::InstanceNetwork,
        crate::instances::InstanceStats,
        crate::instances::Resources,
        crate::instances::ResourceStatus,
        crate::instances::ResourceAllocation,
        crate::instances::DiskBreakdown,
        resources::ReclaimMemory,
        crate::instances::reclaim::MemoryReclaimAction,
        crate::instances::reclaim::MemoryReclaimResponse,
        instances::CreateNetwork,
        capabilities::Capabilities,
        crate::instances::state::State,
        instances::CreateInstance,
        instances::StartInstance,
        instances::UpdateInstance,
        policies::RestartPolicyBody,
        policies::HealthCheckBody,
        crate::instances::health::HealthStatus,
        images::TagImage,
        crate::instances::wait::WaitOutcome,
        crate::instances::auto_standby::AutoStandbyPolicy,
        crate::instances::auto_standby::StatusView,
        crate::instances::auto_standby::Status,
        crate::instances::auto_standby::Reason,
        auto_standby::HoldRequest,
        crate::instances::snapshots::Snapshot,
        crate::instances::snapshots::SnapshotKind,
        crate::instances::snapshots::TargetState,
        snapshots::CreateSnapshot,
        snapshots::RestoreSnapshot,
        fork::ForkInstance,
        schedule::PutSchedule,
        crate::instances::schedule::SnapshotSchedule,
        crate::instances::schedule::Retention,
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
        pushes::Push,
        pushes::CreatePush,
        volumes::Volume,
        volumes::VolumeAttachment,
        volumes::CreateVolume,
        volumes::AttachVolume,
        crate::instances::VolumeMount,
        ingresses::Ingress,
        ingresses::IngressRule,
        ingresses::IngressMatch,
        ingresses::IngressTarget,
        ingresses::RequestHeaderAuth,
        ingresses::CreateIngress,
        devices::Device,
        devices::AvailableDevice,
        devices::CreateDevice,
        Health,
    ))
)]
struct ApiDoc;

pub fn router(state: AppState) -> Router {
    let mut protected = Router::new()
        .route("/capabilities", get(capabilities::capabilities))
        .route("/resources", get(resources::resources))
        .route("/resources/memory/reclaim", post(resources::reclaim_memory))
        .route("/instances", post(instances::create).get(instances::list))
        .route(
            "/instances/{id}",
            get(instances::get_one)
                .delete(instances::delete)
                .patch(instances::update),
        )
        .route("/instances/{id}/stop", post(instances::stop))
        .route("/instances/{id}/start", post(instances::start))
        .route("/instances/{id}/stats", get(instances::stats))
        .route("/instances/{id}/wait", get(standby::wait))
        .route("/instances/{id}/standby", post(standby::standby))
        .route("/instances/{id}/restore", post(standby::restore))
        .route(
            "/instances/{id}/auto-standby/status",
            get(auto_standby::status),
        )
        .route(
            "/instances/{id}/auto-standby/hold",
            post(auto_standby::hold),
        )
        .route("/instances/{id}/snapshots", post(snapshots::create))
        .route(
            "/instances/{id}/snapshots/{snapshot_id}/restore",
            post(snapshots::restore),
        )
        .route("/instances/{id}/fork", post(fork::fork_instance))
        .route(
            "/instances/{id}/snapshot-schedule",
            get(schedule::get_one)
                .put(schedule::put)
                .delete(schedule::delete),
        )
        .route("/snapshots/{id}/fork", post(fork::fork_snapshot))
        .route("/snapshots", get(snapshots::list))
        .route(
            "/snapshots/{id}",
            get(snapshots::get_one).delete(snapshots::delete),
        )
        .route("/instances/{id}/logs", get(logs::logs))
        .route("/instances/{id}/exec", get(exec::exec))
        .route("/instances/{id}/cp", get(cp::cp))
        .route("/instances/{id}/stat", get(exec::stat))
        .route("/images", post(images::create).get(images::list))
        .route(
            "/images/{name}",
            get(images::get_one).delete(images::delete),
        )
        .route("/images/{name}/tag", post(images::tag))
        .route("/pushes", post(pushes::create).get(pushes::list))
        .route("/pushes/{id}", get(pushes::get_one))
        .route("/volumes", post(volumes::create).get(volumes::list))
        .route(
            "/volumes/{id}",
            get(volumes::get_one).delete(volumes::delete),
        )
        .route(
            "/instances/{id}/volumes/{volume_id}",
            post(volumes::attach).delete(volumes::detach),
        )
        .route("/devices", post(devices::create).get(devices::list))
        .route("/devices/available", get(devices::available))
        .route(
            "/devices/{id}",
            get(devices::get_one).delete(devices::delete),
        )
        .route("/ingresses", post(ingresses::create).get(ingresses::list))
        .route(
            "/ingresses/{id}",
            get(ingresses::get_one).delete(ingresses::delete),
        );
    if crate::metrics::enabled() && !crate::metrics::public() {
        protected = protected.route("/metrics", get(metrics::metrics));
    }
    if state.bench_endpoints {
        protected = protected.route("/instances/{id}/agent/throughput", get(cp::throughput));
    }
    let protected =
        protected.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let mut open = Router::new();
    if crate::metrics::enabled() && crate::metrics::public() {
        open = open.route("/metrics", get(metrics::metrics));
    }
    open.route("/health", get(health))
        .route("/spec.json", get(spec))
        .route("/spec.yaml", get(spec_yaml))
        .merge(protected)
        .fallback(unimplemented::unrouted)
        .method_not_allowed_fallback(unimplemented::wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(reject_declared_oversize))
        // Archive uploads, bounded by the image size limit instead.
        .merge(images::upload_routes(state.clone()))
        .merge(volumes::upload_routes(state.clone()))
        // Again for the upload route (the call only reaches the routes
        // present, and before the `layer`s above).
        .method_not_allowed_fallback(unimplemented::wrong_method)
        .layer(middleware::from_fn(crate::metrics::track))
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
    match spec_json() {
        Ok(s) => ([(axum::http::header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// The same document as YAML, as hypeman serves it beside the JSON.
async fn spec_yaml() -> Response {
    let doc = spec_json().and_then(|s| serde_json::from_str::<serde_json::Value>(&s));
    match doc {
        Ok(v) => (
            [(axum::http::header::CONTENT_TYPE, "application/yaml")],
            yaml::to_string(&v),
        )
            .into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// The OpenAPI document, with the error answers every route shares added
/// to each operation (see [`shared_errors`]).
fn spec_json() -> serde_json::Result<String> {
    let mut doc = serde_json::to_value(ApiDoc::openapi())?;
    // hypeman's routes lodge lacks are documented as what they answer.
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for (method, path, what) in unimplemented::NOT_IMPLEMENTED {
            let item = paths
                .entry(path.to_string())
                .or_insert_with(|| serde_json::json!({}));
            if let Some(item) = item.as_object_mut() {
                let params: Vec<serde_json::Value> = path
                    .split('/')
                    .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                    .map(|name| {
                        serde_json::json!({
                            "name": name, "in": "path", "required": true,
                            "schema": {"type": "string"},
                        })
                    })
                    .collect();
                item.entry(method.to_ascii_lowercase()).or_insert_with(|| {
                    serde_json::json!({
                        "summary": format!("{what}: not implemented by lodge yet"),
                        "tags": [unimplemented::TAG],
                        "parameters": params,
                        "responses": {"501": error_response("not implemented")},
                    })
                });
            }
        }
    }
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                let Some(op) = op.as_object_mut() else {
                    continue;
                };
                let json_body = op
                    .get("requestBody")
                    .and_then(|b| b.get("content"))
                    .and_then(|c| c.get("application/json"))
                    .is_some();
                let has_query = op
                    .get("parameters")
                    .and_then(|p| p.as_array())
                    .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
                let responses = op
                    .entry("responses")
                    .or_insert_with(|| serde_json::json!({}));
                let Some(responses) = responses.as_object_mut() else {
                    continue;
                };
                for (status, why) in shared_errors(path, method, json_body || has_query) {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_response(why));
                }
            }
        }
    }
    serde_json::to_string_pretty(&doc)
}

/// The error statuses the server can answer on `method path` whatever the
/// handler does: the token check, the extractors (body and query), key
/// resolution, the body size limit, and internal failures.
fn shared_errors(path: &str, method: &str, has_input: bool) -> Vec<(u16, &'static str)> {
    let mut out = Vec::new();
    let open = matches!(path, "/health" | "/spec.json" | "/spec.yaml");
    if !open {
        out.push((401, "missing or invalid token"));
    }
    if has_input || path.contains('{') {
        out.push((400, "invalid request"));
    }
    if path.contains('{') {
        out.push((404, "no such resource"));
    }
    if path.starts_with("/instances/{") {
        out.push((
            409,
            "ambiguous id prefix, or the instance is in the wrong state",
        ));
    }
    if matches!(method, "post" | "put" | "patch") && !open {
        out.push((413, "request body over the size limit"));
        out.push((415, "request body is not application/json"));
        out.push((422, "request body is JSON of the wrong shape"));
    }
    // The routes that talk to the guest agent.
    if ["/exec", "/cp", "/stat", "/agent/"]
        .iter()
        .any(|p| path.starts_with("/instances/{") && path.contains(p))
    {
        out.push((503, "the guest agent cannot be reached"));
    }
    // The volume routes: the store's statuses, and the guest's for attach.
    if path.starts_with("/volumes") && method == "post" {
        out.push((409, "a name or id in use"));
        out.push((413, "the archive is over its size"));
        out.push((507, "not enough free disk"));
    }
    if path.starts_with("/devices/{") && method == "delete" {
        out.push((409, "the device is in use"));
    }
    if method == "post" && path == "/instances" {
        out.push((501, "a device named in `devices` passes every check, but passthrough is not wired into the boot yet"));
    }
    if path.starts_with("/volumes/{") && method == "delete" {
        out.push((409, "the volume is attached"));
    }
    if path.contains("/volumes/{volume_id}") {
        out.push((502, "the guest could not mount or unmount the volume"));
        out.push((503, "the guest agent cannot be reached"));
    }
    // The routes that may pull an image: the image API's error statuses.
    if method == "post" && matches!(path, "/instances" | "/images") {
        out.push((403, "the registry refused the credentials"));
        out.push((404, "no such image, tag or platform"));
        out.push((409, "the image is busy"));
        out.push((502, "the registry cannot be reached or answered badly"));
        out.push((507, "not enough free disk for the image"));
    }
    if !open {
        out.push((500, "internal failure (disk, hypervisor, …)"));
    }
    out
}

fn error_response(description: &str) -> serde_json::Value {
    serde_json::json!({
        "description": description,
        "content": {
            "application/json": {
                "schema": { "$ref": "#/components/schemas/ErrorBody" }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_declares_the_shared_errors() {
        let doc: serde_json::Value =
            serde_json::from_str(&spec_json().expect("spec")).expect("JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                let responses = &op["responses"];
                let open = matches!(path.as_str(), "/health" | "/spec.json" | "/spec.yaml");
                assert_eq!(
                    responses.get("401").is_some(),
                    !open,
                    "{method} {path}: {responses}"
                );
                if method == "post" && !open {
                    for status in ["413", "415", "422"] {
                        assert!(
                            responses.get(status).is_some(),
                            "{method} {path} lacks {status}"
                        );
                    }
                }
            }
        }
    }
}
