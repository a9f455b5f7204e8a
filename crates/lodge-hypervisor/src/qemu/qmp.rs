//! A small QMP (QEMU Machine Protocol) client over a Unix socket.
//!
//! The protocol, as this client speaks it:
//!
//! 1. Connect. QEMU creates the socket early in its start-up, so
//!    [`QmpClient::connect`] retries for a bounded time while the path is
//!    missing or refuses connections (a stale socket from a killed QEMU).
//! 2. QEMU sends a greeting `{"QMP": {...}}`. QEMU serves one client at a
//!    time: while another client is connected, the greeting never comes, which
//!    shows up here as a timeout.
//! 3. The client sends `{"execute": "qmp_capabilities"}` to leave negotiation
//!    mode; only then are other commands accepted.
//! 4. Each command carries an `"id"` that QEMU echoes in its reply
//!    (`{"return": …}` or `{"error": {"class", "desc"}}`). Asynchronous events
//!    (`{"event": "STOP", …}`) may arrive at any time, also between a command
//!    and its reply; they are never taken for a reply but kept in a bounded
//!    queue the caller may drain or wait on.
//!
//! Every call has a deadline. After a timeout the session may hold half a
//! message, so it should be dropped and a new one connected. Messages are
//! newline-delimited JSON; a line longer than [`MAX_MESSAGE_LEN`] is refused
//! rather than buffered.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

/// Longest QMP message accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// Most events kept while nobody drains them; older ones are dropped.
pub const MAX_QUEUED_EVENTS: usize = 256;

/// How often a missing or refusing socket is retried while connecting.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket did not accept a connection within the connect timeout.
    #[error("cannot connect to qmp socket {path:?} within {after:?}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The connect timeout.
        after: Duration,
        /// The last connection error.
        #[source]
        source: io::Error,
    },
    /// A step did not finish in time.
    #[error("qmp {what} timed out after {after:?}")]
    Timeout {
        /// What was awaited (`greeting`, a command name, `event`).
        what: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// Reading or writing the socket failed.
    #[error("qmp socket i/o failed")]
    Io(#[from] io::Error),
    /// QEMU closed the connection.
    #[error("qmp connection closed by qemu")]
    Closed,
    /// A message that is not the JSON QMP promises.
    #[error("malformed qmp message {line:?}")]
    Malformed {
        /// The offending message, cut to 200 bytes.
        line: String,
        /// What was wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// A message longer than [`MAX_MESSAGE_LEN`].
    #[error("qmp message longer than {MAX_MESSAGE_LEN} bytes")]
    TooLong,
    /// The first message was not a greeting.
    #[error("expected qmp greeting, got {0:?}")]
    NoGreeting(String),
    /// QEMU answered a command with an error.
    #[error("qmp command {command} failed: {class}: {desc}")]
    Command {
        /// The command that failed.
        command: String,
        /// QEMU's error class (`GenericError`, `CommandNotFound`, …).
        class: String,
        /// QEMU's human-readable description.
        desc: String,
    },
}

/// QEMU's run state, as `query-status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Guest CPUs are running.
    Running,
    /// Stopped by `stop` (or `-S` then `cont`… then `stop`).
    Paused,
    /// Started with `-S` and not yet continued.
    Prelaunch,
    /// The guest shut down; QEMU stays only with `-no-shutdown`.
    Shutdown,
    /// Stopped by a disk I/O error.
    IoError,
    /// Stopped by a watchdog action.
    Watchdog,
    /// The guest panicked (pvpanic) and QEMU was told to pause.
    GuestPanicked,
    /// QEMU hit an internal error (e.g. KVM emulation failure).
    InternalError,
    /// ACPI S3 suspend.
    Suspended,
    /// Waiting for an incoming migration / snapshot.
    InMigrate,
    /// Migration finished on the source side.
    PostMigrate,
    /// Stopped by a debugger.
    Debug,
    /// Any other state QEMU names (`save-vm`, `restore-vm`, `colo`, …).
    Other(String),
}

impl RunState {
    /// Maps QMP's state name.
    pub fn from_qmp(name: &str) -> Self {
        match name {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "prelaunch" => RunState::Prelaunch,
            "shutdown" => RunState::Shutdown,
            "io-error" => RunState::IoError,
            "watchdog" => RunState::Watchdog,
            "guest-panicked" => RunState::GuestPanicked,
            "internal-error" => RunState::InternalError,
            "suspended" => RunState::Suspended,
            "inmigrate" => RunState::InMigrate,
            "postmigrate" => RunState::PostMigrate,
            "debug" => RunState::Debug,
            other => RunState::Other(other.to_owned()),
        }
    }
}

/// The reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    /// Whether guest CPUs are running.
    pub running: bool,
    /// The detailed run state.
    pub status: RunState,
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name (`SHUTDOWN`, `STOP`, `RESUME`, `POWERDOWN`, …).
    pub name: String,
    /// The event's `data` member (`Null` if absent).
    pub data: Value,
}

#[derive(Deserialize)]
struct RawStatus {
    running: bool,
    status: String,
}

/// Where a migration (a save to, or load from, a file) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStatus {
    /// No migration has started (also what a QEMU waiting with
    /// `-incoming defer` reports before `migrate-incoming`).
    None,
    /// Setting up.
    Setup,
    /// Sending or receiving.
    Active,
    /// Finished; the state is saved (or loaded).
    Completed,
    /// Failed; see [`MigrationInfo::error`].
    Failed,
    /// Cancelled.
    Cancelled,
    /// Another state (`pre-switchover`, `device`, `cancelling`, …): still
    /// under way.
    Other(String),
}

impl MigrationStatus {
    /// Maps QMP's status name.
    pub fn from_qmp(name: &str) -> Self {
        match name {
            "none" => MigrationStatus::None,
            "setup" => MigrationStatus::Setup,
            "active" => MigrationStatus::Active,
            "completed" => MigrationStatus::Completed,
            "failed" => MigrationStatus::Failed,
            "cancelled" => MigrationStatus::Cancelled,
            other => MigrationStatus::Other(other.to_owned()),
        }
    }
}

/// The reply of `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    /// Where the migration is.
    pub status: MigrationStatus,
    /// QEMU's reason, when it failed.
    pub error: Option<String>,
    /// RAM bytes sent so far (outgoing only).
    pub transferred: u64,
}

#[derive(Deserialize)]
struct RawMigration {
    status: Option<String>,
    #[serde(rename = "error-desc")]
    error_desc: Option<String>,
    ram: Option<RawMigrationRam>,
}

#[derive(Deserialize)]
struct RawMigrationRam {
    #[serde(default)]
    transferred: u64,
}

#[derive(Deserialize)]
struct RawVersion {
    qemu: RawVersionTriple,
    #[serde(default)]
    package: String,
}

#[derive(Deserialize)]
struct RawVersionTriple {
    major: u32,
    minor: u32,
    micro: u32,
}

#[derive(Deserialize)]
struct RawCpu {
    #[serde(rename = "qom-type", default)]
    qom_type: String,
}

/// One connected, negotiated QMP session.
#[derive(Debug)]
pub struct QmpClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    next_id: u64,
    events: VecDeque<QmpEvent>,
    dropped_events: u64,
}

/// What one incoming message was.
enum Incoming {
    Reply {
        id: Option<Value>,
        result: Result<Value, (String, String)>,
    },
    Event(QmpEvent),
    Greeting,
}

impl QmpClient {
    /// Connects to `path`, retrying for up to `connect_timeout` while the
    /// socket is missing or refuses, then reads the greeting and negotiates
    /// capabilities. `timeout` bounds the greeting and every later call.
    pub async fn connect(
        path: &Path,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, QmpError> {
        let deadline = Instant::now() + connect_timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() + CONNECT_RETRY_INTERVAL < deadline =>
                {
                    tokio::time::sleep(CONNECT_RETRY_INTERVAL).await;
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        after: connect_timeout,
                        source,
                    })
                }
            }
        };
        let (read, writer) = stream.into_split();
        let mut client = Self {
            reader: BufReader::new(read),
            writer,
            timeout,
            next_id: 0,
            events: VecDeque::new(),
            dropped_events: 0,
        };
        let deadline = Instant::now() + timeout;
        match client.read_message(deadline, "greeting").await? {
            Incoming::Greeting => {}
            Incoming::Event(ev) => return Err(QmpError::NoGreeting(ev.name)),
            Incoming::Reply { .. } => return Err(QmpError::NoGreeting("a reply".into())),
        }
        client.execute_raw("qmp_capabilities", None).await?;
        tracing::debug!(path = %path.display(), "qmp session ready");
        Ok(client)
    }

    /// Runs `command` with optional `arguments` and returns the raw `return`
    /// value. Events that arrive meanwhile are queued, not returned.
    pub async fn execute_raw(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = format!("lodge-{}", self.next_id);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let deadline = Instant::now() + self.timeout;
        match timeout_at(deadline, self.writer.write_all(line.as_bytes())).await {
            Ok(res) => res?,
            Err(_) => return Err(self.timeout_error(command)),
        }
        tracing::trace!(command, %id, "qmp command sent");
        loop {
            match self.read_message(deadline, command).await? {
                Incoming::Event(ev) => self.queue_event(ev),
                Incoming::Greeting => {}
                Incoming::Reply { id: got, result } => {
                    if got.as_ref().and_then(Value::as_str) != Some(id.as_str()) {
                        // A reply to a command this session did not send (or
                        // sent before a timeout): not ours, keep waiting.
                        tracing::debug!(?got, "qmp reply with foreign id ignored");
                        continue;
                    }
                    return result.map_err(|(class, desc)| QmpError::Command {
                        command: command.to_owned(),
                        class,
                        desc,
                    });
                }
            }
        }
    }

    /// Runs `command` and decodes its `return` value into `R`.
    pub async fn execute<R: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<R, QmpError> {
        let value = self.execute_raw(command, arguments).await?;
        serde_json::from_value(value.clone()).map_err(|source| QmpError::Malformed {
            line: cut(&value.to_string()),
            source,
        })
    }

    /// `query-status`: the VM's run state.
    pub async fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        let raw: RawStatus = self.execute("query-status", None).await?;
        Ok(StatusInfo {
            running: raw.running,
            status: RunState::from_qmp(&raw.status),
        })
    }

    /// `stop`: pauses guest CPUs.
    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute_raw("stop", None).await.map(drop)
    }

    /// `cont`: resumes guest CPUs (also leaves `prelaunch`).
    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute_raw("cont", None).await.map(drop)
    }

    /// `system_powerdown`: presses the ACPI power button. Returns once QEMU
    /// has injected the event; the guest shuts down in its own time (or not).
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute_raw("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once. A connection closed before the reply
    /// arrives counts as success, since that is what quitting does.
    pub async fn quit(mut self) -> Result<(), QmpError> {
        match self.execute_raw("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(QmpError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
            Err(QmpError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `blockdev-add` of a raw image file as block node `node`.
    pub async fn blockdev_add_raw(
        &mut self,
        node: &str,
        path: &Path,
        read_only: bool,
    ) -> Result<(), QmpError> {
        // JSON carries only UTF-8; a path that is not cannot be named here.
        let filename = path.to_str().ok_or_else(|| QmpError::Command {
            command: "blockdev-add".into(),
            class: "lodge".into(),
            desc: format!("path {} is not UTF-8", path.display()),
        })?;
        let args = json!({
            "driver": "raw",
            "node-name": node,
            "read-only": read_only,
            "file": { "driver": "file", "filename": filename },
        });
        self.execute_raw("blockdev-add", Some(args)).await.map(drop)
    }

    /// `blockdev-del` of block node `node`.
    pub async fn blockdev_del(&mut self, node: &str) -> Result<(), QmpError> {
        self.execute_raw("blockdev-del", Some(json!({ "node-name": node })))
            .await
            .map(drop)
    }

    /// `device_add` with `args` (`driver`, `id` and the device's properties).
    pub async fn device_add(&mut self, args: Value) -> Result<(), QmpError> {
        self.execute_raw("device_add", Some(args)).await.map(drop)
    }

    /// `device_del`: asks the guest to release device `id`; QEMU sends
    /// `DEVICE_DELETED` once it has.
    pub async fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute_raw("device_del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    /// `migrate`: starts saving the VM's state to `uri` (e.g. `exec:cat >
    /// FILE`) and returns at once; [`QmpClient::query_migrate`] tells
    /// when it has finished.
    pub async fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute_raw("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `migrate-incoming`: starts loading a saved state from `uri` into a
    /// QEMU started with `-incoming defer`; returns at once.
    pub async fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute_raw("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `migrate_cancel`: abandons an outgoing migration.
    pub async fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        self.execute_raw("migrate_cancel", None).await.map(drop)
    }

    /// `migrate-set-parameters` with `max-bandwidth` in bytes per second
    /// (QEMU's default throttles a save to a file to 128 MiB/s).
    pub async fn set_migration_bandwidth(&mut self, bytes_per_sec: u64) -> Result<(), QmpError> {
        self.execute_raw(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": bytes_per_sec })),
        )
        .await
        .map(drop)
    }

    /// `migrate-set-capabilities` for one capability.
    pub async fn set_migration_capability(
        &mut self,
        capability: &str,
        state: bool,
    ) -> Result<(), QmpError> {
        self.execute_raw(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [{ "capability": capability, "state": state }] })),
        )
        .await
        .map(drop)
    }

    /// `query-migrate`: where the current (or last) migration is.
    pub async fn query_migrate(&mut self) -> Result<MigrationInfo, QmpError> {
        let raw: RawMigration = self.execute("query-migrate", None).await?;
        Ok(MigrationInfo {
            status: raw
                .status
                .as_deref()
                .map_or(MigrationStatus::None, MigrationStatus::from_qmp),
            error: raw.error_desc,
            transferred: raw.ram.map(|r| r.transferred).unwrap_or(0),
        })
    }

    /// `query-version`: QEMU's version as `MAJOR.MINOR.MICRO` followed by
    /// its package string in parentheses when it has one (as `qemu
    /// --version` prints it).
    pub async fn query_version(&mut self) -> Result<String, QmpError> {
        let raw: RawVersion = self.execute("query-version", None).await?;
        let v = raw.qemu;
        let package = raw.package.trim();
        Ok(if package.is_empty() {
            format!("{}.{}.{}", v.major, v.minor, v.micro)
        } else {
            format!("{}.{}.{} ({package})", v.major, v.minor, v.micro)
        })
    }

    /// The QOM type of the first vCPU (e.g. `qemu64-x86_64-cpu`), from
    /// `query-cpus-fast`.
    pub async fn query_cpu_model(&mut self) -> Result<String, QmpError> {
        let cpus: Vec<RawCpu> = self.execute("query-cpus-fast", None).await?;
        Ok(cpus
            .into_iter()
            .next()
            .map(|c| c.qom_type)
            .unwrap_or_default())
    }

    /// Takes every event queued so far, oldest first.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// How many events were dropped because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Waits up to `timeout` for an event named `name` (the oldest queued
    /// one, or the next to arrive) and removes it from the queue. Other
    /// events stay queued.
    pub async fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<QmpEvent, QmpError> {
        if let Some(pos) = self.events.iter().position(|e| e.name == name) {
            if let Some(ev) = self.events.remove(pos) {
                return Ok(ev);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_message_for(deadline, "event", timeout).await? {
                Incoming::Event(ev) if ev.name == name => return Ok(ev),
                Incoming::Event(ev) => self.queue_event(ev),
                Incoming::Greeting | Incoming::Reply { .. } => {}
            }
        }
    }

    fn queue_event(&mut self, ev: QmpEvent) {
        tracing::debug!(event = %ev.name, "qmp event");
        if self.events.len() == MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(ev);
    }

    fn timeout_error(&self, what: &str) -> QmpError {
        QmpError::Timeout {
            what: what.to_owned(),
            after: self.timeout,
        }
    }

    async fn read_message(&mut self, deadline: Instant, what: &str) -> Result<Incoming, QmpError> {
        let after = self.timeout;
        self.read_message_for(deadline, what, after).await
    }

    async fn read_message_for(
        &mut self,
        deadline: Instant,
        what: &str,
        after: Duration,
    ) -> Result<Incoming, QmpError> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let limit = (MAX_MESSAGE_LEN + 1) as u64;
            let mut limited = (&mut self.reader).take(limit);
            let n = match timeout_at(deadline, limited.read_until(b'\n', &mut buf)).await {
                Ok(res) => res?,
                Err(_) => {
                    return Err(QmpError::Timeout {
                        what: what.to_owned(),
                        after,
                    })
                }
            };
            if n == 0 {
                return Err(QmpError::Closed);
            }
            if buf.last() != Some(&b'\n') {
                if buf.len() > MAX_MESSAGE_LEN {
                    return Err(QmpError::TooLong);
                }
                // EOF in the middle of a message.
                return Err(QmpError::Closed);
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return parse_message(&buf);
        }
    }
}

fn parse_message(line: &[u8]) -> Result<Incoming, QmpError> {
    let malformed = |source| QmpError::Malformed {
        line: cut(&String::from_utf8_lossy(line)),
        source,
    };
    let mut value: Value = serde_json::from_slice(line).map_err(malformed)?;
    let Some(obj) = value.as_object_mut() else {
        return Err(malformed(serde::de::Error::custom("not a json object")));
    };
    if obj.contains_key("QMP") {
        return Ok(Incoming::Greeting);
    }
    if let Some(name) = obj.get("event").and_then(Value::as_str) {
        return Ok(Incoming::Event(QmpEvent {
            name: name.to_owned(),
            data: obj.remove("data").unwrap_or(Value::Null),
        }));
    }
    let id = obj.remove("id");
    if let Some(ret) = obj.remove("return") {
        return Ok(Incoming::Reply {
            id,
            result: Ok(ret),
        });
    }
    if let Some(err) = obj.get("error") {
        let field = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned()
        };
        return Ok(Incoming::Reply {
            id,
            result: Err((field("class"), field("desc"))),
        });
    }
    Err(malformed(serde::de::Error::custom(
        "neither greeting, event, return nor error",
    )))
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_greeting_event_reply_error() {
        let g = br#"{"QMP": {"version": {}, "capabilities": ["oob"]}}"#;
        assert!(matches!(parse_message(g), Ok(Incoming::Greeting)));

        let e = br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#;
        match parse_message(e) {
            Ok(Incoming::Event(ev)) => {
                assert_eq!(ev.name, "STOP");
                assert_eq!(ev.data, Value::Null);
            }
            _ => panic!("not an event"),
        }

        let r = br#"{"return": {"status": "running", "running": true}, "id": "lodge-3"}"#;
        match parse_message(r) {
            Ok(Incoming::Reply { id, result: Ok(v) }) => {
                assert_eq!(id, Some(json!("lodge-3")));
                assert_eq!(v["status"], "running");
            }
            _ => panic!("not a reply"),
        }

        let x = br#"{"id": "lodge-4", "error": {"class": "GenericError", "desc": "nope"}}"#;
        match parse_message(x) {
            Ok(Incoming::Reply {
                result: Err((class, desc)),
                ..
            }) => {
                assert_eq!(class, "GenericError");
                assert_eq!(desc, "nope");
            }
            _ => panic!("not an error reply"),
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            parse_message(b"[1,2]"),
            Err(QmpError::Malformed { .. })
        ));
        assert!(matches!(
            parse_message(b"{\"x\":1}"),
            Err(QmpError::Malformed { .. })
        ));
        assert!(matches!(
            parse_message(b"not json"),
            Err(QmpError::Malformed { .. })
        ));
    }

    #[test]
    fn run_state_names() {
        assert_eq!(RunState::from_qmp("running"), RunState::Running);
        assert_eq!(RunState::from_qmp("prelaunch"), RunState::Prelaunch);
        assert_eq!(
            RunState::from_qmp("guest-panicked"),
            RunState::GuestPanicked
        );
        assert_eq!(
            RunState::from_qmp("colo"),
            RunState::Other("colo".to_owned())
        );
    }

    #[test]
    fn cut_respects_char_boundaries() {
        let s = "é".repeat(150);
        let c = cut(&s);
        assert!(c.len() <= 200);
        assert!(s.starts_with(&c));
    }
}
