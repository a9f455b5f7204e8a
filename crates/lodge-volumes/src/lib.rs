//! Persistent volumes for lodge: disks that outlive the instances they are
//! attached to (hypeman's `/volumes`).
//!
//! A volume is a sparse raw file holding an ext4 file system made by the
//! real `mkfs.ext4`, created empty or from a tar archive unpacked with the
//! image layers' rules (`lodge_images::unpack`: nothing lands outside the
//! tree, the unpacked size and the free disk are bounded). This crate knows
//! nothing of instances: who a volume is attached to comes from the
//! daemon's instance records through a callback, so the records stay the
//! one source of truth and this crate has no dependency on the instance
//! manager.
//!
//! - [`rules`]: names, ids, sizes, mount paths and the sharing rule (many
//!   read-only or one read-write), pure and unit-tested;
//! - [`store`]: the on-disk layout and records;
//! - [`mkfs`]: the disk itself;
//! - [`manager`]: the [`Volumes`] store: create, import, list, get, delete;
//! - [`error`]: typed errors and the [`ErrorKind`] the API maps to statuses.

pub mod error;
pub mod manager;
pub mod mkfs;
pub mod rules;
pub mod store;

pub use error::{Error, ErrorKind, Result};
pub use manager::{AttachmentsFn, CreateRequest, Options, Volume, Volumes};
pub use rules::Attachment;
pub use store::VolumeRecord;
