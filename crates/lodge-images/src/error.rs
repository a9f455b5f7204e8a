//! Errors of image operations, classified by what the caller should do
//! about them (the API turns the class into an HTTP status and code).
//!
//! Errors are plain data (`Clone`): one pull's outcome is handed to every
//! request waiting on it, and its class is stored with a failed image so a
//! later request gets the same answer.

use serde::{Deserialize, Serialize};

/// What kind of failure, independent of its wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed input (reference, archive path, …): 400.
    Invalid,
    /// A platform string outside `os/arch[/variant]` on linux amd64/arm64: 400.
    InvalidPlatform,
    /// No such local image, remote tag or archive: 404.
    NotFound,
    /// The image exists but has nothing for the requested platform.
    PlatformNotFound,
    /// The registry refused our credentials.
    Unauthorized,
    /// The registry could not be reached.
    Unreachable,
    /// The registry answered something unusable.
    Registry,
    /// Content did not match its digest.
    Integrity,
    /// A layer tried to write outside the image, or is malformed.
    UnsafeLayer,
    /// The image uses something lodge cannot handle.
    Unsupported,
    /// The image is in use, or busy being pulled.
    Conflict,
    /// The image (or an uploaded archive) is over the size limit.
    TooLarge,
    /// Not enough free disk for the image.
    NoSpace,
    /// Local failure (disk full, mkfs missing, …).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Invalid, message)
}

pub fn internal(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Internal, message)
}

/// An I/O failure while doing `what`.
pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.to_string();
    move |e| internal(format!("{what}: {e}"))
}

/// What a JSON parse failure says without quoting the document (serde's
/// messages can quote the values they did not expect): which document,
/// what kind of failure, and where.
pub fn json_failure(name: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "could not be read",
        Category::Syntax => "is not valid JSON",
        Category::Eof => "ends too early",
        Category::Data => "does not have the expected fields and types",
    };
    if e.line() == 0 {
        format!("{name} {what}")
    } else {
        format!("{name} {what} (line {}, column {})", e.line(), e.column())
    }
}

impl From<crate::reference::ReferenceError> for Error {
    fn from(e: crate::reference::ReferenceError) -> Self {
        invalid(e.to_string())
    }
}

impl From<crate::blobs::BlobError> for Error {
    fn from(e: crate::blobs::BlobError) -> Self {
        use crate::blobs::BlobError as B;
        let kind = match &e {
            B::DigestMismatch { .. } | B::SizeMismatch { .. } | B::TooLarge { .. } => {
                ErrorKind::Integrity
            }
            B::Io { .. } => ErrorKind::Internal,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<crate::unpack::UnpackError> for Error {
    fn from(e: crate::unpack::UnpackError) -> Self {
        use crate::unpack::UnpackError as U;
        let kind = match &e {
            U::Unsafe { .. } | U::Malformed(_) => ErrorKind::UnsafeLayer,
            U::TooLarge { .. } => ErrorKind::TooLarge,
            U::NoSpace { .. } => ErrorKind::NoSpace,
            U::Io { .. } => ErrorKind::Internal,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<crate::disk::DiskError> for Error {
    fn from(e: crate::disk::DiskError) -> Self {
        internal(format!("building the root disk: {e}"))
    }
}
