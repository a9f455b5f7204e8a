//! The API's wire types: what crosses between the daemon and its clients.
//!
//! One definition serves both ends: the handlers in `api/` deserialise the
//! requests and serialise the answers with these types, and the CLI
//! (`cmd/`, `client.rs`) does the reverse with the same types, so a field
//! cannot be spelled one way on one side and another way on the other.
//! Their JSON is hypeman's (plus the lodge extensions noted on each field);
//! whether an absent optional field is left out or sent as `null` is part of
//! that shape and is fixed by the `skip_serializing_if` attributes here.
//! WebSocket messages and the CLI's request bodies are sent through
//! `serde_json::Value`, so their keys come out sorted, byte for byte as
//! before these types existed; HTTP answers keep the declared field order.
//!
//! This module knows nothing of axum; it converts to and from the guest
//! agent's own messages where the shapes meet (copy headers, `stat`), since
//! the daemon forwards them and the CLI walks and unpacks trees with the
//! agent's code.

use std::collections::BTreeMap;

use lodge_guest::agent::EntryHeader;
use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

// --- exec ------------------------------------------------------------------

/// hypeman's exec request, plus `split_stderr`: the client's first message
/// on the exec WebSocket. Every field is sent; missing ones default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecRequest {
    /// Program and arguments; `["/bin/sh"]` when empty (as hypeman).
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute working directory (default: the workload's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command after this many seconds (0: never).
    #[serde(default)]
    pub timeout: u32,
    /// Seconds to keep trying to reach the guest agent (it may still be
    /// starting right after boot).
    #[serde(default)]
    pub wait_for_agent: u32,
    /// Initial terminal size (0: 24 rows, 80 columns).
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
    /// lodge extension: prefix output messages with 1 (stdout) or 2 (stderr).
    #[serde(default)]
    pub split_stderr: bool,
}

/// Client → server during exec: `{"resize":{"rows":R,"cols":C}}` (hypeman).
/// Strict, so that stdin text that merely mentions `resize` stays stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeMessage {
    pub resize: TermSize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// Client → server during exec: `{"close_stdin":true}`, lodge's
/// end-of-input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseStdin {
    pub close_stdin: bool,
}

/// The last message of an exec session (text): `{"exitCode": N}` plus
/// `signal`, `timed_out` or `error` when they apply. A request that could
/// not be read ends with `{"error": …}` alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecExit {
    #[serde(rename = "exitCode", default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub timed_out: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExecExit {
    /// A session that failed with `code` (127 not found, 126 not runnable).
    pub fn failed(code: i32, message: impl Into<String>) -> Self {
        ExecExit {
            exit_code: Some(code),
            error: Some(message.into()),
            ..ExecExit::default()
        }
    }

    /// The answer when the request itself could not be read.
    pub fn refused(message: impl Into<String>) -> Self {
        ExecExit {
            error: Some(message.into()),
            ..ExecExit::default()
        }
    }

    /// Whether a text message is the final one (it has an exit code or an
    /// error).
    pub fn is_final(&self) -> bool {
        self.exit_code.is_some() || self.error.is_some()
    }
}

/// Query of `GET /instances/{id}/stat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatQuery {
    pub path: Option<String>,
    #[serde(default)]
    pub follow_links: bool,
}

/// What `stat` answers: hypeman's `PathInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PathInfo {
    pub exists: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_dir: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_file: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_symlink: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl From<lodge_guest::agent::PathInfo> for PathInfo {
    fn from(p: lodge_guest::agent::PathInfo) -> Self {
        PathInfo {
            exists: p.exists,
            error: p.error,
            is_dir: p.is_dir,
            is_file: p.is_file,
            is_symlink: p.is_symlink,
            link_target: p.link_target,
            mode: p.mode,
            size: p.size,
        }
    }
}

// --- cp --------------------------------------------------------------------

/// `CpRequest::direction` values.
pub mod direction {
    pub const TO: &str = "to";
    pub const FROM: &str = "from";
    pub const STAT: &str = "stat";
}

/// hypeman's copy request, plus lodge's `stream` and `mtime`: the client's
/// first message on the cp WebSocket. Fields at their default are left out
/// when sending (the server reads them back as the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CpRequest {
    /// `to`, `from` or `stat` (see [`direction`]).
    pub direction: String,
    pub guest_path: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_dir: bool,
    /// Permission bits for `to` (default 0644, or 0755 for a directory).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub follow_links: bool,
    /// Owner for `to` (archive mode); 0 keeps root.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub gid: u32,
    /// lodge extension: modification time for `to`, seconds since the epoch.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub mtime: i64,
    /// lodge extension: `to` carries a tree of entries (see `api/cp.rs`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// Seconds to keep trying to reach the guest agent.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub wait_for_agent: u32,
}

/// A copy header on the WebSocket (hypeman's shape: `link_target` is
/// always there, the owner only when known).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHeader {
    pub path: String,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub is_symlink: bool,
    #[serde(default)]
    pub link_target: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl From<EntryHeader> for WireHeader {
    fn from(h: EntryHeader) -> Self {
        WireHeader {
            path: h.path,
            mode: h.mode,
            is_dir: h.is_dir,
            is_symlink: h.is_symlink,
            link_target: h.link_target,
            size: h.size,
            mtime: h.mtime,
            uid: h.uid,
            gid: h.gid,
        }
    }
}

impl From<WireHeader> for EntryHeader {
    fn from(h: WireHeader) -> Self {
        EntryHeader {
            path: h.path,
            mode: h.mode,
            is_dir: h.is_dir,
            is_symlink: h.is_symlink,
            link_target: h.link_target,
            size: h.size,
            mtime: h.mtime,
            uid: h.uid,
            gid: h.gid,
        }
    }
}

/// The text messages of a copy after the request, both ways, tagged by
/// `type`. Binary messages between a `header` and its `end` carry a file's
/// contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CpMessage {
    /// An entry begins.
    Header(WireHeader),
    /// The entry ends; `final` also ends the copy (hypeman's one-entry
    /// upload sends `{"type":"end"}` alone).
    End {
        #[serde(rename = "final", default)]
        last: bool,
    },
    /// The answer to a `stat` copy request.
    Stat(PathInfo),
    /// A failure while sending; nothing follows.
    Error {
        message: String,
        #[serde(default)]
        path: String,
    },
    /// The answer to an upload: `bytes_written` on success, `error` if not.
    Result {
        success: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes_written: Option<u64>,
    },
    /// A type this side does not know; ignored.
    #[serde(other)]
    Unknown,
}

impl CpMessage {
    pub fn error(message: impl Into<String>, path: impl Into<String>) -> Self {
        CpMessage::Error {
            message: message.into(),
            path: path.into(),
        }
    }

    pub fn written(bytes: u64) -> Self {
        CpMessage::Result {
            success: true,
            error: None,
            bytes_written: Some(bytes),
        }
    }

    pub fn not_written(error: impl Into<String>) -> Self {
        CpMessage::Result {
            success: false,
            error: Some(error.into()),
            bytes_written: None,
        }
    }
}

/// Query of `GET /instances/{id}/agent/throughput`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThroughputQuery {
    /// `from` (guest to host) or `to` (host to guest).
    pub direction: String,
    /// Bytes to move (default 64 MiB).
    pub bytes: Option<u64>,
}

/// The result of a throughput measurement.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Throughput {
    pub direction: String,
    pub bytes: u64,
    pub seconds: f64,
    pub mib_per_s: f64,
}

// --- logs ------------------------------------------------------------------

/// Query of `GET /instances/{id}/logs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
    /// app, vmm or lodge (hypeman's name for it also works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Only lines written at or after this time: RFC 3339, Unix seconds,
    /// or a duration ago (`10m`). lodge's addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only lines written before this time (same forms). lodge's addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Prefix each line with the time it was written (RFC 3339, UTC,
    /// microseconds) and a space. lodge's addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<bool>,
}

// --- images ----------------------------------------------------------------

/// hypeman's `Image`, plus lodge's `user`, `source` and live `progress`.
/// Absent values are sent as `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    /// Normalised reference (`docker.io/library/alpine:latest`).
    pub name: String,
    /// Manifest digest of the platform image (empty until resolved).
    pub digest: String,
    /// pending, pulling, converting, ready or failed.
    pub status: String,
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// os/arch[/variant].
    pub platform: Option<String>,
    pub queue_position: Option<u32>,
    /// Size of the root disk (null until ready).
    pub size_bytes: Option<u64>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub working_dir: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    /// lodge: the image's user (numeric when resolved in the image).
    pub user: Option<String>,
    /// lodge: what was pulled (a reference, or `oci-archive:PATH`).
    #[serde(default)]
    pub source: String,
    /// lodge: bytes and layers while pulling.
    #[serde(default)]
    pub progress: Option<ImageProgress>,
    /// lodge: the latest pull of this name. `status`/`error` above are the
    /// image's: a ready image pulled again stays `ready` while the refresh
    /// runs and after it fails; the refresh's outcome is reported here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<ImagePull>,
}

/// lodge: one pull of an image name, apart from the image it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImagePull {
    /// pending, pulling, converting, ready or failed.
    pub status: String,
    pub error: Option<String>,
    /// The error's code, as an API error would carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The platform asked for.
    pub platform: String,
    /// What was asked for.
    pub source: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, once ended.
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageProgress {
    pub layers_total: u32,
    pub layers_done: u32,
    pub layers_cached: u32,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistryCredentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_token: Option<String>,
}

/// hypeman's pull request. `credentials` are used for this pull only and
/// never stored. Unset fields are left out when sending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateImage {
    /// Reference (`alpine`, `127.0.0.1:5000/app:v1`, `x@sha256:…`) or an
    /// archive in the daemon's import directory (`oci-archive:/path.tar[:ref]`,
    /// `docker-archive:/path.tar[:ref]`; other archives are uploaded with
    /// `POST /images/load`).
    pub name: String,
    /// os/arch[/variant]; default linux/amd64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

// --- errors ----------------------------------------------------------------

/// The `{code, message}` of an API error: what the daemon sends with every
/// failure and what a client reads back (a missing `code` reads as empty).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    #[serde(default)]
    #[schema(required = true)]
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_endings_have_hypemans_shape() {
        let killed = ExecExit {
            exit_code: Some(137),
            signal: Some(9),
            ..ExecExit::default()
        };
        assert_eq!(
            serde_json::to_value(&killed).expect("json"),
            json!({"exitCode": 137, "signal": 9})
        );
        assert_eq!(
            serde_json::to_value(ExecExit::failed(127, "nope")).expect("json"),
            json!({"exitCode": 127, "error": "nope"})
        );
        assert_eq!(
            serde_json::to_value(ExecExit::refused("bad")).expect("json"),
            json!({"error": "bad"})
        );
        let back: ExecExit = serde_json::from_value(json!({"exitCode": 0})).expect("json");
        assert!(back.is_final());
        let other: ExecExit = serde_json::from_value(json!({"resize": 1})).expect("json");
        assert!(!other.is_final());
    }

    #[test]
    fn exec_requests_send_every_field() {
        let req = ExecRequest {
            command: vec!["true".into()],
            split_stderr: true,
            ..ExecRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&req).expect("json"),
            json!({"command": ["true"], "tty": false, "env": {}, "cwd": null, "timeout": 0,
                "wait_for_agent": 0, "rows": 0, "cols": 0, "split_stderr": true})
        );
    }

    #[test]
    fn copy_messages_have_hypemans_shape() {
        let cases = [
            (
                CpMessage::End { last: true },
                json!({"type": "end", "final": true}),
            ),
            (
                CpMessage::error("gone", "/x"),
                json!({"type": "error", "message": "gone", "path": "/x"}),
            ),
            (
                CpMessage::written(6),
                json!({"type": "result", "success": true, "bytes_written": 6}),
            ),
            (
                CpMessage::not_written("too large"),
                json!({"type": "result", "success": false, "error": "too large"}),
            ),
            (
                CpMessage::Stat(PathInfo::default()),
                json!({"type": "stat", "exists": false}),
            ),
            (
                CpMessage::Header(WireHeader {
                    path: "f".into(),
                    mode: 0o644,
                    size: 3,
                    ..WireHeader::default()
                }),
                json!({"type": "header", "path": "f", "mode": 0o644, "is_dir": false,
                    "is_symlink": false, "link_target": "", "size": 3, "mtime": 0}),
            ),
        ];
        for (message, want) in cases {
            assert_eq!(serde_json::to_value(&message).expect("json"), want);
            let back: CpMessage = serde_json::from_value(want).expect("back");
            assert_eq!(back, message);
        }
        // hypeman's bare end, and types this side does not know.
        let end: CpMessage = serde_json::from_str(r#"{"type":"end"}"#).expect("end");
        assert_eq!(end, CpMessage::End { last: false });
        let other: CpMessage = serde_json::from_str(r#"{"type":"later","x":1}"#).expect("other");
        assert_eq!(other, CpMessage::Unknown);
    }

    /// How `api/ws.rs` and the CLI put a message on the wire.
    fn bytes<T: Serialize>(value: &T) -> String {
        serde_json::to_value(value).expect("json").to_string()
    }

    #[test]
    fn sent_through_value_the_bytes_are_as_before() {
        // What `json!` produced before these types: keys sorted.
        assert_eq!(
            bytes(&ExecExit::failed(127, "nope")),
            r#"{"error":"nope","exitCode":127}"#
        );
        assert_eq!(
            bytes(&CpMessage::End { last: true }),
            r#"{"final":true,"type":"end"}"#
        );
        assert_eq!(
            bytes(&CpMessage::written(6)),
            r#"{"bytes_written":6,"success":true,"type":"result"}"#
        );
    }

    #[test]
    fn copy_requests_leave_defaults_out() {
        let req = CpRequest {
            direction: direction::FROM.into(),
            guest_path: "/etc".into(),
            ..CpRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&req).expect("json"),
            json!({"direction": "from", "guest_path": "/etc"})
        );
        let back: CpRequest =
            serde_json::from_str(r#"{"direction":"to","guest_path":"/x","stream":true}"#)
                .expect("json");
        assert!(back.stream);
    }
}
