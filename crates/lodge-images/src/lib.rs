//! OCI images for lodge: from a reference (or an archive) to the read-only
//! root disk a VM boots.
//!
//! The pipeline, one module per step:
//! [`reference`] (docker-style names) → [`registry`] (oci-client: protocol,
//! credentials, manifests, blobs) or [`archive`] (offline imports) →
//! [`blobs`] (content-addressed, verified cache) → [`unpack`] (layers with
//! whiteouts, never writing outside the tree) → [`disk`] (ext4 or erofs).
//! [`manager`] runs it as background pulls with persisted status
//! ([`store`]), and [`runconfig`] merges an image's configuration with a
//! create request the way docker does. [`builder`] writes images, for tests,
//! benchmarks and the offline quick start.

pub mod archive;
pub mod blobs;
pub mod builder;
pub mod digest;
pub mod disk;
pub mod error;
pub mod manager;
pub mod oci;
pub mod platform;
pub mod push;
pub mod reference;
pub mod registry;
pub mod runconfig;
pub mod store;
pub mod unpack;

pub use archive::ArchiveFormat;
pub use digest::Digest;
pub use error::{Error, ErrorKind};
pub use manager::{
    ImageInfo, ImageLease, Images, LoadRequest, Options, Progress, PullRequest, PullStats, Upload,
    UsersFn,
};
pub use registry::Credentials;
pub use store::{ImageRecord, PullState, Status};
