//! The update verb (`PATCH /instances/{id}`): change what can change on an
//! instance without touching its VM. Today that is its tags; the request
//! type is the manager's, so a field added later (TTL, restart policy) is
//! one more member here and one more rule in the API's parser.

use std::collections::BTreeMap;

use super::error::{io, Result};
use super::manager::{Locked, Manager};
use super::oplog::oplog;
use super::store;
use super::view::Instance;

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceUpdate {
    /// Replaces the whole tag set (validated by the API).
    pub tags: Option<BTreeMap<String, String>>,
}

impl Manager {
    /// Applies `update` under the instance's lock, in any state.
    pub async fn update(&self, key: &str, update: InstanceUpdate) -> Result<Instance> {
        let Locked {
            _guard,
            paths,
            mut meta,
            ..
        } = self.lock_instance(key).await?;
        if let Some(tags) = update.tags {
            if tags != meta.tags {
                meta.tags = tags;
                store::save(&paths, &meta).map_err(io("writing instance record"))?;
                oplog(&paths, "tags updated");
            }
        }
        Ok(self.view(&meta))
    }
}
