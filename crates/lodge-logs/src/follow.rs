//! Reading a log: its tail, then everything written after it, across any
//! number of rotations, with no gap and no duplicate (G5).
//!
//! One descriptor at a time is read to its end, and the reader moves to the
//! next file only once the one it holds can no longer grow: when `DIR/app.log`
//! is no longer our inode, the writer has renamed our file aside, and since it
//! renames only after its last write to it, draining our descriptor to EOF
//! after seeing the rename gets every byte. The successor is found by inode
//! and sequence number, never by guessing from timing. If the file got shorter
//! than our offset (an operator's copytruncate), reading restarts at 0.
//!
//! Waiting is on inotify, never on a timer. The watch on the directory is
//! registered before the tail is read, so nothing written after that point
//! can be missed: any write, create, rename or delete of our files queues an
//! event, and the reader checks the files again after every wake-up. The
//! end of the log is the monitor's exit: at idle we first check the monitor
//! lock, then drain everything (rotations included); if the lock was already
//! free before that drain, the log is complete. The lock's release closes a
//! descriptor opened for writing, which is itself an inotify event. The
//! kernel queues that event before it drops the lock of a dying process, so
//! a close seen while the lock still looks held is re-checked a few times
//! on a short, growing timeout: the one place a timer is needed.
//!
//! Cost per wake-up of a busy log: one `poll`, one read of the inotify
//! descriptor, one read of the file. A short read means the file's end was
//! reached, so the reader then waits for the next event instead of reading
//! the end again; the size is checked (for an outside truncate) only after
//! a wake-up that brought no data; the directory and the lock are looked at
//! only when an event named them.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchMask};

use crate::error::ReadError;
use crate::lock::{monitor_alive, MONITOR_LOCK};
use crate::segment::{list_segments, segment_name, Source};
use crate::stored::{self, Probe, SegFile, SegReader};
use crate::tail::{self, inode_of, Position, Tail, Tip};

/// Largest chunk handed out by one call.
const CHUNK: usize = 64 * 1024;
/// Room for a burst of inotify events (each at most 16 + NAME_MAX + 1 bytes).
const EVENT_BUF: usize = 4096;
/// Attempts at opening a successor while the directory keeps rotating.
const ATTEMPTS: u32 = 200;
/// Re-checks of the monitor lock after its close was seen while it still
/// looked held; waits of 1, 2, 4, … ms (about 1 s in all).
const LOCK_RECHECKS: u32 = 10;

/// Whether and how long to keep reading after the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Print the tail and stop.
    No,
    /// Follow until the monitor holding `DIR/monitor.lock` is gone and
    /// everything it wrote was read (`kubectl logs -f`).
    UntilWriterExits,
    /// Follow until the directory itself is deleted (for logs whose writer
    /// is not a monitor, like the daemon's own `lodge.log`).
    Forever,
}

/// Outcome of one look at the files.
enum Step {
    Data(usize),
    Wait,
    Finished,
}

/// A reader positioned in a log: yields the tail, then follows.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    base: &'static str,
    follow: Follow,
    position: Position,
    /// Set once our tip was seen renamed aside: drain it, then move on.
    tip_rotated: bool,
    /// The monitor lock was free before the current drain began.
    writer_gone: bool,
    /// Lock re-checks left (see the module comment).
    lock_rechecks: u32,
    /// Look for a rotation of the tip at the next idle even without a
    /// rename or create event (set at first, after an overflow).
    check_rename: bool,
    /// Look at the monitor lock at the next idle even without an event on
    /// it (set at first and after a timed re-check wait).
    check_lock: bool,
    notifier: Option<Notifier>,
    buf: Vec<u8>,
    /// Where the last chunk handed out began.
    last_start: Option<crate::timed::StartPoint>,
    /// The last read of the tip was short: it was at its end then, so the
    /// next look waits for an event instead of reading the end again.
    at_end: bool,
    /// The tip gave data since the last wait: it was not truncated below
    /// our offset then, so the end needs no `fstat`.
    data_since_wait: bool,
}

impl Follower {
    /// Opens `source` in `dir`, positioned `tail` lines from its end.
    ///
    /// With a `follow` other than [`Follow::No`] the directory watch is in
    /// place before this returns, so nothing written afterwards is missed.
    pub fn open(dir: &Path, source: Source, tail: Tail, follow: Follow) -> Result<Self, ReadError> {
        let base = source.file_name();
        let notifier = match follow {
            Follow::No => None,
            Follow::UntilWriterExits | Follow::Forever => Some(Notifier::watch(dir, base)?),
        };
        let position = tail::position(dir, base, tail)?;
        Ok(Follower {
            dir: dir.to_owned(),
            base,
            follow,
            position,
            tip_rotated: false,
            writer_gone: false,
            lock_rechecks: 0,
            check_rename: true,
            check_lock: true,
            notifier,
            buf: Vec::new(),
            last_start: None,
            at_end: false,
            data_since_wait: false,
        })
    }

    /// Opens `source` in `dir` at byte `at.offset` of segment `at.seq` (a
    /// place an earlier reader reached, see [`Follower::last_chunk_start`]).
    /// If retention deleted that segment meanwhile, reading starts at the
    /// oldest retained one after it. With [`Follow::No`] only that one file
    /// is read.
    pub fn open_at(
        dir: &Path,
        source: Source,
        at: crate::timed::StartPoint,
        follow: Follow,
    ) -> Result<Self, ReadError> {
        let base = source.file_name();
        let notifier = match follow {
            Follow::No => None,
            Follow::UntilWriterExits | Follow::Forever => Some(Notifier::watch(dir, base)?),
        };
        let mut follower = Follower {
            dir: dir.to_owned(),
            base,
            follow,
            position: Position {
                segments: std::collections::VecDeque::new(),
                tip: None,
                next_seq: at.seq,
            },
            tip_rotated: false,
            writer_gone: false,
            lock_rechecks: 0,
            check_rename: true,
            check_lock: true,
            notifier,
            buf: Vec::new(),
            last_start: None,
            at_end: false,
            data_since_wait: false,
        };
        if follower.open_next()? {
            if let Some(tip) = &mut follower.position.tip {
                if tip.seq == at.seq {
                    tip.file.seek(SeekFrom::Start(at.offset))?;
                    tip.pos = at.offset;
                }
            } else if let Some(segment) = follower.position.segments.front_mut() {
                if segment.seq == at.seq {
                    segment.pos = at.offset;
                }
            }
        }
        Ok(follower)
    }

    /// Where the bytes of the last chunk handed out began: with its length,
    /// where the next one begins. `None` before the first chunk.
    pub fn last_chunk_start(&self) -> Option<crate::timed::StartPoint> {
        self.last_start
    }

    /// Where this follower's next byte is, if it holds nothing older: the
    /// point a [`crate::timed::read_window_to`] view must stop at to hand over to
    /// it. `None` while rotated segments are queued (a tail of lines).
    pub fn start_point(&self) -> Option<crate::timed::StartPoint> {
        if !self.position.segments.is_empty() {
            return None;
        }
        Some(match &self.position.tip {
            Some(tip) => crate::timed::StartPoint {
                seq: tip.seq,
                offset: tip.pos,
            },
            None => crate::timed::StartPoint {
                seq: self.position.next_seq,
                offset: 0,
            },
        })
    }

    /// The next bytes of the log, blocking until there are some; `None` once
    /// the log is finished (see [`Follow`]). Chunks are at most 64 KiB and
    /// are cut wherever the reads fell, not at line ends.
    pub fn next_blocking(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        self.ensure_buf();
        loop {
            match self.step()? {
                Step::Data(n) => return Ok(Some(self.buf[..n].to_vec())),
                Step::Finished => return Ok(None),
                Step::Wait => self.wait_blocking()?,
            }
        }
    }

    /// Like [`Follower::next_blocking`], but reads into `out` and returns the
    /// number of bytes, 0 meaning finished. Avoids an allocation per chunk.
    pub fn read_blocking(&mut self, out: &mut [u8]) -> Result<usize, ReadError> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.step_into(out)? {
                Step::Data(n) => return Ok(n),
                Step::Finished => return Ok(0),
                Step::Wait => self.wait_blocking()?,
            }
        }
    }

    /// The next bytes of the log, waiting on the inotify descriptor through
    /// tokio; `None` once the log is finished. File reads themselves are
    /// plain reads of at most 64 KiB (page cache), done on the calling task.
    #[cfg(feature = "async")]
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        self.ensure_buf();
        loop {
            match self.step()? {
                Step::Data(n) => return Ok(Some(self.buf[..n].to_vec())),
                Step::Finished => return Ok(None),
                Step::Wait => {
                    let timeout = self.recheck_timeout();
                    match &mut self.notifier {
                        Some(notifier) => match timeout {
                            None => notifier.wait_async().await?,
                            Some(timeout) => {
                                // Elapsed: look at the lock again.
                                if let Ok(waited) =
                                    tokio::time::timeout(timeout, notifier.wait_async()).await
                                {
                                    waited?;
                                }
                            }
                        },
                        None => return Ok(None),
                    }
                }
            }
        }
    }

    fn ensure_buf(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; CHUNK];
        }
    }

    fn step(&mut self) -> Result<Step, ReadError> {
        let mut buf = std::mem::take(&mut self.buf);
        let step = self.step_into(&mut buf);
        self.buf = buf;
        step
    }

    fn wait_blocking(&mut self) -> Result<(), ReadError> {
        let timeout = self.recheck_timeout();
        match (&mut self.notifier, timeout) {
            (Some(notifier), None) => notifier.wait_blocking(),
            (Some(notifier), Some(timeout)) => notifier.wait_poll(Some(timeout)),
            (None, _) => Ok(()),
        }
    }

    /// The timeout of the next wait while the monitor lock is re-checked.
    fn recheck_timeout(&mut self) -> Option<std::time::Duration> {
        if self.lock_rechecks == 0 {
            return None;
        }
        self.lock_rechecks -= 1;
        // The wait may end by its timeout, with no event: look then.
        self.check_lock = true;
        let shift = LOCK_RECHECKS - 1 - self.lock_rechecks;
        Some(std::time::Duration::from_millis(1 << shift))
    }

    /// Reads what is there; decides between data, waiting and the end.
    fn step_into(&mut self, out: &mut [u8]) -> Result<Step, ReadError> {
        if std::mem::take(&mut self.at_end) && self.nothing_to_check() {
            // A short read found the end a moment ago and no event asked
            // for a look since: wait for the next one (it comes with the
            // next append) rather than read the end again.
            self.data_since_wait = false;
            return Ok(Step::Wait);
        }
        let step = self.step_files(out);
        if matches!(step, Ok(Step::Wait)) {
            self.data_since_wait = false;
        }
        step
    }

    /// Whether the idle checks (rotation, monitor lock, directory gone)
    /// have nothing to look at: no hint pending, no queued segment.
    fn nothing_to_check(&self) -> bool {
        self.position.segments.is_empty()
            && self.position.tip.is_some()
            && !self.tip_rotated
            && !self.check_rename
            && !self.check_lock
            && self.lock_rechecks == 0
            && self.notifier.as_ref().is_some_and(|n| {
                !(n.seen.renamed || n.seen.lock_event || n.seen.lock_closed || n.seen.gone)
            })
    }

    fn step_files(&mut self, out: &mut [u8]) -> Result<Step, ReadError> {
        loop {
            if let Some(segment) = self.position.segments.front_mut() {
                let at = crate::timed::StartPoint {
                    seq: segment.seq,
                    offset: segment.pos,
                };
                let n = segment.read(out)?;
                if n > 0 {
                    self.last_start = Some(at);
                    return Ok(Step::Data(n));
                }
                self.position.segments.pop_front();
                continue;
            }
            match &mut self.position.tip {
                Some(tip) => {
                    let n = read_retrying(&mut tip.file, out)?;
                    if n > 0 {
                        self.last_start = Some(crate::timed::StartPoint {
                            seq: tip.seq,
                            offset: tip.pos,
                        });
                        tip.pos += n as u64;
                        self.data_since_wait = true;
                        // A regular file reads short only at its end.
                        self.at_end = n < out.len() && self.follow != Follow::No;
                        return Ok(Step::Data(n));
                    }
                    if self.follow == Follow::No {
                        return Ok(Step::Finished);
                    }
                    if self.tip_rotated {
                        // Drained after the rename was seen: nothing more can
                        // come into this file.
                        self.advance()?;
                        continue;
                    }
                    if !self.data_since_wait && tip.file.metadata()?.len() < tip.pos {
                        // Truncated behind the writer's back: start over.
                        tip.file.seek(SeekFrom::Start(0))?;
                        tip.pos = 0;
                        continue;
                    }
                    // Only a rename or create in the directory can have
                    // moved our file aside: no stat per append.
                    let hint = std::mem::take(&mut self.check_rename)
                        | self
                            .notifier
                            .as_mut()
                            .is_none_or(|n| std::mem::take(&mut n.seen.renamed));
                    if hint && inode_of(&self.dir.join(self.base)) != Some(tip.ino) {
                        self.tip_rotated = true;
                        continue;
                    }
                }
                None => {
                    if self.follow == Follow::No {
                        return Ok(Step::Finished);
                    }
                    if self.open_next()? {
                        continue;
                    }
                }
            }
            // Idle: everything written so far was read.
            let dir_gone = self.notifier.as_ref().is_some_and(|n| n.seen.gone);
            match self.follow {
                Follow::No => return Ok(Step::Finished),
                Follow::Forever if dir_gone => return Ok(Step::Finished),
                Follow::Forever => return Ok(Step::Wait),
                Follow::UntilWriterExits => {
                    if self.writer_gone || dir_gone {
                        return Ok(Step::Finished);
                    }
                    // The lock is released only with a close of the
                    // monitor's descriptor, an event: no probe per append.
                    let hint = std::mem::take(&mut self.check_lock)
                        | self
                            .notifier
                            .as_mut()
                            .is_none_or(|n| std::mem::take(&mut n.seen.lock_event));
                    if hint && !monitor_alive(&self.dir)? {
                        // The writer was gone before this drain began: one
                        // more pass over the files and the log is complete.
                        self.writer_gone = true;
                        self.check_rename = true;
                        continue;
                    }
                    if let Some(notifier) = &mut self.notifier {
                        if std::mem::take(&mut notifier.seen.lock_closed) {
                            self.lock_rechecks = LOCK_RECHECKS;
                        }
                    }
                    return Ok(Step::Wait);
                }
            }
        }
    }

    /// Leaves the drained, rotated tip for the file that follows it.
    fn advance(&mut self) -> Result<(), ReadError> {
        self.tip_rotated = false;
        if let Some(tip) = self.position.tip.take() {
            let seq = self.seq_of(&tip)?;
            self.position.next_seq = seq + 1;
        }
        self.open_next()?;
        Ok(())
    }

    /// The sequence number under which the tip's inode now lives; if
    /// retention already deleted it, the number we knew it by.
    fn seq_of(&self, tip: &Tip) -> Result<u64, ReadError> {
        if inode_of(&self.dir.join(segment_name(self.base, tip.seq))) == Some(tip.ino) {
            return Ok(tip.seq);
        }
        for seq in self.list()? {
            if inode_of(&self.dir.join(segment_name(self.base, seq))) == Some(tip.ino) {
                return Ok(seq);
            }
        }
        Ok(tip.seq)
    }

    fn list(&self) -> Result<Vec<u64>, ReadError> {
        list_segments(&self.dir, self.base).map_err(|source| ReadError::Dir {
            path: self.dir.clone(),
            source,
        })
    }

    /// Opens the file that follows the one drained last: segment
    /// `next_seq` if it was rotated already, else the live file; if
    /// retention deleted `next_seq` before we got there, the oldest segment
    /// after it. Returns false if the live file does not exist (yet): an
    /// inotify event will tell when it does.
    ///
    /// Names are checked one by one rather than trusted from a listing: a
    /// `readdir` running while the writer renames may miss the entry just
    /// renamed, and skipping it would be a gap.
    fn open_next(&mut self) -> Result<bool, ReadError> {
        let want = self.position.next_seq;
        let live_path = self.dir.join(self.base);
        for _ in 0..ATTEMPTS {
            if self.take_segment(want)? {
                return Ok(true);
            }
            // Not rotated yet, or rotated and deleted by retention: in the
            // latter case newer segments exist (renamed after it). It may
            // also have been rotated since we looked: look again from it.
            if let Some(newer) = self.list()?.into_iter().find(|&s| s > want) {
                for seq in want..=newer {
                    if self.take_segment(seq)? {
                        return Ok(true);
                    }
                }
                continue;
            }
            let file = match crate::segment::open_log(&live_path) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(err) => return Err(err.into()),
            };
            let ino = file.metadata()?.ino();
            match stored::probe(&self.dir, self.base, want) {
                // Still live, or renamed to `want` since we opened it.
                Probe::Missing => return self.set_tip(file, want),
                Probe::Plain(renamed) if renamed == ino => return self.set_tip(file, want),
                // We opened a newer live file, or `want` was rotated and
                // compressed already (no inode to compare): take `want` by
                // name instead.
                Probe::Plain(_) | Probe::Compressed => continue,
            }
        }
        Err(ReadError::Unstable)
    }

    /// Takes rotated segment `seq` if it exists in either form: a plain
    /// one becomes the tip (drained, then left like any rotated tip), a
    /// compressed one, immutable, is queued whole and `seq + 1` is next.
    fn take_segment(&mut self, seq: u64) -> Result<bool, ReadError> {
        match stored::open(&self.dir, self.base, seq)? {
            None => Ok(false),
            Some(SegFile::Plain(file)) => self.set_tip(file, seq),
            Some(seg) => {
                self.position
                    .segments
                    .push_back(SegReader::new(seg, seq, 0));
                self.position.next_seq = seq + 1;
                Ok(true)
            }
        }
    }

    fn set_tip(&mut self, file: File, seq: u64) -> Result<bool, ReadError> {
        let ino = file.metadata()?.ino();
        // A new tip may have been renamed aside already (several rotations
        // behind one batch of events): look once before trusting it.
        self.check_rename = true;
        self.position.tip = Some(Tip {
            file,
            ino,
            seq,
            pos: 0,
        });
        Ok(true)
    }
}

fn read_retrying(file: &mut File, out: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(out) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// The inotify watch on the log directory, blocking or through tokio.
#[derive(Debug)]
struct Notifier {
    fd: NotifyFd,
    buf: Vec<u8>,
    base: &'static str,
    seen: Seen,
}

/// What the events read so far said beyond "look again".
#[derive(Debug, Default)]
struct Seen {
    /// The directory was deleted (or unmounted): no event will ever come.
    gone: bool,
    /// A descriptor of the monitor lock opened for writing was closed.
    lock_closed: bool,
    /// Something happened to the monitor lock (or events were lost).
    lock_event: bool,
    /// One of our files was created, renamed or deleted (or events were
    /// lost): the tip may have been rotated.
    renamed: bool,
}

#[derive(Debug)]
enum NotifyFd {
    Blocking(Inotify),
    #[cfg(feature = "async")]
    Async(tokio::io::unix::AsyncFd<Inotify>),
    /// Only while switching from one to the other.
    #[cfg(feature = "async")]
    Moved,
}

impl Notifier {
    fn watch(dir: &Path, base: &'static str) -> Result<Self, ReadError> {
        let watch_err = |source| ReadError::Watch {
            path: dir.to_owned(),
            source,
        };
        let inotify = Inotify::init().map_err(watch_err)?;
        let mask = WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::CLOSE_WRITE
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::ONLYDIR;
        inotify.watches().add(dir, mask).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ReadError::Dir {
                    path: dir.to_owned(),
                    source,
                }
            } else {
                watch_err(source)
            }
        })?;
        Ok(Notifier {
            fd: NotifyFd::Blocking(inotify),
            buf: vec![0; EVENT_BUF],
            base,
            seen: Seen::default(),
        })
    }

    /// Blocks until an event about our files (or the lock) arrives.
    // Without the `async` feature `NotifyFd` has a single variant.
    #[cfg_attr(not(feature = "async"), allow(clippy::infallible_destructuring_match))]
    fn wait_blocking(&mut self) -> Result<(), ReadError> {
        #[cfg(feature = "async")]
        if !matches!(self.fd, NotifyFd::Blocking(_)) {
            // Used from async code before: the descriptor is non-blocking
            // and owned by tokio; wait with poll instead.
            return self.wait_poll(None);
        }
        let Notifier {
            fd,
            buf,
            base,
            seen,
        } = self;
        let inotify = match fd {
            NotifyFd::Blocking(inotify) => inotify,
            #[cfg(feature = "async")]
            _ => return Ok(()),
        };
        // poll, then a non-blocking read: two system calls per wake-up.
        // (`read_events_blocking` clears and restores `O_NONBLOCK` around
        // each read: four `fcntl` more.)
        loop {
            let mut fds = [rustix::event::PollFd::new(
                &*inotify,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(err) => return Err(ReadError::Io(err.into())),
            }
            match inotify.read_events(buf) {
                Ok(events) => {
                    if relevant(events, base, seen) {
                        return Ok(());
                    }
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(err) => return Err(ReadError::Io(err)),
            }
        }
    }

    /// Waits with poll(2) for an event about our files, at most `timeout`
    /// if given. Works on the descriptor whichever side owns it.
    fn wait_poll(&mut self, timeout: Option<std::time::Duration>) -> Result<(), ReadError> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let Notifier {
            fd,
            buf,
            base,
            seen,
        } = self;
        let inotify = match fd {
            NotifyFd::Blocking(inotify) => inotify,
            #[cfg(feature = "async")]
            NotifyFd::Async(afd) => afd.get_mut(),
            #[cfg(feature = "async")]
            NotifyFd::Moved => return Ok(()),
        };
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            match inotify.read_events(buf) {
                Ok(events) => {
                    if relevant(events, base, seen) {
                        return Ok(());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let left = match deadline {
                        None => None,
                        Some(deadline) => {
                            let left =
                                deadline.saturating_duration_since(std::time::Instant::now());
                            if left.is_zero() {
                                return Ok(());
                            }
                            Some(Timespec::try_from(left).map_err(|_| {
                                ReadError::Io(io::Error::other("poll timeout out of range"))
                            })?)
                        }
                    };
                    let mut fds = [PollFd::new(&*inotify, PollFlags::IN)];
                    match poll(&mut fds, left.as_ref()) {
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        Err(err) => return Err(ReadError::Io(err.into())),
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(ReadError::Io(err)),
            }
        }
    }

    #[cfg(feature = "async")]
    async fn wait_async(&mut self) -> Result<(), ReadError> {
        if let NotifyFd::Blocking(_) = self.fd {
            if let NotifyFd::Blocking(inotify) = std::mem::replace(&mut self.fd, NotifyFd::Moved) {
                self.fd =
                    NotifyFd::Async(crate::async_fd::register(inotify).map_err(ReadError::Io)?);
            }
        }
        let Notifier {
            fd,
            buf,
            base,
            seen,
        } = self;
        let NotifyFd::Async(afd) = fd else {
            return Ok(());
        };
        loop {
            let mut guard = afd.readable_mut().await.map_err(ReadError::Io)?;
            match guard.try_io(|inner| {
                inner
                    .get_mut()
                    .read_events(buf)
                    .map(|events| relevant(events, base, seen))
            }) {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => {}
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(err)) => return Err(ReadError::Io(err)),
                // Spurious readiness: tokio cleared it, wait again.
                Err(_would_block) => {}
            }
        }
    }
}

/// Whether a batch of events concerns our log (`base`, its segments) or the
/// monitor lock; notes in `seen` the end of the watch and a lock close.
fn relevant(events: inotify::Events<'_>, base: &str, seen: &mut Seen) -> bool {
    let mut wake = false;
    for event in events {
        if event
            .mask
            .intersects(EventMask::DELETE_SELF | EventMask::IGNORED | EventMask::UNMOUNT)
        {
            seen.gone = true;
            wake = true;
        } else if event.mask.contains(EventMask::Q_OVERFLOW) {
            seen.lock_event = true;
            seen.renamed = true;
            wake = true;
        } else if let Some(name) = event.name.and_then(|n| n.to_str()) {
            if name == MONITOR_LOCK {
                seen.lock_closed |= event.mask.contains(EventMask::CLOSE_WRITE);
                seen.lock_event = true;
                wake = true;
            } else if name
                .strip_prefix(base)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            {
                seen.renamed |= event.mask.intersects(
                    EventMask::CREATE
                        | EventMask::MOVED_FROM
                        | EventMask::MOVED_TO
                        | EventMask::DELETE,
                );
                wake = true;
            }
        }
    }
    wake
}

/// Reads the whole retained log (the equivalent of `--tail all` without
/// `-f`) into memory. For small logs and tests.
pub fn read_all(dir: &Path, source: Source) -> Result<Vec<u8>, ReadError> {
    let mut follower = Follower::open(dir, source, Tail::All, Follow::No)?;
    let mut out = Vec::new();
    while let Some(chunk) = follower.next_blocking()? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Follower>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::MonitorLock;
    use crate::RotatingWriter;
    use std::fs;
    use std::io::Write;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    fn numbers(from: u64, to: u64) -> Vec<u8> {
        (from..=to)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect()
    }

    /// Collects a follower's output on a thread, returning it when finished.
    fn collect(mut follower: Follower) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut out = Vec::new();
            while let Some(chunk) = follower.next_blocking().expect("follow") {
                out.extend_from_slice(&chunk);
            }
            out
        })
    }

    /// The kernel queues the close event of a dying monitor's lock before it
    /// drops the lock. Reproduced by hand: a close while the lock is held,
    /// then the lock dropped from a read-only descriptor, which raises no
    /// event. The follower must still end (before the fix it waited forever).
    #[test]
    fn ends_when_the_lock_goes_after_its_close_event() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("app.log"), b"last\n")?;
        fs::write(dir.path().join(MONITOR_LOCK), b"")?;
        let holder = File::open(dir.path().join(MONITOR_LOCK))?;
        rustix::fs::flock(
            &holder,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )?;
        let follower =
            Follower::open(dir.path(), Source::App, Tail::All, Follow::UntilWriterExits)?;
        let (done_tx, done_rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let out = collect(follower).join();
            // The receiver is gone only if the test already failed.
            done_tx.send(out).ok();
        });
        thread::sleep(Duration::from_millis(50));
        // A close of the lock file opened for writing, lock still held.
        drop(
            fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(MONITOR_LOCK))?,
        );
        thread::sleep(Duration::from_millis(50));
        drop(holder);
        let out = done_rx
            .recv_timeout(Duration::from_secs(5))?
            .map_err(|_| "follower panicked")?;
        assert_eq!(out, b"last\n");
        reader.join().map_err(|_| "reader panicked")?;
        Ok(())
    }

    #[test]
    fn follows_across_rotations_until_the_writer_exits() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let lock = MonitorLock::acquire(dir.path(), Duration::ZERO)?.ok_or("lock busy")?;
        let mut writer = RotatingWriter::open(dir.path(), Source::App, 100, 1000)?;
        writer.write_all(&numbers(1, 10))?;
        let follower = Follower::open(
            dir.path(),
            Source::App,
            Tail::Lines(3),
            Follow::UntilWriterExits,
        )?;
        let reader = collect(follower);
        for i in 11..=3000u64 {
            writer.write_all(format!("{i}\n").as_bytes())?;
            if i % 500 == 0 {
                thread::sleep(Duration::from_millis(5));
            }
        }
        writer.finish()?;
        drop(lock);
        let out = reader.join().map_err(|_| "reader panicked")?;
        assert!(out == numbers(8, 3000), "{}", String::from_utf8_lossy(&out));
        Ok(())
    }

    /// Thousands of rotations of tiny segments, so that a follower often
    /// sees the rename between its read at EOF and the writer's last write.
    #[test]
    fn no_gap_under_rotation_stress() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let lock = MonitorLock::acquire(dir.path(), Duration::ZERO)?.ok_or("lock busy")?;
        let mut writer = RotatingWriter::open(dir.path(), Source::App, 7, 10_000)?;
        let readers: Vec<_> = (0..2)
            .map(|_| {
                Follower::open(dir.path(), Source::App, Tail::All, Follow::UntilWriterExits)
                    .map(collect)
            })
            .collect::<Result<_, _>>()?;
        let want = numbers(1, 4_000);
        for chunk in want.chunks(3) {
            writer.write_all(chunk)?;
        }
        writer.finish()?;
        drop(lock);
        for reader in readers {
            let out = reader.join().map_err(|_| "reader panicked")?;
            if out != want {
                let at = out.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                let files = read_all(dir.path(), Source::App)?;
                panic!(
                    "follower lost or repeated bytes ({} vs {}) at {at} (segment {}): files ok: {}; got {:?} want {:?}",
                    out.len(),
                    want.len(),
                    at / 7 + 1,
                    files == want,
                    String::from_utf8_lossy(&out[at.saturating_sub(10)..(at + 80).min(out.len())]),
                    String::from_utf8_lossy(&want[at.saturating_sub(10)..(at + 80).min(want.len())])
                );
            }
        }
        Ok(())
    }

    /// 50 MB with no newline, spanning rotations: read by `tail 1` and by
    /// a follower, every piece a reader hands out stays bounded (the
    /// follower's chunks and the line splitter's pieces and buffer) and the
    /// pieces concatenate to exactly the line.
    #[test]
    fn a_huge_line_is_read_in_bounded_pieces() -> Result<(), Box<dyn std::error::Error>> {
        use crate::{LineSplitter, MAX_LINE_CHUNK};
        let line: Vec<u8> = (0..50_000_000u32)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[(i % 36) as usize])
            .collect();
        /// Drains a follower through a splitter, checking the bounds.
        fn pieces(mut follower: Follower) -> Result<(Vec<u8>, usize), ReadError> {
            let mut splitter = LineSplitter::default();
            let (mut joined, mut lines) = (Vec::new(), 0);
            let mut take = |piece: crate::LineChunk| {
                assert!(piece.bytes.len() <= MAX_LINE_CHUNK, "{}", piece.bytes.len());
                joined.extend_from_slice(&piece.bytes);
                lines += usize::from(piece.ends_line);
            };
            while let Some(chunk) = follower.next_blocking()? {
                assert!(chunk.len() <= CHUNK);
                splitter.push(&chunk).into_iter().for_each(&mut take);
            }
            splitter.finish().into_iter().for_each(&mut take);
            assert!(splitter.high_water() <= MAX_LINE_CHUNK);
            Ok((joined, lines))
        }

        let dir = tempfile::tempdir()?;
        let lock = MonitorLock::acquire(dir.path(), Duration::ZERO)?.ok_or("lock busy")?;
        let mut writer = RotatingWriter::open(dir.path(), Source::App, 8 << 20, 100)?;
        writer.write_all(b"before\n")?;
        let follower = Follower::open(
            dir.path(),
            Source::App,
            Tail::Lines(0),
            Follow::UntilWriterExits,
        )?;
        let following = thread::spawn(move || pieces(follower));
        for part in line.chunks(1 << 20) {
            writer.write_all(part)?;
        }
        // `tail 1` while the line has no newline yet: the line so far.
        let tail = Follower::open(dir.path(), Source::App, Tail::Lines(1), Follow::No)?;
        assert!(pieces(tail)? == (line.clone(), 1), "tail 1");
        writer.write_all(b"\n")?;
        writer.finish()?;
        drop(lock);
        let followed = following.join().map_err(|_| "reader panicked")??;
        assert!(followed == (line, 1), "follow");
        Ok(())
    }

    /// Every chunk's place, reopened with `open_at`, reads the rest of the
    /// log exactly, over plain and compressed segments and the live file.
    #[test]
    fn open_at_resumes_where_a_chunk_began() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut writer = RotatingWriter::open(dir.path(), Source::App, 100_000, 100)?
            .compress(crate::Compression::Zstd);
        let all = numbers(1, 60_000);
        writer.write_all(&all)?;
        writer.finish()?;
        let mut writer = RotatingWriter::open(dir.path(), Source::App, 100_000, 100)?;
        writer.write_all(b"more\n")?;
        let mut want = all;
        want.extend_from_slice(b"more\n");
        let mut follower = Follower::open(dir.path(), Source::App, Tail::All, Follow::No)?;
        let mut read = 0usize;
        while let Some(chunk) = follower.next_blocking()? {
            let at = follower.last_chunk_start().ok_or("no place")?;
            // No monitor lock: following ends once everything is read.
            let mut again =
                Follower::open_at(dir.path(), Source::App, at, Follow::UntilWriterExits)?;
            let mut rest = Vec::new();
            while let Some(c) = again.next_blocking()? {
                rest.extend(c);
            }
            assert!(rest == want[read..], "from {at:?} (byte {read})");
            read += chunk.len();
        }
        assert_eq!(read, want.len());
        Ok(())
    }

    #[test]
    fn catches_up_when_retention_deleted_its_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut writer = RotatingWriter::open(dir.path(), Source::App, 4, 1)?;
        writer.write_all(b"aaaa")?;
        let mut follower =
            Follower::open(dir.path(), Source::App, Tail::Lines(0), Follow::Forever)?;
        // Our file (seq 1) and its successor are rotated away and deleted.
        writer.write_all(b"bbbbccccdd")?;
        let mut out = Vec::new();
        while out.len() < 6 {
            out.extend(follower.next_blocking()?.ok_or("finished early")?);
        }
        // seq 1 had nothing new for us; 2 is gone; 3 and the live file remain.
        assert_eq!(out, b"ccccdd");
        Ok(())
    }

    #[test]
    fn restarts_after_outside_truncate() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut writer = RotatingWriter::open(dir.path(), Source::App, 1 << 20, 1)?;
        writer.write_all(b"before\n")?;
        let mut follower = Follower::open(dir.path(), Source::App, Tail::All, Follow::Forever)?;
        assert_eq!(follower.next_blocking()?, Some(b"before\n".to_vec()));
        fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("app.log"))?
            .set_len(0)?;
        writer.write_all(b"after\n")?;
        assert_eq!(follower.next_blocking()?, Some(b"after\n".to_vec()));
        Ok(())
    }

    #[test]
    fn waits_for_a_live_file_that_does_not_exist_yet() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let lock = MonitorLock::acquire(dir.path(), Duration::ZERO)?.ok_or("lock busy")?;
        let follower =
            Follower::open(dir.path(), Source::Vmm, Tail::All, Follow::UntilWriterExits)?;
        let reader = collect(follower);
        thread::sleep(Duration::from_millis(20));
        let mut writer = RotatingWriter::open(dir.path(), Source::Vmm, 3, 5)?;
        writer.write_all(b"hello world")?;
        writer.finish()?;
        drop(lock);
        assert_eq!(
            reader.join().map_err(|_| "reader panicked")?,
            b"hello world"
        );
        Ok(())
    }

    #[test]
    fn without_a_writer_follow_ends_after_the_tail() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("app.log"), b"x\ny\n")?;
        let (tx, rx) = mpsc::channel();
        let dir_path = dir.path().to_owned();
        thread::spawn(move || {
            let _ = tx.send(
                Follower::open(
                    &dir_path,
                    Source::App,
                    Tail::Lines(1),
                    Follow::UntilWriterExits,
                )
                .and_then(|mut f| f.next_blocking().map(|first| (first, f.next_blocking()))),
            );
        });
        let (first, second) = rx.recv_timeout(Duration::from_secs(10))??;
        assert_eq!(first, Some(b"y\n".to_vec()));
        assert!(second?.is_none());
        Ok(())
    }

    #[test]
    fn events_for_other_files_do_not_wake() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut notifier = Notifier::watch(dir.path(), "app.log")?;
        #[cfg_attr(not(feature = "async"), allow(irrefutable_let_patterns))]
        let wakes = |notifier: &mut Notifier| -> io::Result<bool> {
            let Notifier {
                fd,
                buf,
                base,
                seen,
            } = notifier;
            let NotifyFd::Blocking(inotify) = fd else {
                return Err(io::Error::other("not blocking"));
            };
            Ok(relevant(inotify.read_events(buf)?, base, seen))
        };
        fs::write(dir.path().join("vmm.log"), b"noise")?;
        fs::write(dir.path().join("app.logx"), b"noise")?;
        assert!(
            !wakes(&mut notifier)?,
            "other files must not wake an app follower"
        );
        fs::write(dir.path().join("app.log.00000001"), b"x")?;
        assert!(wakes(&mut notifier)?);
        fs::write(dir.path().join(MONITOR_LOCK), b"")?;
        assert!(wakes(&mut notifier)?);
        assert!(!notifier.seen.gone);
        Ok(())
    }

    #[cfg(feature = "async")]
    #[test]
    fn async_follow() -> Result<(), Box<dyn std::error::Error>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let dir = tempfile::tempdir()?;
        let lock = MonitorLock::acquire(dir.path(), Duration::ZERO)?.ok_or("lock busy")?;
        let mut writer = RotatingWriter::open(dir.path(), Source::App, 64, 100)?;
        writer.write_all(b"old\n")?;
        let mut follower = Follower::open(
            dir.path(),
            Source::App,
            Tail::Lines(1),
            Follow::UntilWriterExits,
        )?;
        let writer_thread = thread::spawn(move || -> io::Result<()> {
            for i in 0..200 {
                writer.write_all(format!("{i}\n").as_bytes())?;
                if i % 50 == 0 {
                    thread::sleep(Duration::from_millis(5));
                }
            }
            writer.finish()?;
            drop(lock);
            Ok(())
        });
        let out = rt.block_on(async {
            let mut out = Vec::new();
            while let Some(chunk) = follower.next().await? {
                out.extend_from_slice(&chunk);
            }
            Ok::<_, ReadError>(out)
        })?;
        writer_thread.join().map_err(|_| "writer panicked")??;
        let mut want = b"old\n".to_vec();
        want.extend((0..200).flat_map(|i: u32| format!("{i}\n").into_bytes()));
        assert_eq!(out, want);
        Ok(())
    }
}
