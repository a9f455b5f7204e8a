//! The guest's network, as the host hands it over in
//! [`GuestConfig::network`](crate::GuestConfig::network): one interface,
//! found by its MAC address, with a static IPv4 address, a default route and
//! resolvers. The host allocates everything (address, MAC, gateway) and the
//! guest only applies it, so there is no DHCP client in the guest and no
//! wait for a lease at boot.
//!
//! Addresses are typed ([`Ipv4Addr`], [`MacAddr`]) so the host cannot build
//! one that does not parse; what types cannot say (prefix range, gateway
//! inside the subnet, list lengths) is checked once by
//! [`NetworkConfig::validate`], which [`GuestConfig::validate`]
//! (crate::GuestConfig::validate) runs. The two files the guest writes,
//! `/etc/resolv.conf` and `/etc/hosts`, are rendered here by pure functions
//! so both sides can test them without a VM.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most resolvers the guest lists: glibc and musl read only the first three
/// `nameserver` lines (`MAXNS`), so more would be silently ignored.
pub const MAX_DNS_SERVERS: usize = 3;

/// Smallest MTU an IPv4 interface may have (RFC 791).
pub const MTU_MIN: u32 = 68;
/// Largest MTU virtio-net accepts.
pub const MTU_MAX: u32 = 65535;

/// The longest name the guest puts in `/etc/hosts` (`HOST_NAME_MAX`).
const NAME_MAX: usize = 64;

/// An Ethernet MAC address; on the wire, six lowercase colon-separated hex
/// bytes (`02:00:0a:64:00:05`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether the group bit is set: such an address names no single NIC.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A string that is not six colon-separated pairs of hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mac address {0:?} is not six colon-separated hex bytes")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts either case; sysfs writes lowercase.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacParseError(s.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(bytes))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = MacParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

/// One interface's static configuration. JSON shape:
///
/// ```json
/// {"mac": "02:00:0a:64:00:05", "ip": "10.100.0.5", "prefix_len": 16,
///  "gateway": "10.100.0.1", "mtu": 1500, "dns": ["10.0.0.53"],
///  "name": "web-1"}
/// ```
///
/// `mtu` may be absent (the driver's default stays) and `dns` may be absent
/// or empty (the image's own `/etc/resolv.conf` stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The NIC to configure, found by this address among the guest's
    /// interfaces (never by name or probe order).
    pub mac: MacAddr,
    /// The guest's own address.
    pub ip: Ipv4Addr,
    /// Length of the subnet's prefix, 1 to 32.
    pub prefix_len: u8,
    /// The default route's next hop; inside the subnet.
    pub gateway: Ipv4Addr,
    /// Link MTU; `None` keeps the driver's default (1500 for virtio-net).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Resolvers for `/etc/resolv.conf`, at most [`MAX_DNS_SERVERS`]. Empty
    /// leaves the image's file as it is.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// The instance's name, which `/etc/hosts` maps to [`ip`](Self::ip).
    pub name: String,
}

/// Why a network section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("mac address {0} is a multicast or all-zero address")]
    NotUnicastMac(MacAddr),
    #[error("prefix length {0} is not between 1 and 32")]
    PrefixLen(u8),
    #[error("address {0} cannot be a host's address")]
    NotHostAddress(Ipv4Addr),
    #[error("address {ip} is the network or broadcast address of its /{prefix_len}")]
    SubnetEdge { ip: Ipv4Addr, prefix_len: u8 },
    #[error("gateway {gateway} is outside the subnet {ip}/{prefix_len}")]
    GatewayOutsideSubnet {
        gateway: Ipv4Addr,
        ip: Ipv4Addr,
        prefix_len: u8,
    },
    #[error("gateway {0} is the guest's own address")]
    GatewayIsOwnAddress(Ipv4Addr),
    #[error("mtu {0} is not between 68 and 65535")]
    Mtu(u32),
    #[error("{0} dns servers given, at most 3 are used")]
    TooManyDns(usize),
    #[error("dns server {0} cannot be a resolver's address")]
    BadDns(Ipv4Addr),
    #[error("instance name {0:?} must be 1 to 64 characters without whitespace, '#' or '/'")]
    BadName(String),
}

/// The netmask of a prefix length in `0..=32`, as a host-order integer.
fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

/// Addresses that never belong to a host or resolver.
fn is_special(ip: Ipv4Addr) -> bool {
    ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()
}

impl NetworkConfig {
    /// Check everything types cannot: run by
    /// [`GuestConfig::validate`](crate::GuestConfig::validate).
    pub fn validate(&self) -> Result<(), NetworkError> {
        if self.mac.is_multicast() || self.mac.0 == [0; 6] {
            return Err(NetworkError::NotUnicastMac(self.mac));
        }
        if !(1..=32).contains(&self.prefix_len) {
            return Err(NetworkError::PrefixLen(self.prefix_len));
        }
        if is_special(self.ip) {
            return Err(NetworkError::NotHostAddress(self.ip));
        }
        let mask = mask(self.prefix_len);
        let host = u32::from(self.ip) & !mask;
        // /31 and /32 have no network or broadcast address (RFC 3021).
        if self.prefix_len <= 30 && (host == 0 || host == !mask) {
            return Err(NetworkError::SubnetEdge {
                ip: self.ip,
                prefix_len: self.prefix_len,
            });
        }
        if is_special(self.gateway) || !self.in_subnet(self.gateway) {
            return Err(NetworkError::GatewayOutsideSubnet {
                gateway: self.gateway,
                ip: self.ip,
                prefix_len: self.prefix_len,
            });
        }
        if self.gateway == self.ip {
            return Err(NetworkError::GatewayIsOwnAddress(self.gateway));
        }
        if let Some(mtu) = self.mtu {
            if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
                return Err(NetworkError::Mtu(mtu));
            }
        }
        if self.dns.len() > MAX_DNS_SERVERS {
            return Err(NetworkError::TooManyDns(self.dns.len()));
        }
        if let Some(&bad) = self
            .dns
            .iter()
            .find(|&&d| d.is_unspecified() || d.is_multicast() || d.is_broadcast())
        {
            return Err(NetworkError::BadDns(bad));
        }
        let bad_name = self.name.is_empty()
            || self.name.len() > NAME_MAX
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '#' || c == '/');
        if bad_name {
            return Err(NetworkError::BadName(self.name.clone()));
        }
        Ok(())
    }

    /// Whether `addr` is in the guest's subnet.
    pub fn in_subnet(&self, addr: Ipv4Addr) -> bool {
        let mask = mask(self.prefix_len);
        u32::from(addr) & mask == u32::from(self.ip) & mask
    }

    /// The guest's `/etc/resolv.conf`, or `None` when no resolver is
    /// configured and the image's own file should stay.
    pub fn resolv_conf(&self) -> Option<String> {
        if self.dns.is_empty() {
            return None;
        }
        let mut text = String::from("# written by lodge-init from the instance's network\n");
        for server in &self.dns {
            text.push_str(&format!("nameserver {server}\n"));
        }
        Some(text)
    }

    /// The guest's `/etc/hosts`: loopback names, then the instance's own
    /// address and name, so that the workload can resolve itself.
    pub fn hosts(&self) -> String {
        format!(
            "# written by lodge-init from the instance's network\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             {}\t{}\n",
            self.ip, self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NetworkConfig {
        NetworkConfig {
            mac: MacAddr([0x02, 0, 0x0a, 0x64, 0, 0x05]),
            ip: Ipv4Addr::new(10, 100, 0, 5),
            prefix_len: 16,
            gateway: Ipv4Addr::new(10, 100, 0, 1),
            mtu: Some(1500),
            dns: vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(1, 1, 1, 1)],
            name: "web-1".into(),
        }
    }

    #[test]
    fn mac_parses_either_case_and_prints_lowercase() {
        let mac: MacAddr = "02:00:0A:64:00:ff".parse().expect("valid");
        assert_eq!(mac, MacAddr([2, 0, 0x0a, 0x64, 0, 0xff]));
        assert_eq!(mac.to_string(), "02:00:0a:64:00:ff");
        for bad in [
            "",
            "02:00:0a:64:00",
            "02:00:0a:64:00:05:06",
            "02-00-0a-64-00-05",
            "2:00:0a:64:00:05",
            "02:00:0a:64:00:5g",
            "02:00:0a:64:00:+5",
            "02:00:0a:64::005",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(MacParseError(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn json_shape_is_plain_strings_and_numbers() {
        let json = serde_json::to_value(sample()).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "mac": "02:00:0a:64:00:05",
                "ip": "10.100.0.5",
                "prefix_len": 16,
                "gateway": "10.100.0.1",
                "mtu": 1500,
                "dns": ["10.0.0.53", "1.1.1.1"],
                "name": "web-1",
            })
        );
        let back: NetworkConfig = serde_json::from_value(json).expect("parses");
        assert_eq!(back, sample());
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let json = r#"{"mac":"02:00:00:00:00:01","ip":"10.0.2.15","prefix_len":24,
                       "gateway":"10.0.2.2","name":"a"}"#;
        let net: NetworkConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(net.mtu, None);
        assert!(net.dns.is_empty());
        assert_eq!(net.validate(), Ok(()));
        let out = serde_json::to_string(&net).expect("serializes");
        assert!(!out.contains("mtu"), "{out}");
    }

    #[test]
    fn malformed_addresses_do_not_parse() {
        let with = |field: &str, value: &str| {
            let mut json = serde_json::to_value(sample()).expect("serializes");
            json[field] = serde_json::Value::String(value.into());
            serde_json::from_value::<NetworkConfig>(json)
                .expect_err(value)
                .to_string()
        };
        assert!(with("mac", "02:00").contains("mac address \"02:00\""));
        assert!(with("ip", "10.100.0.256").contains("invalid IPv4"));
        assert!(with("ip", "10.100.0.5/16").contains("invalid IPv4"));
        assert!(with("gateway", "gw").contains("invalid IPv4"));
        let mut json = serde_json::to_value(sample()).expect("serializes");
        json["dns"] = serde_json::json!(["::1"]);
        assert!(serde_json::from_value::<NetworkConfig>(json).is_err());
    }

    #[test]
    fn validate_checks_each_rule() {
        let check = |f: &dyn Fn(&mut NetworkConfig)| {
            let mut n = sample();
            f(&mut n);
            n.validate()
        };
        let ip = Ipv4Addr::new;
        assert_eq!(check(&|_| {}), Ok(()));
        let multicast = MacAddr([0x03, 0, 0, 0, 0, 1]);
        assert_eq!(
            check(&|n| n.mac = multicast),
            Err(NetworkError::NotUnicastMac(multicast))
        );
        assert_eq!(
            check(&|n| n.mac = MacAddr([0; 6])),
            Err(NetworkError::NotUnicastMac(MacAddr([0; 6])))
        );
        for p in [0, 33, 255] {
            assert_eq!(
                check(&|n| n.prefix_len = p),
                Err(NetworkError::PrefixLen(p))
            );
        }
        for bad in [ip(0, 0, 0, 0), ip(127, 0, 0, 1), ip(224, 0, 0, 1)] {
            assert_eq!(
                check(&|n| n.ip = bad),
                Err(NetworkError::NotHostAddress(bad))
            );
        }
        for edge in [ip(10, 100, 0, 0), ip(10, 100, 255, 255)] {
            assert_eq!(
                check(&|n| n.ip = edge),
                Err(NetworkError::SubnetEdge {
                    ip: edge,
                    prefix_len: 16
                })
            );
        }
        assert_eq!(
            check(&|n| n.gateway = ip(10, 101, 0, 1)),
            Err(NetworkError::GatewayOutsideSubnet {
                gateway: ip(10, 101, 0, 1),
                ip: ip(10, 100, 0, 5),
                prefix_len: 16
            })
        );
        assert_eq!(
            check(&|n| n.gateway = ip(10, 100, 0, 5)),
            Err(NetworkError::GatewayIsOwnAddress(ip(10, 100, 0, 5)))
        );
        // A /32 has no room for a gateway; a /31 has exactly one.
        assert!(matches!(
            check(&|n| n.prefix_len = 32),
            Err(NetworkError::GatewayOutsideSubnet { .. })
        ));
        assert_eq!(
            check(&|n| {
                n.prefix_len = 31;
                n.ip = ip(10, 0, 0, 0);
                n.gateway = ip(10, 0, 0, 1);
            }),
            Ok(())
        );
        for mtu in [0, 67, 65536] {
            assert_eq!(check(&|n| n.mtu = Some(mtu)), Err(NetworkError::Mtu(mtu)));
        }
        assert_eq!(check(&|n| n.mtu = Some(9000)), Ok(()));
        assert_eq!(
            check(&|n| n.dns = vec![ip(10, 0, 0, 53); 4]),
            Err(NetworkError::TooManyDns(4))
        );
        assert_eq!(
            check(&|n| n.dns = vec![ip(0, 0, 0, 0)]),
            Err(NetworkError::BadDns(ip(0, 0, 0, 0)))
        );
        // A resolver on the guest's own loopback is allowed (a stub resolver
        // in the image).
        assert_eq!(check(&|n| n.dns = vec![ip(127, 0, 0, 53)]), Ok(()));
        for name in ["", "a b", "a\tb", "a#b", "a/b", &"x".repeat(65)] {
            assert_eq!(
                check(&|n| n.name = name.into()),
                Err(NetworkError::BadName(name.into())),
                "{name:?}"
            );
        }
    }

    #[test]
    fn resolv_conf_lists_the_servers_or_is_left_alone() {
        assert_eq!(
            sample().resolv_conf().as_deref(),
            Some(
                "# written by lodge-init from the instance's network\n\
                 nameserver 10.0.0.53\n\
                 nameserver 1.1.1.1\n"
            )
        );
        let mut none = sample();
        none.dns.clear();
        assert_eq!(none.resolv_conf(), None);
    }

    #[test]
    fn hosts_maps_loopback_and_the_instance() {
        assert_eq!(
            sample().hosts(),
            "# written by lodge-init from the instance's network\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.100.0.5\tweb-1\n"
        );
    }
}
