//! `/snapshots` and `/instances/{id}/snapshots` handlers: parse, one typed
//! manager call, render hypeman's `Snapshot` (or the instance).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::state::{ApiJson, AppState};
use crate::instances::naming::Name;
use crate::instances::snapshots::{
    Snapshot, SnapshotFilter, SnapshotKind, SnapshotRequest, TargetState,
};
use crate::instances::Instance;

/// hypeman's `SnapshotCreateParams`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub kind: SnapshotKind,
    /// Lowercase letters, digits and dashes; unique per source instance.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Not supported yet: refused when it asks for compression.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub compression: Option<serde_json::Value>,
}

/// Take a snapshot of an instance.
#[utoipa::path(post, path = "/instances/{id}/snapshots", request_body = CreateSnapshot,
    responses((status = 201, body = Snapshot), (status = 409, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateSnapshot>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(c) = &body.compression {
        let asks = match c {
            serde_json::Value::Null => false,
            serde_json::Value::Object(o) => o.get("enabled").is_some_and(|e| e != false),
            _ => true,
        };
        if asks {
            return Err(ApiError::bad_request(
                "snapshot compression is not supported yet",
            ));
        }
    }
    let name = body
        .name
        .filter(|n| !n.is_empty())
        .map(|n| Name::parse(&n).map_err(|e| ApiError::bad_request(e.to_string())))
        .transpose()?;
    let req = SnapshotRequest {
        kind: body.kind,
        name,
        tags: body.tags.unwrap_or_default(),
        scheduled: false,
    };
    let snap = state.manager.create_snapshot(&id, req).await?;
    Ok((StatusCode::CREATED, Json(snap)))
}

/// `kind`, `name`, `source_instance_id` and `tags[KEY]=VALUE` (hypeman's
/// client writes a tag map that way), each optional.
fn parse_filter(pairs: Vec<(String, String)>) -> Result<SnapshotFilter, ApiError> {
    let mut f = SnapshotFilter::default();
    for (k, v) in pairs {
        match k.as_str() {
            "kind" => {
                f.kind = Some(match v.as_str() {
                    "Standby" => SnapshotKind::Standby,
                    "Stopped" => SnapshotKind::Stopped,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "unknown snapshot kind {other:?} (Standby or Stopped)"
                        )))
                    }
                })
            }
            "name" => f.name = Some(v),
            "source_instance_id" => f.source_instance_id = Some(v),
            _ => match k.strip_prefix("tags[").and_then(|t| t.strip_suffix(']')) {
                Some(tag) => {
                    f.tags.insert(tag.to_string(), v);
                }
                None => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {k:?}"
                    )))
                }
            },
        }
    }
    Ok(f)
}

/// List snapshots, optionally filtered.
#[utoipa::path(get, path = "/snapshots",
    params(
        ("kind" = Option<String>, Query, description = "Standby or Stopped"),
        ("name" = Option<String>, Query, description = "snapshot name"),
        ("source_instance_id" = Option<String>, Query, description = "source instance id"),
    ),
    responses((status = 200, body = Vec<Snapshot>)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Snapshot>>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = parse_filter(pairs)?;
    Ok(Json(state.manager.list_snapshots(&filter).await))
}

/// Get a snapshot by id (or unique id prefix).
#[utoipa::path(get, path = "/snapshots/{id}",
    responses((status = 200, body = Snapshot), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(state.manager.get_snapshot(&id).await?))
}

/// Delete a snapshot.
#[utoipa::path(delete, path = "/snapshots/{id}",
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.manager.delete_snapshot(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// hypeman's `SnapshotRestoreParams` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshot {
    #[serde(default)]
    pub target_state: Option<TargetState>,
    /// Only the snapshot's own hypervisor is supported.
    #[serde(default)]
    pub target_hypervisor: Option<String>,
}

/// Restore a snapshot into its instance (stopped or in standby).
#[utoipa::path(post, path = "/instances/{id}/snapshots/{snapshot_id}/restore",
    request_body = Option<RestoreSnapshot>,
    responses((status = 200, body = Instance), (status = 409, body = super::error::ErrorBody)))]
pub async fn restore(
    State(state): State<AppState>,
    Path((id, snapshot_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Instance>, ApiError> {
    let req: RestoreSnapshot = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreSnapshot::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    if let Some(h) = req.target_hypervisor.as_deref() {
        if h != "qemu" {
            return Err(ApiError::bad_request(format!(
                "target_hypervisor {h:?}: lodge restores snapshots with qemu only"
            )));
        }
    }
    Ok(Json(
        state
            .manager
            .restore_snapshot(&id, &snapshot_id, req.target_state)
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_hypemans_query() {
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let f = parse_filter(pairs(&[
            ("kind", "Standby"),
            ("name", "n1"),
            ("source_instance_id", "abc"),
            ("tags[env]", "prod"),
            ("tags[team]", "a"),
        ]))
        .expect("valid");
        assert_eq!(f.kind, Some(SnapshotKind::Standby));
        assert_eq!(f.name.as_deref(), Some("n1"));
        assert_eq!(f.source_instance_id.as_deref(), Some("abc"));
        assert_eq!(f.tags.get("env").map(String::as_str), Some("prod"));
        assert_eq!(f.tags.get("team").map(String::as_str), Some("a"));
        assert!(parse_filter(vec![]).expect("empty").tags.is_empty());
        assert!(parse_filter(pairs(&[("kind", "Paused")])).is_err());
        assert!(parse_filter(pairs(&[("bogus", "1")])).is_err());
    }
}
