//! The daemon's side of the guest agent: one multiplexed connection per VM
//! (see [`lodge_guest::agent`] for the protocol), shared by every exec,
//! copy and stat the API serves for that VM.
//!
//! - [`Transport`] opens the raw byte stream. QEMU's virtio-serial port is
//!   a Unix socket in the instance directory ([`UnixSocket`]); Cloud
//!   Hypervisor's vsock (a Unix socket plus a `CONNECT port` line) will be
//!   a second implementation, and nothing above this trait changes.
//! - [`Conn`] ([`conn`]) does the handshake and runs one reader and one
//!   writer task; sessions get a [`StreamTx`]/[`StreamRx`] pair.
//! - [`Pool`] keeps one live connection per instance, reconnecting after
//!   the VM restarted. A QEMU socket serves one client at a time, so all
//!   sessions must share the daemon's connection; the pool also makes sure
//!   two requests never race to open a second one.
//!
//! The agent is the guest's, and the guest's root can kill or replace it,
//! so a connection is never trusted beyond its handshake: a `Reset` (an
//! agent started) or any protocol violation closes it ([`conn`] lists
//! them), and one silent for [`PROBE_AFTER`] must answer a probe before
//! the pool hands it out again. Either way the next request handshakes
//! with whatever answers on the port now.

mod conn;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use conn::{Conn, Inbound, StreamRx, StreamTx};

/// Least time given to reach the agent (and hear its answer), even when
/// the client did not ask to wait: under software emulation a busy guest
/// can take a moment to answer.
pub const MIN_WAIT: Duration = Duration::from_secs(5);

/// A pooled connection the agent has been silent on this long is probed
/// before it is reused (see [`Conn::probe`]).
pub const PROBE_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the guest agent at {what}")]
    Connect {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent did not answer within {0} s (is the guest still booting?)")]
    NoAnswer(u64),
    #[error("the guest agent speaks protocol version {agent}, this lodge speaks {host}: rebuild the guest with scripts/build-guest.sh")]
    Version { agent: u32, host: u32 },
    #[error("the connection to the guest agent was lost")]
    Lost,
    #[error("the guest agent ended the session")]
    StreamClosed,
    #[error("the {0} is too large to send to the guest agent")]
    TooLarge(&'static str),
    #[error("the guest agent restarted")]
    Restarted,
    #[error("the guest agent broke the protocol, so lodge closed its connection (the daemon's log says how)")]
    Misbehaved,
    #[error("the session was ended: more than {0} bytes from the guest were left unread")]
    Overrun(usize),
}

/// A byte stream to an agent.
pub trait AgentStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentStream for T {}

type Connecting<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<Box<dyn AgentStream>>> + Send + 'a>>;

/// How to open a byte stream to one VM's agent.
pub trait Transport: Send + Sync {
    fn connect(&self) -> Connecting<'_>;
    /// For messages: where the agent is reached.
    fn describe(&self) -> String;
}

/// QEMU: the host end of the virtio-serial port, a Unix socket QEMU
/// listens on.
pub struct UnixSocket(pub PathBuf);

impl Transport for UnixSocket {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async move {
            let s = tokio::net::UnixStream::connect(&self.0).await?;
            Ok(Box::new(s) as Box<dyn AgentStream>)
        })
    }

    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

/// One live connection per instance.
pub struct Pool {
    slots: Mutex<HashMap<String, Slot>>,
    probe_after: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::with_probe_after(PROBE_AFTER)
    }
}

impl Pool {
    /// A pool that probes connections silent for `probe_after`.
    pub fn with_probe_after(probe_after: Duration) -> Pool {
        Pool {
            slots: Mutex::new(HashMap::new()),
            probe_after,
        }
    }

    /// The live connection to instance `key`'s agent, opening one through
    /// `transport` if needed and waiting up to `wait` (at least
    /// [`MIN_WAIT`]) for the agent to answer.
    pub async fn connect(
        &self,
        key: &str,
        transport: &dyn Transport,
        wait: Duration,
    ) -> Result<Arc<Conn>, AgentError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || s.try_lock()
                        .is_ok_and(|c| c.as_ref().is_some_and(|c| c.is_alive()))
            });
            slots.entry(key.to_string()).or_default().clone()
        };
        let mut current = slot.lock().await;
        let wait = wait.max(MIN_WAIT);
        if let Some(conn) = current.as_ref().filter(|c| c.is_alive()) {
            if conn.silent_for() < self.probe_after {
                return Ok(conn.clone());
            }
            match conn.probe(wait).await {
                Ok(()) => return Ok(conn.clone()),
                Err(e) => tracing::info!(instance = key, "reconnecting to the guest agent: {e}"),
            }
        }
        let conn = Conn::establish(transport, wait).await?;
        *current = Some(conn.clone());
        Ok(conn)
    }
}
