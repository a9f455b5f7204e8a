//! A small synchronous rtnetlink client: the four requests PID 1 needs to
//! bring up the guest's network (link up with an MTU, an address, a
//! default route), each sent with `NLM_F_ACK` and answered by the kernel's
//! acknowledgement before the next one goes out.
//!
//! Messages are built with `netlink-packet-route` and sent over a blocking
//! `netlink-sys` socket; nothing here needs an async runtime, so the static
//! init binary stays small and the requests cost microseconds. Only the
//! acknowledgement is read back, by hand: its layout (header, then a
//! negative errno or 0) is fixed by netlink(7), so there is nothing to gain
//! from decoding whole route messages.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkMessage, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Size of `struct nlmsghdr`.
const HEADER_LEN: usize = 16;
/// Room for any acknowledgement (it echoes our request's header only).
const RECV_BUF: usize = 8192;

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

    /// Set the MTU (when given) and bring the link with `index` up, as
    /// `ip link set dev X mtu N up`.
    pub fn link_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Add `ip/prefix_len` to the link with `index`, with its broadcast
    /// address, as `ip addr add IP/LEN brd + dev X`.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        if prefix_len < 31 {
            let host_bits = u32::MAX >> u32::from(prefix_len);
            let broadcast = Ipv4Addr::from(u32::from(ip) | host_bits);
            msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Add the default route via `gateway` out of the link with `index`, as
    /// `ip route add default via GW dev X`.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 0;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Send one request and wait for its acknowledgement; a negative errno
    /// in it becomes the error.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::from(message);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut bytes = vec![0u8; req.buffer_len()];
        req.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
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

    #[test]
    fn requests_serialize_to_the_expected_kernel_types() {
        // RTM_SETLINK = 19, RTM_NEWADDR = 20, RTM_NEWROUTE = 24.
        let kind = |m: RouteNetlinkMessage| {
            let mut req = NetlinkMessage::from(m);
            req.finalize();
            let mut bytes = vec![0u8; req.buffer_len()];
            req.serialize(&mut bytes);
            u16::from_ne_bytes([bytes[4], bytes[5]])
        };
        assert_eq!(
            kind(RouteNetlinkMessage::SetLink(LinkMessage::default())),
            19
        );
        assert_eq!(
            kind(RouteNetlinkMessage::NewAddress(AddressMessage::default())),
            20
        );
        assert_eq!(
            kind(RouteNetlinkMessage::NewRoute(RouteMessage::default())),
            24
        );
    }
}
