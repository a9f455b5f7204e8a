//! The guest agent: `lodge-init agent CONFIG`, started by PID 1 before the
//! workload, serving exec, copy, stat and volume (un)mounts to the host over the virtio-serial
//! port named [`AGENT_PORT`] (protocol: [`lodge_guest::protocol`]).
//! PID 1 starts and restarts it (`init::agent_supervisor`); the agent
//! itself imports nothing of the init, only the shared `sys`, `netlink`
//! (to move a restored fork onto its own address, see [`readdress`]) and
//! `spawn`.
//!
//! Shape, and why:
//!
//! - **The same binary as the init**, re-executed by PID 1 with the `agent`
//!   argument: one static executable in the initrd, no second build.
//! - **Out of the workload's way**: its own session (the workload's
//!   process-group signals never reach it), forked before the workload and
//!   reaped (and restarted if it crashes) by PID 1. It writes nothing to
//!   the user's console unless it cannot work at all.
//! - **Chrooted into the workload's root** (`/newroot`), so exec, copy and
//!   stat see exactly the files the workload sees, and absolute symlinks
//!   resolve inside the container, not in the initramfs.
//! - **Threads, not an event loop**: the reader (this module) decodes
//!   frames and routes them; one writer thread owns the port's write end
//!   ([`wire`]); each session runs on its own threads ([`exec`], [`copy`]),
//!   taken from a few kept from earlier sessions ([`workers`]).
//!   Blocking I/O with per-stream credit keeps every session independent:
//!   a command that stops reading its stdin or a client that stops reading
//!   output stalls only its own stream.
//! - **Connections come and go**: virtio-serial reads return 0 while no
//!   host is connected. The agent then drops every session (killing their
//!   commands), waits for SIGIO (sent when the host side connects) and
//!   starts over with the next `Hello`.

mod config;
mod copy;
mod exec;
mod mount;
mod port;
mod readdress;
mod session;
mod wire;
mod workers;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lodge_guest::protocol::frame::encode_json;
use lodge_guest::protocol::{
    encode, Control, Decoder, Event, Frame, Hello, HelloAck, Kind, Request, AGENT_PORT,
    CONNECTION_STREAM, INITIAL_WINDOW, PROTOCOL_VERSION,
};

use crate::sys;

pub use config::AgentConfig;
use session::{fatal, Input, NoControl, SessionControl};
use wire::{StreamOut, Window, Wire};
use workers::Workers;

/// How long to wait for the port device to show up after boot.
const PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the agent. Returns only when it cannot run (no port: success, so
/// PID 1 does not restart it).
pub fn main(config: &str) -> ExitCode {
    let config: AgentConfig = match serde_json::from_str(config) {
        Ok(c) => c,
        Err(e) => fatal(&format!("bad configuration: {e}")),
    };
    if let Err(e) = sys::setsid() {
        fatal(&format!("setsid: {e}"));
    }
    let Some(device) = port::find(AGENT_PORT, PORT_TIMEOUT) else {
        // A VM without the agent channel (e.g. a bare QEMU run).
        return ExitCode::SUCCESS;
    };
    let port = match port::Port::open(&device) {
        Ok(p) => p,
        Err(e) => fatal(&format!("open {}: {e}", device.display())),
    };
    if let Err(e) = sys::chroot(&config.root) {
        fatal(&format!("chroot {}: {e}", config.root));
    }
    let writer = match port.writer() {
        Ok(w) => w,
        Err(e) => fatal(&format!("dup the port: {e}")),
    };
    let agent = Arc::new(Agent {
        config,
        wire: Wire::start(writer)
            .unwrap_or_else(|e| fatal(&format!("start the writer thread: {e}"))),
        sessions: Mutex::new(HashMap::new()),
        workers: Workers::default(),
    });
    // Tell a host that may still hold a connection that we are new.
    agent.wire.send(
        agent.wire.epoch(),
        encode(Kind::Reset, CONNECTION_STREAM, b""),
    );
    agent.serve(port)
}

struct Session {
    epoch: u64,
    input: Option<Sender<Input>>,
    window: Arc<Window>,
    control: Arc<dyn SessionControl>,
}

struct Agent {
    config: AgentConfig,
    wire: Wire,
    sessions: Mutex<HashMap<u32, Session>>,
    workers: Workers,
}

impl Agent {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session ended: forget it and tell the host.
    pub fn finish(&self, out: &StreamOut) {
        let mut sessions = self.sessions();
        if sessions.get(&out.id).is_some_and(|s| s.epoch == out.epoch) {
            sessions.remove(&out.id);
        }
        drop(sessions);
        out.close();
    }

    /// Drop every session: the host connection changed.
    fn reset(&self) -> u64 {
        let epoch = self.wire.next_epoch();
        let old: Vec<Session> = self.sessions().drain().map(|(_, s)| s).collect();
        for s in old {
            s.window.close();
            s.control.cancel();
        }
        epoch
    }

    fn serve(self: Arc<Self>, mut port: port::Port) -> ExitCode {
        let mut decoder = Decoder::new();
        let mut nonce: Option<u64> = None;
        loop {
            match decoder.read_from(port.file()) {
                Ok(0) => {
                    // No host connected: whatever ran for the last one is
                    // orphaned. Wait for the next connection.
                    if nonce.take().is_some() || !self.sessions().is_empty() {
                        self.reset();
                    }
                    decoder.reset();
                    port.wait_for_host();
                }
                Ok(_) => {
                    while let Some(frame) = decoder.next_frame() {
                        self.handle(frame, &mut nonce);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                    // The port was unplugged.
                    return ExitCode::SUCCESS;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn handle(self: &Arc<Self>, frame: Frame, nonce: &mut Option<u64>) {
        match frame.kind {
            Kind::Hello => {
                let Ok(hello) = serde_json::from_slice::<Hello>(&frame.payload) else {
                    return;
                };
                if *nonce != Some(hello.nonce) {
                    self.reset();
                    *nonce = Some(hello.nonce);
                }
                let ack = HelloAck {
                    version: PROTOCOL_VERSION,
                    nonce: hello.nonce,
                };
                self.wire.send(
                    self.wire.epoch(),
                    encode_json(Kind::HelloAck, CONNECTION_STREAM, &ack),
                );
            }
            Kind::Open => self.open(frame.stream, &frame.payload),
            Kind::Control => {
                let Ok(control) = serde_json::from_slice::<Control>(&frame.payload) else {
                    return;
                };
                let mut sessions = self.sessions();
                let Some(session) = sessions.get_mut(&frame.stream) else {
                    return;
                };
                match control {
                    Control::Resize { rows, cols } => session.control.resize(rows, cols),
                    Control::Cancel => {
                        // Output and input stop at once; the session's
                        // threads notice and end.
                        session.window.close();
                        session.input = None;
                        let control = session.control.clone();
                        drop(sessions);
                        control.cancel();
                    }
                    Control::Entry(header) => deliver(session, Input::Entry(header)),
                    Control::EntryEnd => deliver(session, Input::EntryEnd),
                }
            }
            Kind::Data => {
                if let Some(session) = self.sessions().get(&frame.stream) {
                    deliver(session, Input::Data(frame.payload));
                }
            }
            Kind::Eof => {
                if let Some(session) = self.sessions().get_mut(&frame.stream) {
                    if let Some(input) = session.input.take() {
                        let _ = input.send(Input::Eof);
                    }
                }
            }
            Kind::Credit => {
                if let (Some(bytes), Some(session)) =
                    (frame.credit(), self.sessions().get(&frame.stream))
                {
                    session.window.add(bytes);
                }
            }
            // Frames only the agent sends, or stale ones: ignore.
            _ => {}
        }
    }

    fn open(self: &Arc<Self>, id: u32, payload: &[u8]) {
        let epoch = self.wire.epoch();
        let window = Window::new(INITIAL_WINDOW);
        let out = StreamOut::new(id, epoch, self.wire.clone(), window.clone());
        if id == CONNECTION_STREAM || self.sessions().contains_key(&id) {
            out.event(&Event::Error {
                message: format!("stream {id} is already in use"),
                path: String::new(),
            });
            out.close();
            return;
        }
        let request = match serde_json::from_slice::<Request>(payload) {
            Ok(r) => r,
            Err(e) => {
                out.event(&Event::Error {
                    message: format!("bad request: {e}"),
                    path: String::new(),
                });
                out.close();
                return;
            }
        };
        let (tx, rx) = channel();
        let exec_control = Arc::new(exec::Control::default());
        let control: Arc<dyn SessionControl> = match &request {
            Request::Exec(_) => exec_control.clone(),
            _ => Arc::new(NoControl),
        };
        self.sessions().insert(
            id,
            Session {
                epoch,
                input: Some(tx),
                window,
                control: control.clone(),
            },
        );
        let agent = self.clone();
        let spawned = self.workers.run(move || {
            match request {
                Request::Exec(start) => exec::run(&agent.config, &out, start, rx, exec_control),
                Request::CopyTo { path } => copy::copy_to(&out, &path, rx),
                Request::CopyFrom { path, follow_links } => {
                    copy::copy_from(&out, &path, follow_links)
                }
                Request::Stat { path, follow_links } => {
                    out.event(&Event::Stat(copy::stat(&path, follow_links)))
                }
                Request::Discard => copy::discard(&out, rx),
                Request::Generate { bytes } => copy::generate(&out, bytes),
                Request::Readdress(req) => readdress::readdress(&out, &req),
                Request::Mount(m) => mount::mount(&out, &m),
                Request::Unmount { mount_path } => mount::unmount(&out, &mount_path),
            }
            agent.finish(&out);
        });
        if let Err(e) = spawned {
            let out = StreamOut::new(id, epoch, self.wire.clone(), Window::new(0));
            out.event(&Event::Error {
                message: format!("start a thread: {e}"),
                path: String::new(),
            });
            self.finish(&out);
        }
    }
}

fn deliver(session: &Session, input: Input) {
    if let Some(tx) = &session.input {
        let _ = tx.send(input);
    }
}
