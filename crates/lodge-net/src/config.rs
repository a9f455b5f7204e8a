//! Typed network configuration, validated before anything on the host moves.
//!
//! Everything here is pure so bad operator input (a malformed or too small
//! subnet, a bridge name the kernel would refuse) fails with a clear message
//! and creates nothing. What needs the host (is the subnet free of host
//! routes? which interface carries the default route?) is checked by
//! [`crate::setup_default`] before its first change.
//!
//! DNS: guests get the host's own resolvers from `/etc/resolv.conf`, never a
//! hard-coded public one. Loopback resolvers (systemd-resolved's
//! `127.0.0.53`, a local dnsmasq on `127.0.0.1`) are unreachable from a guest,
//! so they are skipped; when the file is systemd-resolved's stub, its list of
//! real upstreams (`/run/systemd/resolve/resolv.conf`) is read instead. There
//! is deliberately no fallback to the gateway address: nothing answers DNS
//! there, and a guest that has no resolver fails faster and more honestly than
//! one that waits on a dead one. An empty list is returned for the daemon to
//! warn about; `LODGE_DNS` overrides all of this. Only IPv4 servers are kept,
//! as guests get no IPv6 route.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use crate::error::NetError;

/// The MTU lodge uses on the bridge, the TAPs and (to be told to) the guest.
pub const MTU: u32 = 1500;

/// A network interface name: 1–15 bytes of ASCII letters, digits, `-`, `_`
/// and `.`, not `.`/`..` (a subset of what the kernel's `dev_valid_name`
/// takes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// The longest name the kernel takes (IFNAMSIZ less the NUL).
    pub const MAX_LEN: usize = 15;

    pub fn new(name: &str) -> Result<Self, NetError> {
        let bad = |reason: &str| NetError::InvalidIfName {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(bad(&format!(
                "{} bytes, the kernel allows at most {}",
                name.len(),
                Self::MAX_LEN
            )));
        }
        if name == "." || name == ".." {
            return Err(bad("reserved name"));
        }
        // Stricter than the kernel (which takes any printable byte but '/'
        // and ':'): names are written into nft rules and tc command lines.
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad("only ASCII letters, digits, '-', '_' and '.'"));
        }
        Ok(IfName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IfName {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        IfName::new(s)
    }
}

/// An IPv4 network in CIDR form, with its host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// Prefix lengths lodge accepts: /30 is the smallest network with a
    /// gateway and one guest; below /8 the lease scan would be unreasonable.
    pub const MIN_PREFIX: u8 = 8;
    pub const MAX_PREFIX: u8 = 30;

    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        let text = format!("{network}/{prefix}");
        let bad = |reason: String| NetError::InvalidSubnet {
            input: text.clone(),
            reason,
        };
        if !(Self::MIN_PREFIX..=Self::MAX_PREFIX).contains(&prefix) {
            return Err(bad(format!(
                "prefix must be /{} to /{}",
                Self::MIN_PREFIX,
                Self::MAX_PREFIX
            )));
        }
        let mask = prefix_mask(prefix);
        let bits = u32::from(network);
        if bits & !mask != 0 {
            return Err(bad(format!(
                "host bits are set (did you mean {}/{prefix}?)",
                Ipv4Addr::from(bits & mask)
            )));
        }
        Ok(Subnet { network, prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn mask(&self) -> u32 {
        prefix_mask(self.prefix)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The bridge's (the guests' gateway's) address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// Whether this network and `other/prefix` share any address.
    pub fn overlaps(&self, other: Ipv4Addr, prefix: u8) -> bool {
        let shorter = self.prefix.min(prefix);
        let mask = prefix_mask(shorter);
        u32::from(self.network) & mask == u32::from(other) & mask
    }

    /// Addresses a guest may get: all but network, gateway and broadcast.
    pub fn guest_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last).map(Ipv4Addr::from)
    }

    /// Whether `ip` is one of [`Subnet::guest_addresses`].
    pub fn is_guest_address(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.gateway() && ip != self.broadcast()
    }
}

pub(crate) fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Subnet {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = |reason: &str| NetError::InvalidSubnet {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (addr, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.100.0.0/16"))?;
        let network: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 2 {
            return Err(bad("prefix length is not a number"));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("prefix length is not a number"))?;
        Subnet::new(network, prefix).map_err(|e| match e {
            NetError::InvalidSubnet { reason, .. } => NetError::InvalidSubnet {
                input: s.to_string(),
                reason,
            },
            other => other,
        })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// What the operator asked for. `None` fields are looked up on the host by
/// [`crate::setup_default`] (uplink: the default-route interface; DNS: the
/// host's resolvers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub bridge: IfName,
    pub subnet: Subnet,
    pub uplink: Option<IfName>,
    pub dns: Option<Vec<Ipv4Addr>>,
}

impl NetConfig {
    pub const DEFAULT_BRIDGE: &'static str = "lodge0";
    pub const DEFAULT_SUBNET: &'static str = "10.100.0.0/16";

    /// Reads `LODGE_BRIDGE`, `LODGE_SUBNET`, `LODGE_UPLINK` and `LODGE_DNS`
    /// (comma- or space-separated IPv4 addresses) from the environment.
    pub fn from_env() -> Result<Self, NetError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// As [`NetConfig::from_env`], with the variables looked up by `get`
    /// (empty values count as unset).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, NetError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let bridge = IfName::new(
            get("LODGE_BRIDGE")
                .as_deref()
                .unwrap_or(Self::DEFAULT_BRIDGE)
                .trim(),
        )?;
        let subnet = get("LODGE_SUBNET")
            .as_deref()
            .unwrap_or(Self::DEFAULT_SUBNET)
            .parse()?;
        let uplink = get("LODGE_UPLINK")
            .map(|u| IfName::new(u.trim()))
            .transpose()?;
        let dns = get("LODGE_DNS").map(|d| parse_dns_list(&d)).transpose()?;
        Ok(NetConfig {
            bridge,
            subnet,
            uplink,
            dns,
        })
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            bridge: IfName(Self::DEFAULT_BRIDGE.to_string()),
            subnet: Subnet {
                network: Ipv4Addr::new(10, 100, 0, 0),
                prefix: 16,
            },
            uplink: None,
            dns: None,
        }
    }
}

/// Parses `LODGE_DNS`: IPv4 addresses separated by commas and/or spaces.
pub fn parse_dns_list(input: &str) -> Result<Vec<Ipv4Addr>, NetError> {
    let mut out = Vec::new();
    for item in input.split([',', ' ', '\t']).filter(|s| !s.is_empty()) {
        let ip: Ipv4Addr = item.parse().map_err(|_| NetError::InvalidDns {
            input: input.to_string(),
            reason: format!("{item:?} is not an IPv4 address"),
        })?;
        out.push(ip);
    }
    if out.is_empty() {
        return Err(NetError::InvalidDns {
            input: input.to_string(),
            reason: "no address given".to_string(),
        });
    }
    Ok(out)
}

/// The IPv4 `nameserver` lines of a resolv.conf, loopback ones skipped.
/// Also says whether a loopback resolver was seen (a local stub).
pub fn parse_resolv_conf(text: &str) -> (Vec<Ipv4Addr>, bool) {
    let mut servers = Vec::new();
    let mut saw_loopback = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // IPv6 servers (possibly with a %zone) and garbage are skipped.
        let Some(Ok(ip)) = words.next().map(str::parse::<Ipv4Addr>) else {
            continue;
        };
        if ip.is_loopback() {
            saw_loopback = true;
        } else if !ip.is_unspecified() && !servers.contains(&ip) {
            servers.push(ip);
        }
    }
    (servers, saw_loopback)
}

/// The host's resolvers a guest can reach (see the module docs).
pub fn host_resolvers() -> Vec<Ipv4Addr> {
    host_resolvers_from(
        Path::new("/etc/resolv.conf"),
        Path::new("/run/systemd/resolve/resolv.conf"),
    )
}

pub(crate) fn host_resolvers_from(main: &Path, upstream: &Path) -> Vec<Ipv4Addr> {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (servers, saw_loopback) = parse_resolv_conf(&read(main));
    if !servers.is_empty() || !saw_loopback {
        return servers;
    }
    parse_resolv_conf(&read(upstream)).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s: Subnet = "10.100.0.0/16".parse().expect("parse");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 100, 255, 255));
        assert!(s.contains(Ipv4Addr::new(10, 100, 3, 4)));
        assert!(!s.contains(Ipv4Addr::new(10, 101, 0, 1)));
        assert_eq!(s.guest_addresses().count(), 65536 - 3);
        assert_eq!(
            s.guest_addresses().next(),
            Some(Ipv4Addr::new(10, 100, 0, 2))
        );
        let small: Subnet = "192.168.7.0/30".parse().expect("parse");
        assert_eq!(
            small.guest_addresses().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(192, 168, 7, 2)]
        );
        assert_eq!(NetConfig::default().subnet, s);
        for bad in [
            "10.100.0.0",
            "10.100.0.0/",
            "10.100.0.0/33",
            "10.100.0.0/31",
            "10.0.0.0/4",
            "10.100.0.1/16",
            "10.100.0/16",
            "x/16",
            "10.100.0.0/+16",
            "10.100.0.0/016",
            "",
        ] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(NetError::InvalidSubnet { .. })),
                "{bad}"
            );
        }
        let err = "10.100.0.1/16".parse::<Subnet>().expect_err("host bits");
        assert!(err.to_string().contains("10.100.0.0/16"), "{err}");
    }

    #[test]
    fn overlaps() {
        let s: Subnet = "10.100.0.0/16".parse().expect("parse");
        assert!(s.overlaps(Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(s.overlaps(Ipv4Addr::new(10, 100, 5, 0), 24));
        assert!(!s.overlaps(Ipv4Addr::new(10, 101, 0, 0), 16));
        assert!(!s.overlaps(Ipv4Addr::new(192, 168, 1, 0), 24));
        assert!(s.overlaps(Ipv4Addr::new(0, 0, 0, 0), 0));
    }

    #[test]
    fn ifnames() {
        assert!(IfName::new("lodge0").is_ok());
        assert!(IfName::new("a-very-long-nam").is_ok());
        let err = IfName::new("a-very-long-name").expect_err("16 bytes");
        assert!(err.to_string().contains("at most 15"), "{err}");
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "é", "a\"b", "a;b"] {
            assert!(IfName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_from_lookup() {
        let cfg = NetConfig::from_lookup(|_| None).expect("defaults");
        assert_eq!(cfg, NetConfig::default());
        let cfg = NetConfig::from_lookup(|k| match k {
            "LODGE_BRIDGE" => Some("br-x".into()),
            "LODGE_SUBNET" => Some("172.30.0.0/24".into()),
            "LODGE_UPLINK" => Some("eth1".into()),
            "LODGE_DNS" => Some("1.1.1.1, 9.9.9.9".into()),
            _ => None,
        })
        .expect("set");
        assert_eq!(cfg.bridge.as_str(), "br-x");
        assert_eq!(cfg.subnet.to_string(), "172.30.0.0/24");
        assert_eq!(cfg.uplink.as_ref().map(IfName::as_str), Some("eth1"));
        assert_eq!(
            cfg.dns,
            Some(vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(9, 9, 9, 9)])
        );
        let long = NetConfig::from_lookup(|k| (k == "LODGE_BRIDGE").then(|| "x".repeat(16)));
        assert!(matches!(long, Err(NetError::InvalidIfName { .. })));
        let bad = NetConfig::from_lookup(|k| (k == "LODGE_DNS").then(|| "1.1.1.1,nope".into()));
        assert!(matches!(bad, Err(NetError::InvalidDns { .. })));
    }

    #[test]
    fn resolv_conf() {
        let text = "# comment\nsearch example\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n\
                    nameserver fe80::1%eth0\nnameserver 192.0.2.53\nnameserver 198.51.100.1 # x\n";
        let (servers, lo) = parse_resolv_conf(text);
        assert!(lo);
        assert_eq!(
            servers,
            vec![Ipv4Addr::new(192, 0, 2, 53), Ipv4Addr::new(198, 51, 100, 1)]
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("resolv.conf");
        let up = dir.path().join("upstream.conf");
        std::fs::write(&main, "nameserver 127.0.0.53\noptions edns0\n").expect("write");
        std::fs::write(&up, "nameserver 203.0.113.7\n").expect("write");
        assert_eq!(
            host_resolvers_from(&main, &up),
            vec![Ipv4Addr::new(203, 0, 113, 7)]
        );
        std::fs::write(&main, "nameserver 203.0.113.9\n").expect("write");
        assert_eq!(
            host_resolvers_from(&main, &up),
            vec![Ipv4Addr::new(203, 0, 113, 9)]
        );
        std::fs::remove_file(&up).expect("rm");
        std::fs::write(&main, "nameserver 127.0.0.1\n").expect("write");
        assert!(host_resolvers_from(&main, &up).is_empty());
    }
}
