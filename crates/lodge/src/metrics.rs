//! The daemon's Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! Two kinds of numbers, kept apart on purpose:
//!
//! - **Events the daemon itself sees** (boots it starts, standby and
//!   restore it performs, agent sessions it opens, API requests it
//!   answers) are counted where they happen, in one process-wide
//!   [`prometheus_client`] registry, so each call site is one line
//!   (`metrics::boot_started()`) and needs no handle threaded through.
//! - **Facts other processes own** are read on scrape, never pushed: the
//!   instance states (derived from the monitors' files, as the API does),
//!   log bytes and rotations (the monitor's log directory: rotated
//!   segments are numbered in sequence and each holds exactly the segment
//!   limit, see `lodge_logs::writer`), stalled log writers (the monitor's
//!   `capture.json`), boot durations (the guest's "started" status line,
//!   the mtime of `guest-status.json`, against the record's `started_at`),
//!   the image store's pull counters and the daemon's RSS. So the
//!   monitors stay as small as they are (no counters to serve), the
//!   daemon writes no log to count bytes, and a restarted daemon reports
//!   the same log totals as before.
//!
//! Cardinality is bounded: API requests are labelled by axum's route
//! template (`/instances/{id}`), never the raw path, and requests that
//! match no route share the label `unmatched`; per-instance series exist
//! only for instances that exist.
//!
//! This module knows nothing of the instance manager or the API (they
//! depend on it): the handler in `api/metrics.rs` gathers [`InstanceFacts`]
//! and calls [`render`].
//!
//! A scrape is cheap because what it reads from files is remembered
//! between scrapes, keyed by the file's [`StatKey`] (inode, size, mtime,
//! ctime): an unchanged file costs one `statx` instead of open, read,
//! parse and close. A key is trusted only for files last changed more
//! than [`SETTLED`] before the scrape began (timestamps are coarse, so a
//! file rewritten twice within one tick keeps its key; git's "racily
//! clean" rule), and only when it reads the same before and after the
//! read it stands for. The log totals are keyed by their directory (the
//! rotated segments change only by rename and delete, which change the
//! directory; the live files are `statx`ed every time).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use lodge_common::paths::Paths;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `Content-Type` of the answer.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Environment switch that serves `/metrics` without a token.
pub const PUBLIC_ENV: &str = "LODGE_METRICS_PUBLIC";

/// Whether `/metrics` is served without a token (`LODGE_METRICS_PUBLIC=1`).
/// By default it needs one, like every route but `/health` and the spec:
/// instance ids and names are in its labels.
pub fn public() -> bool {
    std::env::var(PUBLIC_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Environment switch that turns metrics off (`LODGE_METRICS=off`): no
/// `/metrics` route and nothing counted; the boot-storm benchmark
/// (`scripts/bench-boot-storm.sh`) compares the daemon's CPU both ways.
pub const ENABLE_ENV: &str = "LODGE_METRICS";

/// Whether metrics are kept and served (the default), read once.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        !std::env::var(ENABLE_ENV).is_ok_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "off" | "0" | "false" | "no"
            )
        })
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

/// What the daemon counts itself (see the module doc).
struct Events {
    registry: Registry,
    boots: Counter,
    standby_seconds: Histogram,
    restore_seconds: Histogram,
    agent_sessions: Family<KindLabel, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<KindLabel, Histogram>,
    /// Boot durations are observed once per (instance id, started_at).
    boot_seconds: Histogram,
    boots_seen: Mutex<HashSet<(String, String)>>,
    /// Boots older than the daemon are not observed (they were, or could
    /// not have been, by the daemon that started them).
    since: SystemTime,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 50 ms .. ~100 s.
    exponential_buckets(0.05, 2.0, 12)
}

impl Events {
    fn new() -> Events {
        let mut registry = Registry::with_prefix("lodge");
        let boots = Counter::default();
        registry.register(
            "boots",
            "VM boots started (create, start, restart)",
            boots.clone(),
        );
        let boot_seconds = Histogram::new(seconds_buckets());
        registry.register(
            "boot_duration_seconds",
            "From the VMM's start to the guest program's start, per boot seen running",
            boot_seconds.clone(),
        );
        let standby_seconds = Histogram::new(seconds_buckets());
        registry.register(
            "standby_duration_seconds",
            "Time to put an instance in standby (pause, save, VMM exit), attempts included",
            standby_seconds.clone(),
        );
        let restore_seconds = Histogram::new(seconds_buckets());
        registry.register(
            "restore_duration_seconds",
            "Time to restore an instance from standby, attempts included",
            restore_seconds.clone(),
        );
        let agent_sessions = Family::<KindLabel, Counter>::default();
        registry.register(
            "agent_sessions",
            "Guest agent sessions opened (exec, cp, stat)",
            agent_sessions.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "API requests answered, by method, route template and status",
            http_requests.clone(),
        );
        let http_seconds = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 4.0, 9))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by kind of route (read or write)",
            http_seconds.clone(),
        );
        Events {
            registry,
            boots,
            standby_seconds,
            restore_seconds,
            agent_sessions,
            http_requests,
            http_seconds,
            boot_seconds,
            boots_seen: Mutex::new(HashSet::new()),
            since: SystemTime::now(),
        }
    }
}

static EVENTS: OnceLock<Events> = OnceLock::new();

fn events() -> &'static Events {
    EVENTS.get_or_init(Events::new)
}

static PATHS: OnceLock<Paths> = OnceLock::new();

/// Starts the clock of the daemon's metrics (boots older than this are
/// not observed in the boot histogram) and says where the instances'
/// directories are. Called once by `serve`.
pub fn init(paths: Paths) {
    events();
    if PATHS.set(paths).is_err() {
        tracing::debug!("metrics: initialised twice; the first data dir is kept");
    }
}

/// Where the instances' directories are (as given to [`init`], else the
/// data dir of the environment).
pub fn paths() -> &'static Paths {
    PATHS.get_or_init(|| Paths::new(crate::config::data_dir_from_env()))
}

/// How long a file must have been left alone before its [`StatKey`] is
/// trusted to change with its content (see the module doc). File
/// timestamps come from the kernel's coarse clock, which lags the real
/// time by at most one tick (10 ms at HZ=100): a write after the key was
/// taken is stamped later than `scrape start - tick`, so later than any
/// mtime older than `scrape start - SETTLED`. 100 ms is ten ticks (a
/// clock slewed by NTP moves far less); a clock stepped back by more
/// than that could hide one change until the file changes again.
pub const SETTLED: Duration = Duration::from_millis(100);

/// What `statx` says of a file that changes whenever its content does
/// (once the file has [settled](SETTLED)): a rename brings a new inode, a
/// write a new size or mtime, both a new ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatKey {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl StatKey {
    /// The key of `path` (symlinks followed, as a read does); `None` when
    /// there is no file, `Err` when it cannot be looked at.
    pub fn of(path: &Path) -> io::Result<Option<StatKey>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(StatKey::from_metadata(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn from_metadata(m: &std::fs::Metadata) -> StatKey {
        StatKey {
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Whether the file was last changed before `cutoff` (so a later
    /// change gives it another key).
    pub fn settled_before(&self, cutoff: SystemTime) -> bool {
        let Ok(c) = cutoff.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let cut = (c.as_secs() as i64, i64::from(c.subsec_nanos()));
        self.mtime < cut && self.ctime < cut
    }
}

/// The moment before which a file must have last changed for its key to
/// be trusted by a scrape starting now.
pub fn settled_cutoff() -> SystemTime {
    SystemTime::now()
        .checked_sub(SETTLED)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A VM boot was started.
pub fn boot_started() {
    if !enabled() {
        return;
    }
    events().boots.inc();
}

/// A guest agent session was opened for `kind` (exec, cp, stat, …).
pub fn agent_session(kind: &'static str) {
    if !enabled() {
        return;
    }
    events()
        .agent_sessions
        .get_or_create(&KindLabel { kind })
        .inc();
}

/// An operation whose duration is observed.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Standby,
    Restore,
}

/// Observes the time from [`time`] to its drop, whatever the outcome.
#[must_use = "the duration is observed when the timer is dropped"]
pub struct Timer {
    op: Op,
    start: Instant,
}

/// Times `op` until the returned guard is dropped.
pub fn time(op: Op) -> Timer {
    Timer {
        op,
        start: Instant::now(),
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !enabled() {
            return;
        }
        let e = events();
        let h = match self.op {
            Op::Standby => &e.standby_seconds,
            Op::Restore => &e.restore_seconds,
        };
        h.observe(self.start.elapsed().as_secs_f64());
    }
}

/// Middleware counting every API answer by method, route template and
/// status. Installed with `Router::layer`, so it runs after routing and
/// sees [`MatchedPath`]; 401s from the token check are counted too.
///
/// It also opens the request's tracing span, so every event logged while
/// the request is handled carries `op` (`GET /instances/{id}`) and, on
/// instance routes, `instance` (the id, name or prefix the client gave).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        op = %format_args!("{method} {route}"),
        instance = tracing::field::Empty,
    );
    if let Some(key) = instance_key(&route, req.uri().path()) {
        span.record("instance", key);
    }
    let start = Instant::now();
    let resp = tracing::Instrument::instrument(next.run(req), span).await;
    if !enabled() {
        return resp;
    }
    let e = events();
    let kind = if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        "read"
    } else {
        "write"
    };
    e.http_seconds
        .get_or_create(&KindLabel { kind })
        .observe(start.elapsed().as_secs_f64());
    e.http_requests
        .get_or_create(&HttpLabels {
            method: method.as_str().to_owned(),
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// The `{id}` of an `/instances/{id}…` route, as the client wrote it.
fn instance_key<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    if !route.starts_with("/instances/{id}") {
        return None;
    }
    path.strip_prefix("/instances/")?.split('/').next()
}

/// What the scrape needs to know of one instance.
#[derive(Debug, Clone)]
pub struct InstanceFacts {
    pub id: String,
    pub name: String,
    /// hypeman's state name (`Running`, …).
    pub state: &'static str,
    /// When its VMM last started (RFC 3339), if ever.
    pub started_at: Option<String>,
}

/// The image store's counters (see `lodge_images::PullStats`).
pub type PullStats = lodge_images::PullStats;

/// The whole scrape: every state in `states` is reported (zeros
/// included), then the per-instance series. Reads files (a few `statx`
/// per instance once they settled).
pub fn render(
    instances: &[InstanceFacts],
    states: &[&'static str],
    pulls: PullStats,
) -> Result<String, std::fmt::Error> {
    render_in(paths(), instances, states, pulls)
}

fn render_in(
    paths: &Paths,
    instances: &[InstanceFacts],
    states: &[&'static str],
    pulls: PullStats,
) -> Result<String, std::fmt::Error> {
    let e = events();
    let cutoff = settled_cutoff();
    let mut per_instance = Vec::with_capacity(instances.len());
    {
        let mut cache = FILE_CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        // Deleted instances are forgotten.
        let ids: HashSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        cache.retain(|id, _| ids.contains(id.as_str()));
        for inst in instances {
            let log_dir = paths.guest(&inst.id).logs();
            let files = cache.entry(inst.id.clone()).or_default();
            let logs = files.log_totals(&log_dir, cutoff);
            let stalled = files.stalled_logs(&log_dir, cutoff);
            if inst.state == "Running" {
                observe_boot(e, inst, &log_dir);
            }
            per_instance.push((inst, logs, stalled));
        }
    }
    // Boots of deleted instances are forgotten, so the set stays as small
    // as the instance list.
    let ids: HashSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    e.boots_seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|(id, _)| ids.contains(id.as_str()));
    let mut by_state: BTreeMap<&'static str, i64> = states.iter().map(|s| (*s, 0)).collect();
    for inst in instances {
        *by_state.entry(inst.state).or_default() += 1;
    }
    let snapshot = Snapshot {
        by_state,
        per_instance: per_instance
            .into_iter()
            .map(|(i, logs, stalled)| InstanceSeries {
                id: i.id.clone(),
                name: i.name.clone(),
                logs,
                stalled,
            })
            .collect(),
        pulls,
        rss: daemon_rss().ok(),
    };
    let mut out = String::with_capacity(8192 + 600 * instances.len());
    prometheus_client::encoding::prometheus_text::encode(&mut out, &e.registry)?;
    let mut scraped = Registry::with_prefix("lodge");
    scraped.register_collector(Box::new(snapshot));
    prometheus_client::encoding::prometheus_text::encode(&mut out, &scraped)?;
    Ok(out)
}

/// Observes the boot of a running instance once: the guest said
/// "started" (the last status line) at the mtime of `guest-status.json`.
fn observe_boot(e: &Events, inst: &InstanceFacts, log_dir: &Path) {
    let Some(started_at) = &inst.started_at else {
        return;
    };
    let Ok(started) = lodge_common::time::parse_rfc3339(started_at) else {
        return;
    };
    if started < e.since {
        return;
    }
    let key = (inst.id.clone(), started_at.clone());
    let mut seen = e.boots_seen.lock().unwrap_or_else(PoisonError::into_inner);
    if seen.contains(&key) {
        return;
    }
    let Ok(Some(status)) = lodge_monitor::read_guest_status(log_dir) else {
        return;
    };
    if !matches!(
        status.event(),
        Some(lodge_guest::StatusEvent::Started { .. })
    ) {
        return;
    }
    let Ok(at) = std::fs::metadata(log_dir.join(lodge_monitor::GUEST_STATUS_JSON))
        .and_then(|m| m.modified())
    else {
        return;
    };
    // A boot whose status predates its start (a restore) is not a boot.
    if let Ok(took) = at.duration_since(started) {
        e.boot_seconds.observe(took.as_secs_f64());
        seen.insert(key);
    }
}

/// One log's totals, from its directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LogTotals {
    /// Bytes written since the log began.
    bytes: u64,
    /// Rotations since the log began.
    rotations: u64,
}

/// Totals of the monitor's two logs (`app`, `vmm`).
type LogDir = [(lodge_logs::Source, LogTotals); 2];

const MONITOR_LOGS: [lodge_logs::Source; 2] = [lodge_logs::Source::App, lodge_logs::Source::Vmm];

/// The totals of a directory that cannot be read (not created yet).
const NO_LOGS: LogDir = [
    (
        lodge_logs::Source::App,
        LogTotals {
            bytes: 0,
            rotations: 0,
        },
    ),
    (
        lodge_logs::Source::Vmm,
        LogTotals {
            bytes: 0,
            rotations: 0,
        },
    ),
];

/// Reads the totals of `app.log` and `vmm.log` from their segments: the
/// highest sequence number is the number of rotations, and the segments
/// deleted by retention (numbers below the oldest kept) each held what
/// the oldest kept one holds (the writer cuts every segment at its limit).
#[cfg(test)]
fn read_log_dir(dir: &Path) -> io::Result<LogDir> {
    let (mut seqs, live) = read_log_segments(dir)?;
    let mut out = NO_LOGS;
    for i in 0..2 {
        out[i].1 = totals(&mut seqs[i], live[i]);
    }
    Ok(out)
}

/// The rotated segments `(sequence, length)` of `app.log` and of
/// `vmm.log`, each sorted by sequence.
type Segments = [Vec<(u64, u64)>; 2];

/// The rotated segments of `app.log` and `vmm.log` and the lengths of the
/// live files, from one listing.
fn read_log_segments(dir: &Path) -> io::Result<(Segments, [u64; 2])> {
    let mut seqs: Segments = [Vec::new(), Vec::new()];
    let mut live = [0u64; 2];
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        for (i, source) in MONITOR_LOGS.iter().enumerate() {
            if name == source.file_name() {
                live[i] = entry.metadata().map(|m| m.len()).unwrap_or(0);
            } else if let Some(seq) = source.parse_segment_name(&name) {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                seqs[i].push((seq, len));
            }
        }
    }
    for s in &mut seqs {
        s.sort_unstable();
    }
    Ok((seqs, live))
}

#[cfg(test)]
fn totals(segments: &mut [(u64, u64)], live: u64) -> LogTotals {
    segments.sort_unstable();
    sorted_totals(segments, live)
}

/// [`read_log_dir`]'s arithmetic on segments sorted by sequence.
fn sorted_totals(segments: &[(u64, u64)], live: u64) -> LogTotals {
    let kept: u64 = segments.iter().map(|(_, len)| len).sum();
    match (segments.first(), segments.last()) {
        (Some(&(oldest, oldest_len)), Some(&(newest, _))) => LogTotals {
            bytes: live + kept + (oldest - 1) * oldest_len,
            rotations: newest,
        },
        _ => LogTotals {
            bytes: live,
            rotations: 0,
        },
    }
}

/// The logs whose writes fail right now, from the monitor's `capture.json`.
fn stalled_logs(dir: &Path) -> Vec<String> {
    match lodge_monitor::read_capture_info(dir) {
        Ok(Some(info)) => info.stalled.into_iter().map(|s| s.source).collect(),
        _ => Vec::new(),
    }
}

/// What the last scrapes read from one instance's log directory, with the
/// keys that say whether it still holds (see the module doc).
#[derive(Debug, Default)]
struct InstanceFiles {
    /// The rotated segments `(sequence, length)` of `app` and `vmm`,
    /// sorted, while the directory has this key.
    segments: Option<(StatKey, Segments)>,
    /// The stalled logs while `capture.json` has this key (`None`: no file).
    stalled: Option<(Option<StatKey>, Vec<String>)>,
}

/// Per instance id, what the scrapes remember of its files.
static FILE_CACHE: Mutex<BTreeMap<String, InstanceFiles>> = Mutex::new(BTreeMap::new());

impl InstanceFiles {
    /// [`read_log_dir`]'s totals; the directory is listed again only when
    /// its key changed (a rotation, a retention delete, a file created or
    /// renamed in), and the live files are `statx`ed every time.
    fn log_totals(&mut self, dir: &Path, cutoff: SystemTime) -> LogDir {
        let Ok(Some(key)) = StatKey::of(dir) else {
            self.segments = None;
            return NO_LOGS;
        };
        let mut fresh = None;
        let segments = match &self.segments {
            Some((k, segs)) if *k == key => segs,
            _ => {
                self.segments = None;
                let Ok((segs, _)) = read_log_segments(dir) else {
                    return NO_LOGS;
                };
                if key.settled_before(cutoff) && matches!(StatKey::of(dir), Ok(Some(k)) if k == key)
                {
                    &self.segments.insert((key, segs)).1
                } else {
                    fresh.insert(segs)
                }
            }
        };
        let mut out = NO_LOGS;
        for (i, source) in MONITOR_LOGS.iter().enumerate() {
            // As a listing sees it: the entry itself, not a link's target.
            let live = std::fs::symlink_metadata(dir.join(source.file_name()))
                .map(|m| m.len())
                .unwrap_or(0);
            out[i].1 = sorted_totals(&segments[i], live);
        }
        out
    }

    /// [`stalled_logs`], read again only when `capture.json` changed.
    fn stalled_logs(&mut self, dir: &Path, cutoff: SystemTime) -> Vec<String> {
        let path = dir.join(lodge_monitor::CAPTURE_JSON);
        let Ok(key) = StatKey::of(&path) else {
            self.stalled = None;
            return stalled_logs(dir);
        };
        if let Some((k, stalled)) = &self.stalled {
            if *k == key {
                return stalled.clone();
            }
        }
        let stalled = if key.is_some() {
            stalled_logs(dir)
        } else {
            Vec::new()
        };
        let settled = key.is_none_or(|k| k.settled_before(cutoff));
        let trusted = settled && matches!(StatKey::of(&path), Ok(k) if k == key);
        self.stalled = trusted.then(|| (key, stalled.clone()));
        stalled
    }
}

/// The daemon's resident set size, from `/proc/self/statm`.
fn daemon_rss() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed statm"))?;
    Ok(pages * rustix::param::page_size() as u64)
}

#[derive(Debug)]
struct InstanceSeries {
    id: String,
    name: String,
    logs: LogDir,
    stalled: Vec<String>,
}

/// The facts read on one scrape, encoded by [`Collector::encode`].
#[derive(Debug)]
struct Snapshot {
    by_state: BTreeMap<&'static str, i64>,
    per_instance: Vec<InstanceSeries>,
    pulls: PullStats,
    rss: Option<u64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The labels of a per-instance log series.
fn log_labels<'a>(inst: &'a InstanceSeries, source: &'static str) -> [(&'static str, &'a str); 3] {
    [
        ("instance_id", &inst.id),
        ("instance_name", &inst.name),
        ("source", source),
    ]
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

fn source_name(s: lodge_logs::Source) -> &'static str {
    match s {
        lodge_logs::Source::App => "app",
        lodge_logs::Source::Vmm => "vmm",
        lodge_logs::Source::Lodge => "lodge",
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(0i64);
        let counter = ConstCounter::new(0u64);
        {
            let mut m = enc.encode_descriptor(
                "instances",
                "Instances by state",
                None,
                gauge.metric_type(),
            )?;
            for (state, n) in &self.by_state {
                ConstGauge::new(*n).encode(m.encode_family(&StateLabel { state })?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "image_pulls",
                "Image pulls finished, by result",
                None,
                counter.metric_type(),
            )?;
            for (result, n) in [("ready", self.pulls.ready), ("failed", self.pulls.failed)] {
                ConstCounter::new(n).encode(m.encode_family(&ResultLabel { result })?)?;
            }
        }
        ConstCounter::new(self.pulls.bytes_fetched).encode(enc.encode_descriptor(
            "image_pull_bytes",
            "Layer bytes fetched from registries (cached blobs not counted)",
            None,
            counter.metric_type(),
        )?)?;
        type Pick = fn(&LogTotals) -> u64;
        for (name, help, pick) in [
            (
                "log_bytes",
                "Bytes the monitor wrote to an instance's log since it began",
                (|t: &LogTotals| t.bytes) as Pick,
            ),
            (
                "log_rotations",
                "Rotations of an instance's log since it began",
                (|t: &LogTotals| t.rotations) as Pick,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, counter.metric_type())?;
            for inst in &self.per_instance {
                for (source, totals) in &inst.logs {
                    let labels = log_labels(inst, source_name(*source));
                    ConstCounter::new(pick(totals)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "log_writer_errors",
                "1 while the monitor's writes to this log fail (capture.json), else 0",
                None,
                gauge.metric_type(),
            )?;
            for inst in &self.per_instance {
                for source in MONITOR_LOGS {
                    let name = source_name(source);
                    let failing = inst.stalled.iter().any(|s| s == name);
                    let labels = log_labels(inst, name);
                    ConstGauge::new(i64::from(failing)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(rss) = self.rss {
            ConstGauge::new(rss as i64).encode(enc.encode_descriptor(
                "daemon_resident_memory_bytes",
                "Resident memory of the API daemon",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_key_comes_from_instance_routes_only() {
        assert_eq!(
            instance_key("/instances/{id}/logs", "/instances/web/logs"),
            Some("web")
        );
        assert_eq!(
            instance_key("/instances/{id}", "/instances/ab12"),
            Some("ab12")
        );
        assert_eq!(instance_key("/instances", "/instances"), None);
        assert_eq!(instance_key("/images/{name}", "/images/x"), None);
    }

    #[test]
    fn totals_count_rotations_and_dropped_segments() {
        assert_eq!(
            totals(&mut [], 7),
            LogTotals {
                bytes: 7,
                rotations: 0
            }
        );
        // Segments 3 and 4 kept (1 and 2 dropped), 10 bytes each, 4 live.
        assert_eq!(
            totals(&mut [(4, 10), (3, 10)], 4),
            LogTotals {
                bytes: 44,
                rotations: 4
            }
        );
    }

    #[test]
    fn a_log_dir_is_read_from_its_segments() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("app.log"), b"abc")?;
        std::fs::write(dir.path().join("app.log.00000002"), b"0123456789")?;
        std::fs::write(dir.path().join("app.log.1"), b"operator leftover")?;
        std::fs::write(dir.path().join("vmm.log"), b"x")?;
        let logs = read_log_dir(dir.path())?;
        assert_eq!(
            logs[0].1,
            LogTotals {
                bytes: 23,
                rotations: 2
            }
        );
        assert_eq!(
            logs[1].1,
            LogTotals {
                bytes: 1,
                rotations: 0
            }
        );
        Ok(())
    }

    /// A cutoff after everything the test wrote (as if time had passed).
    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(10)
    }

    #[test]
    fn remembered_log_totals_follow_writes_and_rotations() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let logs = dir.path();
        std::fs::write(logs.join("app.log"), b"abc")?;
        std::fs::write(logs.join("app.log.00000001"), b"0123456789")?;
        let mut files = InstanceFiles::default();
        let mut totals = |cutoff| files.log_totals(logs, cutoff)[0].1;
        // Not settled yet: read, not remembered.
        assert_eq!(
            totals(settled_cutoff()),
            LogTotals {
                bytes: 13,
                rotations: 1
            }
        );
        assert_eq!(
            totals(later()),
            LogTotals {
                bytes: 13,
                rotations: 1
            }
        );
        // A write to the live file is seen without listing again.
        std::fs::OpenOptions::new()
            .append(true)
            .open(logs.join("app.log"))
            .and_then(|mut f| io::Write::write_all(&mut f, b"de"))?;
        assert_eq!(
            totals(settled_cutoff()),
            LogTotals {
                bytes: 15,
                rotations: 1
            }
        );
        // A rotation changes the directory: listed again.
        std::fs::rename(logs.join("app.log"), logs.join("app.log.00000002"))?;
        std::fs::write(logs.join("app.log"), b"x")?;
        assert_eq!(
            totals(settled_cutoff()),
            LogTotals {
                bytes: 16,
                rotations: 2
            }
        );
        assert_eq!(
            totals(settled_cutoff()),
            LogTotals {
                bytes: 16,
                rotations: 2
            }
        );
        Ok(())
    }

    #[test]
    fn a_stat_key_settles_and_changes_with_the_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("capture.json");
        assert_eq!(StatKey::of(&path)?, None);
        std::fs::write(&path, b"{}")?;
        let key = StatKey::of(&path)?.ok_or_else(|| io::Error::other("no key"))?;
        assert!(!key.settled_before(settled_cutoff()));
        assert!(key.settled_before(later()));
        // Same size, rewritten in place, within the same tick maybe: the
        // key may stay, which is why only settled keys are trusted; once
        // the clock has moved on, a rewrite moves the times.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, b"[]")?;
        assert_ne!(StatKey::of(&path)?, Some(key));
        Ok(())
    }

    #[test]
    fn the_scrape_names_every_state_and_series() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = Paths::new(dir.path());
        let logs = paths.guest("abc123").logs();
        std::fs::create_dir_all(&logs)?;
        std::fs::write(logs.join("app.log"), b"hello\n")?;
        boot_started();
        agent_session("exec");
        let facts = [InstanceFacts {
            id: "abc123".into(),
            name: "web".into(),
            state: "Stopped",
            started_at: None,
        }];
        let text = render_in(
            &paths,
            &facts,
            &["Running", "Stopped"],
            PullStats {
                ready: 2,
                failed: 1,
                bytes_fetched: 99,
            },
        )?;
        for line in [
            "lodge_instances{state=\"Running\"} 0",
            "lodge_instances{state=\"Stopped\"} 1",
            "lodge_image_pulls_total{result=\"ready\"} 2",
            "lodge_image_pull_bytes_total 99",
            "lodge_log_bytes_total{instance_id=\"abc123\",instance_name=\"web\",source=\"app\"} 6",
            "lodge_log_rotations_total{instance_id=\"abc123\",instance_name=\"web\",source=\"vmm\"} 0",
            "lodge_log_writer_errors{instance_id=\"abc123\",instance_name=\"web\",source=\"app\"} 0",
            "lodge_agent_sessions_total{kind=\"exec\"}",
            "# TYPE lodge_boot_duration_seconds histogram",
            "lodge_daemon_resident_memory_bytes ",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        Ok(())
    }
}
