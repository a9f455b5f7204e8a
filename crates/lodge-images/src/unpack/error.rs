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

/// What a tar reading failure says, in words of lodge's own: the tar
/// crate's messages quote header fields (a file that is not a tar has its
/// first bytes taken as a member name), and an answer must never carry the
/// bytes of a file.
pub fn tar_failure(e: &std::io::Error) -> String {
    let text = e.to_string();
    if e.kind() == std::io::ErrorKind::UnexpectedEof
        || text.starts_with("failed to read entire block")
        || text.starts_with("unexpected EOF")
    {
        "the tar stream ends in the middle of a member".into()
    } else if text.starts_with("archive header checksum mismatch") {
        "not a tar archive (a header's checksum does not match)".into()
    } else if text.contains(" when ") || text.starts_with("numeric field") {
        "not a tar archive (a header field is malformed)".into()
    } else {
        // The kind, never the text: it may come from the tar crate too.
        format!("not a readable tar stream ({})", e.kind())
    }
}
