//! The manager's settings, apart from the code that runs pulls, so every
//! part of the manager can read them without depending on the others.

use std::sync::Arc;

use crate::disk::DiskFormat;
use crate::error::Result;
use crate::registry::RegistryOptions;

/// Manager settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub registry: RegistryOptions,
    pub format: DiskFormat,
    /// Layers fetched at once by one pull.
    pub parallel_downloads: usize,
    /// Pulls running at once; more wait with status `pending`.
    pub parallel_pulls: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            registry: RegistryOptions::default(),
            format: DiskFormat::Ext4,
            parallel_downloads: 4,
            parallel_pulls: 2,
        }
    }
}

impl Options {
    /// Registry settings from the environment (see [`RegistryOptions::from_env`])
    /// and `LODGE_IMAGE_FORMAT` (`ext4`, the default, or `erofs`).
    pub fn from_env() -> Result<Self> {
        let format = match std::env::var("LODGE_IMAGE_FORMAT") {
            Ok(s) if !s.is_empty() => DiskFormat::parse(&s).ok_or_else(|| {
                crate::error::invalid(format!("LODGE_IMAGE_FORMAT {s:?}: expected ext4 or erofs"))
            })?,
            _ => DiskFormat::Ext4,
        };
        Ok(Options {
            registry: RegistryOptions::from_env(),
            format,
            ..Default::default()
        })
    }
}

/// Names of the instances whose records use a manifest digest.
pub type UsersFn = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;
