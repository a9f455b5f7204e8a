//! API errors: every failure leaves as `{"code": …, "message": …}` with the
//! matching HTTP status, as hypeman's clients expect.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

pub use super::types::ErrorBody;
use crate::instances;
use crate::instances::spec::SpecError;

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
    /// hypeman's answer to a size that does not parse or is out of range.
    pub fn invalid_size(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_size",
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

/// Status and code of a manager error (a failed create whose cleanup
/// failed too answers as its cause would).
fn status_of(err: &instances::Error) -> (StatusCode, &'static str) {
    use instances::Error as E;
    use lodge_hypervisor::BackendError as B;
    match err {
        E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        E::Ambiguous(_) => (StatusCode::CONFLICT, "ambiguous"),
        // hypeman's code for a size it cannot accept.
        E::InvalidSpec(SpecError::Memory(_) | SpecError::Overlay(_)) => {
            (StatusCode::BAD_REQUEST, "invalid_size")
        }
        E::InvalidName(_) | E::InvalidSpec(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        // A hypervisor this build or host lacks, or a feature its backend
        // lacks.
        E::Backend(B::Unavailable(_) | B::NotInstalled { .. } | B::Unsupported { .. }) => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        // hypeman's code for a duplicate name.
        E::NameTaken(_) => (StatusCode::CONFLICT, "already_exists"),
        E::NetworkDisabled => (StatusCode::BAD_REQUEST, "network_disabled"),
        E::Network(lodge_net::NetError::SubnetFull { .. }) => (StatusCode::CONFLICT, "subnet_full"),
        E::WrongState { .. } => (StatusCode::CONFLICT, "invalid_state"),
        E::InsufficientResources { .. } => (StatusCode::CONFLICT, "insufficient_resources"),
        E::CreateFailed(failed) => status_of(&failed.run),
        // A saved state this host cannot load, or that failed to load.
        E::Backend(B::Incompatible { .. }) => (StatusCode::CONFLICT, "snapshot_incompatible"),
        E::Backend(B::StateTransfer { op: "loading", .. }) => {
            (StatusCode::CONFLICT, "restore_failed")
        }
        E::StateFileMissing { .. } => (StatusCode::CONFLICT, "snapshot_missing"),
        E::SnapshotNotFound(_) | E::NoSchedule(_) => (StatusCode::NOT_FOUND, "not_found"),
        E::ScheduleSkipped(_) => (StatusCode::CONFLICT, "invalid_state"),
        E::Readdress { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        E::SnapshotNameTaken(_) => (StatusCode::CONFLICT, "conflict"),
        E::BadSnapshotRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        E::Volume(v) => volume_status(v.kind()),
        E::NotAttached { .. } => (StatusCode::NOT_FOUND, "not_found"),
        E::Agent(_) => (StatusCode::SERVICE_UNAVAILABLE, "agent_unavailable"),
        E::VolumeBusy(_) => (StatusCode::CONFLICT, "volume_busy"),
        // The guest, not lodge, failed to mount or unmount.
        E::GuestVolume { .. } => (StatusCode::BAD_GATEWAY, "guest_error"),
        E::Hotplug(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        E::Image(_)
        | E::Disk(_)
        | E::Io { .. }
        | E::Backend(_)
        | E::Monitor(_)
        | E::Network(_)
        | E::BadConfig(_)
        | E::Task { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    }
}

/// Status and code of a volume error class.
pub fn volume_status(kind: lodge_volumes::ErrorKind) -> (StatusCode, &'static str) {
    use lodge_volumes::ErrorKind as K;
    match kind {
        K::Invalid => (StatusCode::BAD_REQUEST, "bad_request"),
        K::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        K::Conflict => (StatusCode::CONFLICT, "conflict"),
        K::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "volume_too_large"),
        K::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
        K::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    }
}

impl From<lodge_volumes::Error> for ApiError {
    fn from(err: lodge_volumes::Error) -> Self {
        let (status, code) = volume_status(err.kind());
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{}", chain(&err));
        }
        ApiError {
            status,
            code,
            message: chain(&err),
        }
    }
}

/// Status and code of a device error class.
pub fn device_status(kind: crate::devices::ErrorKind) -> (StatusCode, &'static str) {
    use crate::devices::ErrorKind as K;
    match kind {
        K::Invalid => (StatusCode::BAD_REQUEST, "bad_request"),
        K::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        K::Conflict => (StatusCode::CONFLICT, "conflict"),
        K::NotReady => (StatusCode::BAD_REQUEST, "device_not_ready"),
        K::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    }
}

impl From<crate::devices::Error> for ApiError {
    fn from(err: crate::devices::Error) -> Self {
        let (status, code) = device_status(err.kind());
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{}", chain(&err));
        }
        ApiError {
            status,
            code,
            message: chain(&err),
        }
    }
}

impl From<instances::Error> for ApiError {
    fn from(err: instances::Error) -> Self {
        // Image failures keep the image API's statuses and codes.
        let err = match err {
            instances::Error::Image(e) => return ApiError::from(e),
            other => other,
        };
        let (status, code) = status_of(&err);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{}", chain(&err));
        }
        ApiError {
            status,
            code,
            message: chain(&err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instances::error::{CreateFailed, Error, MonitorError};
    use crate::instances::spec::SpecError;
    use lodge_hypervisor::{BackendError, HypervisorKind};

    #[test]
    fn typed_errors_keep_todays_statuses() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::NotFound("x".into()), 404, "not_found"),
            (Error::Ambiguous("a".into()), 409, "ambiguous"),
            // hypeman's code (issue 16); lodge said `conflict` before.
            (Error::NameTaken("web".into()), 409, "already_exists"),
            (SpecError::Memory(1 << 20).into(), 400, "invalid_size"),
            (SpecError::NothingToRun.into(), 400, "bad_request"),
            (
                BackendError::Unavailable(HypervisorKind::CloudHypervisor).into(),
                400,
                "bad_request",
            ),
            (MonitorError::StartTimeout.into(), 500, "internal_error"),
            (Error::NetworkDisabled, 400, "network_disabled"),
            (
                lodge_volumes::Error::NotFound("v".into()).into(),
                404,
                "not_found",
            ),
            (
                lodge_volumes::Error::AttachConflict {
                    volume: "v".into(),
                    reason: "r".into(),
                }
                .into(),
                409,
                "conflict",
            ),
            (Error::VolumeBusy("busy".into()), 409, "volume_busy"),
            (
                Error::NotAttached {
                    volume: "v".into(),
                    instance: "i".into(),
                },
                404,
                "not_found",
            ),
            (
                lodge_net::NetError::SubnetFull {
                    subnet: "10.100.0.0/30".into(),
                }
                .into(),
                409,
                "subnet_full",
            ),
            (
                lodge_net::NetError::PermissionDenied.into(),
                500,
                "internal_error",
            ),
            (
                Error::CreateFailed(Box::new(CreateFailed {
                    run: SpecError::NothingToRun.into(),
                    cleanup: vec![MonitorError::VmmDidNotStop.into()],
                })),
                400,
                "bad_request",
            ),
        ];
        for (err, status, code) in cases {
            let api = ApiError::from(err);
            assert_eq!(
                (api.status.as_u16(), api.code),
                (status, code),
                "{}",
                api.message
            );
        }
    }

    #[test]
    fn unavailable_hypervisor_says_so() {
        let api = ApiError::from(Error::from(BackendError::Unavailable(
            HypervisorKind::CloudHypervisor,
        )));
        assert_eq!(
            api.message,
            "the cloud-hypervisor backend is not available in this build"
        );
    }

    #[test]
    fn image_errors_keep_the_image_codes() {
        let e = lodge_images::Error::new(lodge_images::ErrorKind::NotFound, "no such image");
        let api = ApiError::from(Error::Image(e));
        assert_eq!((api.status.as_u16(), api.code), (404, "not_found"));
        assert_eq!(api.message, "no such image");
    }
}
