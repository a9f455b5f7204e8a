//! Errors of volume operations, each variant a rule or a cause, and
//! [`ErrorKind`]: what the caller should do about it (the API turns the
//! kind into an HTTP status and code in one place).

use lodge_common::size::ByteSize;

/// What kind of failure, independent of its wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed input (name, id, size, mount path, archive): 400.
    Invalid,
    /// No such volume: 404.
    NotFound,
    /// A name or id in use, or a volume attached where the rules forbid: 409.
    Conflict,
    /// The content is over the size limit or does not fit the volume: 413.
    TooLarge,
    /// The host's disk is (nearly) full: 507.
    NoSpace,
    /// Local failure (mkfs missing, I/O): 500.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("volume {0:?} not found")]
    NotFound(String),
    #[error("a volume named {0:?} already exists")]
    NameTaken(String),
    #[error("a volume with id {0:?} already exists")]
    IdTaken(String),
    #[error("volume name {0:?} must be 1 to 63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit")]
    InvalidName(String),
    #[error("volume id {0:?} must be 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit")]
    InvalidId(String),
    /// `size_gb` is not a whole number of gigabytes in range.
    #[error("size_gb {given}: {reason}")]
    InvalidSize { given: String, reason: String },
    /// A mount path breaks a rule (see `rules::check_mount_path`).
    #[error("mount path {path:?}: {reason}")]
    InvalidMountPath { path: String, reason: String },
    /// Two attachments of one instance at the same path, or one inside the other.
    #[error("mount path {path:?} collides with {other:?}")]
    MountPathCollision { path: String, other: String },
    /// An attachment the sharing rules forbid (many read-only or one read-write).
    #[error("volume {volume}: {reason}")]
    AttachConflict { volume: String, reason: String },
    /// Delete of a volume that instances still name.
    #[error(
        "volume {volume} is attached to instance(s) {instances}: detach it (or delete them) first"
    )]
    InUse { volume: String, instances: String },
    /// The archive is unsafe, malformed, too large or ran the disk full.
    #[error("archive: {0}")]
    Archive(#[source] lodge_images::unpack::UnpackError),
    #[error("the archive unpacks to more than its {size_gb}GB volume")]
    ArchiveOverSize { size_gb: u64 },
    #[error("the archive unpacks to more than {limit} (LODGE_VOLUME_MAX_ARCHIVE): give size_gb or raise the limit")]
    ArchiveTooLarge { limit: ByteSize },
    #[error("no archive in the request body: send the tar.gz as the body")]
    EmptyArchive,
    #[error("the archive's content ({content}) does not fit in {size_gb}GB")]
    ContentTooLarge { content: ByteSize, size_gb: u64 },
    #[error("only {free} free on the volume store's file system, below the {min_free} minimum (LODGE_VOLUME_MIN_FREE)")]
    NoSpace { free: ByteSize, min_free: ByteSize },
    #[error("mkfs.ext4 failed for {path}: {stderr}")]
    Mkfs { path: String, stderr: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the volume {what} task failed")]
    Task { what: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        use lodge_images::unpack::UnpackError as U;
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::NameTaken(_)
            | Error::IdTaken(_)
            | Error::AttachConflict { .. }
            | Error::InUse { .. }
            | Error::MountPathCollision { .. } => ErrorKind::Conflict,
            Error::InvalidName(_)
            | Error::InvalidId(_)
            | Error::InvalidSize { .. }
            | Error::InvalidMountPath { .. }
            | Error::EmptyArchive => ErrorKind::Invalid,
            Error::Archive(U::Unsafe { .. } | U::Malformed(_)) => ErrorKind::Invalid,
            Error::Archive(U::TooLarge { .. })
            | Error::ContentTooLarge { .. }
            | Error::ArchiveOverSize { .. }
            | Error::ArchiveTooLarge { .. } => ErrorKind::TooLarge,
            Error::Archive(U::NoSpace { .. }) | Error::NoSpace { .. } => ErrorKind::NoSpace,
            Error::Archive(U::Io { source, .. }) if is_enospc(source) => ErrorKind::NoSpace,
            Error::Io { source, .. } if is_enospc(source) => ErrorKind::NoSpace,
            Error::Mkfs { stderr, .. } if stderr.contains("No space left") => ErrorKind::NoSpace,
            Error::Archive(U::Io { .. }) | Error::Mkfs { .. } | Error::Io { .. } => {
                ErrorKind::Internal
            }
            Error::Task { .. } => ErrorKind::Internal,
        }
    }
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc_enospc())
}

/// `ENOSPC` without a libc dependency.
fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
