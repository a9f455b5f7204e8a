//! The daemon's accept loop: HTTP/1 over TCP with the limits `axum::serve`
//! does not offer, so a client that opens connections and never finishes
//! them (slowloris) cannot take the daemon's file descriptors.
//!
//! - **Header timeout** ([`Limits::header_timeout`], `LODGE_HEADER_TIMEOUT`,
//!   default 10 s): a connection must deliver a request's complete head
//!   within it, or hyper closes it. The same clock runs while a keep-alive
//!   connection waits for its next request, so it is also the idle timeout
//!   between requests. It does not cut a request that is under way: an
//!   upload, a log follow or an exec WebSocket may last as long as it is
//!   used (their bodies are bounded elsewhere).
//! - **Connection cap** ([`Limits::max_connections`],
//!   `LODGE_MAX_CONNECTIONS`, default 4096): a connection holds a permit
//!   from accept until its socket is closed, upgraded WebSockets included
//!   (the permit travels with the socket). At the cap the loop logs it (at
//!   most every 10 s) and makes room by closing the oldest connection that
//!   has not sent a complete request yet: those are what a flood of idle
//!   connections is made of, while a client that asks something (a
//!   `/health` probe) sends its head at once and is served. Only when
//!   every connection is serving a request do new ones wait in the
//!   kernel's backlog. The cap is kept below the process's file limit,
//!   which is raised to its hard limit first.
//!
//! axum 0.8's `serve` builds hyper's connection without a timer, so hyper's
//! own header timeout never runs there; this loop is the same serve
//! (HTTP/1, upgrades on) with a timer and a cap.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, Request};
use axum::Router;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Default of [`Limits::header_timeout`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Limits::max_connections`].
pub const MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept for everything but client connections (images,
/// logs, agent sockets, monitors).
const RESERVED_FDS: u64 = 256;
/// Least time between two "at the cap" log lines.
const CAP_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("LODGE_MAX_CONNECTIONS must be a whole number of at least 1, got {0:?}")]
    MaxConnections(String),
    #[error("LODGE_HEADER_TIMEOUT must be a duration such as 10s, got {0:?}")]
    HeaderTimeout(String),
}

/// How many connections, and how long a head may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

impl Limits {
    /// The defaults, overridden by `LODGE_MAX_CONNECTIONS` and
    /// `LODGE_HEADER_TIMEOUT`.
    pub fn from_env() -> Result<Limits, LimitsError> {
        Limits::parse(
            std::env::var("LODGE_MAX_CONNECTIONS").ok().as_deref(),
            std::env::var("LODGE_HEADER_TIMEOUT").ok().as_deref(),
        )
    }

    fn parse(max: Option<&str>, timeout: Option<&str>) -> Result<Limits, LimitsError> {
        let mut limits = Limits::default();
        if let Some(max) = max.filter(|m| !m.is_empty()) {
            limits.max_connections = max
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| LimitsError::MaxConnections(max.to_string()))?;
        }
        if let Some(t) = timeout.filter(|t| !t.is_empty()) {
            limits.header_timeout = humantime::parse_duration(t.trim())
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| LimitsError::HeaderTimeout(t.to_string()))?;
        }
        Ok(limits)
    }
}

/// Raise the soft file limit to the hard one and return the cap that fits
/// under it.
pub(crate) fn fit_to_file_limit(max_connections: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
        }
    }
    let Some(files) = limit.current else {
        return max_connections;
    };
    let room = usize::try_from(files.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
    if room < max_connections {
        tracing::warn!(
            open_file_limit = files,
            "LODGE_MAX_CONNECTIONS={max_connections} does not fit under the open-file limit: \
             serving at most {room} connections"
        );
        room
    } else {
        max_connections
    }
}

/// One accepted connection, as the cap sees it.
#[derive(Default)]
struct Client {
    /// A complete request head arrived (it is not an idle opener).
    asked: AtomicBool,
    /// The connection is closed or being closed.
    gone: AtomicBool,
    close: Notify,
}

impl Client {
    fn waiting(&self) -> bool {
        !self.asked.load(Ordering::SeqCst) && !self.gone.load(Ordering::SeqCst)
    }
}

/// Connections in accept order, to find the oldest that never asked.
#[derive(Default)]
struct Openers(Mutex<VecDeque<Arc<Client>>>);

impl Openers {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Client>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, conn: Arc<Client>, cap: usize) {
        let mut q = self.queue();
        if q.len() >= 2 * cap {
            q.retain(|c| c.waiting());
        }
        q.push_back(conn);
    }

    /// Close the oldest connection still waiting for its first request;
    /// false when there is none.
    fn evict_oldest(&self) -> bool {
        let mut q = self.queue();
        while let Some(c) = q.pop_front() {
            if c.waiting() {
                c.gone.store(true, Ordering::SeqCst);
                c.close.notify_one();
                return true;
            }
        }
        false
    }
}

/// Serve `app` on `listener` within `limits` until the future is dropped.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits) -> std::io::Result<()> {
    let cap = fit_to_file_limit(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let openers = Openers::default();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tracing::info!(
        max_connections = cap,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        "connection limits"
    );
    let mut last_cap_log: Option<Instant> = None;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let evicted = openers.evict_oldest();
                if last_cap_log.is_none_or(|t| t.elapsed() >= CAP_LOG_INTERVAL) {
                    if evicted {
                        tracing::warn!(
                            max_connections = cap,
                            "connection cap reached (LODGE_MAX_CONNECTIONS): closing the \
                             oldest connections that have sent no request to make room"
                        );
                    } else {
                        tracing::warn!(
                            max_connections = cap,
                            "connection cap reached (LODGE_MAX_CONNECTIONS): every connection \
                             is serving a request, new ones wait until one closes"
                        );
                    }
                    last_cap_log = Some(Instant::now());
                }
                slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(std::io::Error::other)?
            }
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                // Answers and WebSocket messages are whole when written:
                // Nagle would hold a small one back until the client's
                // ACK of the one before (an exec's exit after its output).
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY on an accepted connection: {e}");
                }
                stream
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: wait instead of spinning.
                tracing::error!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let io = TokioIo::new(Counted {
            stream,
            _permit: permit,
        });
        let state = Arc::new(Client::default());
        openers.add(state.clone(), cap);
        let tower = TowerToHyperService::new(app.clone());
        let asked = state.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            asked.asked.store(true, Ordering::SeqCst);
            let (req, read) = Tracked::wrap(req);
            let answer = hyper::service::Service::call(&tower, req);
            async move {
                let mut res = answer.await?;
                if res.status().as_u16() >= 400 && read.unfinished() {
                    // hyper will close this connection rather than read the
                    // rest of the body; say so, or a keep-alive client
                    // sends its next request into a closing socket.
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(res)
            }
        });
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => {
                    if let Err(e) = ended {
                        tracing::debug!("connection ended: {e}");
                    }
                }
                () = state.close.notified() => {
                    tracing::debug!("closed a connection that sent no request, to make room");
                }
            }
            state.gone.store(true, Ordering::SeqCst);
        });
    }
}

/// A request body that records whether it was read to its end.
///
/// A handler that answers an error without reading the body (a 501, a
/// 401, a 413 by declared length) leaves hyper to drain it; when the rest
/// has not arrived yet hyper closes the connection instead, after a
/// response that did not say so. The loop adds `Connection: close` to such
/// an error response so the client opens a new connection.
struct Tracked {
    inner: Incoming,
    read: Arc<BodyRead>,
}

/// Shared between a [`Tracked`] body and the loop that answered for it.
struct BodyRead {
    /// The request came with a body at all.
    had_body: bool,
    ended: AtomicBool,
}

impl BodyRead {
    fn unfinished(&self) -> bool {
        self.had_body && !self.ended.load(Ordering::SeqCst)
    }
}

impl Tracked {
    fn wrap(req: Request<Incoming>) -> (Request<Tracked>, Arc<BodyRead>) {
        let had_body = !req.body().is_end_stream();
        let read = Arc::new(BodyRead {
            had_body,
            ended: AtomicBool::new(!had_body),
        });
        let req = req.map(|inner| Tracked {
            inner,
            read: read.clone(),
        });
        (req, read)
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.read.ended.store(true, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Errors that concern one connection only, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// A client socket holding its slot under the cap until it is closed.
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_environment() {
        assert_eq!(
            Limits::parse(None, None).expect("defaults"),
            Limits::default()
        );
        assert_eq!(
            Limits::parse(Some("100"), Some("2s")).expect("set"),
            Limits {
                max_connections: 100,
                header_timeout: Duration::from_secs(2)
            }
        );
        assert!(Limits::parse(Some("0"), None).is_err());
        assert!(Limits::parse(Some("many"), None).is_err());
        assert!(Limits::parse(None, Some("0s")).is_err());
        assert!(Limits::parse(None, Some("soon")).is_err());
    }

    /// Reads one response head and its `Content-Length` body from `s`.
    async fn read_response(s: &mut TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return text;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("response in time")
                .expect("read");
            if n == 0 {
                return text;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// An error answered before the body arrived must not leave the
    /// connection looking reusable: hypeman's client (keep-alive, no
    /// retries) failed its next call with a connection error.
    #[tokio::test]
    async fn an_error_before_the_body_is_read_closes_the_connection_openly() {
        use tokio::io::AsyncWriteExt;
        let app = Router::new()
            .route(
                "/skip",
                axum::routing::post(|| async { axum::http::StatusCode::NOT_IMPLEMENTED }),
            )
            .route("/next", axum::routing::get(|| async { "ok" }))
            .route(
                "/read",
                axum::routing::post(|body: String| async move {
                    (axum::http::StatusCode::BAD_REQUEST, body)
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, app, Limits::default()));

        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /skip HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
            .await
            .expect("head");
        let first = read_response(&mut s).await;
        assert!(first.starts_with("HTTP/1.1 501"), "{first}");
        let closing = first.to_ascii_lowercase().contains("connection: close");
        // The rest of the body, then the next request on the same socket.
        let _ = s
            .write_all(b"0123456789GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            .await;
        let second = read_response(&mut s).await;
        assert!(
            closing || second.starts_with("HTTP/1.1 200"),
            "the connection was closed without saying so: {first:?} then {second:?}"
        );
        assert!(closing, "an unread body ends the connection: {first:?}");

        // An error after the body was read keeps the connection.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /read HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .expect("request");
        let first = read_response(&mut s).await;
        assert!(first.starts_with("HTTP/1.1 400"), "{first}");
        assert!(
            !first.to_ascii_lowercase().contains("connection: close"),
            "{first}"
        );
        s.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("next");
        let second = read_response(&mut s).await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        server.abort();
    }
}
