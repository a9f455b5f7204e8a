//! The unpacker's error type and the two ways entries turn into it, shared
//! by every file that touches the tree.

use std::io;

use rustix::io::Errno;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer tries to reach outside the image (or is otherwise hostile).
    #[error("unsafe layer entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    /// The layer is not a readable tar (or its compression is broken).
    #[error("malformed layer: {0}")]
    Malformed(String),
    #[error("layer entry {entry:?}: {source}")]
    Io {
        entry: String,
        #[source]
        source: io::Error,
    },
}

pub(super) fn unsafe_entry(entry: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn io_err(entry: &str) -> impl FnOnce(Errno) -> UnpackError + '_ {
    move |e| UnpackError::Io {
        entry: entry.to_string(),
        source: e.into(),
    }
}
