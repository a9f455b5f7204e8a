//! The reverse proxy: one listener per rule port, HTTP routed by `Host`
//! (exact names first, then patterns), TCP rules forwarded byte for byte.
//!
//! Reconfiguration never drops a connection: the routing table is an
//! `Arc` swapped under a lock and read afresh by every request, so a
//! keep-alive connection sees new rules on its next request; a reload only
//! binds ports that became wanted and stops accepting on ports no rule
//! wants any more, while connections already accepted there run on (each
//! is its own task).
//!
//! Targets are resolved per request through a [`Backend`] (the instance's
//! current address and state, read from the data dir, cached for
//! [`LOCATE_TTL`] behind a cheap liveness check per request). A request for an instance in standby is held while the
//! backend wakes it; concurrent requests for one instance share one wake
//! (a `Shared` future per instance), then all are forwarded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::activity::{Guard, Tracker};
use crate::rules::{expand_target, HostPattern, Rule};
use crate::store::{read_all, Ingress};
use crate::tls::Certificates;

/// How long a running instance's address is trusted without re-reading.
pub const LOCATE_TTL: Duration = Duration::from_secs(2);
/// Connecting to a guest.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a woken instance's port is probed before forwarding anyway.
const WAKE_REACHABLE: Duration = Duration::from_secs(30);
/// The longest a request waits for a standby or restore under way to end.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often it looks.
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// A client that has not sent a request head within this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where an instance is, as the backend sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// Running (or booting): forward to this address.
    Running { id: String, ip: Ipv4Addr },
    /// In standby: wake it, then look again.
    Standby { id: String },
    /// A standby or restore is under way: wait for it to end, then look
    /// again (a request arriving mid-standby then wakes the instance).
    Settling { id: String },
    /// Neither: answer 503 with the state.
    Down { id: String, state: String },
    /// Running without a network: nothing to forward to.
    NoNetwork { id: String },
}

impl Located {
    pub fn id(&self) -> &str {
        match self {
            Located::Running { id, .. }
            | Located::Standby { id }
            | Located::Settling { id }
            | Located::Down { id, .. }
            | Located::NoNetwork { id } => id,
        }
    }
}

/// What the proxy needs from lodge: instance lookup, wake-up, and where an
/// instance's activity record lives.
pub trait Backend: Send + Sync + 'static {
    /// The instance `key` (id, name or unique id prefix); `Err` says why
    /// there is none.
    fn locate(&self, key: &str) -> Result<Located, String>;
    /// Restores instance `id` from standby and returns once it runs.
    fn wake(&self, id: &str) -> BoxFuture<'static, Result<(), String>>;
    /// A cheap check that a [`Located::Running`] instance `id` found a
    /// moment ago still runs (its monitor is alive, nothing changed its
    /// record since): the proxy asks it on every request and only locates
    /// afresh when it says no.
    fn still_running(&self, id: &str) -> bool;
    /// `GuestPaths::ingress_activity()` of instance `id`.
    fn activity_path(&self, id: &str) -> PathBuf;
    /// The daemon's API (from the daemon's reload request).
    fn set_api(&self, api: &str);
}

type Body = BoxBody<Bytes, hyper::Error>;

/// How a port is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Https,
    Tcp,
}

/// The routes of one port.
#[derive(Default)]
struct PortRoutes {
    exact: HashMap<String, Arc<Rule>>,
    patterns: Vec<(HostPattern, Arc<Rule>)>,
    tcp: Option<Arc<Rule>>,
    tls: bool,
}

/// Every port's routes.
#[derive(Default)]
struct Table {
    ports: HashMap<u16, PortRoutes>,
    /// TLS hostnames: their HTTPS port and whether plain HTTP redirects.
    tls_hosts: HashMap<String, (u16, bool)>,
}

impl Table {
    fn build(ingresses: &[Ingress]) -> Table {
        let mut t = Table::default();
        for ing in ingresses {
            for rule in &ing.rules {
                let routes = t.ports.entry(rule.match_.port).or_default();
                let rule = Arc::new(rule.clone());
                if rule.tls {
                    routes.tls = true;
                    t.tls_hosts
                        .entry(rule.match_.hostname.clone())
                        .or_insert((rule.match_.port, rule.redirect_http));
                }
                if rule.is_tcp() {
                    routes.tcp.get_or_insert(rule);
                    continue;
                }
                match HostPattern::parse(&rule.match_.hostname) {
                    Some(p) if p.is_literal() => {
                        routes
                            .exact
                            .entry(rule.match_.hostname.clone())
                            .or_insert(rule);
                    }
                    Some(p) => routes.patterns.push((p, rule)),
                    None => tracing::warn!(
                        "ingress {}: hostname {:?} is not valid; rule skipped",
                        ing.name,
                        rule.match_.hostname
                    ),
                }
            }
        }
        t
    }

    /// The rule and the instance key for `host` on `port`.
    fn route(&self, port: u16, host: &str) -> Option<(Arc<Rule>, String)> {
        let routes = self.ports.get(&port)?;
        if let Some(rule) = routes.exact.get(host) {
            return Some((rule.clone(), rule.target.instance.clone()));
        }
        routes.patterns.iter().find_map(|(p, rule)| {
            let caps = p.matches(host)?;
            Some((rule.clone(), expand_target(&rule.target.instance, &caps)))
        })
    }

    /// The ports to listen on: every rule's, and the plain `http_port`
    /// (ACME challenges, redirects) when there are TLS rules.
    fn wants(&self, http_port: u16) -> HashMap<u16, Kind> {
        let mut out: HashMap<u16, Kind> = self
            .ports
            .iter()
            .map(|(port, r)| {
                let kind = if r.tcp.is_some() {
                    Kind::Tcp
                } else if r.tls {
                    Kind::Https
                } else {
                    Kind::Http
                };
                (*port, kind)
            })
            .collect();
        if !self.tls_hosts.is_empty() {
            out.entry(http_port).or_insert(Kind::Http);
        }
        out
    }
}

struct Listening {
    kind: Kind,
    task: JoinHandle<()>,
}

type Wake = Shared<BoxFuture<'static, Result<(), Arc<str>>>>;

/// The proxy's state, shared by all listeners and connections.
pub struct Proxy {
    backend: Arc<dyn Backend>,
    certs: Arc<Certificates>,
    tls: Arc<rustls::ServerConfig>,
    records: PathBuf,
    addr: IpAddr,
    table: RwLock<Arc<Table>>,
    listeners: Mutex<HashMap<u16, Listening>>,
    client: Client<HttpConnector, Body>,
    tracker: Tracker,
    waking: Mutex<HashMap<String, Wake>>,
    located: Mutex<HashMap<String, (Located, Instant)>>,
    /// One permit per client connection, held until it closes.
    slots: Arc<tokio::sync::Semaphore>,
}

impl Proxy {
    /// A proxy serving the records in `records` on `addr`; nothing is
    /// bound until [`Proxy::reload`].
    pub fn new(
        backend: Arc<dyn Backend>,
        certs: Arc<Certificates>,
        records: PathBuf,
        addr: IpAddr,
        max_connections: usize,
    ) -> Result<Arc<Proxy>, String> {
        let tls = crate::tls::server_config(certs.store.clone())?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Arc::new(Proxy {
            backend,
            certs,
            tls,
            records,
            addr,
            table: RwLock::new(Arc::new(Table::default())),
            listeners: Mutex::new(HashMap::new()),
            client,
            tracker: Tracker::default(),
            waking: Mutex::new(HashMap::new()),
            located: Mutex::new(HashMap::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(max_connections.max(1))),
        }))
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Re-reads the records, binds the ports now wanted, stops accepting
    /// on those no longer wanted and swaps the routes in. Returns one
    /// message per port that could not be bound (its rules stay unserved).
    pub async fn reload(self: &Arc<Self>) -> Vec<String> {
        let ingresses = match read_all(&self.records) {
            Ok(i) => i,
            Err(e) => return vec![format!("reading the ingress records: {e}")],
        };
        let table = Table::build(&ingresses);
        let wants = table.wants(self.certs.http_port());
        let tls_hosts: Vec<String> = table.tls_hosts.keys().cloned().collect();
        let mut errors = Vec::new();
        // Ports to close first (a port changing kind is closed, then bound).
        {
            let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            listeners.retain(|port, l| {
                let keep = wants.get(port) == Some(&l.kind);
                if !keep {
                    l.task.abort();
                }
                keep
            });
        }
        let mut new = Vec::new();
        for (port, kind) in &wants {
            let have = self
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(port);
            if have {
                continue;
            }
            match TcpListener::bind(SocketAddr::new(self.addr, *port)).await {
                Ok(l) => new.push((*port, *kind, l)),
                Err(e) => errors.push(format!("port {port}: {e}")),
            }
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.located
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for (port, kind, listener) in new {
            let me = self.clone();
            let task = tokio::spawn(async move { me.accept_loop(listener, port, kind).await });
            self.listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(port, Listening { kind, task });
        }
        self.certs.ensure(&tls_hosts);
        errors
    }

    /// Re-checks the TLS certificates every [`crate::tls::RENEW_CHECK`].
    pub async fn renew_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(crate::tls::RENEW_CHECK).await;
            let hosts: Vec<String> = {
                let table = self.table.read().unwrap_or_else(|p| p.into_inner());
                table.tls_hosts.keys().cloned().collect()
            };
            self.certs.ensure(&hosts);
        }
    }

    /// The ports being served (for the control socket's answers).
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        p.sort_unstable();
        p
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, port: u16, kind: Kind) {
        loop {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return; // the semaphore is never closed
            };
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off, go on.
                    tracing::warn!("ingress port {port}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("set_nodelay: {e}");
            }
            let me = self.clone();
            match kind {
                Kind::Tcp => {
                    tokio::spawn(async move {
                        let _permit = permit;
                        me.serve_tcp(stream, port).await
                    });
                }
                Kind::Http => {
                    tokio::spawn(async move {
                        let _permit = permit;
                        me.serve_http(stream, peer, port, false).await
                    });
                }
                Kind::Https => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let tls = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream));
                        match tls.await {
                            Ok(Ok(s)) => me.serve_http(s, peer, port, true).await,
                            Ok(Err(e)) => tracing::debug!("ingress tls from {peer}: {e}"),
                            Err(_) => {
                                tracing::debug!("ingress tls from {peer}: handshake timed out")
                            }
                        }
                    });
                }
            }
        }
    }

    async fn serve_http<S>(self: Arc<Self>, stream: S, peer: SocketAddr, port: u16, secure: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.handle(req, peer, port, secure).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!("ingress connection from {peer}: {e}");
        }
    }

    async fn serve_tcp(self: Arc<Self>, client: TcpStream, port: u16) {
        let rule = {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            table.ports.get(&port).and_then(|r| r.tcp.clone())
        };
        let Some(rule) = rule else { return };
        let (id, ip) = match self.ready(&rule.target.instance, rule.target.port).await {
            Ok(found) => found,
            Err((_, why)) => {
                tracing::info!("ingress port {port}: {why}");
                return;
            }
        };
        let upstream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((ip, rule.target.port)))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.forget(&rule.target.instance);
                    tracing::info!(
                        "ingress port {port}: connecting to {ip}:{}: {e}",
                        rule.target.port
                    );
                    return;
                }
                Err(_) => {
                    self.forget(&rule.target.instance);
                    tracing::info!(
                        "ingress port {port}: connecting to {ip}:{}: timed out",
                        rule.target.port
                    );
                    return;
                }
            };
        if let Err(e) = upstream.set_nodelay(true) {
            tracing::debug!("set_nodelay: {e}");
        }
        let guard = Arc::new(self.tracker.open(self.backend.activity_path(&id)));
        pump(client, upstream, guard).await;
    }

    /// The instance behind `key`, woken if it was in standby: its id and
    /// address, or the status and message to answer with.
    async fn ready(
        &self,
        key: &str,
        port: u16,
    ) -> Result<(String, Ipv4Addr), (StatusCode, String)> {
        let mut woken = false;
        let settle_by = Instant::now() + SETTLE_TIMEOUT;
        loop {
            match self.locate(key)? {
                Located::Running { id, ip } => {
                    if woken {
                        reachable(SocketAddr::new(ip.into(), port)).await;
                    }
                    return Ok((id, ip));
                }
                Located::Settling { .. } => {
                    if Instant::now() >= settle_by {
                        return Err((
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "instance {key} is still being saved or restored after {} s\n",
                                SETTLE_TIMEOUT.as_secs()
                            ),
                        ));
                    }
                    tokio::time::sleep(SETTLE_POLL).await;
                }
                Located::Standby { id } if !woken => {
                    self.wake(&id).await.map_err(|why| {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "instance {key} is in standby and could not be restored: {why}\n"
                            ),
                        )
                    })?;
                    woken = true;
                    self.forget(key);
                }
                Located::Standby { .. } => {
                    return Err((
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("instance {key} is still in standby after a restore\n"),
                    ))
                }
                Located::Down { state, .. } => {
                    return Err((
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("instance {key} is {state}, not running\n"),
                    ))
                }
                Located::NoNetwork { .. } => {
                    return Err((
                        StatusCode::BAD_GATEWAY,
                        format!("instance {key} has no network address\n"),
                    ))
                }
            }
        }
    }

    fn locate(&self, key: &str) -> Result<Located, (StatusCode, String)> {
        if let Some((found, at)) = self
            .located
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            if at.elapsed() < LOCATE_TTL && self.backend.still_running(found.id()) {
                return Ok(found.clone());
            }
        }
        let found = self.backend.locate(key).map_err(|why| {
            (
                StatusCode::BAD_GATEWAY,
                format!("no instance {key}: {why}\n"),
            )
        })?;
        if matches!(found, Located::Running { .. }) {
            self.located
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_string(), (found.clone(), Instant::now()));
        }
        Ok(found)
    }

    fn forget(&self, key: &str) {
        self.located
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Wakes `id`, sharing one wake among concurrent callers.
    async fn wake(&self, id: &str) -> Result<(), Arc<str>> {
        let shared = {
            let mut waking = self.waking.lock().unwrap_or_else(|p| p.into_inner());
            waking
                .entry(id.to_string())
                .or_insert_with(|| {
                    let fut = self.backend.wake(id);
                    async move { fut.await.map_err(Arc::from) }.boxed().shared()
                })
                .clone()
        };
        let result = shared.clone().await;
        let mut waking = self.waking.lock().unwrap_or_else(|p| p.into_inner());
        if waking.get(id).is_some_and(|w| w.ptr_eq(&shared)) {
            waking.remove(id);
        }
        result
    }

    async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        port: u16,
        secure: bool,
    ) -> Response<Body> {
        if !secure {
            if let Some(token) = req
                .uri()
                .path()
                .strip_prefix("/.well-known/acme-challenge/")
            {
                if let Some(answer) = self.certs.challenge(token) {
                    return text(StatusCode::OK, answer);
                }
            }
        }
        let Some(host) = request_host(&req) else {
            return text(
                StatusCode::BAD_REQUEST,
                "the request has no Host header\n".into(),
            );
        };
        let (route, redirect) = {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            let route = table.route(port, &host);
            let redirect = table.tls_hosts.get(&host).copied();
            (route, redirect)
        };
        let Some((rule, key)) = route else {
            if let (false, Some((tls_port, true))) = (secure, redirect) {
                return redirect_to_https(&req, &host, tls_port);
            }
            return text(
                StatusCode::NOT_FOUND,
                format!("no ingress rule for host {host} on port {port}\n"),
            );
        };
        if let Some(auth) = &rule.request_header_auth {
            let ok = req
                .headers()
                .get(auth.header.as_str())
                .is_some_and(|v| v.as_bytes() == auth.value.as_bytes());
            if !ok {
                return text(
                    StatusCode::UNAUTHORIZED,
                    format!("missing or wrong {} header\n", auth.header),
                );
            }
            req.headers_mut().remove(auth.header.as_str());
        }
        let (id, ip) = match self.ready(&key, rule.target.port).await {
            Ok(found) => found,
            Err((status, why)) => return text(status, why),
        };
        let to = Upstream {
            key: &key,
            id: &id,
            addr: SocketAddr::new(ip.into(), rule.target.port),
        };
        self.forward(req, peer, &host, to, secure).await
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        host: &str,
        to: Upstream<'_>,
        secure: bool,
    ) -> Response<Body> {
        let Upstream {
            key,
            id,
            addr: upstream,
        } = to;
        let upgrade = wants_upgrade(req.headers());
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        forwarded_headers(&mut parts.headers, peer, original_host, host, secure);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = match Uri::builder()
            .scheme("http")
            .authority(upstream.to_string())
            .path_and_query(path)
            .build()
        {
            Ok(u) => u,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("bad request target: {e}\n"),
                )
            }
        };
        parts.version = http::Version::HTTP_11;
        let guard = Arc::new(self.tracker.open(self.backend.activity_path(id)));
        let g = guard.clone();
        let body = body
            .map_frame(move |f| {
                g.touch();
                f
            })
            .boxed();
        let mut resp = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                self.forget(key);
                let what = if e.is_connect() {
                    "cannot connect to"
                } else {
                    "failed talking to"
                };
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("{what} instance {key} at {upstream}: {}\n", error_chain(&e)),
                );
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_side) = client_side {
                let upstream_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    match tokio::try_join!(client_side, upstream_side) {
                        Ok((c, u)) => pump(TokioIo::new(c), TokioIo::new(u), guard).await,
                        Err(e) => tracing::debug!("ingress upgrade: {e}"),
                    }
                });
            }
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, empty());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let body = body
            .map_frame(move |f| {
                guard.touch();
                f
            })
            .boxed();
        Response::from_parts(parts, body)
    }
}

/// Waits (up to [`WAKE_REACHABLE`]) until `addr` accepts a connection:
/// a guest just restored may take a moment before its network answers.
async fn reachable(addr: SocketAddr) {
    let deadline = Instant::now() + WAKE_REACHABLE;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(Ok(_probe)) => return,
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => {}
        }
    }
    tracing::info!("{addr} still does not answer after a restore; forwarding anyway");
}

/// Where one request goes: the instance as named, its id, its address.
struct Upstream<'a> {
    key: &'a str,
    id: &'a str,
    addr: SocketAddr,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// The request's host, lowercase, without port or trailing dot.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))?;
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or("").to_string()
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
            _ => raw,
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (those named in `Connection` too); an
/// upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("proxy-connection"),
    ] {
        if upgrade && (name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn forwarded_headers(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    original_host: Option<HeaderValue>,
    host: &str,
    secure: bool,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let client = peer.ip().to_string();
    let value = match headers.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {client}"),
        _ => client,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(xff, v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if secure { "https" } else { "http" }),
    );
    let fwd_host = original_host.or_else(|| HeaderValue::from_str(host).ok());
    if let Some(h) = fwd_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
        // The guest sees the name it was asked for.
        headers.insert(header::HOST, h);
    }
}

/// `308` to the same path over HTTPS (hypeman's `redirect_http`).
fn redirect_to_https<B>(req: &Request<B>, host: &str, tls_port: u16) -> Response<Body> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let authority = if tls_port == 443 {
        host.to_string()
    } else {
        format!("{host}:{tls_port}")
    };
    let location = format!("https://{authority}{path}");
    let mut resp = text(StatusCode::PERMANENT_REDIRECT, format!("{location}\n"));
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "bad request target\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|n| match n {}).boxed()
}

/// Copies both ways until both sides are done, refreshing `guard` as
/// bytes move; the guard drops (connection closed) at the end.
async fn pump<A, B>(a: A, b: B, guard: Arc<Guard>)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let g1 = guard.clone();
    let up = copy_one_way(ar, bw, g1);
    let down = copy_one_way(br, aw, guard);
    let (r1, r2) = tokio::join!(up, down);
    for r in [r1, r2] {
        if let Err(e) = r {
            tracing::debug!("ingress stream: {e}");
        }
    }
}

async fn copy_one_way<R, W>(mut r: R, mut w: W, guard: Arc<Guard>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        guard.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str) -> Request<()> {
        Request::builder()
            .uri("/x")
            .header(header::HOST, host)
            .body(())
            .expect("request")
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(
            request_host(&req("Web.Test:8080")).as_deref(),
            Some("web.test")
        );
        assert_eq!(request_host(&req("web.test.")).as_deref(), Some("web.test"));
        assert_eq!(request_host(&req("[::1]:80")).as_deref(), Some("::1"));
    }

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_keep_theirs() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("x-app", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-app").is_some());
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }

    #[test]
    fn forwarded_headers_append_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let peer: SocketAddr = "10.0.0.9:5555".parse().expect("addr");
        forwarded_headers(
            &mut h,
            peer,
            Some(HeaderValue::from_static("web.test:8080")),
            "web.test",
            false,
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "web.test:8080");
    }

    #[test]
    fn exact_hosts_win_over_patterns() {
        let rule = |host: &str, target: &str| -> Rule {
            serde_json::from_str::<crate::rules::RuleInput>(&format!(
                r#"{{"match":{{"hostname":"{host}"}},"target":{{"instance":"{target}","port":80}}}}"#
            ))
            .expect("json")
            .validate()
            .expect("valid")
        };
        let ing = Ingress {
            id: "i".into(),
            name: "n".into(),
            created_at: String::new(),
            rules: vec![
                rule("{instance}.apps.test", "{instance}"),
                rule("api.apps.test", "special"),
            ],
            tags: Default::default(),
        };
        let t = Table::build(&[ing]);
        assert_eq!(
            t.route(80, "api.apps.test").map(|r| r.1).as_deref(),
            Some("special")
        );
        assert_eq!(
            t.route(80, "web.apps.test").map(|r| r.1).as_deref(),
            Some("web")
        );
        assert!(t.route(80, "apps.test").is_none());
        assert!(t.route(81, "web.apps.test").is_none());
    }

    /// A backend whose every instance runs on loopback.
    struct Loopback(PathBuf);

    impl Backend for Loopback {
        fn locate(&self, key: &str) -> Result<Located, String> {
            Ok(Located::Running {
                id: key.to_string(),
                ip: Ipv4Addr::LOCALHOST,
            })
        }
        fn wake(&self, _id: &str) -> BoxFuture<'static, Result<(), String>> {
            async { Ok(()) }.boxed()
        }
        fn still_running(&self, _id: &str) -> bool {
            true
        }
        fn activity_path(&self, id: &str) -> PathBuf {
            self.0.join(id)
        }
        fn set_api(&self, _api: &str) {}
    }

    /// A backend whose instance is being saved for its first `settling`
    /// lookups, then in standby until woken, then running on loopback.
    struct MidStandby {
        dir: PathBuf,
        settling: std::sync::atomic::AtomicUsize,
        wakes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Backend for MidStandby {
        fn locate(&self, key: &str) -> Result<Located, String> {
            use std::sync::atomic::Ordering::SeqCst;
            let id = key.to_string();
            if self
                .settling
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Ok(Located::Settling { id });
            }
            Ok(if self.wakes.load(SeqCst) == 0 {
                Located::Standby { id }
            } else {
                Located::Running {
                    id,
                    ip: Ipv4Addr::LOCALHOST,
                }
            })
        }
        fn wake(&self, _id: &str) -> BoxFuture<'static, Result<(), String>> {
            let wakes = self.wakes.clone();
            async move {
                wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
            .boxed()
        }
        fn still_running(&self, _id: &str) -> bool {
            false
        }
        fn activity_path(&self, id: &str) -> PathBuf {
            self.dir.join(id)
        }
        fn set_api(&self, _api: &str) {}
    }

    /// A request that finds a standby under way waits for it to end, then
    /// wakes the instance once, instead of answering 503.
    #[tokio::test]
    async fn a_request_mid_standby_waits_and_wakes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = upstream.local_addr().expect("addr").port();
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = Arc::new(MidStandby {
            dir: dir.path().to_path_buf(),
            settling: std::sync::atomic::AtomicUsize::new(4),
            wakes: wakes.clone(),
        });
        let certs = Certificates::new(Default::default(), dir.path());
        let records = crate::store::records_dir(dir.path());
        let proxy = Proxy::new(
            backend.clone(),
            certs,
            records,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            8,
        )
        .expect("proxy");
        let started = Instant::now();
        let found = proxy.ready("web", port).await.expect("ready");
        assert_eq!(found, ("web".to_string(), Ipv4Addr::LOCALHOST));
        assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Every settling lookup was waited out.
        assert_eq!(
            backend.settling.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        assert!(started.elapsed() >= SETTLE_POLL * 4);
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// At the connection cap the proxy takes no new connection until one
    /// closes: a flood waits in the backlog instead of taking descriptors.
    #[tokio::test]
    async fn the_connection_cap_holds_new_connections_until_one_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up_port = upstream.local_addr().expect("addr").port();
        let port = free_port();
        let rule: Rule = serde_json::from_str::<crate::rules::RuleInput>(&format!(
            r#"{{"match":{{"hostname":"*","port":{port},"protocol":"tcp"}},"target":{{"instance":"x","port":{up_port}}}}}"#
        ))
        .expect("json")
        .validate()
        .expect("valid");
        let ingress = Ingress {
            id: "i1".into(),
            name: "x-ports".into(),
            created_at: String::new(),
            rules: vec![rule],
            tags: Default::default(),
        };
        let records = crate::store::records_dir(dir.path());
        std::fs::create_dir_all(&records).expect("mkdir");
        std::fs::write(
            records.join("i1.json"),
            serde_json::to_vec(&ingress).expect("json"),
        )
        .expect("record");
        let certs = Certificates::new(Default::default(), dir.path());
        let backend = Arc::new(Loopback(dir.path().to_path_buf()));
        let proxy =
            Proxy::new(backend, certs, records, IpAddr::V4(Ipv4Addr::LOCALHOST), 2).expect("proxy");
        assert!(proxy.reload().await.is_empty());

        let accept = || async {
            tokio::time::timeout(Duration::from_millis(700), upstream.accept())
                .await
                .map(|r| r.expect("accept").0)
        };
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..2 {
            clients.push(
                TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect"),
            );
            served.push(accept().await.expect("forwarded under the cap"));
        }
        // The third connects (the kernel's backlog) but is not taken.
        let third = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        assert!(
            accept().await.is_err(),
            "a connection past the cap was served"
        );
        // One connection ends, both ways.
        drop(clients.remove(0));
        drop(served.remove(0));
        served.push(accept().await.expect("served once a slot is free"));
        drop(third);
    }
}
