//! The agent's sending side: one writer thread owns the port's write end;
//! sessions hand it whole frames through a bounded queue, so frames never
//! interleave and a stalled host slows senders instead of growing memory.
//!
//! Every queued frame carries the connection *epoch* it belongs to. A new
//! host connection bumps the epoch, and the writer drops frames of older
//! epochs instead of sending them, so output of sessions that belonged to a
//! gone client cannot leak into the next connection.
//!
//! Flow control towards the host is a [`Window`] per stream: a sender takes
//! credit before queueing data and the host gives it back (`Credit`
//! frames) as its consumer takes the bytes.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use lodge_guest::protocol::frame::{encode_credit, encode_json, try_encode_json};
use lodge_guest::protocol::{encode, Event, Kind, CREDIT_BATCH, DATA_CHUNK};

/// Frames queued towards the writer thread.
const QUEUE: usize = 128;

struct Outgoing {
    epoch: u64,
    bytes: Vec<u8>,
}

/// The shared handle to the writer thread.
#[derive(Clone)]
pub struct Wire {
    tx: SyncSender<Outgoing>,
    epoch: Arc<AtomicU64>,
}

impl Wire {
    /// Start the writer thread on `port`.
    pub fn start(port: std::fs::File) -> std::io::Result<Wire> {
        let (tx, rx) = sync_channel(QUEUE);
        let epoch = Arc::new(AtomicU64::new(0));
        let current = epoch.clone();
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || writer(port, rx, current))?;
        Ok(Wire { tx, epoch })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Start a new connection epoch; returns it.
    pub fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Queue a frame of `epoch`; false when the writer is gone.
    pub fn send(&self, epoch: u64, bytes: Vec<u8>) -> bool {
        self.tx.send(Outgoing { epoch, bytes }).is_ok()
    }
}

/// Frames already queued are joined into one write up to this size: one
/// port write (a virtqueue kick and a QEMU exit under emulation) for an
/// exec's exit event and its stream's close, or a run of credits. A
/// virtio-serial port takes at most 32 KiB per write anyway.
const BATCH: usize = 32 << 10;

fn writer(mut port: std::fs::File, rx: Receiver<Outgoing>, epoch: Arc<AtomicU64>) {
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH);
    let mut next: Option<Outgoing> = None;
    loop {
        let Some(first) = next.take().or_else(|| rx.recv().ok()) else {
            return;
        };
        let current = epoch.load(Ordering::SeqCst);
        if first.epoch != current {
            continue;
        }
        let mut bytes = first.bytes;
        if bytes.len() < BATCH {
            // Join what else is waiting, in order.
            while let Ok(more) = rx.try_recv() {
                if more.epoch != current {
                    continue;
                }
                if batch.is_empty() {
                    batch.extend_from_slice(&bytes);
                }
                if batch.len() + more.bytes.len() > BATCH {
                    next = Some(more);
                    break;
                }
                batch.extend_from_slice(&more.bytes);
            }
            if !batch.is_empty() {
                bytes = std::mem::replace(&mut batch, bytes);
                batch.clear();
            }
        }
        // A write blocks while no host is connected and resumes once one
        // is; an error (the port went away) drops the frames.
        if port.write_all(&bytes).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Send credit of one stream and direction, as in the module docs.
pub struct Window {
    state: Mutex<(u64, bool)>,
    cv: Condvar,
}

impl Window {
    pub fn new(initial: u32) -> Arc<Window> {
        Arc::new(Window {
            state: Mutex::new((u64::from(initial), false)),
            cv: Condvar::new(),
        })
    }

    /// Wait for credit and take up to `want` bytes of it; `None` once the
    /// stream is closed.
    pub fn take(&self, want: usize) -> Option<usize> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let (avail, closed) = *state;
            if closed {
                return None;
            }
            if avail > 0 {
                let n = (want as u64).min(avail);
                state.0 -= n;
                return Some(n as usize);
            }
            state = self.cv.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn add(&self, bytes: u32) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = state.0.saturating_add(u64::from(bytes));
        self.cv.notify_all();
    }

    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1 = true;
        self.cv.notify_all();
    }
}

/// What a session uses to answer on its stream.
#[derive(Clone)]
pub struct StreamOut {
    pub id: u32,
    pub epoch: u64,
    wire: Wire,
    window: Arc<Window>,
}

impl StreamOut {
    pub fn new(id: u32, epoch: u64, wire: Wire, window: Arc<Window>) -> Self {
        StreamOut {
            id,
            epoch,
            wire,
            window,
        }
    }

    pub fn event(&self, event: &Event) {
        let frame = try_encode_json(Kind::Event, self.id, event).unwrap_or_else(|| {
            // A reply echoing huge input (a megabyte-long program name).
            let error = Event::Error {
                message: "the reply is too large to send".into(),
                path: String::new(),
            };
            encode_json(Kind::Event, self.id, &error)
        });
        self.wire.send(self.epoch, frame);
    }

    /// Send output or file bytes, waiting for credit as needed; false when
    /// the stream was closed under us (the host went away or cancelled).
    pub fn data(&self, kind: Kind, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let Some(n) = self.window.take(bytes.len().min(DATA_CHUNK)) else {
                return false;
            };
            if !self
                .wire
                .send(self.epoch, encode(kind, self.id, &bytes[..n]))
            {
                return false;
            }
            bytes = &bytes[n..];
        }
        true
    }

    /// The stream is finished.
    pub fn close(&self) {
        self.wire
            .send(self.epoch, encode(Kind::Close, self.id, b""));
    }

    fn credit(&self, bytes: u32) {
        self.wire.send(self.epoch, encode_credit(self.id, bytes));
    }
}

/// Returns credit for input the session consumed, in batches.
pub struct InputCredit {
    pending: u32,
}

impl InputCredit {
    pub fn new() -> Self {
        InputCredit { pending: 0 }
    }

    pub fn consumed(&mut self, out: &StreamOut, bytes: usize) {
        self.pending = self
            .pending
            .saturating_add(u32::try_from(bytes).unwrap_or(u32::MAX));
        if self.pending >= CREDIT_BATCH {
            out.credit(self.pending);
            self.pending = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_guest::protocol::Decoder;
    use std::io::Read;
    use std::os::fd::OwnedFd;

    /// Frames joined into shared writes come out whole and in order,
    /// small and large mixed, and frames of an old epoch are dropped.
    #[test]
    fn joined_frames_keep_their_order() {
        let (mut frames, port) = std::io::pipe().expect("pipe");
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            frames.read_to_end(&mut bytes).expect("read");
            bytes
        });
        let wire = Wire::start(std::fs::File::from(OwnedFd::from(port))).expect("wire");
        let mut want = Vec::new();
        for i in 0..2000u32 {
            let len = if i % 97 == 0 {
                DATA_CHUNK
            } else {
                (i % 50) as usize
            };
            let payload = vec![(i % 251) as u8; len];
            assert!(wire.send(wire.epoch(), encode(Kind::Data, i + 1, &payload)));
            want.push((i + 1, payload));
            if i == 1000 {
                assert!(wire.send(wire.epoch() + 7, encode(Kind::Data, 0, b"stale")));
            }
        }
        drop(wire);
        let bytes = reader.join().expect("reader");
        let mut decoder = Decoder::new();
        decoder.push(&bytes);
        let got: Vec<(u32, Vec<u8>)> = std::iter::from_fn(|| decoder.next_frame())
            .map(|f| (f.stream, f.payload))
            .collect();
        assert_eq!(decoder.skipped(), 0);
        assert!(got == want, "frames lost, changed or reordered");
    }
}
