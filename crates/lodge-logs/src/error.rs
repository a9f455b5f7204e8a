//! The readers' error type, in its own file so `tail` and `follow` depend on
//! it without depending on the crate root that declares them.

use std::io;
use std::path::PathBuf;

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
