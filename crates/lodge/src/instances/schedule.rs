//! Snapshot schedules (hypeman's `/instances/{id}/snapshot-schedule`): the
//! daemon takes a snapshot of an instance every `interval` and deletes the
//! scheduled snapshots its retention no longer keeps.
//!
//! A schedule is a record in the instance directory
//! (`snapshot-schedule.json`), so it survives daemon restarts and goes with
//! the instance. One task of the daemon ([`Manager::run_schedules`]) looks
//! for due schedules every [`TICK`] and runs them one after another; a run
//! takes the instance lock (it is `create_snapshot`), so a schedule never
//! runs twice at once for an instance nor beside another verb on it.
//!
//! A run takes a `Standby` snapshot of a Running or Standby instance
//! (memory and disks; a running one sleeps briefly) and a `Stopped` one of
//! a stopped instance; in any other state it records why it skipped in
//! `last_error`. Missed runs (the daemon was down) are not caught up: the
//! next run is one interval after this one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lodge_common::time::{parse_rfc3339, rfc3339};
use serde::{Deserialize, Serialize};

use super::error::{io, Error, Result};
use super::manager::Manager;
use super::naming::Name;
use super::observe::observe;
use super::snapshots::{SnapshotKind, SnapshotRequest};
use super::state::{self, State};
use super::store::{self, Paths};

/// The schedule's file in the instance directory.
const FILE: &str = "snapshot-schedule.json";
/// How often due schedules are looked for.
const TICK: Duration = Duration::from_secs(1);
/// The generated names' prefix when the schedule gives none.
const DEFAULT_PREFIX: &str = "scheduled";
/// Longest `name_prefix` (hypeman's; the timestamp suffix fills the rest
/// of an instance name's 63 characters).
pub const MAX_PREFIX_LEN: usize = 47;

/// hypeman's `SnapshotScheduleRetention`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Retention {
    /// Keep at most this many scheduled snapshots (0: no count limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u32>,
    /// Delete scheduled snapshots older than this (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// hypeman's `SnapshotSchedule`: the API shape, and the record on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotSchedule {
    pub instance_id: String,
    /// Go duration, as given.
    pub interval: String,
    pub retention: Retention,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    /// Tags given to every scheduled snapshot.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339, as the other timestamps.
    pub created_at: String,
    pub updated_at: String,
    pub next_run_at: String,
    #[serde(default)]
    pub last_run_at: Option<String>,
    #[serde(default)]
    pub last_snapshot_id: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The interval and max age in milliseconds, as parsed (lodge's own).
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub interval_ms: u64,
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub max_age_ms: Option<u64>,
}

/// A schedule as set by `PUT`, parsed and validated by the API.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    pub interval: Duration,
    pub interval_text: String,
    pub max_count: Option<u32>,
    pub max_age: Option<(Duration, String)>,
    pub name_prefix: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// The shortest interval a schedule may have (hypeman's 1 minute;
/// `LODGE_SNAPSHOT_SCHEDULE_MIN_INTERVAL`, in seconds, lowers it for tests).
pub fn min_interval() -> Duration {
    std::env::var("LODGE_SNAPSHOT_SCHEDULE_MIN_INTERVAL")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs)
}

fn file(paths: &Paths) -> std::path::PathBuf {
    paths.dir.join(FILE)
}

fn load(paths: &Paths) -> Result<Option<SnapshotSchedule>> {
    match std::fs::read(file(paths)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io("reading the snapshot schedule")(std::io::Error::other(e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading the snapshot schedule")(e)),
    }
}

fn save(paths: &Paths, schedule: &SnapshotSchedule) -> Result<()> {
    #[derive(Serialize)]
    struct OnDisk<'a> {
        #[serde(flatten)]
        schedule: &'a SnapshotSchedule,
        interval_ms: u64,
        max_age_ms: Option<u64>,
    }
    let json = serde_json::to_vec_pretty(&OnDisk {
        schedule,
        interval_ms: schedule.interval_ms,
        max_age_ms: schedule.max_age_ms,
    })
    .map_err(std::io::Error::other)
    .map_err(io("writing the snapshot schedule"))?;
    lodge_common::fsutil::write_atomic(&file(paths), &json)
        .map_err(io("writing the snapshot schedule"))
}

/// `PREFIX-YYYYMMDD-HHMMSS` (UTC), a valid instance-style name.
fn snapshot_name(prefix: &str, at: SystemTime) -> String {
    let stamp = rfc3339(at); // 2026-11-30T10:41:04.366Z
    let digits: String = stamp
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect::<String>()
        .replace('T', "-");
    format!("{prefix}-{digits}")
}

impl Manager {
    pub async fn get_schedule(&self, key: &str) -> Result<SnapshotSchedule> {
        let id = self.resolve(key)?;
        load(&self.paths(&id))?.ok_or(Error::NoSchedule(id))
    }

    /// Sets (creates or replaces) the instance's schedule; the first run
    /// is one interval from now.
    pub async fn put_schedule(&self, key: &str, spec: ScheduleSpec) -> Result<SnapshotSchedule> {
        let locked = self.lock_instance(key).await?;
        let now = SystemTime::now();
        let old = load(&locked.paths)?;
        let schedule = SnapshotSchedule {
            instance_id: locked.id.clone(),
            interval: spec.interval_text,
            retention: Retention {
                max_count: spec.max_count,
                max_age: spec.max_age.as_ref().map(|(_, t)| t.clone()),
            },
            name_prefix: spec.name_prefix,
            metadata: spec.metadata,
            created_at: old
                .as_ref()
                .map_or_else(|| rfc3339(now), |o| o.created_at.clone()),
            updated_at: rfc3339(now),
            next_run_at: rfc3339(now + spec.interval),
            last_run_at: old.as_ref().and_then(|o| o.last_run_at.clone()),
            last_snapshot_id: old.as_ref().and_then(|o| o.last_snapshot_id.clone()),
            last_error: old.and_then(|o| o.last_error),
            interval_ms: u64::try_from(spec.interval.as_millis()).unwrap_or(u64::MAX),
            max_age_ms: spec
                .max_age
                .map(|(d, _)| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        save(&locked.paths, &schedule)?;
        Ok(schedule)
    }

    pub async fn delete_schedule(&self, key: &str) -> Result<()> {
        let locked = self.lock_instance(key).await?;
        match std::fs::remove_file(file(&locked.paths)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NoSchedule(locked.id.clone()))
            }
            Err(e) => Err(io("removing the snapshot schedule")(e)),
        }
    }

    /// The daemon's schedule runner (see the module doc); runs forever.
    pub async fn run_schedules(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let all = match self.all() {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!("snapshot schedules: {e}");
                    continue;
                }
            };
            for meta in all {
                if let Err(e) = self.run_if_due(&meta.id).await {
                    tracing::warn!("snapshot schedule of {}: {e}", meta.id);
                }
            }
        }
    }

    async fn run_if_due(&self, id: &str) -> Result<()> {
        let paths = self.paths(id);
        let Some(mut schedule) = load(&paths)? else {
            return Ok(());
        };
        let now = SystemTime::now();
        let due = parse_rfc3339(&schedule.next_run_at).map_or(true, |t| t <= now);
        if !due {
            return Ok(());
        }
        let outcome = self.run_once(id, &paths, &schedule, now).await;
        // The schedule may have been replaced or deleted meanwhile.
        let Some(current) = load(&paths)? else {
            return Ok(());
        };
        if current.updated_at != schedule.updated_at {
            return Ok(());
        }
        schedule.last_run_at = Some(rfc3339(now));
        match outcome {
            Ok(snapshot_id) => {
                schedule.last_snapshot_id = Some(snapshot_id);
                schedule.last_error = None;
            }
            Err(e) => schedule.last_error = Some(e.to_string()),
        }
        let interval = Duration::from_millis(schedule.interval_ms.max(1000));
        schedule.next_run_at = rfc3339(SystemTime::now().max(now) + interval);
        // Written without the instance lock: only this task writes runs'
        // outcomes, and `put` is seen through `updated_at` above.
        save(&paths, &schedule)?;
        self.apply_retention(id, &schedule);
        Ok(())
    }

    /// One scheduled snapshot; its id.
    async fn run_once(
        &self,
        id: &str,
        paths: &Paths,
        schedule: &SnapshotSchedule,
        now: SystemTime,
    ) -> Result<String> {
        let meta = store::load(paths).map_err(io("reading instance record"))?;
        let kind = match state::derive(&observe(paths, &meta)) {
            State::Running | State::Standby => SnapshotKind::Standby,
            State::Stopped | State::Created => SnapshotKind::Stopped,
            other => return Err(Error::ScheduleSkipped(other)),
        };
        let prefix = schedule.name_prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
        let name = Name::parse(&snapshot_name(prefix, now))?;
        let snap = self
            .create_snapshot(
                id,
                SnapshotRequest {
                    kind,
                    name: Some(name),
                    tags: schedule.metadata.clone(),
                    scheduled: true,
                },
            )
            .await?;
        Ok(snap.id)
    }

    /// Deletes the instance's scheduled snapshots beyond `max_count`
    /// (oldest first) and older than `max_age`.
    fn apply_retention(&self, id: &str, schedule: &SnapshotSchedule) {
        let mut mine: Vec<_> = self
            .snapshot_records()
            .into_iter()
            .filter(|r| r.scheduled && r.source.id == id)
            .collect();
        // Newest first.
        mine.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        let now = SystemTime::now();
        for (i, r) in mine.iter().enumerate() {
            let too_many = schedule
                .retention
                .max_count
                .is_some_and(|max| max > 0 && i >= max as usize);
            let too_old = schedule.max_age_ms.is_some_and(|ms| {
                parse_rfc3339(&r.created_at).is_ok_and(|t| {
                    now.duration_since(t)
                        .is_ok_and(|age| age > Duration::from_millis(ms))
                })
            });
            if too_many || too_old {
                match self.delete_snapshot_now(&r.id) {
                    Ok(()) => tracing::info!("snapshot schedule of {id}: deleted {}", r.id),
                    Err(e) => tracing::warn!("snapshot schedule of {id}: deleting {}: {e}", r.id),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid_names() {
        let at = parse_rfc3339("2026-11-30T10:41:04.366Z").expect("time");
        let name = snapshot_name("nightly", at);
        assert_eq!(name, "nightly-20261130-104104");
        assert!(Name::parse(&name).is_ok());
        let long = "p".repeat(MAX_PREFIX_LEN);
        assert!(Name::parse(&snapshot_name(&long, at)).is_ok());
    }

    #[test]
    fn the_record_keeps_the_parsed_durations_and_the_api_does_not_show_them() {
        let s = SnapshotSchedule {
            instance_id: "i".into(),
            interval: "1m".into(),
            retention: Retention {
                max_count: Some(3),
                max_age: None,
            },
            name_prefix: None,
            metadata: BTreeMap::new(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            next_run_at: "2026-01-01T00:01:00.000Z".into(),
            last_run_at: None,
            last_snapshot_id: None,
            last_error: None,
            interval_ms: 60_000,
            max_age_ms: None,
        };
        let api = serde_json::to_value(&s).expect("json");
        assert!(api.get("interval_ms").is_none(), "{api}");
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path());
        save(&paths, &s).expect("save");
        assert_eq!(load(&paths).expect("load"), Some(s));
    }
}
