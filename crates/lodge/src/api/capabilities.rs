//! `GET /capabilities`: hypeman's description of what this server can do,
//! filled in truthfully for lodge. The part clients act on today is
//! `network`: the model (a bridge with a TAP per VM), the guest subnet and
//! the gateway guests reach the host through, or nulls when the daemon runs
//! without a network. lodge adds `bridge` (the host bridge's name) and
//! `enabled`. `runtimes` lists every hypervisor lodge has, each `available`
//! only when its VMM is installed here.

use axum::extract::State;
use axum::Json;
use lodge_hypervisor::HypervisorKind;
use serde::{Deserialize, Serialize};

use super::state::AppState;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Capabilities {
    pub default_runtime: RuntimeName,
    /// Server-level feature ids lodge provides.
    pub features: Vec<String>,
    pub host: Host,
    pub images: ImagePlatforms,
    pub network: NetworkCapabilities,
    pub runtimes: Vec<Runtime>,
    pub server: Server,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuntimeName {
    pub name: String,
    pub available: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Runtime {
    pub name: String,
    pub available: bool,
    pub features: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Host {
    pub os: String,
    pub arch: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImagePlatforms {
    pub default_platform: String,
    pub platforms: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Server {
    pub api_version: String,
    pub version: String,
}

/// hypeman's `CapabilitiesNetwork`, plus lodge's `enabled` and `bridge`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkCapabilities {
    /// `bridge`: a Linux bridge with a TAP per VM, NAT out of the uplink.
    pub model: String,
    /// Guests never reach each other on lodge's network.
    pub guest_to_guest: bool,
    /// lodge: whether this daemon runs with its default network.
    pub enabled: bool,
    /// Guest subnet (CIDR); null without a network.
    pub subnet: Option<String>,
    /// The guests' gateway (the bridge's address); null without a network.
    pub gateway: Option<String>,
    /// lodge: the host bridge's name; null without a network.
    pub bridge: Option<String>,
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What this server can do.
#[utoipa::path(get, path = "/capabilities", responses((status = 200, body = Capabilities)))]
pub async fn capabilities(State(state): State<AppState>) -> Json<Capabilities> {
    let net = state.manager.network().map(|dn| &dn.network);
    let platform = format!("linux/{}", arch());
    Json(Capabilities {
        default_runtime: RuntimeName {
            name: "qemu".to_string(),
            available: true,
        },
        features: ["instances", "images", "exec", "logs"]
            .map(String::from)
            .to_vec(),
        host: Host {
            os: std::env::consts::OS.to_string(),
            arch: arch().to_string(),
        },
        images: ImagePlatforms {
            default_platform: platform.clone(),
            platforms: vec![platform],
        },
        network: NetworkCapabilities {
            model: "bridge".to_string(),
            guest_to_guest: false,
            enabled: net.is_some(),
            subnet: net.map(|n| n.subnet.to_string()),
            gateway: net.map(|n| n.gateway().to_string()),
            bridge: net.map(|n| n.bridge.to_string()),
        },
        runtimes: vec![
            Runtime {
                name: "qemu".to_string(),
                available: true,
                features: Vec::new(),
            },
            // Built in; available when its binary was found at start
            // (`LODGE_CH_BINARY` or `PATH`). Pause/resume only: no
            // standby, snapshots, fork or vsock yet.
            Runtime {
                name: HypervisorKind::CloudHypervisor.to_string(),
                available: state
                    .manager
                    .hypervisor_available(HypervisorKind::CloudHypervisor),
                features: vec!["pause".to_string()],
            },
        ],
        server: Server {
            api_version: env!("CARGO_PKG_VERSION").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
    })
}
