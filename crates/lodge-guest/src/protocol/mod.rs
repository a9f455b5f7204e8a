//! The guest agent protocol: how the host daemon and the in-guest agent
//! (`lodge-init agent`) talk over one byte stream.
//!
//! The transport is whatever byte pipe the hypervisor offers: on QEMU a
//! virtio-serial port (`/dev/vport*` named [`AGENT_PORT`] in the guest, a
//! Unix socket in the instance directory on the host), later Cloud
//! Hypervisor's vsock. A virtio-serial port is one stream and its host
//! socket accepts one client, so the protocol **multiplexes many sessions
//! over one connection**: every exec, copy or stat is a *stream* with its
//! own id, and all of them share the daemon's single connection per VM.
//!
//! ## Frames
//!
//! Everything travels in frames ([`frame`]): a 12-byte header (magic
//! `"LA"`, kind, reserved byte, stream id, payload length, little-endian)
//! and the payload, at most [`MAX_PAYLOAD`] bytes. Control payloads are JSON
//! of the types in [`messages`]; data payloads are raw bytes.
//!
//! ## A connection, step by step
//!
//! 1. The host connects and sends `Hello {version, nonce}` (stream 0), again
//!    every second until answered. The agent resets all sessions of any
//!    earlier connection (only when the nonce is new) and answers
//!    `HelloAck` with the same nonce. The host discards every byte before
//!    that `HelloAck`: a virtio-serial port keeps no connection boundaries,
//!    so leftovers of an earlier connection may precede it, and the decoder
//!    skips garbage until the next valid header ([`frame::Decoder`]).
//! 2. The host opens a stream by sending `Open` with a fresh stream id and a
//!    [`messages::Request`]; it sends `Data` (stdin or file bytes),
//!    `Control` (resize, cancel, the next copied entry) and `Eof` (no more
//!    input) on that id.
//! 3. The agent answers on the same id with `Stdout`, `Stderr`, `Data` and
//!    `Event` frames and ends the stream with `Close`. After `Close` nothing
//!    more arrives on that id.
//! 4. Flow control: each side may have at most [`INITIAL_WINDOW`] bytes of
//!    `Data`/`Stdout`/`Stderr` payload in flight per stream; the receiver
//!    returns `Credit` (a u32 byte count) as its consumer takes the bytes.
//!    A slow consumer therefore stalls only its own stream, never the
//!    connection. Control frames are not counted.
//! 5. The agent sends `Reset` when it starts: a host that sees it outside a
//!    handshake knows the agent restarted and every open stream is gone.
//!
//! Both sides are built from this crate, so they cannot disagree on the
//! format; [`PROTOCOL_VERSION`] still guards against a stale initrd.

pub mod blocks;
pub mod frame;
pub mod messages;
pub mod paths;
pub mod tree;

pub use frame::{encode, Decoder, Frame, Kind, HEADER_LEN, MAGIC, MAX_PAYLOAD};
pub use messages::{
    Control, EntryHeader, Event, ExecStart, Hello, HelloAck, PathInfo, Readdress, Request,
};

/// Version of this protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The virtio-serial port name of the agent channel, as the guest sees it in
/// `/sys/class/virtio-ports/*/name`.
pub const AGENT_PORT: &str = "org.lodge.agent.0";

/// Bytes of data a sender may have unacknowledged per stream and direction.
pub const INITIAL_WINDOW: u32 = 1 << 20;

/// A receiver returns credit once it has consumed at least this much.
pub const CREDIT_BATCH: u32 = 64 << 10;

/// Largest data payload a sender puts in one frame. virtio-serial moves at
/// most 32 KiB per guest write, so bigger frames would gain nothing.
pub const DATA_CHUNK: usize = 32 << 10;

/// Stream id of connection-level frames (hello, reset).
pub const CONNECTION_STREAM: u32 = 0;
