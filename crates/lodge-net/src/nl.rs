//! The few netlink queries and changes lodge needs, over `rtnetlink`, with
//! errors mapped to [`NetError`] (EPERM becomes "needs root"; "no such
//! device" becomes `None` where absence is a normal answer). Each public
//! operation opens its own short-lived connection: calls are rare (create,
//! stop, daemon start) and this keeps the API free of a handle to thread
//! through the daemon.

use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::error::{netlink_errno, NetError};

pub(crate) fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetError::io("open netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// What lodge needs to know about a link.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub controller: Option<u32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            controller: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn is_no_device(e: &rtnetlink::Error) -> bool {
    matches!(netlink_errno(e), Some(libc::ENODEV) | Some(libc::ENOENT))
}

pub(crate) async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>, NetError> {
    let mut stream = handle.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) if is_no_device(&e) => Ok(None),
        Err(e) => Err(NetError::netlink(format!("look up link {name}"), e)),
    }
}

pub(crate) async fn all_links(handle: &Handle) -> Result<Vec<Link>, NetError> {
    let msgs: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("list links", e))?;
    Ok(msgs.iter().map(Link::from_message).collect())
}

/// Deletes a link by name; a link that is already gone is not an error.
/// Returns whether something was deleted.
pub(crate) async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetError> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_no_device(&e) => Ok(false),
        Err(e) => Err(NetError::netlink(format!("delete link {name}"), e)),
    }
}

/// One IPv4 route of the main table.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub oif: Option<u32>,
}

pub(crate) async fn ipv4_main_routes(handle: &Handle) -> Result<Vec<Route>, NetError> {
    let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let msgs: Vec<RouteMessage> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink("list routes", e))?;
    let mut out = Vec::new();
    for msg in msgs {
        if msg.header.address_family != AddressFamily::Inet {
            continue;
        }
        let mut table = u32::from(msg.header.table);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            continue;
        }
        out.push(Route {
            dst,
            prefix: msg.header.destination_prefix_length,
            oif,
        });
    }
    Ok(out)
}

/// The interface of the main table's IPv4 default route, if any (the first
/// one when several exist: the kernel keeps them in preference order).
pub(crate) async fn default_route_link(handle: &Handle) -> Result<Option<Link>, NetError> {
    let routes = ipv4_main_routes(handle).await?;
    let Some(oif) = routes.iter().find(|r| r.prefix == 0).and_then(|r| r.oif) else {
        return Ok(None);
    };
    let links = all_links(handle).await?;
    Ok(links.into_iter().find(|l| l.index == oif))
}
