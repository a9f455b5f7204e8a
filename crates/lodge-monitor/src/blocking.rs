//! Keeps the fast console's pipe blocking for the VMM.
//!
//! QEMU makes every chardev descriptor non-blocking when it opens it. The
//! fast console is a plain virtio-serial port, which QEMU throttles when
//! its chardev write comes back short: the rest of the guest's buffers then
//! wait in the guest's memory until the pipe has room. That keeps the bytes
//! while the VM runs, but a guest that powers off right after its workload
//! ended would take them with it (G2), and the guest cannot see whether the
//! host took a buffer yet. (A virtio *console*, `hvc`, is not throttled at
//! all: QEMU drops what does not fit.) The descriptor QEMU writes to shares
//! its open file description with the write end the monitor created, so the
//! monitor keeps a copy of that end until it has seen QEMU set
//! `O_NONBLOCK` and cleared it again: from then on QEMU writes each buffer
//! out as the guest hands it over, waiting for room in the pipe, the guest
//! waits with it, and a guest write that returned is on the host.
//!
//! QEMU may set the flag more than once while it sets the chardev up, so
//! the watch clears it whenever it is seen set (looking every 2 ms, backing
//! off to 50 ms), from the spawn until the first byte of the fast console
//! arrives (the setup is long done by then), the command exits, or
//! [`WATCH_LIMIT`] passes; it then looks a last time and drops its copy, so
//! the pipe reaches end of file when the VMM exits.

use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};

use crate::diag::diag;

/// How often the flag is looked at: first, and at the most.
const WATCH_EVERY: Duration = Duration::from_millis(2);
const WATCH_MAX_EVERY: Duration = Duration::from_millis(50);
/// Give up watching after this long.
const WATCH_LIMIT: Duration = Duration::from_secs(30);

/// The running watch; [`Keeper::finish`] ends it.
pub(crate) struct Keeper {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

impl Keeper {
    /// Watches `write` (a copy of the pipe's write end the VMM got).
    pub(crate) fn start(write: OwnedFd) -> std::io::Result<Keeper> {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = thread::Builder::new()
            .name("console-blocking".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || {
                let until = Instant::now() + WATCH_LIMIT;
                let mut every = WATCH_EVERY;
                loop {
                    if !clear_nonblock(&write) {
                        break;
                    }
                    if Instant::now() >= until {
                        break;
                    }
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        // Told to stop: one last look, then let go.
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                            clear_nonblock(&write);
                            break;
                        }
                    }
                    every = (every * 2).min(WATCH_MAX_EVERY);
                }
                drop(write);
            })?;
        Ok(Keeper { stop, handle })
    }

    /// A handle that ends the watch when dropped or sent to: the console
    /// pump holds one until the first byte of the fast console arrives
    /// (QEMU has set its chardevs up long before the guest writes).
    pub(crate) fn stopper(&self) -> Sender<()> {
        self.stop.clone()
    }

    /// Ends the watch (the command exited) and waits for the copy to close.
    pub(crate) fn finish(self) {
        // Sent, not just dropped: the console pump may still hold a clone.
        // An error means the watch is over already.
        match self.stop.send(()) {
            Ok(()) | Err(_) => {}
        }
        drop(self.stop);
        if self.handle.join().is_err() {
            diag(format_args!("the fast console watch panicked"));
        }
    }
}

/// Clears `O_NONBLOCK` if set; false if the flags cannot be read.
fn clear_nonblock(write: &OwnedFd) -> bool {
    match fcntl_getfl(write) {
        Ok(flags) if flags.contains(OFlags::NONBLOCK) => {
            if let Err(err) = fcntl_setfl(write, flags - OFlags::NONBLOCK) {
                diag(format_args!("cannot make the fast console blocking: {err}"));
            }
            true
        }
        Ok(_) => true,
        Err(err) => {
            diag(format_args!("watching the fast console: {err}"));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another holder of the same description sets O_NONBLOCK; the keeper
    /// clears it, and then lets go of its copy.
    #[test]
    fn clears_nonblock_set_by_another_holder() -> Result<(), Box<dyn std::error::Error>> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let theirs = rustix::io::dup(&write)?;
        let keeper = Keeper::start(write)?;
        thread::sleep(Duration::from_millis(20));
        let flags = fcntl_getfl(&theirs)?;
        fcntl_setfl(&theirs, flags | OFlags::NONBLOCK)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while fcntl_getfl(&theirs)?.contains(OFlags::NONBLOCK) {
            assert!(Instant::now() < deadline, "never cleared");
            thread::sleep(Duration::from_millis(2));
        }
        let held = keeper.stopper();
        let finishing = Instant::now();
        keeper.finish();
        assert!(
            finishing.elapsed() < Duration::from_secs(1),
            "finish waits for nobody, even with a stopper held"
        );
        drop(held);
        drop(theirs);
        // Every write end is closed: end of file.
        let mut buf = [0u8; 1];
        assert_eq!(rustix::io::read(&read, &mut buf)?, 0);
        Ok(())
    }

    /// A command that never sets the flag (not QEMU) and exits at once:
    /// the watch ends with it, not after its time limit.
    #[test]
    fn finish_ends_a_watch_that_saw_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let (_read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let keeper = Keeper::start(write)?;
        let held = keeper.stopper();
        let finishing = Instant::now();
        keeper.finish();
        assert!(finishing.elapsed() < Duration::from_secs(1));
        drop(held);
        Ok(())
    }
}
