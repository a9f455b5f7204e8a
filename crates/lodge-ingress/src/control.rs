//! The proxy process's control socket (`<ingress dir>/control.sock`) and
//! its lifetime lock (`proxy.lock`).
//!
//! One JSON line in, one JSON line out per connection. The daemon sends
//! `reload` after every change to the records (with its own API address,
//! which the proxy needs to wake instances) and waits for the answer, so a
//! create learns whether its ports were bound; `exit` ends a proxy that has
//! nothing left to serve. The lock is an `flock` the kernel drops however
//! the process ends: whoever holds it is the one proxy of this data dir,
//! and the daemon tells a live proxy from a stale socket by it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long the daemon waits for an answer (a reload binds ports only).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub fn socket_path(ingress_dir: &Path) -> PathBuf {
    ingress_dir.join("control.sock")
}

pub fn lock_path(ingress_dir: &Path) -> PathBuf {
    ingress_dir.join("proxy.lock")
}

/// The running proxy's pid (for operators and tests).
pub fn pid_path(ingress_dir: &Path) -> PathBuf {
    ingress_dir.join("proxy.pid")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Command {
    /// Re-read the records; `api` is the daemon's base URL.
    Reload { api: Option<String> },
    /// Stop serving and exit.
    Exit,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Reply {
    pub pid: u32,
    /// Ports that could not be bound, one message each.
    pub errors: Vec<String>,
    /// Ports being served after the command.
    pub ports: Vec<u16>,
}

/// Sends `cmd` to the proxy of `ingress_dir` and returns its answer.
pub async fn call(ingress_dir: &Path, cmd: &Command) -> io::Result<Reply> {
    let fut = async {
        let mut s = UnixStream::connect(socket_path(ingress_dir)).await?;
        let mut line = serde_json::to_vec(cmd).map_err(io::Error::other)?;
        line.push(b'\n');
        s.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).await?;
        if answer.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the ingress proxy closed the control connection without answering",
            ));
        }
        serde_json::from_str(&answer).map_err(io::Error::other)
    };
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the ingress proxy did not answer"))?
}

/// Whether a proxy holds the lock of `ingress_dir` now.
pub fn proxy_alive(ingress_dir: &Path) -> io::Result<bool> {
    let file = match File::open(lock_path(ingress_dir)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Takes the lock of `ingress_dir` for this process; `None` when another
/// proxy has it. Keep the file open as long as the process serves.
pub fn take_lock(ingress_dir: &Path) -> io::Result<Option<File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(ingress_dir))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_tagged_json() {
        let c = Command::Reload {
            api: Some("http://127.0.0.1:1".into()),
        };
        let text = serde_json::to_string(&c).expect("json");
        assert_eq!(text, r#"{"op":"reload","api":"http://127.0.0.1:1"}"#);
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"op":"exit"}"#).expect("json"),
            Command::Exit
        );
    }

    #[test]
    fn the_lock_tells_a_live_proxy() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!proxy_alive(dir.path()).expect("probe"));
        let held = take_lock(dir.path()).expect("lock").expect("free");
        assert!(proxy_alive(dir.path()).expect("probe"));
        assert!(take_lock(dir.path()).expect("lock").is_none());
        drop(held);
        assert!(!proxy_alive(dir.path()).expect("probe"));
    }
}
