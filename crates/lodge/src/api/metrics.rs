//! `GET /metrics`: Prometheus text. The numbers and their reading are
//! `crate::metrics`'s; this file gathers the instances' states and the
//! image counters and hands them over. The scrape runs on the request's
//! own task, as `GET /instances` does: it is a few `statx` per instance
//! (below), and handing it to the blocking pool cost more CPU in thread
//! wake-ups (~0.1 ms per scrape on a busy host) than the scrape itself.
//!
//! The states are derived exactly as `GET /instances` derives them
//! ([`observe`] then [`state::derive`]), but an instance is observed again
//! only when one of the facts its state depends on moved since the last
//! scrape: its record, the guest's status files, whether its monitor
//! holds the lock, and, with no monitor, its `monitor.json` and whether
//! the VMM it names still runs. The files are compared by
//! [`StatKey`] under the rules of `crate::metrics` (settled files only,
//! same key before and after the read); the lock and the VMM are looked at
//! on every scrape. So a scrape of instances that did not change costs a
//! few `statx` each, not a dozen opens and JSON parses.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::instances::naming::is_id_like;
use crate::instances::store::{self, Paths};
use crate::instances::{observe, state, State as InstanceState};
use crate::metrics::{self, InstanceFacts, StatKey};

/// Every state, reported even when no instance is in it.
const STATES: [InstanceState; 8] = [
    InstanceState::Created,
    InstanceState::Initializing,
    InstanceState::Running,
    InstanceState::Paused,
    InstanceState::Shutdown,
    InstanceState::Stopped,
    InstanceState::Standby,
    InstanceState::Unknown,
];

fn state_name(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Created => "Created",
        InstanceState::Initializing => "Initializing",
        InstanceState::Running => "Running",
        InstanceState::Paused => "Paused",
        InstanceState::Shutdown => "Shutdown",
        InstanceState::Stopped => "Stopped",
        InstanceState::Standby => "Standby",
        InstanceState::Unknown => "Unknown",
    }
}

/// The daemon's metrics in Prometheus text format 0.0.4. Needs the token
/// unless the daemon runs with `LODGE_METRICS_PUBLIC=1`.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = gather(&state.images).map_err(ApiError::internal)?;
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// What a scrape answers now: the scrape itself and the OTLP export
/// ([`start_otlp_export`]) both call this, so both see the same series
/// and share the caches below.
pub fn gather(images: &lodge_images::Images) -> Result<String, String> {
    let pulls = images.pull_stats();
    let facts = instance_facts(&metrics::paths().guests_dir())
        .map_err(|e| format!("reading the instances: {e}"))?;
    metrics::render(&facts, &STATES.map(state_name), pulls)
        .map_err(|e| format!("encoding the metrics: {e}"))
}

/// Starts the periodic OTLP export of the metrics when the `OTEL_*`
/// settings ask for it (and `LODGE_METRICS` is not off); a setting lodge
/// cannot follow is a warning. Runs on the current runtime; the daemon
/// finishes it on the way out (the last batch).
pub fn start_otlp_export(
    images: Arc<lodge_images::Images>,
) -> Option<crate::telemetry::otlp_metrics::Exporter> {
    use crate::telemetry::otlp_metrics::{self, Setting};
    match otlp_metrics::setting(|k| std::env::var(k).ok(), metrics::enabled()) {
        Setting::Off => None,
        Setting::Unsupported(why) => {
            tracing::warn!("{why}; metrics are not exported");
            None
        }
        Setting::Otlp(export) => {
            tracing::info!(
                "metrics: exported over OTLP/HTTP to {} every {} ms",
                export.endpoint,
                export.interval.as_millis()
            );
            Some(otlp_metrics::spawn(export, move || gather(&images)))
        }
    }
}

/// What a state was derived from (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    metadata: Option<StatKey>,
    guest_status: Option<StatKey>,
    status_log: Option<StatKey>,
    monitor_alive: bool,
    /// With no monitor: its record, and the VMM it names if that runs.
    monitor_json: Option<StatKey>,
    orphan_vmm: Option<u32>,
    /// Everything above could be looked at.
    trusted: bool,
}

impl Inputs {
    /// Whether every file was last changed before `cutoff`.
    fn settled_before(&self, cutoff: SystemTime) -> bool {
        self.trusted
            && [
                self.metadata,
                self.guest_status,
                self.status_log,
                self.monitor_json,
            ]
            .iter()
            .flatten()
            .all(|k| k.settled_before(cutoff))
    }
}

/// One instance as the last scrape saw it.
#[derive(Debug)]
struct Seen {
    inputs: Inputs,
    /// The record's `created_at` (RFC 3339), the order of `GET /instances`.
    created_at: String,
    facts: InstanceFacts,
}

/// Per instance id, its last derivation that can be trusted again.
static SEEN: Mutex<BTreeMap<String, Seen>> = Mutex::new(BTreeMap::new());

/// The facts of every instance under `guests`, in `GET /instances`' order
/// (by creation; records deleted meanwhile are skipped).
fn instance_facts(guests: &std::path::Path) -> io::Result<Vec<InstanceFacts>> {
    let mut ids = Vec::new();
    match std::fs::read_dir(guests) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if let Some(name) = entry.file_name().to_str() {
                    if is_id_like(name) {
                        ids.push(name.to_owned());
                    }
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    ids.sort();
    let cutoff = metrics::settled_cutoff();
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    seen.retain(|id, _| ids.binary_search(id).is_ok());
    let mut out: Vec<(String, InstanceFacts)> = Vec::with_capacity(ids.len());
    for id in ids {
        let paths = Paths::new(guests.join(&id));
        let prev = seen.get(&id);
        let Some(inputs) = inputs_of(&paths, prev.map(|s| &s.inputs)) else {
            // No record (a create in progress, or deleted meanwhile).
            seen.remove(&id);
            continue;
        };
        if let Some(s) = prev.filter(|s| inputs.trusted && s.inputs == inputs) {
            out.push((s.created_at.clone(), s.facts.clone()));
            continue;
        }
        let meta = match store::load(&paths) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                seen.remove(&id);
                continue;
            }
            Err(e) => return Err(e),
        };
        let facts = InstanceFacts {
            id: meta.id.clone(),
            name: meta.name.clone(),
            state: state_name(state::derive(&observe(&paths, &meta))),
            started_at: meta.started_at.map(lodge_common::time::rfc3339),
        };
        let created_at = lodge_common::time::rfc3339(meta.created_at);
        // Trusted next time only if settled and nothing moved while it
        // was read (a boot in progress is not looked at twice).
        if inputs.settled_before(cutoff) && inputs_of(&paths, None).as_ref() == Some(&inputs) {
            seen.insert(
                id,
                Seen {
                    inputs,
                    created_at: created_at.clone(),
                    facts: facts.clone(),
                },
            );
        } else {
            seen.remove(&id);
        }
        out.push((created_at, facts));
    }
    // Stable, like `GET /instances`' sort of the id-ordered records.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, f)| f).collect())
}

/// The inputs of an instance's state now; `None` when it has no record.
/// `prev`, the inputs last trusted, spares reading `monitor.json` again:
/// a VMM found gone stays gone (its pid and start time name one process).
/// What cannot be looked at is not an error (`observe` logs it and goes
/// on): the inputs are then not trusted, so the state is derived afresh.
fn inputs_of(paths: &Paths, prev: Option<&Inputs>) -> Option<Inputs> {
    let mut trusted = true;
    let mut key = |path: &std::path::Path| {
        StatKey::of(path).unwrap_or_else(|_| {
            trusted = false;
            None
        })
    };
    // As `GET /instances` lists them: a record that cannot be seen is none.
    let metadata = Some(StatKey::of(&paths.metadata()).ok()??);
    let logs = paths.logs();
    let guest_status = key(&logs.join(lodge_monitor::GUEST_STATUS_JSON));
    // The old status channel is read only when there is no status file.
    let status_log = if guest_status.is_none() {
        key(&paths.status_file())
    } else {
        None
    };
    // As `observe` reads it: an unreadable lock is no monitor.
    let monitor_alive = lodge_logs::monitor_alive(&logs).unwrap_or(false);
    let (monitor_json, orphan_vmm) = if monitor_alive {
        (None, None)
    } else {
        let monitor_json = key(&logs.join(lodge_monitor::MONITOR_JSON));
        let orphan = match prev {
            Some(p)
                if !p.monitor_alive && p.monitor_json == monitor_json && p.orphan_vmm.is_none() =>
            {
                None
            }
            _ => running_vmm(&logs).unwrap_or_else(|_| {
                trusted = false;
                None
            }),
        };
        (monitor_json, orphan)
    };
    Some(Inputs {
        metadata,
        guest_status,
        status_log,
        monitor_alive,
        monitor_json,
        orphan_vmm,
        trusted,
    })
}

/// The VMM named in `monitor.json` if that very process (pid and start
/// time) runs, as `observe` judges an orphan once the monitor is gone.
fn running_vmm(logs: &std::path::Path) -> io::Result<Option<u32>> {
    let Some(info) = lodge_monitor::read_monitor_info(logs)? else {
        return Ok(None);
    };
    let Some(ticks) = info.child_start_ticks else {
        return Ok(None);
    };
    Ok(
        (lodge_monitor::process_start_ticks(info.child_pid)? == Some(ticks))
            .then_some(info.child_pid),
    )
}
