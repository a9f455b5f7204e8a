//! The update verb (`PATCH /instances/{id}`): change what can change on an
//! instance without touching its VM: its tags, its expiry, its restart
//! policy, its health check and its auto-standby policy. The request type
//! is the manager's, so a field added later is one more member here and
//! one more rule in the API's parser.

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
    /// A new expiry, or `Some(None)` for none.
    pub expires_at: Option<Option<std::time::SystemTime>>,
    /// A new restart policy (its status starts afresh), or `Some(None)`.
    pub restart_policy: Option<Option<super::policy::RestartPolicy>>,
    /// A new health check (its results start afresh), or `Some(None)`.
    pub health_check: Option<Option<super::health::HealthCheck>>,
    /// A new auto-standby policy (its countdown starts afresh), or
    /// `Some(None)`.
    pub auto_standby: Option<Option<super::auto_standby::AutoStandbyPolicy>>,
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
        let before = (
            meta.tags.clone(),
            meta.expires_at,
            meta.restart_policy.clone(),
            meta.health_check.clone(),
            meta.auto_standby.clone(),
        );
        if let Some(tags) = update.tags {
            meta.tags = tags;
        }
        if let Some(expires_at) = update.expires_at {
            meta.expires_at = expires_at;
        }
        if let Some(policy) = update.restart_policy {
            meta.restart_policy = policy;
            meta.restart_status = None;
        }
        if let Some(check) = update.health_check {
            meta.health_check = check;
            self.health.lock().remove(&meta.id);
        }
        if let Some(policy) = update.auto_standby {
            if policy != meta.auto_standby {
                meta.auto_standby = policy;
                meta.auto_standby_runtime.idle_since_ms = None;
            }
        }
        let after = (
            meta.tags.clone(),
            meta.expires_at,
            meta.restart_policy.clone(),
            meta.health_check.clone(),
            meta.auto_standby.clone(),
        );
        if before != after {
            store::save(&paths, &meta).map_err(io("writing instance record"))?;
            oplog(
                &paths,
                "updated (tags, expiry, restart policy, health check or auto-standby)",
            );
        }
        Ok(self.view(&meta))
    }
}
