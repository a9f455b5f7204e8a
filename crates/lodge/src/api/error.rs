//! API errors: every failure leaves as `{"code": …, "message": …}` with the
//! matching HTTP status, as hypeman's clients expect.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::instances;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// The message with its causes, as one line.
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

impl From<instances::Error> for ApiError {
    fn from(err: instances::Error) -> Self {
        use instances::Error as E;
        let (status, code) = match &err {
            E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::Ambiguous(_) => (StatusCode::CONFLICT, "ambiguous"),
            E::InvalidName(_) | E::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::NameTaken(_) => (StatusCode::CONFLICT, "conflict"),
            E::WrongState { .. } => (StatusCode::CONFLICT, "invalid_state"),
            E::Disk(_) | E::Io { .. } | E::Vmm(_) => {
                tracing::error!("{}", chain(&err));
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        };
        ApiError {
            status,
            code,
            message: chain(&err),
        }
    }
}
