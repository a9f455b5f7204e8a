//! A small synchronous rtnetlink client: the three requests PID 1 needs to
//! bring up the guest's network (link up with an MTU, an address, a
//! default route), and the two more the agent needs to move a restored
//! fork onto its own address (delete an address, set the MAC), each sent
//! with `NLM_F_ACK` and answered by the kernel's acknowledgement before
//! the next one goes out.
//!
//! The socket is `netlink-sys`'s blocking one; nothing here needs an async
//! runtime. The messages are encoded here, by hand: three fixed headers and
//! a few attributes whose layout the kernel's uapi headers fix
//! (`linux/netlink.h`, `rtnetlink.h`, `if_link.h`, `if_addr.h`). A general
//! message crate would add every other rtnetlink message's encoder to the
//! static init binary (about 380 KiB, a fifth of it); the tests check these
//! bytes against `netlink-packet-route`'s encoding of the same requests.

use std::io;
use std::net::Ipv4Addr;

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Size of `struct nlmsghdr`.
const HEADER_LEN: usize = 16;
/// Room for any acknowledgement (it echoes our request's header only).
const RECV_BUF: usize = 8192;

// linux/netlink.h
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
// linux/rtnetlink.h
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
// linux/if_link.h, linux/if_addr.h, linux/if.h, linux/socket.h
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFF_UP: u32 = 0x1;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;

/// One request being encoded: the netlink header, the family header, then
/// attributes, each padded to 4 bytes.
struct Request(Vec<u8>);

impl Request {
    fn new(kind: u16, flags: u16, family_header: &[u8]) -> Self {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes[4..6].copy_from_slice(&kind.to_ne_bytes());
        bytes[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        bytes.extend_from_slice(family_header);
        Self(bytes)
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = u16::try_from(4 + data.len()).expect("attributes here are a few bytes");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(4) * 4, 0);
        self
    }

    /// The finished bytes, numbered `seq`.
    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).expect("requests here are small");
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

/// `ip link set dev INDEX [mtu MTU] up`.
fn link_up_request(index: u32, mtu: Option<u32>) -> Request {
    // struct ifinfomsg: family, pad, type, index, flags, change
    let mut header = [0u8; 16];
    header[0] = AF_UNSPEC;
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    header[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
    header[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
    let request = Request::new(RTM_SETLINK, 0, &header);
    match mtu {
        Some(mtu) => request.attr(IFLA_MTU, &mtu.to_ne_bytes()),
        None => request,
    }
}

/// `ip addr add IP/LEN brd + dev INDEX`.
fn add_address_request(index: u32, ip: Ipv4Addr, prefix_len: u8) -> Request {
    // struct ifaddrmsg: family, prefixlen, flags, scope, index
    let mut header = [0u8; 8];
    header[0] = AF_INET;
    header[1] = prefix_len;
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    let request = Request::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &header)
        .attr(IFA_LOCAL, &ip.octets())
        .attr(IFA_ADDRESS, &ip.octets());
    if prefix_len < 31 {
        let host_bits = u32::MAX >> u32::from(prefix_len);
        let broadcast = Ipv4Addr::from(u32::from(ip) | host_bits);
        request.attr(IFA_BROADCAST, &broadcast.octets())
    } else {
        request
    }
}

/// `ip link set dev INDEX address MAC`.
fn set_mac_request(index: u32, mac: [u8; 6]) -> Request {
    let mut header = [0u8; 16];
    header[0] = AF_UNSPEC;
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    Request::new(RTM_SETLINK, 0, &header).attr(IFLA_ADDRESS, &mac)
}

/// `ip addr del IP/LEN dev INDEX`.
fn del_address_request(index: u32, ip: Ipv4Addr, prefix_len: u8) -> Request {
    let mut header = [0u8; 8];
    header[0] = AF_INET;
    header[1] = prefix_len;
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    Request::new(RTM_DELADDR, 0, &header).attr(IFA_LOCAL, &ip.octets())
}

/// `ip route add default via GATEWAY dev INDEX`.
fn default_route_request(index: u32, gateway: Ipv4Addr) -> Request {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags
    let header = [
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    Request::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &header)
        .attr(RTA_GATEWAY, &gateway.octets())
        .attr(RTA_OIF, &index.to_ne_bytes())
}

/// An open rtnetlink socket and the sequence number of its last request.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Set the MTU (when given) and bring the link with `index` up.
    pub fn link_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        self.request(link_up_request(index, mtu))
    }

    /// Add `ip/prefix_len`, with its broadcast address, to link `index`.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        self.request(add_address_request(index, ip, prefix_len))
    }

    /// Add the default route via `gateway` out of link `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        self.request(default_route_request(index, gateway))
    }

    /// Give link `index` the hardware address `mac`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        self.request(set_mac_request(index, mac))
    }

    /// Remove `ip/prefix_len` from link `index`.
    pub fn del_address(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        self.request(del_address_request(index, ip, prefix_len))
    }

    /// Send one request and wait for its acknowledgement; a negative errno
    /// in it becomes the error.
    fn request(&mut self, request: Request) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.socket.send(&request.finish(self.seq), 0)?;
        loop {
            let mut reply = Vec::with_capacity(RECV_BUF);
            self.socket.recv(&mut reply, 0)?;
            if let Some(result) = find_ack(&reply, self.seq) {
                return result;
            }
        }
    }
}

/// The outcome carried by the acknowledgement of request `seq` among the
/// netlink messages in `datagram`, if there is one.
fn find_ack(datagram: &[u8], seq: u32) -> Option<io::Result<()>> {
    let mut rest = datagram;
    while rest.len() >= HEADER_LEN {
        let word =
            |at: usize| u32::from_ne_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        let len = usize::try_from(word(0)).ok()?;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < HEADER_LEN || len > rest.len() {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed netlink reply",
            )));
        }
        if kind == NLMSG_ERROR && word(8) == seq && len >= HEADER_LEN + 4 {
            let code = word(HEADER_LEN) as i32;
            return Some(match code {
                0 => Ok(()),
                negative => Err(io::Error::from_raw_os_error(negative.saturating_neg())),
            });
        }
        // Messages are padded to 4 bytes.
        let step = len.div_ceil(4) * 4;
        rest = rest.get(step..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(HEADER_LEN + payload.len()).expect("small");
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(m.len().div_ceil(4) * 4, 0);
        m
    }

    #[test]
    fn acks_are_matched_by_sequence_and_carry_the_errno() {
        let ack = message(NLMSG_ERROR, 7, &0i32.to_ne_bytes());
        assert!(matches!(find_ack(&ack, 7), Some(Ok(()))));
        assert!(find_ack(&ack, 8).is_none());
        let nack = message(NLMSG_ERROR, 7, &(-libc::EEXIST).to_ne_bytes());
        let err = find_ack(&nack, 7).expect("answer").expect_err("nack");
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        // An unrelated message first, with an odd length, then the ack.
        let mut both = message(16, 7, &[1, 2, 3]);
        both.extend(message(NLMSG_ERROR, 7, &0i32.to_ne_bytes()));
        assert!(matches!(find_ack(&both, 7), Some(Ok(()))));
        assert!(find_ack(&[0u8; 3], 7).is_none());
        let mut short = ack;
        short[0] = 200;
        assert!(matches!(find_ack(&short, 7), Some(Err(_))));
    }

    /// The reference encoding of the same request.
    fn reference(
        message: netlink_packet_route::RouteNetlinkMessage,
        flags: u16,
        seq: u32,
    ) -> Vec<u8> {
        let mut req = netlink_packet_core::NetlinkMessage::from(message);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        req.header.sequence_number = seq;
        req.finalize();
        let mut bytes = vec![0u8; req.buffer_len()];
        req.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn link_up_matches_the_reference_encoding() {
        use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
        for mtu in [None, Some(1400)] {
            let mut msg = LinkMessage::default();
            msg.header.index = 2;
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
            msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
            assert_eq!(
                link_up_request(2, mtu).finish(9),
                reference(
                    netlink_packet_route::RouteNetlinkMessage::SetLink(msg),
                    0,
                    9
                ),
                "{mtu:?}"
            );
        }
    }

    #[test]
    fn add_address_matches_the_reference_encoding() {
        use netlink_packet_route::address::{AddressAttribute, AddressMessage};
        use std::net::IpAddr;
        let ip = Ipv4Addr::new(10, 0, 2, 15);
        for (prefix_len, broadcast) in [
            (24, Some(Ipv4Addr::new(10, 0, 2, 255))),
            (16, Some(Ipv4Addr::new(10, 0, 255, 255))),
            (31, None),
        ] {
            let mut msg = AddressMessage::default();
            msg.header.family = netlink_packet_route::AddressFamily::Inet;
            msg.header.prefix_len = prefix_len;
            msg.header.index = 3;
            msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
            msg.attributes
                .push(AddressAttribute::Address(IpAddr::V4(ip)));
            msg.attributes
                .extend(broadcast.map(AddressAttribute::Broadcast));
            assert_eq!(
                add_address_request(3, ip, prefix_len).finish(1),
                reference(
                    netlink_packet_route::RouteNetlinkMessage::NewAddress(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                    1
                ),
                "/{prefix_len}"
            );
        }
    }

    #[test]
    fn default_route_matches_the_reference_encoding() {
        use netlink_packet_route::route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
            RouteType,
        };
        let gateway = Ipv4Addr::new(10, 0, 2, 2);
        let mut msg = RouteMessage::default();
        msg.header.address_family = netlink_packet_route::AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        msg.attributes.push(RouteAttribute::Oif(2));
        assert_eq!(
            default_route_request(2, gateway).finish(4),
            reference(
                netlink_packet_route::RouteNetlinkMessage::NewRoute(msg),
                NLM_F_CREATE | NLM_F_EXCL,
                4
            )
        );
    }

    #[test]
    fn set_mac_matches_the_reference_encoding() {
        use netlink_packet_route::link::{LinkAttribute, LinkMessage};
        let mac = [0x02, 0x4c, 10, 100, 0, 7];
        let mut msg = LinkMessage::default();
        msg.header.index = 2;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        assert_eq!(
            set_mac_request(2, mac).finish(5),
            reference(
                netlink_packet_route::RouteNetlinkMessage::SetLink(msg),
                0,
                5
            )
        );
    }

    #[test]
    fn del_address_matches_the_reference_encoding() {
        use netlink_packet_route::address::{AddressAttribute, AddressMessage};
        use std::net::IpAddr;
        let ip = Ipv4Addr::new(10, 100, 0, 2);
        let mut msg = AddressMessage::default();
        msg.header.family = netlink_packet_route::AddressFamily::Inet;
        msg.header.prefix_len = 16;
        msg.header.index = 2;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        assert_eq!(
            del_address_request(2, ip, 16).finish(6),
            reference(
                netlink_packet_route::RouteNetlinkMessage::DelAddress(msg),
                0,
                6
            )
        );
    }
}
