//! Errors of the device registry and of the passthrough checks, and the
//! [`ErrorKind`] the API maps to a status in one place.

/// What kind of failure, independent of its wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed input (address, name, tags): 400.
    Invalid,
    /// No such registered device, or no such PCI device on the host: 404.
    NotFound,
    /// A name or address already registered, or a device in use: 409.
    Conflict,
    /// The host cannot pass the device through as it stands (no IOMMU,
    /// not bound to vfio-pci, …): 400 `device_not_ready`.
    NotReady,
    /// Local failure (reading sysfs or the store): 500.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PCI address {0:?} is not of the form DDDD:BB:DD.F (domain:bus:device.function in hex, e.g. 0000:a2:00.0)")]
    InvalidAddress(String),
    #[error("device name {0}")]
    InvalidName(String),
    #[error("tags: {0}")]
    InvalidTags(String),
    #[error("device {0:?} not found")]
    NotFound(String),
    #[error("no PCI device at {0} on this host")]
    NoSuchPci(String),
    #[error("a device named {0:?} is already registered")]
    NameTaken(String),
    #[error("PCI device {address} is already registered as {id}")]
    AddressTaken { address: String, id: String },
    #[error("device {device} is attached to instance(s) {instances}: delete them first")]
    InUse { device: String, instances: String },
    #[error("device {device} is already attached to instance {instance}")]
    Busy { device: String, instance: String },
    #[error("device {device} ({address}) has no IOMMU group: {why}")]
    NoIommuGroup {
        device: String,
        address: String,
        why: String,
    },
    #[error("device {device} ({address}) is bound to {driver}, not vfio-pci: bind it to vfio-pci on the host first (lodge never rebinds host drivers)")]
    NotBoundToVfio {
        device: String,
        address: String,
        driver: String,
    },
    #[error("device {device} ({address}): {node} is missing: load the vfio-pci module")]
    NoVfioNode {
        device: String,
        address: String,
        node: String,
    },
    #[error("device {device} ({address}): IOMMU group {group} also holds {other}, bound to {driver}: every device of the group must be bound to vfio-pci")]
    GroupNotViable {
        device: String,
        address: String,
        group: u32,
        other: String,
        driver: String,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the device {what} task failed")]
    Task { what: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidAddress(_) | Error::InvalidName(_) | Error::InvalidTags(_) => {
                ErrorKind::Invalid
            }
            Error::NotFound(_) | Error::NoSuchPci(_) => ErrorKind::NotFound,
            Error::NameTaken(_)
            | Error::AddressTaken { .. }
            | Error::InUse { .. }
            | Error::Busy { .. } => ErrorKind::Conflict,
            Error::NoIommuGroup { .. }
            | Error::NotBoundToVfio { .. }
            | Error::NoVfioNode { .. }
            | Error::GroupNotViable { .. } => ErrorKind::NotReady,
            Error::Io { .. } | Error::Task { .. } => ErrorKind::Internal,
        }
    }
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
