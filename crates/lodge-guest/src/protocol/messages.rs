//! The typed JSON payloads of the agent protocol's control frames.
//!
//! Unknown fields are refused (`deny_unknown_fields`) on what the agent
//! receives: the host and the agent come from one build, so an unknown
//! field means a stale initrd, and saying so beats silently ignoring an
//! option. The shapes of [`EntryHeader`] and [`PathInfo`] follow hypeman's
//! copy headers and `PathInfo`, so the daemon forwards them nearly as is.

use serde::{Deserialize, Serialize};

/// `Hello` (host → guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Chosen by the host per connection; echoed in [`HelloAck`].
    pub nonce: u64,
}

/// `HelloAck` (guest → host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub version: u32,
    pub nonce: u64,
}

/// What an `Open` frame asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Run a command. Answered by `Started`, output, then `Exit` or `Failed`.
    Exec(ExecStart),
    /// Receive entries into `path`: `Control::Entry` + `Data` + `EntryEnd`
    /// per entry, then `Eof`. The first entry is the copy's root and lands
    /// at `path` itself whatever its name; every later entry's path starts
    /// with the root's name. `path`'s parent must exist. Answered by
    /// `Result`, or `Error` at the first failure.
    CopyTo { path: String },
    /// Send `path` (a file, a directory tree or a symlink) as `Header` +
    /// `Data` + `End` per entry, paths rooted at the source's base name.
    CopyFrom {
        path: String,
        #[serde(default)]
        follow_links: bool,
    },
    /// Answered by one `Stat` event.
    Stat {
        path: String,
        #[serde(default)]
        follow_links: bool,
    },
    /// Consume `Data` until `Eof` and throw it away; answered by `Result`.
    /// Measures the raw channel from host to guest.
    Discard,
    /// Send `bytes` zero bytes as `Data`, then `End {last: true}`. Measures
    /// the raw channel from guest to host.
    Generate { bytes: u64 },
    /// Move the guest's NIC onto another address (a fork restored from its
    /// source's memory still has the source's): answered by `Result`, or
    /// `Error` at the first step that failed.
    Readdress(Readdress),
    /// Mount a volume disk that was just hot-plugged (waiting for it to
    /// appear). Answered by `Result` once mounted, or `Error`.
    Mount(crate::volumes::VolumeMount),
    /// Unmount the volume at `mount_path` (never lazily: a busy mount
    /// stays and the answer says so). Answered by `Result` or `Error`.
    Unmount { mount_path: String },
}

/// A new network identity for the guest's (one) NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readdress {
    /// The new MAC, address, prefix, gateway and host name.
    pub network: crate::NetworkConfig,
    /// The address to remove (the one the guest was saved with).
    #[serde(default)]
    pub old_ip: Option<std::net::Ipv4Addr>,
}

/// A command to run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    /// Program and arguments; the program is searched in `PATH`.
    pub command: Vec<String>,
    /// `KEY=VALUE` entries added to (and overriding) the workload's
    /// environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory; the workload's when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run on a new pseudo-terminal (stdout and stderr merged into it).
    #[serde(default)]
    pub tty: bool,
    /// Initial terminal size; 0 means 24 rows, 80 columns.
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
    /// Kill the command (its whole process group) after this many seconds.
    #[serde(default)]
    pub timeout_secs: Option<u32>,
}

/// Host → guest, on an open stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// New terminal size of a TTY exec.
    Resize { rows: u16, cols: u16 },
    /// The client went away: kill the command or abandon the copy.
    Cancel,
    /// The next entry of a `CopyTo`; its contents follow as `Data`.
    Entry(EntryHeader),
    /// The current entry of a `CopyTo` is complete.
    EntryEnd,
}

/// One file, directory or symlink of a copy (hypeman's copy header).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EntryHeader {
    /// Relative, `/`-separated; see [`Request::CopyTo`] and
    /// [`Request::CopyFrom`] for what it is relative to.
    pub path: String,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub is_symlink: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_target: String,
    /// Size of a regular file's contents (advisory when receiving).
    #[serde(default)]
    pub size: u64,
    /// Modification time, seconds since the epoch; 0 leaves it alone.
    #[serde(default)]
    pub mtime: i64,
    /// Owner; applied by a receiver only in archive mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// hypeman's `PathInfo`: what `stat` reports.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
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
    /// Permission bits (`0o777`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Guest → host, on an open stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The command runs as this guest pid.
    Started { pid: u32 },
    /// The command ended: `code` is its exit status, or 128 + `signal` when
    /// a signal killed it, or 124 when the timeout killed it.
    Exit {
        code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        #[serde(default)]
        timed_out: bool,
    },
    /// The command could not be started; `code` is docker's (127 not
    /// found, 126 not runnable or a bad working directory).
    Failed { message: String, code: i32 },
    /// The next entry of a `CopyFrom`.
    Header(EntryHeader),
    /// The current entry of a `CopyFrom` (or a `Generate`) is complete;
    /// `last` on the final one (hypeman's `final`).
    End { last: bool },
    /// A copy failed; nothing more follows.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
    },
    /// A `CopyTo` or `Discard` succeeded.
    Result { bytes: u64 },
    /// The answer to `Stat`.
    Stat(PathInfo),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_shape() {
        let exec = Request::Exec(ExecStart {
            command: vec!["sh".into(), "-c".into(), "true".into()],
            tty: true,
            rows: 30,
            cols: 100,
            ..ExecStart::default()
        });
        let json = serde_json::to_value(&exec).expect("json");
        assert_eq!(json["op"], "exec");
        assert_eq!(json["command"][0], "sh");
        assert_eq!(json["rows"], 30);
        let back: Request = serde_json::from_value(json).expect("back");
        assert_eq!(back, exec);

        let mount: Request = serde_json::from_str(
            r#"{"op":"mount","serial":"lodge-vol-0","mount_path":"/d","readonly":true}"#,
        )
        .expect("mount");
        assert!(matches!(mount, Request::Mount(m) if m.readonly && m.mount_path == "/d"));

        let stat: Request = serde_json::from_str(r#"{"op":"stat","path":"/etc"}"#).expect("stat");
        assert_eq!(
            stat,
            Request::Stat {
                path: "/etc".into(),
                follow_links: false
            }
        );
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"stat","path":"/","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"exec","command":["x"],"user":"root"}"#)
                .is_err()
        );
    }

    #[test]
    fn control_and_events_round_trip() {
        for c in [
            Control::Resize { rows: 1, cols: 2 },
            Control::Cancel,
            Control::Entry(EntryHeader {
                path: "a/b".into(),
                mode: 0o4755,
                uid: Some(7),
                ..EntryHeader::default()
            }),
            Control::EntryEnd,
        ] {
            let json = serde_json::to_string(&c).expect("json");
            assert_eq!(serde_json::from_str::<Control>(&json).expect("back"), c);
        }
        for e in [
            Event::Started { pid: 9 },
            Event::Exit {
                code: 137,
                signal: Some(9),
                timed_out: false,
            },
            Event::Failed {
                message: "x".into(),
                code: 127,
            },
            Event::End { last: true },
            Event::Result { bytes: 5 },
            Event::Stat(PathInfo {
                exists: false,
                ..PathInfo::default()
            }),
        ] {
            let json = serde_json::to_string(&e).expect("json");
            assert_eq!(serde_json::from_str::<Event>(&json).expect("back"), e);
        }
    }

    #[test]
    fn path_info_leaves_out_what_is_unknown() {
        let missing = PathInfo {
            exists: false,
            ..PathInfo::default()
        };
        assert_eq!(
            serde_json::to_string(&missing).expect("json"),
            r#"{"exists":false}"#
        );
    }
}
