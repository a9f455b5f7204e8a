//! The small pieces every lodge crate needs, in one place so they cannot
//! drift apart again (they had: `50MB` meant two different sizes).
//!
//! Each module is one piece with its own tests. The crate stays
//! dependency-light (thiserror, humantime, rustix) because the per-VM monitor
//! has a 4 MiB memory budget and the guest init is a static binary; anything
//! async or JSON-shaped belongs to the crates that already pay for it.

pub mod activity;
pub mod env;
pub mod fsutil;
pub mod paths;
pub mod process;
pub mod size;
pub mod socket;
pub mod time;
