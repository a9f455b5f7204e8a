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
    /// The layers unpack to more than the image size limit.
    #[error("the image unpacks to more than the {limit} limit (LODGE_MAX_IMAGE_SIZE)")]
    TooLarge { limit: lodge_common::size::ByteSize },
    /// The disk holding the tree is nearly full.
    #[error("unpacking stopped: only {free} left free on the image store's file system, below the {min_free} minimum (LODGE_IMAGE_MIN_FREE)")]
    NoSpace {
        free: lodge_common::size::ByteSize,
        min_free: lodge_common::size::ByteSize,
    },
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
