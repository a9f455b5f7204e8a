//! Process-level: a slowloris flood against the real daemon (no VM).
//!
//! Thousands of connections that send half a request head and stall must
//! not take the daemon's file descriptors: `/health` still answers at once,
//! the header timeout closes the stalled connections, and at the
//! connection cap the daemon makes room by closing the oldest idle opener
//! (and says so in its log). The daemon's descriptor counts are printed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, wait_until, LODGE};

/// Half a request head, never finished.
const PARTIAL: &[u8] = b"GET /health HTTP/1.1\r\nHost: lodge\r\nX-Slow: ";

struct Serve {
    child: Child,
    addr: String,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Serve {
    fn start(env: &[(&str, &str)]) -> Serve {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let log = tmp.path().join("serve.log");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let out = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new(LODGE);
        cmd.arg("serve")
            .env("LODGE_DATA_DIR", &data)
            .env("LODGE_LISTEN", &addr)
            .env("LODGE_ACCEL", "tcg")
            // Never the host's network: this daemon runs in the root namespace.
            .env("LODGE_NETWORK", "off")
            .env(
                "LODGE_SYSTEM_DIR",
                std::env::var_os("LODGE_SYSTEM_DIR").unwrap_or_else(|| tmp.path().into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn lodge serve");
        let s = Serve {
            child,
            addr,
            log,
            _tmp: tmp,
        };
        wait_until("the daemon to answer", Duration::from_secs(30), || {
            s.health(Duration::from_secs(2)).ok()
        });
        s
    }

    /// GET /health on a new connection; the time it took.
    fn health(&self, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut s = TcpStream::connect_timeout(&self.addr.parse().expect("addr"), timeout)
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(timeout)).expect("timeout");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: lodge\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&out);
        if text.starts_with("HTTP/1.1 200") {
            Ok(t0.elapsed())
        } else {
            Err(format!("answer: {text:?}"))
        }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("kill lodge serve: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("wait lodge serve: {e}");
        }
    }
}

/// `n` connections holding half a request head.
fn stall(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {i}: {e}"));
            s.write_all(PARTIAL).expect("write");
            s
        })
        .collect()
}

/// How many of `conns` the server closed before `deadline`.
fn closed_by(conns: &mut [TcpStream], deadline: Instant) -> usize {
    let mut closed = 0;
    let mut buf = [0u8; 4096];
    for s in conns.iter_mut() {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Still open: only count what already ended.
                s.set_nonblocking(true).expect("nonblocking");
            } else {
                s.set_read_timeout(Some(left)).expect("timeout");
            }
            match s.read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    closed
}

#[test]
fn stalled_heads_neither_block_health_nor_stay_open() {
    const STALLED: usize = 2000;
    // Long enough to open them all on a loaded machine before the first
    // times out.
    // (30 s: with two CPU hogs beside the suite on 2 cores, a debug daemon
    // took over 10 s to accept 2,000 connections.)
    let timeout = Duration::from_secs(30);
    let d = Serve::start(&[("LODGE_HEADER_TIMEOUT", "30s")]);
    let idle_fds = d.fds();
    let t0 = Instant::now();
    let mut conns = stall(&d.addr, STALLED);
    let opened = t0.elapsed();
    let last_opened = Instant::now();
    // The daemon accepted them all (each one its descriptor).
    let mut loaded_fds = d.fds();
    while loaded_fds < STALLED + 5 && t0.elapsed() < timeout * 2 / 3 {
        std::thread::sleep(Duration::from_millis(50));
        loaded_fds = d.fds();
    }
    let took = d
        .health(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("/health under {STALLED} stalled connections: {e}"));
    assert!(
        t0.elapsed() < timeout,
        "opening the connections took too long ({opened:?}) for the check to mean anything"
    );
    assert!(
        loaded_fds >= STALLED + 5,
        "the daemon held {loaded_fds} descriptors ({idle_fds} idle) under {STALLED} connections"
    );
    // All of them are closed by the server once the header timeout passed.
    let closed = closed_by(&mut conns, last_opened + timeout + Duration::from_secs(5));
    wait_until(
        "the daemon to release the descriptors",
        Duration::from_secs(10),
        || (d.fds() <= idle_fds + 10).then_some(()),
    );
    eprintln!(
        "[slowloris] daemon fds: {idle_fds} idle, {loaded_fds} with {STALLED} stalled \
         connections, {} after the header timeout; /health took {took:?}; \
         {closed}/{STALLED} closed by the server",
        d.fds()
    );
    assert_eq!(closed, STALLED, "stalled connections the server closed");
    // An idle keep-alive connection is closed too.
    let mut keep = TcpStream::connect(&d.addr).expect("connect");
    keep.write_all(b"GET /health HTTP/1.1\r\nHost: lodge\r\n\r\n")
        .expect("write");
    let idle_closed = closed_by(
        std::slice::from_mut(&mut keep),
        Instant::now() + timeout + Duration::from_secs(5),
    );
    assert_eq!(idle_closed, 1, "an idle keep-alive connection was closed");
}

#[test]
fn at_the_cap_idle_openers_make_room_for_health() {
    const CAP: usize = 64;
    const STALLED: usize = 400;
    // A long header timeout: only the cap can free the slots in time.
    let d = Serve::start(&[
        ("LODGE_MAX_CONNECTIONS", "64"),
        ("LODGE_HEADER_TIMEOUT", "60s"),
    ]);
    let idle_fds = d.fds();
    let mut conns = stall(&d.addr, STALLED);
    std::thread::sleep(Duration::from_millis(500));
    let loaded_fds = d.fds();
    let took = d
        .health(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("/health at the connection cap: {e}"));
    let closed = closed_by(&mut conns, Instant::now() + Duration::from_secs(2));
    eprintln!(
        "[slowloris] cap {CAP}: daemon fds {idle_fds} idle, {loaded_fds} with {STALLED} \
         stalled connections; /health took {took:?}; {closed}/{STALLED} closed to make room"
    );
    assert!(
        loaded_fds <= idle_fds + CAP + 2,
        "{loaded_fds} descriptors with a cap of {CAP} ({idle_fds} idle)"
    );
    assert!(
        closed >= STALLED - CAP,
        "only {closed} of {STALLED} stalled connections were closed"
    );
    assert!(
        d.log().contains("connection cap reached"),
        "the daemon's log says the cap was reached:\n{}",
        d.log()
    );
}
