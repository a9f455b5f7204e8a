//! The daemon's side of the ingress: the store of ingress records and the
//! proxy process that serves them.
//!
//! The daemon never proxies a byte itself. It validates and writes records
//! (lodge-ingress's [`Store`]), makes sure the proxy process runs (started
//! detached, like a VM's monitor, so it outlives the daemon), and tells it
//! to reload over its control socket, waiting for the answer: a create
//! whose port the proxy cannot bind is undone and refused, so nothing is
//! half-applied. All changes go through one lock, in order.
//!
//! `backend` is the other side: what the proxy process (`lodge
//! ingress-proxy`) uses to find instances and wake them.

pub mod backend;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lodge_ingress::control::{self, Command, Reply};
use lodge_ingress::{CreateError, CreateRequest, Ingress, Store, StoreError};

use crate::config::Config;

/// How long a freshly started proxy may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The address rule ports are bound on (`LODGE_INGRESS_ADDRESS`).
pub const DEFAULT_ADDRESS: &str = "0.0.0.0";

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the ingress proxy could not bind: {}", .0.join("; "))]
    Unbound(Vec<String>),
    #[error("starting the ingress proxy")]
    Spawn(#[source] io::Error),
    #[error("the ingress proxy exited at once: {0}")]
    ExitedAtOnce(String),
    #[error("the ingress proxy does not answer")]
    Control(#[source] io::Error),
}

/// The daemon's handle on ingresses.
pub struct Ingresses {
    store: Store,
    dir: PathBuf,
    addr: IpAddr,
    /// The daemon's API as the proxy reaches it (to wake instances).
    api: String,
    lodge_exe: PathBuf,
    /// One change at a time: records, then the proxy's reload.
    op: tokio::sync::Mutex<()>,
}

impl Ingresses {
    pub fn open(cfg: &Config) -> anyhow::Result<Ingresses> {
        let dir = cfg.paths().ingress_dir();
        let store = Store::open(&dir)?;
        let addr = address_from_env()?;
        let api = api_url(cfg.listen);
        Ok(Ingresses {
            store,
            dir,
            addr,
            api,
            lodge_exe: cfg.lodge_exe.clone(),
            op: tokio::sync::Mutex::new(()),
        })
    }

    pub fn list(&self) -> Result<Vec<Ingress>, StoreError> {
        self.store.list()
    }

    pub fn get(&self, key: &str) -> Result<Ingress, StoreError> {
        self.store.get(key)
    }

    /// Validates and writes the ingress, then has the proxy serve it; a
    /// port the proxy cannot bind undoes the record.
    pub async fn create(
        &self,
        req: CreateRequest,
        instance_exists: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Ingress, IngressError> {
        let _held = self.op.lock().await;
        let addr = self.addr;
        let tls = lodge_ingress::tls::TlsSettings::from_env();
        let ingress = self.store.create_checked(
            req,
            instance_exists,
            |host| tls.check(host),
            |port| bind_probe(addr, port),
        )?;
        let applied = self.apply().await;
        let errors = match applied {
            Ok(reply) if reply.errors.is_empty() => return Ok(ingress),
            Ok(reply) => IngressError::Unbound(reply.errors),
            Err(e) => e,
        };
        self.store.remove_id(&ingress.id)?;
        if let Err(e) = self.apply().await {
            tracing::warn!("ingress: reloading after undoing {}: {e}", ingress.name);
        }
        Err(errors)
    }

    /// Removes the ingress; the proxy stops serving it (and exits when it
    /// has nothing left).
    pub async fn delete(&self, key: &str) -> Result<Ingress, IngressError> {
        let _held = self.op.lock().await;
        let ingress = self.store.delete(key)?;
        if self.store.list()?.is_empty() {
            self.stop_proxy().await;
        } else if let Err(e) = self.apply().await {
            tracing::warn!("ingress: reloading after deleting {}: {e}", ingress.name);
        }
        Ok(ingress)
    }

    /// After instance `id` is deleted: remove the ingresses `lodge run -p`
    /// made for it (named `…-ports`, only TCP rules, all targeting `id`),
    /// as `docker rm` releases a container's published ports. Ingresses an
    /// API client made stay; they answer 502 until they are deleted.
    pub async fn forget_ports_of(&self, id: &str) {
        let published: Vec<String> = match self.list() {
            Ok(all) => all
                .into_iter()
                .filter(|i| {
                    i.name.ends_with("-ports")
                        && !i.rules.is_empty()
                        && i.rules.iter().all(|r| {
                            r.target.instance == id
                                && r.match_.hostname == lodge_ingress::rules::ANY_HOST
                        })
                })
                .map(|i| i.id)
                .collect(),
            Err(e) => {
                tracing::warn!("ingress: listing to release the ports of {id}: {e}");
                return;
            }
        };
        for ingress in published {
            if let Err(e) = self.delete(&ingress).await {
                tracing::warn!("ingress: releasing {ingress}, the ports of {id}: {e}");
            }
        }
    }

    /// At daemon start: a proxy for the records there are (one that
    /// survived the last daemon is told the new API address).
    pub async fn start(&self) {
        let _held = self.op.lock().await;
        match self.store.list() {
            Ok(list) if list.is_empty() => {}
            Ok(_) => match self.apply().await {
                Ok(reply) if reply.errors.is_empty() => tracing::info!(
                    "ingress proxy {} serving ports {:?}",
                    reply.pid,
                    reply.ports
                ),
                Ok(reply) => {
                    tracing::warn!("ingress proxy {}: {}", reply.pid, reply.errors.join("; "))
                }
                Err(e) => tracing::warn!("ingress: {e}"),
            },
            Err(e) => tracing::warn!("ingress: {e}"),
        }
    }

    /// Makes sure the proxy runs and has reloaded the records.
    async fn apply(&self) -> Result<Reply, IngressError> {
        let reload = Command::Reload {
            api: Some(self.api.clone()),
        };
        if control::proxy_alive(&self.dir).unwrap_or(false) {
            if let Ok(reply) = control::call(&self.dir, &reload).await {
                return Ok(reply);
            }
        }
        self.spawn_proxy().await?;
        control::call(&self.dir, &reload)
            .await
            .map_err(IngressError::Control)
    }

    async fn spawn_proxy(&self) -> Result<(), IngressError> {
        std::fs::create_dir_all(&self.dir).map_err(IngressError::Spawn)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("proxy.log"))
            .map_err(IngressError::Spawn)?;
        let mut cmd = std::process::Command::new(&self.lodge_exe);
        cmd.arg("ingress-proxy")
            .arg("--ingress-dir")
            .arg(&self.dir)
            .arg("--address")
            .arg(self.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .current_dir(&self.dir);
        // Its own session: it outlives the daemon, like a monitor.
        detach_session(&mut cmd);
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(IngressError::Spawn)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Alive (its lock held) and listening: a socket file alone may
            // be a dead proxy's, which the new one replaces only after
            // taking the lock and binding its ports.
            if control::proxy_alive(&self.dir).unwrap_or(false)
                && std::os::unix::net::UnixStream::connect(control::socket_path(&self.dir)).is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default();
                let last = log.lines().last().unwrap_or("").to_string();
                return Err(IngressError::ExitedAtOnce(format!("{status}: {last}")));
            }
            if Instant::now() > deadline {
                return Err(IngressError::Control(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the ingress proxy did not open its control socket",
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::spawn(async move {
            if let Err(e) = child.wait().await {
                tracing::warn!("reaping the ingress proxy: {e}");
            }
        });
        Ok(())
    }

    async fn stop_proxy(&self) {
        if !control::proxy_alive(&self.dir).unwrap_or(false) {
            return;
        }
        if let Err(e) = control::call(&self.dir, &Command::Exit).await {
            tracing::warn!("ingress: stopping the proxy: {e}");
            return;
        }
        // Its lock goes with it; the next create may then start another.
        let deadline = Instant::now() + START_TIMEOUT;
        while control::proxy_alive(&self.dir).unwrap_or(false) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[allow(unsafe_code)]
fn detach_session(cmd: &mut std::process::Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory; it only
    // detaches the child into its own session before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether `port` can be bound on `addr` now (the proxy binds it next).
fn bind_probe(addr: IpAddr, port: u16) -> Result<(), String> {
    let sa = SocketAddr::new(addr, port);
    let socket = match addr {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
    socket.bind(sa).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => format!("{sa} is in use"),
        io::ErrorKind::PermissionDenied => {
            format!("{sa} is a privileged port and lodge is not root")
        }
        _ => format!("{sa}: {e}"),
    })
}

fn address_from_env() -> anyhow::Result<IpAddr> {
    let raw = std::env::var("LODGE_INGRESS_ADDRESS").unwrap_or_else(|_| DEFAULT_ADDRESS.into());
    raw.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("LODGE_INGRESS_ADDRESS={raw:?}: {e}"))
}

/// The daemon's API as a local client reaches it.
fn api_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_url_is_reachable_locally() {
        assert_eq!(
            api_url("0.0.0.0:8080".parse().expect("addr")),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            api_url("127.0.0.1:9".parse().expect("addr")),
            "http://127.0.0.1:9"
        );
        assert_eq!(api_url("[::]:9".parse().expect("addr")), "http://[::1]:9");
    }

    #[tokio::test]
    async fn a_port_in_use_fails_the_probe() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let err = bind_probe("127.0.0.1".parse().expect("ip"), port).expect_err("in use");
        assert!(err.contains("in use"), "{err}");
        drop(held);
        bind_probe("127.0.0.1".parse().expect("ip"), port).expect("free again");
    }
}
