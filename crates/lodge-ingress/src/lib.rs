//! lodge's ingress: publish instances by hostname (HTTP) or host port
//! (TCP), through a proxy process of lodge's own.
//!
//! Why a process apart from the daemon: like the per-VM monitor, the proxy
//! must keep serving while the daemon restarts or is killed, so it is
//! started detached (`lodge ingress-proxy`), finds its configuration in the
//! data dir (the ingress records, [`store`]) and instance addresses there
//! too (through the [`proxy::Backend`] lodge gives it), and is told to
//! re-read them over a Unix socket ([`control`]) without dropping a
//! connection.
//!
//! - [`rules`]: hypeman's rule shape, validated once into typed rules;
//! - [`store`]: the records, with the name and hostname+port checks;
//! - [`proxy`]: listeners, routing, forwarding, wake-on-traffic;
//! - [`activity`]: per-instance traffic records for auto-standby;
//! - [`tls`]: certificates (an operator's directory, or ACME) and the
//!   allow-list of names;
//! - [`control`]: the control socket and the proxy's lifetime lock.
//!
//! The sequence of [`serve`]: (1) take the lock or stop (another proxy
//! serves this data dir); (2) write the pid file; (3) load the records and
//! bind their ports; (4) answer the control socket and SIGHUP (reload)
//! until told to exit or SIGTERM.

pub mod activity;
pub mod control;
pub mod proxy;
pub mod rules;
pub mod store;
pub mod tls;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

pub use proxy::{Backend, Located, Proxy};
pub use rules::{Rule, RuleError, RuleInput};
pub use store::{CreateError, CreateRequest, Ingress, Store, StoreError};

/// How the proxy process runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `Paths::ingress_dir()`.
    pub ingress_dir: PathBuf,
    /// The address every rule port is bound on.
    pub addr: IpAddr,
    /// Most client connections served at once, all ports together.
    pub max_connections: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another ingress proxy serves {0}")]
    AlreadyRunning(PathBuf),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the proxy until an `exit` command or SIGTERM (see the module doc).
pub async fn serve(opts: ServeOptions, backend: Arc<dyn Backend>) -> Result<(), ServeError> {
    let dir = &opts.ingress_dir;
    let io_err =
        |what: &'static str, path: PathBuf| move |source| ServeError::Io { what, path, source };
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir.clone()))?;
    let _lock = control::take_lock(dir)
        .map_err(io_err("locking", control::lock_path(dir)))?
        .ok_or_else(|| ServeError::AlreadyRunning(dir.clone()))?;
    let pid_file = control::pid_path(dir);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .map_err(io_err("writing", pid_file.clone()))?;
    let certs = tls::Certificates::new(tls::TlsSettings::from_env(), dir);
    let proxy = Proxy::new(
        backend,
        certs,
        store::records_dir(dir),
        opts.addr,
        opts.max_connections,
    )
    .map_err(|e| ServeError::Io {
        what: "configuring TLS for",
        path: dir.clone(),
        source: std::io::Error::other(e),
    })?;
    tokio::spawn(proxy.clone().renew_loop());
    for e in proxy.reload().await {
        tracing::warn!("ingress: {e}");
    }
    let sock = control::socket_path(dir);
    // The lock is ours, so a socket file left here is a dead proxy's.
    match std::fs::remove_file(&sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing", sock.clone())(e)),
    }
    let listener = UnixListener::bind(&sock).map_err(io_err("binding", sock.clone()))?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(io_err("SIGHUP for", dir.clone()))?;
    let mut term = signal(SignalKind::terminate()).map_err(io_err("SIGTERM for", dir.clone()))?;
    tracing::info!(
        "ingress proxy {} serving ports {:?} on {}",
        std::process::id(),
        proxy.ports(),
        opts.addr
    );
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("ingress control socket: {e}");
                        continue;
                    }
                };
                if answer(&proxy, stream).await {
                    break;
                }
            }
            _ = hup.recv() => {
                for e in proxy.reload().await {
                    tracing::warn!("ingress: {e}");
                }
            }
            _ = term.recv() => break,
        }
    }
    for path in [&sock, &pid_file] {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!("removing {}: {e}", path.display());
        }
    }
    tracing::info!("ingress proxy {} exits", std::process::id());
    Ok(())
}

/// Answers one control connection; true when told to exit.
async fn answer(proxy: &Arc<Proxy>, stream: tokio::net::UnixStream) -> bool {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        control::CALL_TIMEOUT,
        BufReader::new(r).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return false;
    }
    let (reply, exit) = match serde_json::from_str::<control::Command>(&line) {
        Ok(control::Command::Reload { api }) => {
            if let Some(api) = api {
                proxy.backend().set_api(&api);
            }
            let errors = proxy.reload().await;
            (errors, false)
        }
        Ok(control::Command::Exit) => (Vec::new(), true),
        Err(e) => (vec![format!("bad control command: {e}")], false),
    };
    let reply = control::Reply {
        pid: std::process::id(),
        errors: reply,
        ports: proxy.ports(),
    };
    match serde_json::to_vec(&reply) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            if let Err(e) = w.write_all(&bytes).await {
                tracing::warn!("ingress control answer: {e}");
            }
        }
        Err(e) => tracing::warn!("ingress control answer: {e}"),
    }
    exit
}
