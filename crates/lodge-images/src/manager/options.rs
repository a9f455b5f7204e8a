//! The manager's settings, apart from the code that runs pulls, so every
//! part of the manager can read them without depending on the others.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lodge_common::size::parse_size;

use crate::disk::DiskFormat;
use crate::error::{invalid, Result};
use crate::registry::RegistryOptions;

/// Default of [`Options::max_image_size`]: 20 GiB.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 20 << 30;
/// Default of [`Options::min_free`]: 1 GiB.
pub const DEFAULT_MIN_FREE: u64 = 1 << 30;

/// Manager settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub registry: RegistryOptions,
    pub format: DiskFormat,
    /// Layers fetched at once by one pull.
    pub parallel_downloads: usize,
    /// Pulls running at once; more wait with status `pending`.
    pub parallel_pulls: usize,
    /// The one directory `oci-archive:PATH`/`docker-archive:PATH` sources
    /// may name files in (resolved beneath it, never through a symlink out
    /// of it); `None`: archives arrive only as uploads.
    pub import_dir: Option<PathBuf>,
    /// The most an image may unpack to (and an upload may hold).
    pub max_image_size: u64,
    /// Pulls and uploads stop when less than this is free in the image store.
    pub min_free: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            registry: RegistryOptions::default(),
            format: DiskFormat::Ext4,
            parallel_downloads: 4,
            parallel_pulls: 2,
            import_dir: None,
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
            min_free: DEFAULT_MIN_FREE,
        }
    }
}

fn size_var(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(s) if !s.trim().is_empty() => {
            parse_size(&s).map_err(|e| invalid(format!("{name} {s:?}: {e}")))
        }
        _ => Ok(default),
    }
}

impl Options {
    /// Registry settings from the environment (see [`RegistryOptions::from_env`]),
    /// `LODGE_IMAGE_FORMAT` (`ext4`, the default, or `erofs`),
    /// `LODGE_MAX_IMAGE_SIZE` (default 20GiB), `LODGE_IMAGE_MIN_FREE`
    /// (default 1GiB) and `LODGE_IMPORT_DIR` (default `default_import_dir`;
    /// set but empty: no import directory, uploads only).
    pub fn from_env(default_import_dir: &Path) -> Result<Self> {
        let format = match std::env::var("LODGE_IMAGE_FORMAT") {
            Ok(s) if !s.is_empty() => DiskFormat::parse(&s).ok_or_else(|| {
                invalid(format!("LODGE_IMAGE_FORMAT {s:?}: expected ext4 or erofs"))
            })?,
            _ => DiskFormat::Ext4,
        };
        let import_dir = match std::env::var_os("LODGE_IMPORT_DIR") {
            Some(v) if v.is_empty() => None,
            Some(v) => Some(PathBuf::from(v)),
            None => Some(default_import_dir.to_path_buf()),
        };
        Ok(Options {
            registry: RegistryOptions::from_env(),
            format,
            import_dir,
            max_image_size: size_var("LODGE_MAX_IMAGE_SIZE", DEFAULT_MAX_IMAGE_SIZE)?,
            min_free: size_var("LODGE_IMAGE_MIN_FREE", DEFAULT_MIN_FREE)?,
            ..Default::default()
        })
    }
}

/// Names of the instances whose records use a manifest digest.
pub type UsersFn = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;
