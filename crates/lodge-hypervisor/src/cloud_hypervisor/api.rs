//! Cloud Hypervisor's REST API over its Unix socket: typed bodies for the
//! endpoints lodge uses and a small client on hyper's connection API.
//!
//! The types are lodge's own reading of the API description Cloud
//! Hypervisor publishes (`vmm/src/api/openapi/cloud-hypervisor.yaml`),
//! limited to the fields lodge reads or sends; unknown fields are ignored
//! so a newer VMM's answers still parse. Every call opens its own
//! connection and closes it when done, like the QMP client: a restarted
//! daemon controls VMMs it did not start, and no half-read response
//! outlives a timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// The API's path prefix.
pub const API_PREFIX: &str = "/api/v1/";

/// Most of the body of an error answer kept in [`ApiError::Status`].
const MAX_ERROR_BODY: usize = 4096;
/// Most of an answer's body read at all.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// `GET vmm.ping`: the VMM's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPing {
    /// The release, e.g. `54.0.0`.
    pub version: String,
    /// The build's own version string, e.g. `v54.0.0`.
    #[serde(default)]
    pub build_version: Option<String>,
    /// The VMM's process id.
    #[serde(default)]
    pub pid: Option<i64>,
    /// Compiled-in features (`kvm`, `io_uring`, …).
    #[serde(default)]
    pub features: Vec<String>,
}

/// The VM's state as Cloud Hypervisor names it (`VmState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChVmState {
    Created,
    Running,
    Shutdown,
    Paused,
    BreakPoint,
    /// A state added after this was written.
    #[serde(untagged)]
    Other(String),
}

/// `GET vm.info`: what lodge reads of the VM's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub state: ChVmState,
    pub config: VmInfoConfig,
    /// Guest memory in bytes, balloon deducted.
    #[serde(default)]
    pub memory_actual_size: Option<u64>,
}

/// The parts of `VmConfig` lodge checks in [`VmInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfoConfig {
    #[serde(default)]
    pub cpus: Option<CpusConfig>,
    #[serde(default)]
    pub memory: Option<MemoryConfig>,
    pub payload: PayloadConfig,
    #[serde(default)]
    pub serial: Option<ConsoleConfig>,
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    #[serde(default)]
    pub balloon: Option<BalloonConfig>,
}

/// `CpusConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
}

/// `MemoryConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
}

/// `PayloadConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
}

/// `SerialConfig` / `ConsoleConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// `Off`, `Pty`, `Tty`, `File`, `Socket` or `Null`.
    pub mode: String,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `BalloonConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonConfig {
    /// Bytes currently asked of the guest.
    pub size: u64,
}

/// `PUT vm.resize` (`VmResize`): only the balloon is resized by lodge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmResize {
    /// Bytes the balloon should hold (taken from the guest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_balloon: Option<u64>,
}

/// Endpoints lodge calls, with their method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    VmmPing,
    VmmShutdown,
    VmInfo,
    VmPause,
    VmResume,
    VmPowerButton,
    VmResize,
}

impl Endpoint {
    /// The endpoint's name after [`API_PREFIX`].
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::VmmPing => "vmm.ping",
            Endpoint::VmmShutdown => "vmm.shutdown",
            Endpoint::VmInfo => "vm.info",
            Endpoint::VmPause => "vm.pause",
            Endpoint::VmResume => "vm.resume",
            Endpoint::VmPowerButton => "vm.power-button",
            Endpoint::VmResize => "vm.resize",
        }
    }

    /// `GET` for queries, `PUT` for actions (as the API description says).
    pub fn method(self) -> Method {
        match self {
            Endpoint::VmmPing | Endpoint::VmInfo => Method::GET,
            _ => Method::PUT,
        }
    }
}

/// REST client failures.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be connected.
    #[error("connecting to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (including the VMM closing the connection).
    #[error("{endpoint}: http exchange failed")]
    Http {
        endpoint: &'static str,
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built.
    #[error("{endpoint}: building the request")]
    Request {
        endpoint: &'static str,
        #[source]
        source: hyper::http::Error,
    },
    /// The VMM answered with an error status.
    #[error("{endpoint} answered {status}: {body}")]
    Status {
        endpoint: &'static str,
        status: StatusCode,
        body: String,
    },
    /// The answer did not parse.
    #[error("{endpoint}: unexpected answer")]
    Decode {
        endpoint: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The answer was larger than lodge reads.
    #[error("{endpoint}: answer larger than {MAX_BODY} bytes")]
    TooLarge { endpoint: &'static str },
    /// No answer in time.
    #[error("{endpoint}: no answer within {timeout:?}")]
    Timeout {
        endpoint: &'static str,
        timeout: Duration,
    },
}

impl ApiError {
    /// Whether the failure means no VMM is there to answer: its socket is
    /// missing, refuses connections (left by a VMM that died), or was
    /// closed before the answer.
    pub fn vmm_gone(&self) -> bool {
        match self {
            ApiError::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            ApiError::Http { source, .. } => source.is_incomplete_message() || source.is_closed(),
            _ => false,
        }
    }
}

/// A client of one VMM's API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client of `socket`; each call (connect, request, answer) must
    /// finish within `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `vmm.ping`.
    pub async fn ping(&self) -> Result<VmmPing, ApiError> {
        self.call_json(Endpoint::VmmPing, None).await
    }

    /// `vm.info`.
    pub async fn info(&self) -> Result<VmInfo, ApiError> {
        self.call_json(Endpoint::VmInfo, None).await
    }

    /// A bodiless action (`vm.pause`, `vm.resume`, `vm.power-button`,
    /// `vmm.shutdown`).
    pub async fn action(&self, endpoint: Endpoint) -> Result<(), ApiError> {
        self.call(endpoint, None).await.map(drop)
    }

    /// `vm.resize`.
    pub async fn resize(&self, body: &VmResize) -> Result<(), ApiError> {
        let endpoint = Endpoint::VmResize;
        let body = serde_json::to_vec(body).map_err(|source| ApiError::Decode {
            endpoint: endpoint.name(),
            source,
        })?;
        self.call(endpoint, Some(body)).await.map(drop)
    }

    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiError> {
        let bytes = self.call(endpoint, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| ApiError::Decode {
            endpoint: endpoint.name(),
            source,
        })
    }

    /// One request on a fresh connection; the answer's body on success.
    pub async fn call(&self, endpoint: Endpoint, body: Option<Vec<u8>>) -> Result<Bytes, ApiError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.exchange(endpoint, body))
            .await
            .map_err(|_| ApiError::Timeout {
                endpoint: endpoint.name(),
                timeout,
            })?
    }

    async fn exchange(&self, endpoint: Endpoint, body: Option<Vec<u8>>) -> Result<Bytes, ApiError> {
        let name = endpoint.name();
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ApiError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let http = |source| ApiError::Http {
            endpoint: name,
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // The connection is driven beside the request and ends with it
        // (dropping the sender closes it).
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("cloud-hypervisor api connection: {e}");
            }
        });
        let mut req = Request::builder()
            .method(endpoint.method())
            .uri(format!("{API_PREFIX}{name}"))
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| ApiError::Request {
                endpoint: name,
                source,
            })?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(http)?;
            let status = resp.status();
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
            let bytes = match limited.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => match e.downcast::<hyper::Error>() {
                    Ok(h) => return Err(http(*h)),
                    Err(_) => return Err(ApiError::TooLarge { endpoint: name }),
                },
            };
            if status.is_success() {
                Ok(bytes)
            } else {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ERROR_BODY)]);
                Err(ApiError::Status {
                    endpoint: name,
                    status,
                    body: text.trim().to_string(),
                })
            }
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer shaped like the API description's `VmInfo` (abridged the
    /// way a real answer is: extra fields lodge does not read).
    const INFO: &str = r#"{
        "config": {
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2, "kvm_hyperv": false},
            "memory": {"size": 536870912, "mergeable": false, "shared": false},
            "payload": {"kernel": "/sys/vmlinux", "cmdline": "console=ttyS0 earlyprintk=ttyS0",
                        "initramfs": "/sys/initrd.img"},
            "serial": {"mode": "Tty"},
            "console": {"mode": "Off", "pci_segment": 0},
            "balloon": {"size": 0, "deflate_on_oom": true},
            "rng": {"src": "/dev/urandom"}
        },
        "state": "Running",
        "memory_actual_size": 536870912,
        "device_tree": {}
    }"#;

    #[test]
    fn vm_info_parses_the_fields_lodge_reads() {
        let info: VmInfo = serde_json::from_str(INFO).expect("parse");
        assert_eq!(info.state, ChVmState::Running);
        assert_eq!(
            info.config.cpus,
            Some(CpusConfig {
                boot_vcpus: 2,
                max_vcpus: 2
            })
        );
        assert_eq!(info.config.memory.map(|m| m.size), Some(512 << 20));
        assert_eq!(info.config.serial.map(|s| s.mode), Some("Tty".to_string()));
        assert_eq!(info.config.balloon.map(|b| b.size), Some(0));
        assert_eq!(info.memory_actual_size, Some(512 << 20));
    }

    #[test]
    fn every_state_of_the_description_parses_and_a_new_one_too() {
        for (text, state) in [
            ("Created", ChVmState::Created),
            ("Running", ChVmState::Running),
            ("Shutdown", ChVmState::Shutdown),
            ("Paused", ChVmState::Paused),
            ("BreakPoint", ChVmState::BreakPoint),
            ("Hibernating", ChVmState::Other("Hibernating".into())),
        ] {
            let parsed: ChVmState = serde_json::from_str(&format!("\"{text}\"")).expect("parse");
            assert_eq!(parsed, state);
        }
    }

    #[test]
    fn ping_and_resize_bodies() {
        let ping: VmmPing = serde_json::from_str(
            r#"{"build_version":"v54.0.0","version":"54.0.0","pid":7,"features":["kvm"]}"#,
        )
        .expect("parse");
        assert_eq!(ping.version, "54.0.0");
        assert_eq!(ping.pid, Some(7));
        let only_version: VmmPing = serde_json::from_str(r#"{"version":"1"}"#).expect("parse");
        assert!(only_version.features.is_empty());
        assert_eq!(
            serde_json::to_value(VmResize {
                desired_balloon: Some(1 << 20)
            })
            .expect("serialize"),
            serde_json::json!({"desired_balloon": 1048576})
        );
        assert_eq!(
            serde_json::to_value(VmResize::default()).expect("serialize"),
            serde_json::json!({})
        );
    }

    #[test]
    fn endpoints_use_the_described_methods() {
        assert_eq!(Endpoint::VmInfo.method(), Method::GET);
        assert_eq!(Endpoint::VmmPing.method(), Method::GET);
        for e in [
            Endpoint::VmPause,
            Endpoint::VmResume,
            Endpoint::VmPowerButton,
            Endpoint::VmmShutdown,
            Endpoint::VmResize,
        ] {
            assert_eq!(e.method(), Method::PUT, "{}", e.name());
        }
        assert_eq!(Endpoint::VmPowerButton.name(), "vm.power-button");
    }

    /// A one-shot HTTP server on a Unix socket standing in for the VMM:
    /// records the request head and answers `answer`.
    async fn serve_once(socket: PathBuf, answer: &'static str) -> tokio::task::JoinHandle<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            loop {
                let n = conn.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got.len() >= head_end + 4 + len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            conn.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&got).to_string()
        })
    }

    #[tokio::test]
    async fn a_put_with_a_body_and_a_204() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let server = serve_once(socket.clone(), "HTTP/1.1 204 No Content\r\n\r\n").await;
        let client = ApiClient::new(&socket, Duration::from_secs(5));
        client
            .resize(&VmResize {
                desired_balloon: Some(4096),
            })
            .await
            .expect("resize");
        let request = server.await.expect("server");
        assert!(
            request.starts_with("PUT /api/v1/vm.resize HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.to_ascii_lowercase().contains("host: localhost"));
        assert!(request.ends_with("{\"desired_balloon\":4096}"), "{request}");
    }

    #[tokio::test]
    async fn an_error_status_carries_the_vmms_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let server = serve_once(
            socket.clone(),
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 20\r\n\r\nVM is not running...",
        )
        .await;
        let client = ApiClient::new(&socket, Duration::from_secs(5));
        let err = client.action(Endpoint::VmPause).await.expect_err("refused");
        assert!(!err.vmm_gone());
        assert_eq!(
            err.to_string(),
            "vm.pause answered 405 Method Not Allowed: VM is not running..."
        );
        let request = server.await.expect("server");
        assert!(request.starts_with("PUT /api/v1/vm.pause HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_gone_vmm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = ApiClient::new(dir.path().join("none.sock"), Duration::from_secs(1));
        let err = client.info().await.expect_err("no vmm");
        assert!(err.vmm_gone(), "{err:?}");
    }
}
