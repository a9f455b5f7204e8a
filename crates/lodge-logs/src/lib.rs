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
//! size. [`ByteSize`] is the size syntax shared by every size flag.
//!
//! Everything here is synchronous std code so the per-VM monitor can use it
//! without an async runtime; the `async` feature adds [`Follower::next`]
//! for the daemon.

#[cfg(feature = "async")]
mod async_fd;
mod follow;
mod lines;
mod lock;
mod segment;
mod size;
mod tail;
mod writer;

use std::io;
use std::path::PathBuf;

pub use follow::{read_all, Follow, Follower};
pub use lines::{LineChunk, LineSplitter, MAX_LINE_CHUNK};
pub use lock::{monitor_alive, MonitorLock, MONITOR_LOCK};
pub use segment::{Source, UnknownSource};
pub use size::{ByteSize, SizeError};
pub use tail::{InvalidTail, Tail};
pub use writer::{RotatingWriter, WriterError};

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The log directory could not be listed (missing, not a directory, ...).
    #[error("cannot read log directory {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The inotify watch could not be set up.
    #[error("cannot watch {} for new output", path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The files kept changing faster than a consistent view could be taken.
    #[error("the log kept rotating while being opened")]
    Unstable,
    /// Reading a log file failed.
    #[error("cannot read the log")]
    Io(#[from] io::Error),
}
