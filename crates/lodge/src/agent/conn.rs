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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Semaphore};

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

struct Entry {
    tx: mpsc::UnboundedSender<Inbound>,
    window: Arc<Semaphore>,
}

const ALIVE: u8 = 0;
const LOST: u8 = 1;
const RESTARTED: u8 = 2;

pub struct Conn {
    out: mpsc::Sender<Vec<u8>>,
    streams: Mutex<HashMap<u32, Entry>>,
    next_id: AtomicU32,
    state: AtomicU8,
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
        let decoder = handshake(&mut reader, &mut writer, deadline, wait).await?;
        let (out, rx) = mpsc::channel(QUEUE);
        let conn = Arc::new(Conn {
            out,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(rand::random::<u32>() | 1),
            state: AtomicU8::new(ALIVE),
        });
        tokio::spawn(write_loop(writer, rx, Arc::downgrade(&conn)));
        tokio::spawn(read_loop(reader, decoder, Arc::downgrade(&conn)));
        Ok(conn)
    }

    pub fn is_alive(&self) -> bool {
        self.state.load(Ordering::SeqCst) == ALIVE
    }

    fn lost_reason(&self) -> AgentError {
        match self.state.load(Ordering::SeqCst) {
            RESTARTED => AgentError::Restarted,
            _ => AgentError::Lost,
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection is over: close every stream.
    fn fail(&self, why: u8) {
        let _ = self
            .state
            .compare_exchange(ALIVE, why, Ordering::SeqCst, Ordering::SeqCst);
        for (_, entry) in self.streams().drain() {
            entry.window.close();
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
        let (tx, rx) = mpsc::unbounded_channel();
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
                    tx,
                    window: window.clone(),
                },
            );
            id
        };
        let rx = StreamRx {
            id,
            conn: self.clone(),
            rx,
            pending_credit: 0,
            finished: false,
        };
        let open = try_encode_json(Kind::Open, id, request).ok_or(AgentError::TooLarge("request"));
        self.send(open?).await?;
        Ok((
            StreamTx {
                id,
                conn: self.clone(),
                window,
            },
            rx,
        ))
    }

    fn dispatch(&self, frame: Frame) {
        match frame.kind {
            Kind::Reset => self.fail(RESTARTED),
            Kind::Credit => {
                if let (Some(bytes), Some(entry)) =
                    (frame.credit(), self.streams().get(&frame.stream))
                {
                    entry.window.add_permits(bytes as usize);
                }
            }
            Kind::Close => {
                if let Some(entry) = self.streams().remove(&frame.stream) {
                    entry.window.close();
                    let _ = entry.tx.send(Inbound::Closed);
                }
            }
            Kind::Stdout | Kind::Stderr | Kind::Data | Kind::Event => {
                let item = match frame.kind {
                    Kind::Stdout => Inbound::Stdout(frame.payload),
                    Kind::Stderr => Inbound::Stderr(frame.payload),
                    Kind::Data => Inbound::Data(frame.payload),
                    _ => match serde_json::from_slice::<Event>(&frame.payload) {
                        Ok(e) => Inbound::Event(e),
                        Err(e) => {
                            tracing::warn!("unreadable event from the guest agent: {e}");
                            return;
                        }
                    },
                };
                if let Some(entry) = self.streams().get(&frame.stream) {
                    let _ = entry.tx.send(item);
                }
            }
            // A repeated HelloAck, or frames only the host sends.
            _ => {}
        }
    }
}

/// Send `Hello` until the agent answers with our nonce; everything before
/// that answer is leftover of an earlier connection and is dropped.
async fn handshake(
    reader: &mut ReadHalf<Stream>,
    writer: &mut WriteHalf<Stream>,
    deadline: Instant,
    wait: Duration,
) -> Result<Decoder, AgentError> {
    let nonce: u64 = rand::random();
    let hello = encode_json(
        Kind::Hello,
        CONNECTION_STREAM,
        &Hello {
            version: PROTOCOL_VERSION,
            nonce,
        },
    );
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
                return Ok(decoder);
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
    let mut buf = vec![0u8; 256 << 10];
    loop {
        // Frames already buffered (from the handshake) come first.
        {
            let Some(conn) = conn.upgrade() else { return };
            while let Some(frame) = decoder.next_frame() {
                conn.dispatch(frame);
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
            Ok(n) => decoder.push(&buf[..n]),
        }
    }
}

async fn write_loop(
    mut writer: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    conn: std::sync::Weak<Conn>,
) {
    while let Some(frame) = rx.recv().await {
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
    rx: mpsc::UnboundedReceiver<Inbound>,
    pending_credit: u32,
    finished: bool,
}

impl StreamRx {
    /// The next thing the agent sent on this stream.
    pub async fn recv(&mut self) -> Result<Inbound, AgentError> {
        match self.rx.recv().await {
            Some(item) => {
                if matches!(item, Inbound::Closed) {
                    self.finished = true;
                }
                Ok(item)
            }
            None => Err(self.conn.lost_reason()),
        }
    }

    /// The caller passed on `bytes` of output: return the credit.
    pub async fn consumed(&mut self, bytes: usize) -> Result<(), AgentError> {
        self.pending_credit = self
            .pending_credit
            .saturating_add(u32::try_from(bytes).unwrap_or(u32::MAX));
        if self.pending_credit >= CREDIT_BATCH {
            let credit = std::mem::take(&mut self.pending_credit);
            self.conn.send(encode_credit(self.id, credit)).await?;
        }
        Ok(())
    }
}

impl Drop for StreamRx {
    fn drop(&mut self) {
        self.conn.streams().remove(&self.id);
        if !self.finished && self.conn.is_alive() {
            let cancel = encode_json(Kind::Control, self.id, &Control::Cancel);
            if let Err(mpsc::error::TrySendError::Full(frame)) = self.conn.out.try_send(cancel) {
                let out = self.conn.out.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = out.send(frame).await;
                    });
                }
            }
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
