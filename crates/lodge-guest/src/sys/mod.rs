//! The one OS-call layer of `lodge-init`: thin, safe wrappers over the
//! Linux calls PID 1 and the guest agent need and std lacks.
//!
//! Every wrapper is one small function per call, each `unsafe` block with
//! its `SAFETY:` note, so the rest of the binary is plain Rust. The calls
//! are grouped by what they touch (machine, processes, signals, file
//! descriptors, terminals), one file each; callers see them flat, as
//! `sys::kill`, `sys::mount`. Starting processes is not here but in
//! `spawn`, which owns the code that runs between fork and exec.

mod cvt;
mod fd;
mod machine;
mod process;
mod signal;
mod term;

use std::io;

use lodge_guest::protocol::tree::io_text;

pub(crate) use cvt::check;
pub use fd::{install_stdio, poll_readable, set_nonblocking, set_pipe_size};
pub use machine::{
    chroot, disable_ctrl_alt_del, finit_module, mount, power_off, sethostname, sync, umount,
};
pub use process::{kill, reap_one, setsid, wait_for, ExitStatus};
pub use signal::{block_into_signalfd, read_signal, request_sigio};
pub use term::{disable_output_processing, drain, make_raw, openpty, set_winsize};

/// The `strerror` text of an errno, lowercased like Go's error strings
/// (the protocol's [`io_text`], which the host side shares).
pub fn errno_text(errno: i32) -> String {
    let text = io_text(&io::Error::from_raw_os_error(errno));
    if text.is_empty() {
        format!("errno {errno}")
    } else {
        text
    }
}

/// [`errno_text`] for an `io::Error`, falling back to its own text.
pub fn errno_text_of(err: &io::Error) -> String {
    err.raw_os_error()
        .map_or_else(|| err.to_string(), errno_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_is_lowercase_without_the_code() {
        assert_eq!(errno_text(libc::ENOENT), "no such file or directory");
        let err = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(errno_text_of(&err), "permission denied");
        let other = io::Error::other("Plain");
        assert_eq!(errno_text_of(&other), "Plain");
    }
}
