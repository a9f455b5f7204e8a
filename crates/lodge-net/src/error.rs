//! One error type for the crate, with a variant per thing an operator or the
//! daemon can act on (bad input, a conflict on the host, missing privilege)
//! and a few carriers for the underlying failure when nothing better fits.
//! Lack of privilege is recognised wherever it surfaces (netlink, ioctl,
//! `nft`, `tc`) and reported the same way, because "run as root" is the one
//! fix for all of them.

use std::io;
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid subnet {input:?}: {reason}")]
    InvalidSubnet { input: String, reason: String },

    #[error(
        "subnet {subnet} overlaps the host route {route}{} (choose another LODGE_SUBNET)",
        dev.as_ref().map(|d| format!(" on {d}")).unwrap_or_default()
    )]
    SubnetOverlap {
        subnet: String,
        route: String,
        dev: Option<String>,
    },

    #[error("invalid interface name {name:?}: {reason}")]
    InvalidIfName { name: String, reason: String },

    #[error("creating network links needs root (CAP_NET_ADMIN)")]
    PermissionDenied,

    #[error("no default route to find the uplink interface; set LODGE_UPLINK")]
    NoUplink,

    #[error("bridge {0:?} is missing: the default network is not set up")]
    BridgeMissing(String),

    #[error("uplink interface {0:?} does not exist")]
    UplinkNotFound(String),

    #[error("{name:?} exists and is not a bridge; lodge will not take it over (set LODGE_BRIDGE)")]
    NotABridge { name: String },

    #[error(
        "invalid bandwidth {input:?}: {reason} (examples: \"100Mbps\", \"1Gbps\", \"125MB/s\")"
    )]
    InvalidBandwidth { input: String, reason: String },

    #[error("invalid DNS server list {input:?}: {reason}")]
    InvalidDns { input: String, reason: String },

    #[error(
        "instance id {0:?} cannot name a network device (need ASCII letters, digits, '-' or '_')"
    )]
    InvalidInstanceId(String),

    #[error("subnet {subnet} is full: no free address left for a new instance")]
    SubnetFull { subnet: String },

    #[error("address {ip} is not a usable guest address in {subnet}")]
    NotInSubnet { ip: Ipv4Addr, subnet: String },

    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },

    #[error("`{cmd}` not found: install it (Debian package {package})")]
    ToolMissing { cmd: String, package: String },

    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
}

impl NetError {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        NetError::Io {
            op: op.into(),
            source,
        }
    }

    /// As [`NetError::io`] for operations on the kernel's network state
    /// (TAP ioctls, `/proc/sys/net`), where EPERM/EACCES means "not root".
    pub(crate) fn net_io(op: impl Into<String>, source: io::Error) -> Self {
        if matches!(
            source.raw_os_error(),
            Some(libc::EPERM) | Some(libc::EACCES)
        ) {
            return NetError::PermissionDenied;
        }
        NetError::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        if netlink_errno(&source) == Some(libc::EPERM) {
            return NetError::PermissionDenied;
        }
        NetError::Netlink {
            op: op.into(),
            source,
        }
    }
}

/// The errno a netlink NACK carries, if the error is one.
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}
