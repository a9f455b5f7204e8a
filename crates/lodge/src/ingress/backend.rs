//! What the proxy process knows of lodge: instances as the data dir
//! records them, and the daemon's API to restore one from standby.
//!
//! Lookups read the instance records and derive the state the way the
//! daemon does (`instances::observe` + `Instance::from_parts`), so they
//! work while the daemon is down. A record with a standby or restore
//! under way is [`Located::Settling`]: the proxy waits for it instead of
//! answering from a half-saved VM. A running instance found once is
//! trusted while its monitor lives and its record is the one read then
//! (every save renames a new file in, so one `statx` tells). Waking needs the daemon (it owns the
//! restore): the proxy calls `POST /instances/{id}/restore` with a token
//! minted from the local secret, as the CLI does, then waits until the
//! records say Running.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use lodge_ingress::Located;

use crate::auth::Auth;
use crate::instances::state::State;
use crate::instances::store::Metadata;
use crate::instances::store::{self, Paths};
use crate::instances::Instance;
use crate::metrics::StatKey;

/// The longest a wake waits for the instance to run again.
const WAKE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LodgeBackend {
    data_dir: PathBuf,
    guests: PathBuf,
    api: RwLock<Option<String>>,
    http: reqwest::Client,
    /// Per instance found running: the key of the record it was found in.
    running: Mutex<HashMap<String, StatKey>>,
}

impl LodgeBackend {
    pub fn new(data_dir: PathBuf) -> anyhow::Result<LodgeBackend> {
        let guests = lodge_common::paths::Paths::new(&data_dir).guests_dir();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(WAKE_TIMEOUT)
            .build()?;
        Ok(LodgeBackend {
            data_dir,
            guests,
            api: RwLock::new(None),
            http,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// The instance `key` names (id, name, unique id prefix), as viewed now.
    fn view(guests: &std::path::Path, key: &str) -> Result<Instance, String> {
        let (paths, meta) = Self::record(guests, key)?;
        Ok(Instance::from_parts(
            &meta,
            &crate::instances::observe(&paths, &meta),
        ))
    }

    /// The record of the instance `key` names, and where it lives.
    fn record(guests: &std::path::Path, key: &str) -> Result<(Paths, Metadata), String> {
        let direct = Paths::new(guests.join(key));
        if let Ok(meta) = store::load(&direct) {
            return Ok((direct, meta));
        }
        let ids = store::list_ids(guests).map_err(|e| format!("listing instances: {e}"))?;
        let mut metas = Vec::new();
        for id in ids {
            if let Ok(m) = store::load(&Paths::new(guests.join(&id))) {
                metas.push(m);
            }
        }
        let found = match metas.iter().position(|m| m.name == key) {
            Some(i) => metas.swap_remove(i),
            None => {
                let mut hits = metas.into_iter().filter(|m| m.id.starts_with(key));
                match (hits.next(), hits.next()) {
                    (Some(m), None) => m,
                    (Some(_), Some(_)) => return Err("the id prefix is ambiguous".into()),
                    _ => return Err("no such instance".into()),
                }
            }
        };
        Ok((Paths::new(guests.join(&found.id)), found))
    }

    fn record_key(&self, id: &str) -> Option<StatKey> {
        StatKey::of(&Paths::new(self.guests.join(id)).metadata())
            .ok()
            .flatten()
    }
}

impl lodge_ingress::Backend for LodgeBackend {
    fn locate(&self, key: &str) -> Result<Located, String> {
        let (paths, found) = Self::record(&self.guests, key)?;
        // The key is taken before the record the answer comes from is
        // read: a save in between changes it, and the next check looks
        // afresh.
        let record_key = self.record_key(&found.id);
        let meta = store::load(&paths).map_err(|e| format!("reading the instance record: {e}"))?;
        if meta.standby.pending.is_some() {
            return Ok(Located::Settling { id: meta.id });
        }
        let inst = Instance::from_parts(&meta, &crate::instances::observe(&paths, &meta));
        let id = inst.id.clone();
        Ok(match inst.state {
            State::Running | State::Initializing => match inst.network.ip.as_deref() {
                Some(ip) => {
                    let ip = ip.parse().map_err(|e| format!("address {ip:?}: {e}"))?;
                    if let Some(k) = record_key {
                        self.running
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id.clone(), k);
                    }
                    Located::Running { id, ip }
                }
                None => Located::NoNetwork { id },
            },
            State::Standby => Located::Standby { id },
            other => Located::Down {
                id,
                state: format!("{other:?}"),
            },
        })
    }

    fn wake(&self, id: &str) -> BoxFuture<'static, Result<(), String>> {
        let api = self.api.read().unwrap_or_else(|p| p.into_inner()).clone();
        let data_dir = self.data_dir.clone();
        let guests = self.guests.clone();
        let http = self.http.clone();
        let id = id.to_string();
        async move {
            let api = api.ok_or(
                "the lodge daemon's address is not known (no daemon has started this proxy)",
            )?;
            let token = Auth::load(&data_dir)
                .and_then(|a| a.mint("lodge-ingress", 300))
                .map_err(|e| format!("minting a token: {e:#}"))?;
            let resp = http
                .post(format!("{api}/instances/{id}/restore"))
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| format!("cannot reach the lodge daemon at {api}: {e}"))?;
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or(body);
                // Someone else restored it meanwhile: fine if it runs.
                let running = Self::view(&guests, &id).is_ok_and(|i| i.state == State::Running);
                if !running {
                    return Err(format!("the restore failed ({status}): {message}"));
                }
            }
            let deadline = Instant::now() + WAKE_TIMEOUT;
            loop {
                match Self::view(&guests, &id) {
                    Ok(i) if i.state == State::Running => return Ok(()),
                    Ok(i) if Instant::now() > deadline => {
                        return Err(format!("the instance is {:?} after the restore", i.state))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        .boxed()
    }

    fn still_running(&self, id: &str) -> bool {
        let logs = Paths::new(self.guests.join(id)).logs();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if !lodge_logs::monitor_alive(&logs).unwrap_or(false) {
            running.remove(id);
            return false;
        }
        // A standby (or anything else) that saved the record since.
        let seen = running.get(id).copied();
        drop(running);
        seen.is_some() && seen == self.record_key(id)
    }

    fn activity_path(&self, id: &str) -> PathBuf {
        lodge_common::paths::Paths::new(&self.data_dir)
            .guest(id)
            .ingress_activity()
    }

    fn set_api(&self, api: &str) {
        *self.api.write().unwrap_or_else(|p| p.into_inner()) = Some(api.to_string());
    }
}
