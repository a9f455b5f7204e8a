//! `/ingresses` handlers: hypeman's ingress API over the daemon's
//! [`Ingresses`](crate::ingress::Ingresses) (records plus the proxy
//! process). Parse, one call, render; the rules' own validation lives in
//! lodge-ingress.
//!
//! lodge's extension of the resource: a rule whose `match.protocol` is
//! `"tcp"` (hostname `"*"`) forwards its host port to the instance at
//! layer 4; `lodge run -p HOSTPORT:GUESTPORT` creates one.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use lodge_ingress::{CreateError, Rule, RuleInput, StoreError};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::state::{ApiJson, AppState};
use crate::ingress::IngressError;

/// hypeman's `Ingress`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ingress {
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    pub rules: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// hypeman's `IngressRule`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngressRule {
    #[serde(rename = "match")]
    pub match_: IngressMatch,
    pub target: IngressTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// Redirect plain HTTP to HTTPS (with `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_auth: Option<RequestHeaderAuth>,
}

/// hypeman's `IngressMatch`, plus lodge's `protocol`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngressMatch {
    /// A hostname (`api.example.com`) or a pattern with whole-label
    /// captures (`{instance}.example.com`); `*` for a tcp rule.
    pub hostname: String,
    /// Host port (default 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// lodge's extension: `http` (default) or `tcp` (layer 4, any host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// hypeman's `IngressTarget`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngressTarget {
    /// Instance name or id, or a capture of the hostname (`{instance}`).
    pub instance: String,
    pub port: i64,
}

/// hypeman's `request_header_auth`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestHeaderAuth {
    pub header: String,
    pub value: String,
}

/// hypeman's create body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIngress {
    pub name: String,
    #[schema(value_type = Vec<IngressRule>)]
    pub rules: Vec<RuleInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

impl From<&Rule> for IngressRule {
    fn from(r: &Rule) -> Self {
        IngressRule {
            match_: IngressMatch {
                hostname: r.match_.hostname.clone(),
                port: Some(r.match_.port.into()),
                protocol: r.is_tcp().then(|| "tcp".to_string()),
            },
            target: IngressTarget {
                instance: r.target.instance.clone(),
                port: r.target.port.into(),
            },
            tls: Some(r.tls),
            redirect_http: Some(r.redirect_http),
            request_header_auth: r.request_header_auth.as_ref().map(|a| RequestHeaderAuth {
                header: a.header.clone(),
                value: a.value.clone(),
            }),
        }
    }
}

impl From<lodge_ingress::Ingress> for Ingress {
    fn from(i: lodge_ingress::Ingress) -> Self {
        Ingress {
            id: i.id,
            name: i.name,
            created_at: i.created_at,
            rules: i.rules.iter().map(IngressRule::from).collect(),
            tags: Some(i.tags).filter(|t| !t.is_empty()),
        }
    }
}

fn conflict(message: String) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code: "conflict",
        message,
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !msg.contains(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        source = s.source();
    }
    msg
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = chain(&e);
        match e {
            StoreError::BadName(_)
            | StoreError::Tls { .. }
            | StoreError::NoRules
            | StoreError::Rule { .. }
            | StoreError::Instance { .. } => ApiError::bad_request(message),
            StoreError::NameTaken(_)
            | StoreError::HostTaken { .. }
            | StoreError::PortKind { .. }
            | StoreError::Ambiguous(_) => conflict(message),
            StoreError::NotFound(_) => ApiError::not_found(message),
            StoreError::Io { .. } | StoreError::Corrupt { .. } => ApiError::internal(message),
        }
    }
}

impl From<IngressError> for ApiError {
    fn from(e: IngressError) -> Self {
        match e {
            IngressError::Create(CreateError::Invalid(e)) | IngressError::Store(e) => e.into(),
            IngressError::Create(e @ CreateError::Bind { .. }) => conflict(chain(&e)),
            e @ IngressError::Unbound(_) => conflict(chain(&e)),
            e => ApiError::internal(chain(&e)),
        }
    }
}

/// Create an ingress; its ports are served once this answers.
#[utoipa::path(post, path = "/ingresses", request_body = CreateIngress,
    responses((status = 201, body = Ingress), (status = 400, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 501, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateIngress>,
) -> Result<impl IntoResponse, ApiError> {
    let manager = state.manager.clone();
    let exists = move |key: &str| manager.resolve(key).map(|_| ()).map_err(|e| e.to_string());
    let req = lodge_ingress::CreateRequest {
        name: body.name,
        rules: body.rules,
        tags: body.tags.unwrap_or_default(),
    };
    let made = state.ingresses.create(req, exists).await?;
    Ok((StatusCode::CREATED, Json(Ingress::from(made))))
}

/// List ingresses, optionally only those with all the given tags
/// (`tags[key]=value`).
#[utoipa::path(get, path = "/ingresses", responses((status = 200, body = Vec<Ingress>)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Ingress>>, ApiError> {
    let filter: BTreeMap<&str, &str> = query
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("tags[")?.strip_suffix(']')?, v.as_str())))
        .collect();
    let list = state
        .ingresses
        .list()?
        .into_iter()
        .filter(|i| {
            filter
                .iter()
                .all(|(k, v)| i.tags.get(*k).map(String::as_str) == Some(*v))
        })
        .map(Ingress::from)
        .collect();
    Ok(Json(list))
}

/// Get an ingress by id, name or unique id prefix.
#[utoipa::path(get, path = "/ingresses/{id}",
    responses((status = 200, body = Ingress), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Ingress>, ApiError> {
    Ok(Json(state.ingresses.get(&id)?.into()))
}

/// Delete an ingress; its rules stop being served at once (connections
/// already open through them run on).
#[utoipa::path(delete, path = "/ingresses/{id}",
    responses((status = 204), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.ingresses.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_bodies_are_strict_and_rules_render_in_hypemans_shape() {
        let body: CreateIngress = serde_json::from_str(
            r#"{"name":"web","rules":[{"match":{"hostname":"web.test"},"target":{"instance":"web","port":80}}],"tags":{"a":"b"}}"#,
        )
        .expect("json");
        let rule = body.rules[0].validate().expect("valid");
        let shown = serde_json::to_value(IngressRule::from(&rule)).expect("json");
        assert_eq!(
            shown,
            serde_json::json!({"match":{"hostname":"web.test","port":80},
                "target":{"instance":"web","port":80},"tls":false,"redirect_http":false})
        );
        assert!(serde_json::from_str::<CreateIngress>(r#"{"name":"w","rules":[],"x":1}"#).is_err());
        assert!(serde_json::from_str::<CreateIngress>(
            r#"{"name":"w","rules":[{"match":{"hostname":"a","port":80,"typo":1},"target":{"instance":"w","port":80}}]}"#
        )
        .is_err());
    }
}
