//! lodge's console log pipeline: the one writer of a log directory and the
//! readers that tail and follow it.
//!
//! A log directory holds, per source (`app`, `vmm`, `lodge`), a live file
//! that only the [`RotatingWriter`] appends to, and rotated segments renamed
//! from it (see [`Source`] for the names). Readers ([`Follower`]) work from
//! the files alone, so they need neither the writer's cooperation nor the
//! daemon: they find where the last N lines begin reading backwards, then
//! follow the same descriptors through rotations, woken by inotify. The
//! monitor's lock file ([`MONITOR_LOCK`]) tells readers when the log is
//! complete. [`LineSplitter`] cuts what they read into lines of bounded
//! size. Rotated segments may be stored compressed ([`Compression`]);
//! readers read both forms alike. [`ByteSize`] (from lodge-common) is the size syntax shared by
//! every size flag; it is re-exported here for the writer's callers.
//!
//! Everything here is synchronous std code so the per-VM monitor can use it
//! without an async runtime; the `async` feature adds [`Follower::next`]
//! for the daemon.

#[cfg(feature = "async")]
mod async_fd;
mod compress;
mod error;
mod follow;
mod lines;
mod lock;
mod segment;
mod stored;
mod tail;
mod timed;
pub mod times;
mod writer;

pub use compress::{Compression, UnknownCompression};
pub use error::ReadError;
pub use follow::{read_all, Follow, Follower};
pub use lines::{LineChunk, LineSplitter, MAX_LINE_CHUNK};
pub use lock::{monitor_alive, MonitorLock, MONITOR_LOCK};
pub use lodge_common::size::{ByteSize, SizeError};
pub use segment::{Source, UnknownSource};
pub use tail::{InvalidTail, Tail};
pub use timed::{read_window, read_window_to, StartPoint, TimedLine, Window};
pub use writer::{RotatingWriter, WriterError};
