//! The daemon's auto-standby task and its two verbs (status, hold).
//!
//! Every [`INTERVAL`] the task reads the records of instances with an
//! enabled policy, observes each (its state, the ingress's activity
//! record, the kernel's conntrack table once per pass) and lets the pure
//! [`decide`] say what follows. What must outlive the daemon (idle since,
//! last inbound activity, a hold) goes back into the record, written only
//! when the countdown starts, stops or moves, so a restarted daemon picks
//! the countdown up where it was. An instance found due is handed to a
//! task of its own that takes the instance's lock, observes and decides
//! again (hypeman #319: a connection may have opened since) and only then
//! calls the standby verb; a hold placed meanwhile wins, because it takes
//! the same lock.
//!
//! Conntrack is read from `/proc/net/nf_conntrack` (the daemon's network
//! namespace, IPv4 TCP), which needs no library and is what `conntrack
//! -L` shows; without it, an instance with an address reports
//! `observer_error` and stays up rather than being put to sleep blind.
//!
//! The guest is untrusted, and nothing it controls is read here but what
//! reaches the host's conntrack as flows into its own address: at worst a
//! guest keeps itself awake, which it could do by serving a client anyway.
//! The ingress record is the ingress's, in the instance directory the
//! guest cannot write.

use std::collections::HashSet;
use std::io::BufRead;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lodge_common::activity::Activity;

use super::auto_standby::{
    decide, parse_flow, unix_ms, Decision, Flow, Observation, StatusView, TcpTimeouts,
};
use super::error::{io, Error, Result};
use super::manager::{Locked, Manager};
use super::observe::observe;
use super::oplog::oplog;
use super::state::{self, State};
use super::store::{self, Metadata, Paths};

/// How often idle instances are looked for.
pub const INTERVAL: Duration = Duration::from_secs(1);

const CONNTRACK_TABLE: &str = "/proc/net/nf_conntrack";
const CONNTRACK_SYSCTLS: &str = "/proc/sys/net/netfilter";

/// The IPv4 TCP flows the kernel tracks in the daemon's namespace towards
/// `to` (the table is read a line at a time: it may be large on a busy
/// host, and only flows into watched guests are kept).
async fn read_flows(to: HashSet<Ipv4Addr>) -> std::result::Result<Vec<Flow>, String> {
    if to.is_empty() {
        return Ok(Vec::new());
    }
    tokio::task::spawn_blocking(move || {
        let failed = |e: std::io::Error| {
            format!("reading {CONNTRACK_TABLE} (the kernel's connection tracking): {e}")
        };
        let table = std::fs::File::open(CONNTRACK_TABLE).map_err(failed)?;
        let mut timeouts = TcpTimeouts::default();
        for (state, secs) in &mut timeouts.0 {
            let file =
                std::path::Path::new(CONNTRACK_SYSCTLS).join(TcpTimeouts::sysctl_name(state));
            if let Some(v) = std::fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                *secs = v;
            }
        }
        let mut flows = Vec::new();
        for line in std::io::BufReader::new(table).lines() {
            if let Some(f) = parse_flow(&line.map_err(failed)?, &timeouts) {
                if to.contains(&f.dst) {
                    flows.push(f);
                }
            }
        }
        Ok(flows)
    })
    .await
    .map_err(|e| format!("the conntrack reader failed: {e}"))?
}

fn enabled(meta: &Metadata) -> bool {
    meta.auto_standby.as_ref().is_some_and(|p| p.enabled)
}

/// The addresses of those of `metas` whose flows matter.
fn watched_ips<'a>(metas: impl IntoIterator<Item = &'a Metadata>) -> HashSet<Ipv4Addr> {
    metas
        .into_iter()
        .filter(|m| enabled(m))
        .filter_map(|m| m.network.as_ref().map(|n| n.ip))
        .collect()
}

/// Observes `meta`'s instance and decides, at `now`.
fn decide_for(
    paths: &Paths,
    meta: &Metadata,
    flows: &std::result::Result<Vec<Flow>, String>,
    now: SystemTime,
) -> Decision {
    let st = state::derive(&observe(paths, meta));
    let path = paths.ingress_activity();
    let ingress = Activity::read(&path).map_err(|e| format!("reading {}: {e}", path.display()));
    let obs = Observation {
        now_ms: unix_ms(now),
        running: st == State::Running,
        booted_ms: running_since(paths, meta),
        guest_ip: meta.network.as_ref().map(|n| n.ip),
        ingress,
        flows: flows.as_ref().map(Vec::as_slice).map_err(Clone::clone),
    };
    decide(meta.auto_standby.as_ref(), &meta.auto_standby_runtime, &obs)
}

/// When the instance's current VMM started: its boot, or its restore from
/// standby, a snapshot or a fork (each runs under a new monitor, which
/// records when it started the VMM). No idle time counts from before.
fn running_since(paths: &Paths, meta: &Metadata) -> Option<u64> {
    let vmm = lodge_monitor::read_monitor_info(&paths.logs())
        .ok()
        .flatten()
        .and_then(|info| lodge_common::time::parse_rfc3339(&info.started_at).ok())
        .map(unix_ms);
    meta.started_at.map(unix_ms).max(vmm)
}

/// Whether the record must be written for `d` (the countdown started,
/// stopped or moved, or a hold ended), not for every "still active".
fn worth_saving(meta: &Metadata, d: &Decision) -> bool {
    let old = &meta.auto_standby_runtime;
    old.idle_since_ms != d.runtime.idle_since_ms || old.hold_until_ms != d.runtime.hold_until_ms
}

impl Manager {
    /// The daemon's auto-standby task; never returns.
    pub async fn run_auto_standby(self: Arc<Self>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.auto_standby_pass().await;
        }
    }

    /// One look at every instance with auto-standby enabled.
    async fn auto_standby_pass(self: &Arc<Self>) {
        let all = match self.all() {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!("auto-standby: listing instances: {e}");
                return;
            }
        };
        let watched: Vec<Metadata> = all
            .into_iter()
            .filter(|m| enabled(m) || !m.auto_standby_runtime.is_empty())
            .collect();
        if watched.is_empty() {
            return;
        }
        let flows = read_flows(watched_ips(&watched)).await;
        for meta in watched {
            if self.auto_standby.in_flight(&meta.id) {
                continue;
            }
            let paths = self.paths(&meta.id);
            let d = decide_for(&paths, &meta, &flows, SystemTime::now());
            if worth_saving(&meta, &d) {
                self.save_runtime(&meta, &d);
            }
            if d.standby && self.auto_standby.claim(&meta.id) {
                let this = self.clone();
                let id = meta.id.clone();
                tokio::spawn(async move {
                    let failed = match this.commit_auto_standby(&id).await {
                        // Deleted meanwhile: nothing to put to sleep.
                        Ok(_) | Err(Error::NotFound(_)) => false,
                        Err(e) => {
                            tracing::warn!("auto-standby of {id}: {e}");
                            oplog(&this.paths(&id), &format!("auto-standby failed: {e}"));
                            true
                        }
                    };
                    this.auto_standby.release(&id, failed);
                });
            }
        }
    }

    /// Writes `d`'s runtime into the record, unless the instance is busy
    /// (its lock taken: the next pass tries again) or its record changed
    /// since it was read.
    fn save_runtime(&self, read: &Metadata, d: &Decision) {
        let lock = self.lock_for(&read.id);
        let Ok(_guard) = lock.try_lock() else {
            return;
        };
        let paths = self.paths(&read.id);
        let Ok(mut meta) = store::load(&paths) else {
            return; // deleted meanwhile
        };
        if meta.auto_standby_runtime != read.auto_standby_runtime
            || meta.auto_standby != read.auto_standby
        {
            return;
        }
        meta.auto_standby_runtime = d.runtime;
        if let Err(e) = store::save(&paths, &meta) {
            tracing::warn!("auto-standby: writing the record of {}: {e}", read.id);
        }
    }

    /// Under the instance's lock, observes and decides once more, then
    /// puts the instance in standby if it is still due. Whether it did.
    async fn commit_auto_standby(&self, id: &str) -> Result<bool> {
        let mut locked = self.lock_instance(id).await?;
        let flows = read_flows(watched_ips([&locked.meta])).await;
        let d = decide_for(&locked.paths, &locked.meta, &flows, SystemTime::now());
        if !d.standby {
            if worth_saving(&locked.meta, &d) {
                locked.meta.auto_standby_runtime = d.runtime;
                store::save(&locked.paths, &locked.meta).map_err(io("writing instance record"))?;
            }
            return Ok(false);
        }
        let idle_for = d
            .runtime
            .idle_since_ms
            .map(|since| unix_ms(SystemTime::now()).saturating_sub(since))
            .unwrap_or(0);
        oplog(
            &locked.paths,
            &format!(
                "auto-standby: idle for {} ms (timeout {}): standby",
                idle_for,
                locked
                    .meta
                    .auto_standby
                    .as_ref()
                    .and_then(|p| p.idle_timeout.as_deref())
                    .unwrap_or("?")
            ),
        );
        tracing::info!("auto-standby: {id} has been idle for {idle_for} ms; standby");
        self.standby_locked(&mut locked).await?;
        Ok(true)
    }

    /// hypeman's auto-standby status of an instance.
    pub async fn auto_standby_status(&self, key: &str) -> Result<StatusView> {
        let id = self.resolve(key)?;
        let paths = self.paths(&id);
        let meta = store::load(&paths).map_err(|_| Error::NotFound(key.to_string()))?;
        Ok(self.status_view(&paths, &meta).await)
    }

    async fn status_view(&self, paths: &Paths, meta: &Metadata) -> StatusView {
        let flows = read_flows(watched_ips([meta])).await;
        let now = SystemTime::now();
        let d = decide_for(paths, meta, &flows, now);
        StatusView::of(
            meta.auto_standby.as_ref(),
            &d,
            meta.network.is_some(),
            self.auto_standby.in_flight(&meta.id),
            unix_ms(now),
        )
    }

    /// hypeman's hold: no auto-standby before now + `duration` (default:
    /// the policy's idle timeout; zero releases a hold). An instance
    /// without an enabled policy is answered its status, unchanged; one in
    /// standby is refused.
    pub async fn auto_standby_hold(
        &self,
        key: &str,
        duration: Option<Duration>,
    ) -> Result<StatusView> {
        let Locked {
            _guard,
            id,
            paths,
            mut meta,
        } = self.lock_instance(key).await?;
        let Some(timeout) = meta.auto_standby.as_ref().and_then(|p| p.timeout()) else {
            return Ok(self.status_view(&paths, &meta).await);
        };
        let st = state::derive(&observe(&paths, &meta));
        if st == State::Standby || meta.standby.pending.is_some() {
            return Err(Error::WrongState {
                id,
                state: st,
                action: "an auto-standby hold",
                needs: "out of standby (restore it first)",
            });
        }
        let d = duration.unwrap_or(timeout);
        meta.auto_standby_runtime.hold_until_ms = if d.is_zero() {
            None
        } else {
            Some(unix_ms(SystemTime::now() + d))
        };
        store::save(&paths, &meta).map_err(io("writing instance record"))?;
        oplog(
            &paths,
            &if d.is_zero() {
                "auto-standby: hold released".to_string()
            } else {
                format!("auto-standby: held for {} ms", d.as_millis())
            },
        );
        Ok(self.status_view(&paths, &meta).await)
    }
}
