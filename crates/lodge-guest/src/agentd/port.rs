//! Finding the agent's virtio-serial port and waiting for a host on it.
//!
//! The kernel names ports `vportNpM` in probe order, so the agent looks the
//! port up by the name QEMU gave it (see `virtio_ports`).
//! While no host is connected, reads return 0 at once and `poll` reports a
//! hang-up, so neither can be used to wait; the port sends SIGIO when the
//! host side connects, and the agent waits for that on a signalfd (with a
//! slow timer as a safety net).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::sys;

pub use crate::virtio_ports::find;

/// The open port and the signalfd that says when a host connects.
pub struct Port {
    file: File,
    sigio: Option<OwnedFd>,
}

impl Port {
    pub fn open(device: &Path) -> std::io::Result<Port> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)?;
        // Blocked (and so queued for the signalfd) in every thread the
        // agent starts later, since threads inherit the mask.
        let sigio = sys::block_into_signalfd(&[libc::SIGIO])
            .ok()
            .filter(|_| sys::request_sigio(&file).is_ok());
        Ok(Port { file, sigio })
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// A second descriptor for the writer thread.
    pub fn writer(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Block until the host side may have connected.
    pub fn wait_for_host(&self) {
        match &self.sigio {
            Some(fd) => {
                let _ = sys::poll_readable(&[fd.as_raw_fd()], 1000);
                while let Ok(Some(_)) = sys::read_signal(fd) {}
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
