//! One connection to a guest agent, multiplexing many streams.
//!
//! After the handshake a reader task decodes frames and routes each to its
//! stream's channel, and a writer task sends queued frames in order. A
//! stream's data in either direction is limited by credit (see
//! [`lodge_guest::agent`]): [`StreamTx::data`] waits for the agent's credit,
//! and [`StreamRx::consumed`] returns credit once the caller has passed the
//! bytes on, so a slow WebSocket client slows only its own stream.
//!
//! When the connection breaks (the VM stopped, the agent restarted) every
//! stream's channel closes and its next receive reports why.
//!
//! The agent is not trusted to keep to the credit (the workload runs as
//! root and can replace it), so the host enforces it too, and bounds what
//! it holds per stream:
//!
//! - Output beyond the credit a stream was given (received minus credit
//!   returned exceeds [`INITIAL_WINDOW`]) is a protocol violation: it is
//!   logged and the whole connection is closed; the next request
//!   handshakes anew.
//! - Each stream's unread items live in its [`Inbox`], charged their bytes
//!   plus [`ITEM_OVERHEAD`]; consecutive output of one kind is joined (up
//!   to [`JOIN_LIMIT`]), so a well-behaved agent stays within a window
//!   however small its frames. Events are not under credit; a stream whose
//!   inbox passes [`STREAM_BUFFER_LIMIT`] (its consumer stopped reading
//!   while the agent kept sending) is cancelled and its consumer told why;
//!   the other streams go on.
//!
//! Nor is the agent trusted to keep to the protocol. After the handshake
//! every byte must be a frame the agent may send on a stream the host
//! opened; anything else closes the connection with a logged error
//! ([`AgentError::Misbehaved`]), and the next request handshakes anew:
//!
//! - bytes that are not a frame (garbage, a header over
//!   [`lodge_guest::agent::MAX_PAYLOAD`], an unknown kind);
//! - a frame only the host sends (`Hello`, `Open`, `Control`, `Eof`);
//! - a `HelloAck` the host did not ask for (another nonce, or more answers
//!   than `Hello`s sent);
//! - a frame on stream 0 or on an id this connection never opened (frames
//!   on a stream the host opened and already let go of are dropped: the
//!   agent may not have seen the cancel yet);
//! - an unreadable event, a malformed credit, or credit beyond what the
//!   host sent.
//!
//! Before the handshake's answer nothing is trusted either, but nothing
//! can be judged: a virtio-serial port keeps no connection boundaries, so
//! leftovers of an earlier connection (torn frames, the agent's `Reset`)
//! legitimately come first. They are dropped unread; the handshake gives
//! up at its deadline however much arrives.
//!
//! A connection is only reused while the agent answers: [`Conn::probe`]
//! repeats the handshake's `Hello` (same nonce, so the agent keeps its
//! sessions) and waits for the answer; the [`super::Pool`] probes a
//! connection that has been silent a while before handing it out, so an
//! agent that was killed without a word is noticed and the next request
//! handshakes with whatever answers now.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Notify, Semaphore};

use lodge_guest::agent::frame::{encode_credit, encode_json, try_encode_json};
use lodge_guest::agent::{
    encode, Control, Decoder, Event, Frame, Hello, HelloAck, Kind, Request, CONNECTION_STREAM,
    CREDIT_BATCH, DATA_CHUNK, INITIAL_WINDOW, PROTOCOL_VERSION,
};

use super::{AgentError, AgentStream, Transport};

/// How often the handshake repeats its `Hello`.
const HELLO_INTERVAL: Duration = Duration::from_secs(1);
/// Frames queued for the writer task.
const QUEUE: usize = 256;
/// Most bytes the reader takes from the transport at once.
const READ_BUF: usize = 256 << 10;

/// What a stream receives from the agent.
#[derive(Debug)]
pub enum Inbound {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Data(Vec<u8>),
    Event(Event),
    /// The agent finished the stream; nothing follows.
    Closed,
}

/// Most bytes of unread items one stream may hold: a window of output
/// (joined into few items) and room for events.
pub const STREAM_BUFFER_LIMIT: usize = INITIAL_WINDOW as usize + (8 << 20);
/// What each queued item is charged beyond its bytes: its allocation and
/// bookkeeping, so a flood of tiny frames is bounded too.
pub const ITEM_OVERHEAD: usize = 64;
/// Consecutive output of one kind is joined into items of up to this size.
pub const JOIN_LIMIT: usize = 64 << 10;

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// The agent sent more output than its credit: the outstanding bytes.
    Credit(u64),
    /// The stream holds too much unread.
    Overrun,
}

#[derive(Default)]
struct InboxState {
    /// Unread items and what each was charged.
    items: VecDeque<(Inbound, usize)>,
    /// The sum of the charges.
    queued: usize,
    /// Output received minus credit returned.
    outstanding: u64,
    /// No more items will come (the connection is over).
    ended: bool,
    /// The stream was cancelled for holding too much.
    overrun: bool,
}

/// One stream's unread items, filled by the reader task, emptied by its
/// [`StreamRx`]; bounded (see the module docs).
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    ready: Notify,
}

fn output_bytes(item: &Inbound) -> Option<&Vec<u8>> {
    match item {
        Inbound::Stdout(b) | Inbound::Stderr(b) | Inbound::Data(b) => Some(b),
        _ => None,
    }
}

impl Inbox {
    fn state(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `item`, charged `size` bytes (output: its length).
    fn push(&self, item: Inbound, size: usize) -> Result<(), Refused> {
        let mut s = self.state();
        if s.ended || s.overrun {
            return Ok(());
        }
        if let Some(bytes) = output_bytes(&item) {
            s.outstanding += bytes.len() as u64;
            if s.outstanding > u64::from(INITIAL_WINDOW) {
                return Err(Refused::Credit(s.outstanding));
            }
            // Join with the last unread item of the same kind.
            if let Some((last, charge)) = s.items.back_mut() {
                if std::mem::discriminant(last) == std::mem::discriminant(&item) {
                    if let (
                        Inbound::Stdout(to) | Inbound::Stderr(to) | Inbound::Data(to),
                        Some(b),
                    ) = (last, output_bytes(&item))
                    {
                        if to.len() + b.len() <= JOIN_LIMIT {
                            to.extend_from_slice(b);
                            *charge += b.len();
                            s.queued += b.len();
                            drop(s);
                            self.ready.notify_one();
                            return Ok(());
                        }
                    }
                }
            }
        }
        let charge = size + ITEM_OVERHEAD;
        if s.queued + charge > STREAM_BUFFER_LIMIT {
            s.overrun = true;
            s.items.clear();
            s.queued = 0;
            drop(s);
            self.ready.notify_one();
            return Err(Refused::Overrun);
        }
        s.queued += charge;
        s.items.push_back((item, charge));
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Nothing more will be queued.
    fn end(&self) {
        self.state().ended = true;
        self.ready.notify_one();
    }

    /// Credit for `bytes` went back to the agent.
    fn credited(&self, bytes: u32) {
        let mut s = self.state();
        s.outstanding = s.outstanding.saturating_sub(u64::from(bytes));
    }
}

struct Entry {
    inbox: Arc<Inbox>,
    window: Arc<Semaphore>,
}

const ALIVE: u8 = 0;
const LOST: u8 = 1;
const RESTARTED: u8 = 2;
const MISBEHAVED: u8 = 3;

pub struct Conn {
    out: mpsc::Sender<Vec<u8>>,
    streams: Mutex<HashMap<u32, Entry>>,
    /// The first stream id this connection handed out; ids from here up to
    /// `next_id` (wrapping) are the ones it ever opened.
    first_id: u32,
    next_id: AtomicU32,
    state: AtomicU8,
    /// Tells the writer task to hang up once the connection failed.
    hang_up: Arc<Notify>,
    /// The handshake's nonce, repeated by [`Conn::probe`].
    nonce: u64,
    /// `Hello`s sent whose answer has not come: what bounds the
    /// `HelloAck`s the agent may still send.
    unanswered: AtomicU32,
    /// Counts the `HelloAck`s after the handshake; bumped (unchanged) when
    /// the connection fails, so a probe waiting on it wakes.
    acks: tokio::sync::watch::Sender<u64>,
    /// When the agent last sent anything.
    last_heard: Mutex<Instant>,
}

/// Why the agent's input broke the protocol, and what the connection's
/// streams are told.
#[derive(Debug)]
struct Violation {
    why: String,
    state: u8,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

fn violation(why: impl Into<String>) -> Violation {
    Violation {
        why: why.into(),
        state: MISBEHAVED,
    }
}

/// Where a frame's stream id leads.
enum Route<T> {
    /// An open stream.
    Live(T),
    /// A stream this connection opened and let go of.
    Retired,
}

type Stream = Box<dyn AgentStream>;

impl Conn {
    /// Connect through `transport` and complete the handshake, retrying
    /// until `wait` has passed.
    pub async fn establish(
        transport: &dyn Transport,
        wait: Duration,
    ) -> Result<Arc<Conn>, AgentError> {
        let deadline = Instant::now() + wait;
        let stream = loop {
            match transport.connect().await {
                Ok(s) => break s,
                // The socket appears once the VMM has started.
                Err(_) if Instant::now() + Duration::from_millis(100) < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => {
                    return Err(AgentError::Connect {
                        what: transport.describe(),
                        source,
                    })
                }
            }
        };
        let (mut reader, mut writer) = tokio::io::split(stream);
        let nonce: u64 = rand::random();
        let shake = handshake(&mut reader, &mut writer, nonce, deadline, wait).await?;
        let (out, rx) = mpsc::channel(QUEUE);
        let first_id = rand::random::<u32>() | 1;
        let conn = Arc::new(Conn {
            out,
            streams: Mutex::new(HashMap::new()),
            first_id,
            next_id: AtomicU32::new(first_id),
            state: AtomicU8::new(ALIVE),
            hang_up: Arc::new(Notify::new()),
            nonce,
            unanswered: AtomicU32::new(shake.hellos - 1),
            acks: tokio::sync::watch::Sender::new(0),
            last_heard: Mutex::new(Instant::now()),
        });
        let decoder = shake.decoder;
        tokio::spawn(write_loop(
            writer,
            rx,
            Arc::downgrade(&conn),
            conn.hang_up.clone(),
        ));
        tokio::spawn(read_loop(reader, decoder, Arc::downgrade(&conn)));
        Ok(conn)
    }

    pub fn is_alive(&self) -> bool {
        self.state.load(Ordering::SeqCst) == ALIVE
    }

    fn lost_reason(&self) -> AgentError {
        match self.state.load(Ordering::SeqCst) {
            RESTARTED => AgentError::Restarted,
            MISBEHAVED => AgentError::Misbehaved,
            _ => AgentError::Lost,
        }
    }

    /// How long the agent has said nothing.
    pub fn silent_for(&self) -> Duration {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn heard(&self) {
        *self.last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Check that the agent still answers on this connection: send the
    /// handshake's `Hello` again and wait up to `wait` for its answer. An
    /// agent that does not answer in time fails the connection.
    pub async fn probe(&self, wait: Duration) -> Result<(), AgentError> {
        let mut acks = self.acks.subscribe();
        let seen = *acks.borrow_and_update();
        self.unanswered.fetch_add(1, Ordering::SeqCst);
        self.send(hello(self.nonce)).await?;
        let answered =
            tokio::time::timeout(wait, acks.wait_for(|n| *n > seen || !self.is_alive())).await;
        if !self.is_alive() {
            return Err(self.lost_reason());
        }
        match answered {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(self.lost_reason()),
            Err(_) => {
                tracing::warn!(
                    wait_secs = wait.as_secs(),
                    "the guest agent stopped answering: closing the connection"
                );
                self.fail(LOST);
                Err(AgentError::NoAnswer(wait.as_secs()))
            }
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection is over: close every stream and hang up.
    fn fail(&self, why: u8) {
        // Already failed: the first reason stands.
        let _ = self
            .state
            .compare_exchange(ALIVE, why, Ordering::SeqCst, Ordering::SeqCst);
        for (_, entry) in self.streams().drain() {
            entry.window.close();
            entry.inbox.end();
        }
        self.hang_up.notify_one();
        self.acks.send_modify(|_| {});
    }

    /// The agent broke the protocol: say so and close the connection.
    fn misbehaved(&self, why: &Violation) {
        tracing::error!("the guest agent broke the protocol ({why}): closing the connection");
        self.fail(why.state);
    }

    /// Whether this connection ever opened stream `id`.
    fn opened(&self, id: u32) -> bool {
        let next = self.next_id.load(Ordering::SeqCst);
        id != CONNECTION_STREAM && id.wrapping_sub(self.first_id) < next.wrapping_sub(self.first_id)
    }

    /// Where a frame on stream `id` goes; a violation for an id this
    /// connection never opened.
    fn route<T>(&self, id: u32, live: impl FnOnce(&Entry) -> T) -> Result<Route<T>, Violation> {
        if let Some(entry) = self.streams().get(&id) {
            return Ok(Route::Live(live(entry)));
        }
        if self.opened(id) {
            Ok(Route::Retired)
        } else {
            Err(violation(format!(
                "a frame on stream {id}, which was never opened"
            )))
        }
    }

    /// Tell the agent to stop stream `id`, without waiting.
    fn cancel(&self, id: u32) {
        let cancel = encode_json(Kind::Control, id, &Control::Cancel);
        if let Err(mpsc::error::TrySendError::Full(frame)) = self.out.try_send(cancel) {
            let out = self.out.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    // A closed queue means the connection is gone: nothing
                    // left to cancel.
                    let _ = out.send(frame).await;
                });
            }
        }
    }

    async fn send(&self, frame: Vec<u8>) -> Result<(), AgentError> {
        if !self.is_alive() {
            return Err(self.lost_reason());
        }
        self.out.send(frame).await.map_err(|_| self.lost_reason())
    }

    /// Open a stream for `request`.
    pub async fn open(
        self: &Arc<Self>,
        request: &Request,
    ) -> Result<(StreamTx, StreamRx), AgentError> {
        self.open_with(request, false).await
    }

    /// Open a stream for `request` whose input is already over: the `Open`
    /// and the `Eof` go out in one write, so the agent reads them together
    /// (one wake-up of the guest instead of two, and the session sees its
    /// end of input before it decides whether to feed a stdin).
    pub async fn open_without_input(
        self: &Arc<Self>,
        request: &Request,
    ) -> Result<(StreamTx, StreamRx), AgentError> {
        self.open_with(request, true).await
    }

    async fn open_with(
        self: &Arc<Self>,
        request: &Request,
        input_over: bool,
    ) -> Result<(StreamTx, StreamRx), AgentError> {
        let inbox = Arc::new(Inbox::default());
        let window = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
        let id = {
            let mut streams = self.streams();
            let mut id;
            loop {
                id = self.next_id.fetch_add(1, Ordering::SeqCst);
                if id != CONNECTION_STREAM && !streams.contains_key(&id) {
                    break;
                }
            }
            streams.insert(
                id,
                Entry {
                    inbox: inbox.clone(),
                    window: window.clone(),
                },
            );
            id
        };
        let rx = StreamRx {
            id,
            conn: self.clone(),
            inbox,
            pending_credit: 0,
            finished: false,
        };
        let mut open =
            try_encode_json(Kind::Open, id, request).ok_or(AgentError::TooLarge("request"))?;
        if input_over {
            open.extend_from_slice(&encode(Kind::Eof, id, b""));
        }
        self.send(open).await?;
        Ok((
            StreamTx {
                id,
                conn: self.clone(),
                window,
            },
            rx,
        ))
    }

    fn dispatch(&self, frame: Frame) -> Result<(), Violation> {
        match frame.kind {
            Kind::Reset => self.fail(RESTARTED),
            Kind::HelloAck => {
                let ack = serde_json::from_slice::<HelloAck>(&frame.payload)
                    .map_err(|e| violation(format!("an unreadable hello answer: {e}")))?;
                if ack.nonce != self.nonce {
                    return Err(violation("a hello answer for another connection"));
                }
                self.unanswered
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .map_err(|_| violation("a hello answer nobody asked for"))?;
                self.acks.send_modify(|n| *n += 1);
            }
            Kind::Hello | Kind::Open | Kind::Control | Kind::Eof => {
                return Err(violation(format!(
                    "a {:?} frame, which only the host sends",
                    frame.kind
                )));
            }
            Kind::Credit => {
                let bytes = frame.credit().ok_or_else(|| {
                    violation(format!("a credit frame of {} bytes", frame.payload.len()))
                })?;
                if let Route::Live(window) = self.route(frame.stream, |e| e.window.clone())? {
                    // The agent can only return what the host sent: the
                    // window never grows past its initial size.
                    if window.available_permits() + bytes as usize > INITIAL_WINDOW as usize {
                        return Err(violation(format!(
                            "credit of {bytes} bytes on stream {} beyond the data sent",
                            frame.stream
                        )));
                    }
                    window.add_permits(bytes as usize);
                }
            }
            Kind::Close => {
                if let Route::Live(()) = self.route(frame.stream, |_| ())? {
                    if let Some(entry) = self.streams().remove(&frame.stream) {
                        entry.window.close();
                        // An inbox already over its bound reports that instead.
                        if let Err(refused) = entry.inbox.push(Inbound::Closed, 0) {
                            tracing::debug!(
                                stream = frame.stream,
                                ?refused,
                                "close after an overrun"
                            );
                        }
                        entry.inbox.end();
                    }
                }
            }
            Kind::Stdout | Kind::Stderr | Kind::Data | Kind::Event => {
                let Route::Live(inbox) = self.route(frame.stream, |e| e.inbox.clone())? else {
                    // A stream the host already let go of.
                    return Ok(());
                };
                let size = frame.payload.len();
                let item = match frame.kind {
                    Kind::Stdout => Inbound::Stdout(frame.payload),
                    Kind::Stderr => Inbound::Stderr(frame.payload),
                    Kind::Data => Inbound::Data(frame.payload),
                    _ => match serde_json::from_slice::<Event>(&frame.payload) {
                        Ok(e) => Inbound::Event(e),
                        Err(e) => return Err(violation(format!("an unreadable event: {e}"))),
                    },
                };
                match inbox.push(item, size) {
                    Ok(()) => {}
                    Err(Refused::Credit(outstanding)) => {
                        // Reported to the streams as a lost connection, as
                        // since this check came first.
                        return Err(Violation {
                            why: format!(
                                "it sent more than its credit: {outstanding} bytes unacknowledged on stream {}, over the window of {INITIAL_WINDOW}",
                                frame.stream
                            ),
                            state: LOST,
                        });
                    }
                    Err(Refused::Overrun) => {
                        tracing::warn!(
                            stream = frame.stream,
                            limit = STREAM_BUFFER_LIMIT,
                            "a stream's reader fell too far behind the guest agent: ending the stream"
                        );
                        if let Some(entry) = self.streams().remove(&frame.stream) {
                            entry.window.close();
                        }
                        self.cancel(frame.stream);
                    }
                }
            }
        }
        Ok(())
    }
}

fn hello(nonce: u64) -> Vec<u8> {
    encode_json(
        Kind::Hello,
        CONNECTION_STREAM,
        &Hello {
            version: PROTOCOL_VERSION,
            nonce,
        },
    )
}

/// What the handshake leaves behind.
struct Handshake {
    /// Holds whatever followed the answer.
    decoder: Decoder,
    /// `Hello`s sent (each may be answered once).
    hellos: u32,
}

/// Send `Hello` until the agent answers with our nonce; everything before
/// that answer is leftover of an earlier connection and is dropped.
async fn handshake(
    reader: &mut ReadHalf<Stream>,
    writer: &mut WriteHalf<Stream>,
    nonce: u64,
    deadline: Instant,
    wait: Duration,
) -> Result<Handshake, AgentError> {
    let hello = hello(nonce);
    let mut hellos = 0u32;
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(AgentError::NoAnswer(wait.as_secs()));
        }
        writer
            .write_all(&hello)
            .await
            .map_err(|_| AgentError::Lost)?;
        hellos += 1;
        let round = (now + HELLO_INTERVAL).min(deadline);
        loop {
            while let Some(frame) = decoder.next_frame() {
                if frame.kind != Kind::HelloAck {
                    continue;
                }
                let Ok(ack) = serde_json::from_slice::<HelloAck>(&frame.payload) else {
                    continue;
                };
                if ack.nonce != nonce {
                    continue;
                }
                if ack.version != PROTOCOL_VERSION {
                    return Err(AgentError::Version {
                        agent: ack.version,
                        host: PROTOCOL_VERSION,
                    });
                }
                return Ok(Handshake { decoder, hellos });
            }
            let left = round.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, reader.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => return Err(AgentError::Lost),
                Ok(Ok(n)) => decoder.push(&buf[..n]),
            }
        }
    }
}

async fn read_loop(
    mut reader: ReadHalf<Stream>,
    mut decoder: Decoder,
    conn: std::sync::Weak<Conn>,
) {
    let mut buf = vec![0u8; READ_BUF];
    // What the handshake skipped was leftovers; from here on every byte
    // must be part of a frame.
    let skipped = decoder.skipped();
    loop {
        // Frames already buffered (from the handshake) come first.
        {
            let Some(conn) = conn.upgrade() else { return };
            while let Some(frame) = decoder.next_frame() {
                let checked = if decoder.skipped() > skipped {
                    Err(violation(format!(
                        "{} bytes that are not frames",
                        decoder.skipped() - skipped
                    )))
                } else {
                    conn.dispatch(frame)
                };
                if let Err(why) = checked {
                    conn.misbehaved(&why);
                    return;
                }
            }
            // Garbage with no frame after it yet.
            if decoder.skipped() > skipped {
                let why = violation(format!(
                    "{} bytes that are not frames",
                    decoder.skipped() - skipped
                ));
                conn.misbehaved(&why);
                return;
            }
            if !conn.is_alive() {
                return;
            }
        }
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if let Some(conn) = conn.upgrade() {
                    conn.fail(LOST);
                }
                return;
            }
            Ok(n) => {
                decoder.push(&buf[..n]);
                if let Some(conn) = conn.upgrade() {
                    conn.heard();
                }
            }
        }
    }
}

/// Queued frames are joined into one write up to about this size (the
/// guest's virtio-serial port takes 32 KiB per buffer anyway).
const WRITE_BATCH: usize = 32 << 10;

async fn write_loop(
    mut writer: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    conn: std::sync::Weak<Conn>,
    hang_up: Arc<Notify>,
) {
    loop {
        // The queue closes once every handle on the connection is gone.
        let frame = tokio::select! {
            frame = rx.recv() => frame,
            () = hang_up.notified() => None,
        };
        let Some(mut frame) = frame else {
            // Failed, or every handle dropped: hang up (the reader half
            // ends with the read loop).
            if let Err(e) = writer.shutdown().await {
                tracing::debug!("closing the agent connection: {e}");
            }
            return;
        };
        // Join the frames already queued behind it, in order: one write is
        // one read (and one wake-up) of the emulated guest's agent.
        while frame.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => frame.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if writer.write_all(&frame).await.is_err() {
            if let Some(conn) = conn.upgrade() {
                conn.fail(LOST);
            }
            return;
        }
    }
}

/// The sending half of a stream.
#[derive(Clone)]
pub struct StreamTx {
    id: u32,
    conn: Arc<Conn>,
    window: Arc<Semaphore>,
}

impl StreamTx {
    /// Send input bytes, waiting for the agent's credit.
    pub async fn data(&self, bytes: &[u8]) -> Result<(), AgentError> {
        for chunk in bytes.chunks(DATA_CHUNK) {
            let permit = self
                .window
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| {
                    if self.conn.is_alive() {
                        AgentError::StreamClosed
                    } else {
                        self.conn.lost_reason()
                    }
                })?;
            permit.forget();
            self.conn.send(encode(Kind::Data, self.id, chunk)).await?;
        }
        Ok(())
    }

    pub async fn control(&self, control: &Control) -> Result<(), AgentError> {
        self.conn
            .send(
                try_encode_json(Kind::Control, self.id, control)
                    .ok_or(AgentError::TooLarge("control message"))?,
            )
            .await
    }

    /// No more input.
    pub async fn eof(&self) -> Result<(), AgentError> {
        self.conn.send(encode(Kind::Eof, self.id, b"")).await
    }
}

/// The receiving half of a stream. Dropping it before the agent closed
/// the stream cancels the stream in the guest.
pub struct StreamRx {
    id: u32,
    conn: Arc<Conn>,
    inbox: Arc<Inbox>,
    pending_credit: u32,
    finished: bool,
}

impl StreamRx {
    /// The next thing the agent sent on this stream.
    pub async fn recv(&mut self) -> Result<Inbound, AgentError> {
        loop {
            {
                let mut s = self.inbox.state();
                if let Some((item, charge)) = s.items.pop_front() {
                    s.queued -= charge;
                    if matches!(item, Inbound::Closed) {
                        self.finished = true;
                    }
                    return Ok(item);
                }
                if s.overrun {
                    self.finished = true;
                    return Err(AgentError::Overrun(STREAM_BUFFER_LIMIT));
                }
                if s.ended {
                    return Err(self.conn.lost_reason());
                }
            }
            // One reader per inbox: a wake-up sent while we were not yet
            // waiting is kept for us (`notify_one`).
            self.inbox.ready.notified().await;
        }
    }

    /// The caller passed on `bytes` of output: return the credit.
    pub async fn consumed(&mut self, bytes: usize) -> Result<(), AgentError> {
        self.pending_credit = self
            .pending_credit
            .saturating_add(u32::try_from(bytes).unwrap_or(u32::MAX));
        if self.pending_credit >= CREDIT_BATCH {
            let credit = std::mem::take(&mut self.pending_credit);
            self.inbox.credited(credit);
            self.conn.send(encode_credit(self.id, credit)).await?;
        }
        Ok(())
    }
}

impl Drop for StreamRx {
    fn drop(&mut self) {
        // Gone from the table already: the agent closed the stream itself
        // (its `Close` arrived, maybe unread), so there is nothing to
        // cancel, and a cancel would only wake the guest for nothing.
        let open = self.conn.streams().remove(&self.id).is_some();
        if !self.finished && open && self.conn.is_alive() {
            self.conn.cancel(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixStream;

    /// A transport handing out one end of a socket pair.
    struct Pair(Mutex<Option<UnixStream>>);

    impl Transport for Pair {
        fn connect(&self) -> super::super::Connecting<'_> {
            let stream = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
            Box::pin(async move {
                stream
                    .map(|s| Box::new(s) as Box<dyn AgentStream>)
                    .ok_or_else(|| std::io::Error::other("used up"))
            })
        }

        fn describe(&self) -> String {
            "a socket pair".into()
        }
    }

    /// A fake agent: leftovers of an earlier connection first, then the
    /// handshake; `Generate` is served within the credit the host gives.
    async fn fake_agent(mut s: UnixStream, reset_after_open: bool) {
        s.write_all(b"garbage of an old connection LA\x07\x00")
            .await
            .expect("write");
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut credit = u64::from(INITIAL_WINDOW);
        let mut generating: Option<(u32, u64)> = None;
        loop {
            while let Some(f) = decoder.next_frame() {
                match f.kind {
                    Kind::Hello => {
                        let hello: Hello = serde_json::from_slice(&f.payload).expect("hello");
                        // A stale frame, then the answer.
                        let stale = encode(Kind::Stdout, 99, b"stale");
                        let ack = encode_json(
                            Kind::HelloAck,
                            0,
                            &HelloAck {
                                version: PROTOCOL_VERSION,
                                nonce: hello.nonce,
                            },
                        );
                        s.write_all(&[stale, ack].concat()).await.expect("write");
                    }
                    Kind::Open if reset_after_open => {
                        s.write_all(&encode(Kind::Reset, 0, b""))
                            .await
                            .expect("write");
                    }
                    Kind::Open => match serde_json::from_slice(&f.payload).expect("request") {
                        Request::Generate { bytes } => generating = Some((f.stream, bytes)),
                        other => panic!("unexpected {other:?}"),
                    },
                    Kind::Credit => credit += u64::from(f.credit().expect("credit")),
                    _ => {}
                }
            }
            if let Some((id, left)) = generating.as_mut() {
                while *left > 0 && credit > 0 {
                    let n = (*left).min(DATA_CHUNK as u64).min(credit);
                    s.write_all(&encode(Kind::Data, *id, &vec![1u8; n as usize]))
                        .await
                        .expect("write");
                    *left -= n;
                    credit -= n;
                }
                if *left == 0 {
                    let end = encode_json(Kind::Event, *id, &Event::End { last: true });
                    s.write_all(&[end, encode(Kind::Close, *id, b"")].concat())
                        .await
                        .expect("write");
                    generating = None;
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => decoder.push(&buf[..n]),
            }
        }
    }

    #[tokio::test]
    async fn handshake_skips_leftovers_and_data_flows_on_credit() {
        let (host, guest) = UnixStream::pair().expect("pair");
        tokio::spawn(fake_agent(guest, false));
        let transport = Pair(Mutex::new(Some(host)));
        let conn = Conn::establish(&transport, Duration::from_secs(10))
            .await
            .expect("connect");
        // Three windows' worth: only flows if credit comes back.
        let bytes = 3 * u64::from(INITIAL_WINDOW);
        let (_tx, mut rx) = conn.open(&Request::Generate { bytes }).await.expect("open");
        let mut got = 0u64;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("stalled: no credit returned?")
                .expect("recv")
            {
                Inbound::Data(d) => {
                    got += d.len() as u64;
                    rx.consumed(d.len()).await.expect("credit");
                }
                Inbound::Event(Event::End { last: true }) => {}
                Inbound::Closed => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, bytes);
        assert!(conn.is_alive());
    }

    #[tokio::test]
    async fn an_agent_restart_fails_open_streams() {
        let (host, guest) = UnixStream::pair().expect("pair");
        tokio::spawn(fake_agent(guest, true));
        let transport = Pair(Mutex::new(Some(host)));
        let conn = Conn::establish(&transport, Duration::from_secs(10))
            .await
            .expect("connect");
        let (_tx, mut rx) = conn
            .open(&Request::Generate { bytes: 1 })
            .await
            .expect("open");
        assert!(matches!(rx.recv().await, Err(AgentError::Restarted)));
        assert!(!conn.is_alive());
    }

    /// A hostile agent: answers the handshake, then floods stdout on the
    /// first stream it is given, ignoring credit; reports whether the host
    /// closed the connection (its read saw the end).
    async fn credit_ignoring_agent(mut s: UnixStream, flood: usize) -> bool {
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            while let Some(f) = decoder.next_frame() {
                match f.kind {
                    Kind::Hello => {
                        let hello: Hello = serde_json::from_slice(&f.payload).expect("hello");
                        let ack = HelloAck {
                            version: PROTOCOL_VERSION,
                            nonce: hello.nonce,
                        };
                        let ack = encode_json(Kind::HelloAck, 0, &ack);
                        if s.write_all(&ack).await.is_err() {
                            return false;
                        }
                    }
                    Kind::Open => {
                        let chunk = encode(Kind::Stdout, f.stream, &vec![b'y'; DATA_CHUNK]);
                        for _ in 0..flood / DATA_CHUNK {
                            if s.write_all(&chunk).await.is_err() {
                                // The host hung up mid-flood.
                                return true;
                            }
                        }
                    }
                    _ => {}
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => decoder.push(&buf[..n]),
            }
        }
    }

    /// More than the credit it was given: the connection is cut off (the
    /// stream reports the loss, the agent sees its socket closed), and what
    /// the host held for the unread stream never exceeded one window.
    #[tokio::test]
    async fn an_agent_ignoring_credit_is_cut_off() {
        let (host, guest) = UnixStream::pair().expect("pair");
        let agent = tokio::spawn(credit_ignoring_agent(guest, 4 * INITIAL_WINDOW as usize));
        let transport = Pair(Mutex::new(Some(host)));
        let conn = Conn::establish(&transport, Duration::from_secs(10))
            .await
            .expect("connect");
        let (_tx, mut rx) = conn
            .open(&Request::Generate { bytes: 0 })
            .await
            .expect("open");
        // Nobody reads the stream while the agent floods it.
        let closed = tokio::time::timeout(Duration::from_secs(10), agent)
            .await
            .expect("the host kept the connection open")
            .expect("agent task");
        assert!(closed, "the agent saw its connection closed");
        assert!(!conn.is_alive());
        let mut held = 0;
        let err = loop {
            match rx.recv().await {
                Ok(Inbound::Stdout(b)) => held += b.len(),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, AgentError::Lost), "{err}");
        assert!(held <= INITIAL_WINDOW as usize, "held {held} bytes");
    }

    /// A window of one-byte frames is joined into few items, so what the
    /// host holds stays near the window; a byte past the window is refused.
    #[test]
    fn an_inbox_joins_tiny_output_and_enforces_the_window() {
        let inbox = Inbox::default();
        for i in 0..INITIAL_WINDOW {
            let item = if i < INITIAL_WINDOW / 2 {
                Inbound::Stdout(vec![b'o'])
            } else {
                Inbound::Stderr(vec![b'e'])
            };
            inbox.push(item, 1).expect("within the window");
        }
        let window = INITIAL_WINDOW as usize;
        let items = window / JOIN_LIMIT + 1;
        let state = inbox.state();
        assert!(state.items.len() <= items, "{} items", state.items.len());
        assert!(state.queued <= window + items * ITEM_OVERHEAD);
        drop(state);
        assert_eq!(
            inbox.push(Inbound::Stdout(vec![b'x']), 1),
            Err(Refused::Credit(u64::from(INITIAL_WINDOW) + 1))
        );
        // Credit returned makes room again.
        inbox.credited(CREDIT_BATCH);
        inbox
            .push(Inbound::Stdout(vec![b'x']), 1)
            .expect("credited");
    }

    /// Events are not under credit: an unread stream flooded with them is
    /// ended once it holds `STREAM_BUFFER_LIMIT`, and its items are freed.
    #[test]
    fn an_inbox_flooded_with_events_is_bounded() {
        let inbox = Inbox::default();
        let event = || {
            Inbound::Event(Event::Error {
                message: "x".repeat(1000),
                path: String::new(),
            })
        };
        let mut accepted = 0;
        while inbox.push(event(), 1000).is_ok() {
            accepted += 1;
            assert!(accepted <= STREAM_BUFFER_LIMIT / 1000, "never refused");
        }
        assert!(accepted * (1000 + ITEM_OVERHEAD) <= STREAM_BUFFER_LIMIT);
        let state = inbox.state();
        assert!(state.overrun && state.items.is_empty() && state.queued == 0);
        drop(state);
        // Later items are dropped quietly.
        assert_eq!(inbox.push(event(), 1000), Ok(()));
        assert!(inbox.state().items.is_empty());
    }

    /// What a scripted agent writes once the host opened its first
    /// stream, given that stream's id and the connection's nonce.
    type Script = Box<dyn FnOnce(u32, u64) -> Vec<u8> + Send>;

    /// A scripted agent: answers the handshake (and every later `Hello`
    /// when `answer_probes`), writes `script`'s bytes once the host opened
    /// a stream, then reads until the host hangs up; returns true then.
    async fn scripted_agent(
        mut s: UnixStream,
        script: Option<Script>,
        answer_probes: bool,
    ) -> bool {
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut nonce = None;
        let mut script = script;
        loop {
            while let Some(f) = decoder.next_frame() {
                match f.kind {
                    Kind::Hello if nonce.is_none() || answer_probes => {
                        let hello: Hello = serde_json::from_slice(&f.payload).expect("hello");
                        nonce = Some(hello.nonce);
                        let ack = HelloAck {
                            version: PROTOCOL_VERSION,
                            nonce: hello.nonce,
                        };
                        if s.write_all(&encode_json(Kind::HelloAck, 0, &ack))
                            .await
                            .is_err()
                        {
                            return true;
                        }
                    }
                    Kind::Open => {
                        if let (Some(script), Some(nonce)) = (script.take(), nonce) {
                            if s.write_all(&script(f.stream, nonce)).await.is_err() {
                                return true;
                            }
                        }
                    }
                    _ => {}
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => decoder.push(&buf[..n]),
            }
        }
    }

    /// Runs `script` against a fresh connection with one open stream,
    /// checks that the host closed the connection, and returns what the
    /// stream reported.
    async fn misbehave(script: Script) -> AgentError {
        let (host, guest) = UnixStream::pair().expect("pair");
        let agent = tokio::spawn(scripted_agent(guest, Some(script), false));
        let transport = Pair(Mutex::new(Some(host)));
        let conn = Conn::establish(&transport, Duration::from_secs(10))
            .await
            .expect("connect");
        let (_tx, mut rx) = conn
            .open(&Request::Stat {
                path: "/".into(),
                follow_links: false,
            })
            .await
            .expect("open");
        let err = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the host kept trusting the connection")
            .expect_err("nothing is delivered");
        let closed = tokio::time::timeout(Duration::from_secs(10), agent)
            .await
            .expect("the host kept the connection open")
            .expect("agent task");
        assert!(closed, "the agent saw its connection closed");
        assert!(!conn.is_alive());
        err
    }

    fn header(kind: u8, stream: u32, len: u32) -> Vec<u8> {
        let mut h = vec![b'L', b'A', kind, 0];
        h.extend_from_slice(&stream.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h
    }

    #[tokio::test]
    async fn garbage_after_the_handshake_closes_the_connection() {
        let err = misbehave(Box::new(|_, _| b"this is not a frame".to_vec())).await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
    }

    #[tokio::test]
    async fn an_oversize_frame_closes_the_connection() {
        // A header claiming 2 MiB, then a valid frame: the host must not
        // skip to it.
        let err = misbehave(Box::new(|id, _| {
            let mut b = header(Kind::Stdout as u8, id, 2 << 20);
            b.extend(vec![b'x'; 4096]);
            b.extend(encode(Kind::Stdout, id, b"after"));
            b
        }))
        .await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_kind_closes_the_connection() {
        let err = misbehave(Box::new(|id, _| header(99, id, 0))).await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
    }

    #[tokio::test]
    async fn a_stream_never_opened_closes_the_connection() {
        let err = misbehave(Box::new(|id, _| {
            encode(Kind::Stdout, id.wrapping_add(1000), b"forged")
        }))
        .await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
        let err = misbehave(Box::new(|_, _| encode(Kind::Close, CONNECTION_STREAM, b""))).await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
    }

    #[tokio::test]
    async fn frames_only_the_host_sends_close_the_connection() {
        let err = misbehave(Box::new(|_, nonce| {
            encode_json(
                Kind::Hello,
                0,
                &Hello {
                    version: PROTOCOL_VERSION,
                    nonce,
                },
            )
        }))
        .await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
        let err = misbehave(Box::new(|id, _| {
            encode_json(Kind::Open, id, &Request::Generate { bytes: 1 })
        }))
        .await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
    }

    #[tokio::test]
    async fn a_second_hello_answer_closes_the_connection() {
        // For another connection's nonce.
        let err = misbehave(Box::new(|_, nonce| {
            let ack = HelloAck {
                version: PROTOCOL_VERSION,
                nonce: nonce ^ 1,
            };
            encode_json(Kind::HelloAck, 0, &ack)
        }))
        .await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
        // Ours, but one Hello was answered already.
        let err = misbehave(Box::new(|_, nonce| {
            let ack = HelloAck {
                version: PROTOCOL_VERSION,
                nonce,
            };
            encode_json(Kind::HelloAck, 0, &ack)
        }))
        .await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
    }

    #[tokio::test]
    async fn an_unreadable_event_closes_the_connection() {
        let err = misbehave(Box::new(|id, _| encode(Kind::Event, id, b"{\"event\":"))).await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
    }

    #[tokio::test]
    async fn bad_credit_closes_the_connection() {
        // Credit for data the host never sent.
        let err = misbehave(Box::new(|id, _| encode_credit(id, 1))).await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
        let err = misbehave(Box::new(|id, _| encode(Kind::Credit, id, &[1, 2, 3]))).await;
        assert!(matches!(err, AgentError::Misbehaved), "{err}");
    }

    /// What a well-behaved agent may send is not taken for an attack:
    /// output on a stream the host let go of (the cancel crossed it), and
    /// an answer to each repeated `Hello`.
    #[tokio::test]
    async fn late_frames_and_repeated_answers_are_tolerated() {
        let (host, mut guest) = UnixStream::pair().expect("pair");
        let agent = tokio::spawn(async move {
            let mut decoder = Decoder::new();
            let mut buf = vec![0u8; 64 << 10];
            let mut hellos = Vec::new();
            loop {
                while let Some(f) = decoder.next_frame() {
                    match f.kind {
                        // Answer late, so the host repeats its Hello, then
                        // answer every one.
                        Kind::Hello => {
                            let hello: Hello = serde_json::from_slice(&f.payload).expect("hello");
                            hellos.push(hello.nonce);
                            if hellos.len() == 2 {
                                for nonce in &hellos {
                                    let ack = HelloAck {
                                        version: PROTOCOL_VERSION,
                                        nonce: *nonce,
                                    };
                                    guest
                                        .write_all(&encode_json(Kind::HelloAck, 0, &ack))
                                        .await
                                        .expect("write");
                                }
                            }
                        }
                        Kind::Control => {
                            // The cancel: output already on its way, then
                            // the close.
                            let late = [
                                encode(Kind::Stdout, f.stream, b"late"),
                                encode_credit(f.stream, 0),
                                encode(Kind::Close, f.stream, b""),
                            ];
                            guest.write_all(&late.concat()).await.expect("write");
                        }
                        _ => {}
                    }
                }
                match guest.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => decoder.push(&buf[..n]),
                }
            }
        });
        let transport = Pair(Mutex::new(Some(host)));
        let conn = Conn::establish(&transport, Duration::from_secs(10))
            .await
            .expect("connect");
        let (_tx, rx) = conn
            .open(&Request::Generate { bytes: 1 })
            .await
            .expect("open");
        drop(rx);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(conn.is_alive());
        drop(conn);
        agent.abort();
    }

    /// A transport handing out a series of sockets, one per connect.
    struct Series(Mutex<Vec<UnixStream>>);

    impl Transport for Series {
        fn connect(&self) -> super::super::Connecting<'_> {
            let stream = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
            Box::pin(async move {
                stream
                    .map(|s| Box::new(s) as Box<dyn AgentStream>)
                    .ok_or_else(|| std::io::Error::other("used up"))
            })
        }

        fn describe(&self) -> String {
            "a series of sockets".into()
        }
    }

    /// An agent killed without a word (its connection stays open, nothing
    /// answers): the pool does not hand the connection out again, it
    /// handshakes with what answers on the port now.
    #[tokio::test]
    async fn a_silent_agent_is_probed_and_replaced() {
        let (host1, guest1) = UnixStream::pair().expect("pair");
        let (host2, guest2) = UnixStream::pair().expect("pair");
        // The first agent answers its handshake only.
        let _first = tokio::spawn(scripted_agent(guest1, None, false));
        let second = tokio::spawn(scripted_agent(guest2, None, true));
        let transport = Series(Mutex::new(vec![host2, host1]));
        let pool = super::super::Pool::with_probe_after(Duration::ZERO);
        let old = pool
            .connect("vm", &transport, Duration::ZERO)
            .await
            .expect("first connect");
        let t0 = Instant::now();
        let new = pool
            .connect("vm", &transport, Duration::ZERO)
            .await
            .expect("reconnect");
        assert!(!Arc::ptr_eq(&old, &new), "the silent connection was reused");
        assert!(!old.is_alive());
        assert!(t0.elapsed() < 2 * super::super::MIN_WAIT);
        // The new agent answers probes: its connection is kept.
        let again = pool
            .connect("vm", &transport, Duration::ZERO)
            .await
            .expect("probe");
        assert!(Arc::ptr_eq(&new, &again));
        drop((old, new, again, pool));
        second.abort();
    }

    /// An agent that restarted says so (`Reset`): the connection fails and
    /// the next one starts with a fresh handshake and a new nonce.
    #[tokio::test]
    async fn an_agent_restart_means_a_fresh_handshake() {
        let (host1, guest1) = UnixStream::pair().expect("pair");
        let (host2, guest2) = UnixStream::pair().expect("pair");
        let restart: Script = Box::new(|_, _| encode(Kind::Reset, 0, b""));
        let _first = tokio::spawn(scripted_agent(guest1, Some(restart), true));
        let second = tokio::spawn(scripted_agent(guest2, None, true));
        let transport = Series(Mutex::new(vec![host2, host1]));
        let pool = super::super::Pool::default();
        let old = pool
            .connect("vm", &transport, Duration::ZERO)
            .await
            .expect("first connect");
        let (_tx, mut rx) = old
            .open(&Request::Generate { bytes: 1 })
            .await
            .expect("open");
        assert!(matches!(rx.recv().await, Err(AgentError::Restarted)));
        let new = pool
            .connect("vm", &transport, Duration::ZERO)
            .await
            .expect("reconnect");
        assert!(!Arc::ptr_eq(&old, &new));
        assert_ne!(old.nonce, new.nonce);
        drop((old, new, pool));
        second.abort();
    }

    #[tokio::test]
    async fn an_agent_that_never_answers_times_out() {
        let (host, _guest) = UnixStream::pair().expect("pair");
        let transport = Pair(Mutex::new(Some(host)));
        let err = Conn::establish(&transport, Duration::from_millis(1500))
            .await
            .err()
            .expect("no answer");
        assert!(matches!(err, AgentError::NoAnswer(_)), "{err}");
    }
}
