//! Handing the inotify descriptor to tokio's reactor: the one place this
//! crate needs `unsafe`, because tokio's `AsyncFd` constructors are unsafe
//! (the caller promises the descriptor stays valid while registered).

#![allow(unsafe_code)]

use std::io;

use inotify::Inotify;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Registers `inotify` with the current tokio reactor for readability.
pub(crate) fn register(inotify: Inotify) -> io::Result<AsyncFd<Inotify>> {
    // SAFETY: `Inotify` owns its descriptor (closed only when the `Inotify`
    // is dropped, which the `AsyncFd` does on its own drop) and always
    // returns that same descriptor from `as_raw_fd`; we never close or
    // replace it while the `AsyncFd` holds it.
    let registered = unsafe { AsyncFd::register_with_interest(inotify, Interest::READABLE) };
    registered.map_err(io::Error::from)
}
