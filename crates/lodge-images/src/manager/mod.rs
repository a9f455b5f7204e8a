//! The image manager: pulls run as background tasks whose status is
//! persisted (pending → pulling → converting → ready, or failed), while
//! callers poll, wait, lease or delete.
//!
//! One pull per name at a time; a second request for the same name joins
//! the first. Blobs are fetched through the shared cache (a cached blob is
//! never fetched again), layers download concurrently and are applied in
//! order as soon as each and all before it are present, so unpacking
//! overlaps the downloads. The root disk is keyed by manifest digest and
//! shared by every name and every instance of that manifest; a pull whose
//! manifest already has a disk fetches nothing but the manifest.
//!
//! Deletion is refused while an instance uses the disk: the daemon passes a
//! `users` callback that names the instances recorded with a digest, and
//! [`ImageLease`]s cover instances being created right now. All work
//! happens under `<images>/tmp/` and lands by rename, so a failed pull leaves
//! no tree, no disk and no unverified blob.
//!
//! One file per concern, each an `impl Images` block or the types it owns,
//! imported leaf-first so no two files import each other: [`options`]
//! (settings), [`state`] (the handle and its bookkeeping), [`sources`]
//! (what a pull may read: registry, import directory, upload; free space),
//! [`jobs`] (pull jobs and status), [`fetch`] (registry or archive source), [`build`]
//! (layer pipeline and disk), [`queries`] (get, list, delete),
//! [`lease`] (leases and `ensure`) and [`stats`] (pull counters for
//! `/metrics`).

mod build;
mod fetch;
mod jobs;
mod lease;
mod options;
mod queries;
mod sources;
mod state;
mod stats;

pub use jobs::{LoadRequest, PullRequest};
pub use lease::ImageLease;
pub use options::{Options, UsersFn, DEFAULT_MAX_IMAGE_SIZE, DEFAULT_MIN_FREE};
pub use sources::{human, Upload, UPLOAD_HINT};
pub use state::{ImageInfo, Images, Progress};
pub use stats::PullStats;
