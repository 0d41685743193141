//! Kernel network state through rtnetlink: links, addresses, routes and
//! neighbor entries. weft never shells out to `ip`.

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft_encap::MacAddr;

/// A netlink failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Open(#[source] std::io::Error),
    /// A request failed.
    #[error("netlink: cannot {what}: {error}")]
    Request {
        /// What was asked.
        what: String,
        /// The kernel's answer.
        error: rtnetlink::Error,
    },
    /// A link that should exist does not.
    #[error("no network interface named {0}")]
    NoLink(String),
    /// No default route to derive the underlay interface from.
    #[error("no {0} default route: pass --iface")]
    NoDefaultRoute(&'static str),
    /// None of the interfaces asked for exists.
    #[error("no interface matches {0}")]
    NoMatch(String),
    /// The interface has no IPv4 address.
    #[error("interface {0} has no IPv4 address: pass --public-ip")]
    NoAddress(String),
}

impl NetlinkError {
    /// True when the kernel answered "network unreachable": for a route
    /// with a gateway, the gateway is not on any connected network.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, NetlinkError::Request { error, .. } if is_unreachable(error))
    }
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |error| NetlinkError::Request { what, error }
}

/// True for "no such entry" answers, which a delete treats as done.
fn is_absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.map(|c| -c.get()) .is_some_and(|c| c == libc::ENOENT || c == libc::ESRCH || c == libc::ENODEV))
}

/// True for "no route to that destination" answers.
fn is_unreachable(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.map(|c| -c.get()).is_some_and(|c| c == libc::ENETUNREACH || c == libc::EHOSTUNREACH))
}

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// The route protocol number weft marks its routes with (`ip route` shows
/// `proto 87`), as routing daemons mark theirs (`proto bird`, `proto
/// zebra`): weft only ever replaces or deletes routes that carry it, and
/// a prefix the kernel already routes under another protocol is not ours
/// to take. 87 is unassigned in iproute2's `rt_protos`.
pub const RTPROT_WEFT: u8 = 87;

/// One route of either family, as far as weft compares routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteEntry {
    /// Destination prefix.
    pub dst: IpNet,
    /// Output interface, if it has one.
    pub oif: Option<u32>,
    /// Gateway, if it has one.
    pub gateway: Option<IpAddr>,
    /// An `unreachable` route.
    pub unreachable: bool,
    /// Installed by weft (protocol `RTPROT_WEFT`).
    pub ours: bool,
}

impl RouteEntry {
    fn of(r: &RouteMessage) -> Option<RouteEntry> {
        let ip = |a: &RouteAddress| match a {
            RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
            RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
            _ => None,
        };
        let mut dst = match r.header.address_family {
            AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        let (mut oif, mut gateway) = (None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = ip(d)?,
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(g) => gateway = ip(g),
                _ => {}
            }
        }
        Some(RouteEntry {
            dst: IpNet::new(dst, r.header.destination_prefix_length).ok()?,
            oif,
            gateway,
            unreachable: r.header.kind == RouteType::Unreachable,
            ours: r.header.protocol == RouteProtocol::Other(RTPROT_WEFT),
        })
    }
}

/// The underlay interface weft sends through.
#[derive(Debug, Clone)]
pub struct Underlay {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Its first IPv4 address; none only on a host without IPv4, which
    /// serves an IPv6-only cluster alone.
    pub addr: Option<Ipv4Addr>,
    /// Its MTU.
    pub mtu: u32,
    /// The networks of all its IPv4 addresses.
    pub networks: Vec<Ipv4Net>,
    /// The IPv6 address a dual-stack node announces as its PublicIPv6
    /// (`preferred_v6`), if the interface has one.
    pub addr6: Option<Ipv6Addr>,
    /// The networks of all its IPv6 addresses, link-local included.
    pub networks6: Vec<Ipv6Net>,
}

/// How to pick the underlay interface, as flanneld's `--iface`,
/// `--iface-regex` and `--iface-can-reach` do, in that order of
/// precedence; with none of them, the default route's interface.
#[derive(Debug, Clone, Default)]
pub struct IfaceChoice {
    /// Names or IPv4 addresses, tried in order; the first that exists wins.
    pub ifaces: Vec<String>,
    /// Regular expressions over addresses, then names, tried in order.
    pub regexes: Vec<regex::Regex>,
    /// Use the interface the kernel routes this address through.
    pub can_reach: Option<Ipv4Addr>,
}

impl IfaceChoice {
    /// What was asked, for error messages.
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.ifaces.iter().map(|i| format!("--iface {i}")).collect();
        parts.extend(self.regexes.iter().map(|r| format!("--iface-regex {r}")));
        if let Some(ip) = self.can_reach {
            parts.push(format!("--iface-can-reach {ip}"));
        }
        parts.join(", ")
    }
}

/// A link and its IPv4 addresses (with prefix lengths), for `pick`.
#[derive(Debug, Clone)]
pub struct LinkAddrs {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 addresses, in the kernel's order.
    pub addrs: Vec<Ipv4Net>,
    /// Its IPv6 addresses, in the kernel's order.
    pub addrs6: Vec<Addr6>,
}

/// An IPv6 address of a link, with what `preferred_v6` weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr6 {
    /// The address and its prefix.
    pub net: Ipv6Net,
    /// Configured by hand (or by a tool), not by autoconfiguration.
    pub permanent: bool,
    /// A privacy (temporary) address.
    pub temporary: bool,
    /// Deprecated, still being duplicate-checked, or failed the check:
    /// not to be used as a source.
    pub unusable: bool,
}

/// The IPv6 address a node announces as PublicIPv6 among a link's
/// addresses, in flanneld's order of preference (`GetInterfaceIP6Addrs`):
/// permanent before autoconfigured, stable before temporary, never a
/// deprecated one. Unlike flanneld, never a link-local address either:
/// peers refuse a link-local PublicIPv6 (it names no single host), so
/// announcing one would cut this node off; `None` asks for
/// `--public-ipv6` instead.
pub fn preferred_v6(addrs: &[Addr6]) -> Option<Ipv6Addr> {
    let mut usable: Vec<&Addr6> = addrs
        .iter()
        .filter(|a| {
            let ip = a.net.addr();
            !a.unusable
                && !ip.is_unspecified()
                && !ip.is_loopback()
                && !ip.is_multicast()
                && !ip.is_unicast_link_local()
        })
        .collect();
    // Stable: among equals, the kernel's order.
    usable.sort_by_key(|a| (!a.permanent, a.temporary));
    usable.first().map(|a| a.net.addr())
}

/// Which addresses make an interface usable as the underlay, as
/// flanneld's `LookupExtIface` decides by the cluster's IP stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// IPv4 or dual-stack: an IPv4 address.
    WithIpv4,
    /// An IPv6-only cluster (`"EnableIPv4": false`): an IPv6 address a
    /// node can announce (`preferred_v6`); IPv4 is not needed.
    Ipv6Only,
}

/// The interface and IPv4 address `--iface` and `--iface-regex` choose
/// among `links` (flannel's `LookupExtIface` order): each `--iface` in
/// turn, by address or by name; then each regex in turn, over every
/// link's addresses, then every link's name. An interface counts only
/// with an address of `stack`; with `Stack::Ipv6Only` its IPv4 address
/// is the first, if any, and IPv6 addresses match too. `None` if nothing
/// matches (or nothing was asked).
pub fn pick(
    links: &[LinkAddrs],
    c: &IfaceChoice,
    stack: Stack,
) -> Option<(usize, Option<Ipv4Addr>)> {
    let first_addr = |i: usize| links[i].addrs.first().map(|n| n.addr());
    let usable = |i: usize| match stack {
        Stack::WithIpv4 => first_addr(i).is_some(),
        Stack::Ipv6Only => preferred_v6(&links[i].addrs6).is_some(),
    };
    let v6_only = stack == Stack::Ipv6Only;
    for want in &c.ifaces {
        if let Ok(ip) = want.parse::<Ipv4Addr>() {
            if let Some(i) = links
                .iter()
                .position(|l| l.addrs.iter().any(|a| a.addr() == ip))
                .filter(|&i| usable(i))
            {
                return Some((i, Some(ip)));
            }
        } else if let Ok(ip) = want.parse::<Ipv6Addr>() {
            if let Some(i) = links
                .iter()
                .position(|l| l.addrs6.iter().any(|a| a.net.addr() == ip))
                .filter(|&i| v6_only && usable(i))
            {
                return Some((i, first_addr(i)));
            }
        } else if let Some(i) = links.iter().position(|l| &l.name == want) {
            if usable(i) {
                return Some((i, first_addr(i)));
            }
        }
    }
    for re in &c.regexes {
        for (i, l) in links.iter().enumerate() {
            if let Some(a) = l.addrs.iter().find(|a| re.is_match(&a.addr().to_string())) {
                if usable(i) {
                    return Some((i, Some(a.addr())));
                }
            }
            let v6 = || {
                l.addrs6
                    .iter()
                    .any(|a| re.is_match(&a.net.addr().to_string()))
            };
            if v6_only && usable(i) && v6() {
                return Some((i, first_addr(i)));
            }
        }
        for (i, l) in links.iter().enumerate() {
            if re.is_match(&l.name) && usable(i) {
                return Some((i, first_addr(i)));
            }
        }
    }
    None
}

/// A handle on the kernel's routing netlink, valid inside a tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection and drives it on the current tokio runtime.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Index and MTU of the link called `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<(u32, u32)>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => {
                let mtu = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Mtu(m) => Some(*m),
                        _ => None,
                    })
                    .unwrap_or(1500);
                Ok(Some((m.header.index, mtu)))
            }
            Ok(None) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(req(format!("look up link {name}"))(e)),
        }
    }

    /// Every link with its IPv4 addresses, by index.
    pub async fn links(&self) -> Result<Vec<LinkAddrs>, NetlinkError> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s.try_next().await.map_err(req("list links"))? {
            let mut name = String::new();
            let mut mtu = 1500;
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Mtu(v) => mtu = *v,
                    _ => {}
                }
            }
            out.push(LinkAddrs {
                index: m.header.index,
                name,
                mtu,
                addrs: Vec::new(),
                addrs6: Vec::new(),
            });
        }
        let mut s = self.handle.address().get().execute();
        while let Some(a) = s.try_next().await.map_err(req("list addresses"))? {
            let Some(l) = out.iter_mut().find(|l| l.index == a.header.index) else {
                continue;
            };
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            match ip {
                Some(IpAddr::V4(v)) => l.addrs.extend(Ipv4Net::new(v, a.header.prefix_len).ok()),
                Some(IpAddr::V6(v)) => {
                    let flags = a
                        .attributes
                        .iter()
                        .find_map(|x| match x {
                            AddressAttribute::Flags(f) => Some(*f),
                            _ => None,
                        })
                        .unwrap_or_else(|| {
                            AddressFlags::from_bits_retain(a.header.flags.bits().into())
                        });
                    l.addrs6
                        .extend(Ipv6Net::new(v, a.header.prefix_len).ok().map(|net| Addr6 {
                            net,
                            permanent: flags.contains(AddressFlags::Permanent),
                            // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit.
                            temporary: flags.contains(AddressFlags::Secondary),
                            unusable: flags.intersects(
                                AddressFlags::Deprecated
                                    | AddressFlags::Tentative
                                    | AddressFlags::Dadfailed,
                            ),
                        }));
                }
                None => {}
            }
        }
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    /// Finds the underlay as `choice` says (flanneld's `--iface`,
    /// `--iface-regex`, `--iface-can-reach`), else the default route's
    /// interface, with the address chosen (or the interface's first).
    pub async fn choose_underlay(
        &self,
        choice: &IfaceChoice,
        stack: Stack,
    ) -> Result<Underlay, NetlinkError> {
        let links = self.links().await?;
        let asked = !choice.ifaces.is_empty() || !choice.regexes.is_empty();
        // An interface the kernel routes through: the one toward
        // --iface-can-reach, else (nothing asked) the default route's of
        // the stack's family, as flanneld picks it.
        let routed = match (pick(&links, choice, stack), choice.can_reach) {
            (Some(found), _) => return Ok(underlay_of(&links, found)),
            (None, Some(ip)) => self
                .route_to(IpAddr::V4(ip))
                .await?
                .into_iter()
                .find_map(|(_, oif)| oif),
            (None, None) if !asked => Some(self.default_route_oif(stack).await?),
            (None, None) => None,
        };
        let i = routed
            .and_then(|o| links.iter().position(|l| l.index == o))
            .ok_or_else(|| NetlinkError::NoMatch(choice.describe()))?;
        let addr = links[i].addrs.first().map(|a| a.addr());
        if addr.is_none() && stack == Stack::WithIpv4 {
            return Err(NetlinkError::NoAddress(links[i].name.clone()));
        }
        Ok(underlay_of(&links, (i, addr)))
    }

    /// The output interface of the main table's default route: IPv4's,
    /// or IPv6's for an IPv6-only cluster.
    async fn default_route_oif(&self, stack: Stack) -> Result<u32, NetlinkError> {
        let (msg, family) = match stack {
            Stack::WithIpv4 => (RouteMessageBuilder::<Ipv4Addr>::new().build(), "IPv4"),
            Stack::Ipv6Only => (RouteMessageBuilder::<Ipv6Addr>::new().build(), "IPv6"),
        };
        let mut routes = self.handle.route().get(msg).execute();
        while let Some(r) = routes.try_next().await.map_err(req("list routes"))? {
            if r.header.destination_prefix_length == 0 && r.header.table == RT_TABLE_MAIN {
                if let Some(oif) = RouteEntry::of(&r).and_then(|e| e.oif) {
                    return Ok(oif);
                }
            }
        }
        Err(NetlinkError::NoDefaultRoute(family))
    }

    /// Sets MTU, optionally the MAC, and brings the link up.
    pub async fn configure_link(
        &self,
        index: u32,
        mtu: u32,
        mac: Option<MacAddr>,
    ) -> Result<(), NetlinkError> {
        let mut b = LinkUnspec::new_with_index(index).mtu(mtu);
        if let Some(m) = mac {
            b = b.address(m.octets().to_vec());
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(req(format!("set MTU/MAC of link #{index}")))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("bring link #{index} up")))
    }

    /// Adds `addr/len` to a link (an existing identical address is fine).
    pub async fn add_address(&self, index: u32, addr: IpAddr, len: u8) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, addr, len)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add address {addr}/{len}")))
    }

    /// Deletes a link; absent is fine.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Err(e) if !is_absent(&e) => Err(req(format!("delete link #{index}"))(e)),
            _ => Ok(()),
        }
    }

    /// A main-table route message to `dst`, marked as weft's.
    fn prefix_msg(dst: IpNet, kind: RouteType) -> RouteMessage {
        let mut m = match dst {
            IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .build(),
            IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .build(),
        };
        m.header.protocol = RouteProtocol::Other(RTPROT_WEFT);
        m.header.kind = kind;
        m
    }

    fn route_msg(dst: IpNet, index: u32, via: Option<IpAddr>, onlink: bool) -> RouteMessage {
        let mut m = Self::prefix_msg(dst, RouteType::Unicast);
        m.attributes.push(RouteAttribute::Oif(index));
        match via {
            Some(gw) => m.attributes.push(RouteAttribute::Gateway(gw.into())),
            None => m.header.scope = RouteScope::Link,
        }
        if onlink {
            m.header.flags.insert(RouteFlags::Onlink);
        }
        m
    }

    /// Installs (or replaces) `dst [via gw] dev index [onlink]`, in either
    /// family (`via` is of `dst`'s).
    pub async fn replace_route(
        &self,
        dst: IpNet,
        index: u32,
        via: Option<IpAddr>,
        onlink: bool,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(Self::route_msg(dst, index, via, onlink))
            .replace()
            .execute()
            .await
            .map_err(req(format!("install route {dst}")))
    }

    /// Removes weft's route to `dst` on link `index`, whatever its gateway
    /// and scope; absent is fine. A route of another protocol is never
    /// matched: the kernel compares the protocol when one is given.
    pub async fn delete_route(&self, dst: IpNet, index: u32) -> Result<(), NetlinkError> {
        let mut msg = Self::route_msg(dst, index, None, false);
        // RT_SCOPE_NOWHERE matches any scope, as `ip route del` sends it; a
        // `via … onlink` route is scope universe, a device route scope link.
        msg.header.scope = RouteScope::NoWhere;
        self.delete(msg, dst).await
    }

    async fn delete(&self, msg: RouteMessage, dst: IpNet) -> Result<(), NetlinkError> {
        match self.handle.route().del(msg).execute().await {
            Err(e) if !is_absent(&e) => Err(req(format!("delete route {dst}"))(e)),
            _ => Ok(()),
        }
    }

    /// The kernel's answer to "how do I reach `ip`" (RTM_GETROUTE for one
    /// destination, as `ip route get` asks): (gateway, output interface) of
    /// each route returned. A multipath route counts as one with a gateway.
    pub async fn route_to(
        &self,
        ip: IpAddr,
    ) -> Result<Vec<(Option<IpAddr>, Option<u32>)>, NetlinkError> {
        let msg = match ip {
            IpAddr::V4(v) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v, 32)
                .build(),
            IpAddr::V6(v) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v, 128)
                .build(),
        };
        let mut s = self.handle.route().get(msg).execute();
        let mut out = Vec::new();
        loop {
            match s.try_next().await {
                Ok(Some(r)) => {
                    let e = RouteEntry::of(&r);
                    let multipath = r
                        .attributes
                        .iter()
                        .any(|a| matches!(a, RouteAttribute::MultiPath(_)));
                    let gw = if multipath {
                        Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                    } else {
                        e.and_then(|e| e.gateway)
                    };
                    out.push((gw, e.and_then(|e| e.oif)));
                }
                Ok(None) => break,
                // No route at all: an empty answer, not an error.
                Err(e) if is_unreachable(&e) => break,
                Err(e) => return Err(req(format!("look up the route to {ip}"))(e)),
            }
        }
        Ok(out)
    }

    /// The routes of the main table, both families.
    pub async fn main_routes(&self) -> Result<HashSet<RouteEntry>, NetlinkError> {
        let mut out = HashSet::new();
        let dumps = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for dump in dumps {
            let mut s = self.handle.route().get(dump).execute();
            while let Some(r) = s.try_next().await.map_err(req("list routes"))? {
                if r.header.table == RT_TABLE_MAIN {
                    out.extend(RouteEntry::of(&r));
                }
            }
        }
        Ok(out)
    }

    /// Installs (or replaces) `unreachable dst`: local senders get "no route
    /// to host" at once instead of their packets leaking to the default route.
    pub async fn replace_unreachable(&self, dst: IpNet) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(Self::prefix_msg(dst, RouteType::Unreachable))
            .replace()
            .execute()
            .await
            .map_err(req(format!("install unreachable route {dst}")))
    }

    /// Adds `blackhole dst` unless the kernel has a route to exactly `dst`
    /// already (flanneld's `--ip-blackhole-route`: pod addresses nobody
    /// holds are dropped here instead of following the default route).
    /// True if it added one.
    pub async fn ensure_blackhole(&self, dst: IpNet) -> Result<bool, NetlinkError> {
        let msg = Self::prefix_msg(dst, RouteType::BlackHole);
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(m))
                if m.code.map(|c| -c.get()) == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(e) => Err(req(format!("install blackhole route {dst}"))(e)),
        }
    }

    /// Removes weft's `blackhole dst`, if there is one.
    pub async fn delete_blackhole(&self, dst: IpNet) -> Result<(), NetlinkError> {
        let mut msg = Self::prefix_msg(dst, RouteType::BlackHole);
        msg.header.scope = RouteScope::NoWhere;
        self.delete(msg, dst).await
    }

    /// Removes `unreachable dst`, if there is one.
    pub async fn delete_unreachable(&self, dst: IpNet) -> Result<(), NetlinkError> {
        let mut msg = Self::prefix_msg(dst, RouteType::Unreachable);
        msg.header.scope = RouteScope::NoWhere;
        self.delete(msg, dst).await
    }

    /// Installs (or replaces) a permanent neighbor `ip lladdr mac`.
    pub async fn replace_neighbor(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.octets())
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("install neighbor {ip} lladdr {mac}")))
    }

    /// Removes the neighbor entry for `ip`; absent is fine.
    pub async fn delete_neighbor(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let mut add = self.handle.neighbours().add(index, ip);
        let msg = add.message_mut().clone();
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if !is_absent(&e) => Err(req(format!("delete neighbor {ip}"))(e)),
            _ => Ok(()),
        }
    }
}

/// Watches the kernel's routes of both families (as `ip monitor route`
/// does) and sends `()` on every change outside `ours`, the overlay
/// networks whose routes weft itself installs. Routes change when
/// addresses and links do, so this sees those too.
pub fn watch_routes(
    ours: Vec<IpNet>,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<()>, NetlinkError> {
    use futures::StreamExt;
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage as M;
    let groups = [
        rtnetlink::MulticastGroup::Ipv4Route,
        rtnetlink::MulticastGroup::Ipv6Route,
    ];
    let (conn, _handle, mut events) =
        rtnetlink::new_multicast_connection(&groups).map_err(NetlinkError::Open)?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((m, _)) = events.next().await {
            let mine = match &m.payload {
                NetlinkPayload::InnerMessage(M::NewRoute(r) | M::DelRoute(r)) => {
                    RouteEntry::of(r).is_some_and(|e| ours.iter().any(|n| n.contains(&e.dst)))
                }
                _ => false,
            };
            if !mine && tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// The underlay at `links[i]`, sending from `addr`.
fn underlay_of(links: &[LinkAddrs], (i, addr): (usize, Option<Ipv4Addr>)) -> Underlay {
    let l = &links[i];
    Underlay {
        name: l.name.clone(),
        index: l.index,
        addr,
        mtu: l.mtu,
        networks: l.addrs.iter().map(|n| n.trunc()).collect(),
        addr6: preferred_v6(&l.addrs6),
        networks6: l.addrs6.iter().map(|a| a.net.trunc()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<LinkAddrs> {
        let l = |index, name: &str, addrs: &[&str]| LinkAddrs {
            index,
            name: name.into(),
            mtu: 1500,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            addrs6: Vec::new(),
        };
        vec![
            l(1, "lo", &["127.0.0.1/8"]),
            l(2, "eth0", &["192.168.100.1/24", "192.168.100.9/24"]),
            l(3, "dummy0", &["10.99.0.1/24"]),
            l(4, "empty0", &[]),
        ]
    }

    fn choice(ifaces: &[&str], regexes: &[&str]) -> IfaceChoice {
        IfaceChoice {
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            regexes: regexes
                .iter()
                .map(|r| regex::Regex::new(r).unwrap())
                .collect(),
            can_reach: None,
        }
    }

    #[test]
    fn ifaces_in_order_by_name_or_address_then_regexes() {
        let ls = links();
        let name = |c: IfaceChoice| {
            pick(&ls, &c, Stack::WithIpv4)
                .map(|(i, a)| (ls[i].name.clone(), a.unwrap().to_string()))
        };
        let want = |n: &str, a: &str| Some((n.to_string(), a.to_string()));
        assert_eq!(name(choice(&["eth0"], &[])), want("eth0", "192.168.100.1"));
        assert_eq!(
            name(choice(&["192.168.100.9"], &[])),
            want("eth0", "192.168.100.9")
        );
        assert_eq!(
            name(choice(&["nope", "10.99.0.1", "eth0"], &[])),
            want("dummy0", "10.99.0.1")
        );
        // An interface without an IPv4 address does not count.
        assert_eq!(
            name(choice(&["empty0", "eth0"], &[])),
            want("eth0", "192.168.100.1")
        );
        // Regexes after every --iface; addresses before names.
        assert_eq!(
            name(choice(&["nope"], &["^dum"])),
            want("dummy0", "10.99.0.1")
        );
        assert_eq!(
            name(choice(&[], &["^10\\.99\\."])),
            want("dummy0", "10.99.0.1")
        );
        assert_eq!(
            name(choice(&[], &["nomatch", "eth"])),
            want("eth0", "192.168.100.1")
        );
        assert_eq!(name(choice(&["nope"], &["nomatch"])), None);
        assert_eq!(name(choice(&[], &[])), None);
    }

    /// For an IPv6-only cluster an interface counts by its IPv6
    /// addresses (as flanneld's `LookupExtIface` with an IPv6 stack): one
    /// without IPv4 is fine, one without a global IPv6 address is not.
    #[test]
    fn an_ipv6_only_cluster_picks_by_ipv6_addresses() {
        let a6 = |net: &str| Addr6 {
            net: net.parse().unwrap(),
            permanent: true,
            temporary: false,
            unusable: false,
        };
        let mut ls = links();
        ls[1].addrs6 = vec![a6("fe80::1/64"), a6("2001:db8::1/64")];
        ls[3].addrs6 = vec![a6("2001:db8:3::1/64")];
        ls[2].addrs6 = vec![a6("fe80::2/64")];
        let name = |c: IfaceChoice| {
            pick(&ls, &c, Stack::Ipv6Only)
                .map(|(i, a)| (ls[i].name.clone(), a.map(|a| a.to_string())))
        };
        let want = |n: &str, a: Option<&str>| Some((n.to_string(), a.map(String::from)));
        assert_eq!(name(choice(&["empty0"], &[])), want("empty0", None));
        assert_eq!(
            name(choice(&["eth0"], &[])),
            want("eth0", Some("192.168.100.1"))
        );
        assert_eq!(name(choice(&["2001:db8:3::1"], &[])), want("empty0", None));
        // Link-local only: not usable, the next --iface is.
        assert_eq!(
            name(choice(&["dummy0", "empty0"], &[])),
            want("empty0", None)
        );
        assert_eq!(name(choice(&[], &["^2001:db8:3:"])), want("empty0", None));
        assert_eq!(name(choice(&[], &["^dum"])), None);
        // An IPv6 literal does not pick for a cluster with IPv4.
        assert_eq!(
            pick(&ls, &choice(&["2001:db8::1"], &[]), Stack::WithIpv4),
            None
        );
    }

    #[test]
    fn public_ipv6_is_a_usable_global_address_permanent_first() {
        let a = |net: &str, permanent, temporary, unusable| Addr6 {
            net: net.parse().unwrap(),
            permanent,
            temporary,
            unusable,
        };
        let pick = |addrs: &[Addr6]| preferred_v6(addrs).map(|ip| ip.to_string());
        // Link-local never, even alone (peers refuse it).
        assert_eq!(pick(&[a("fe80::1/64", true, false, false)]), None);
        assert_eq!(
            pick(&[
                a("fe80::1/64", true, false, false),
                a("2001:db8::9/64", false, true, false),
                a("2001:db8::5/64", false, false, false),
                a("2001:db8::1/64", true, false, true),
                a("fd00::7/64", true, false, false),
            ]),
            Some("fd00::7".into()),
            "permanent beats autoconfigured, a deprecated address is skipped"
        );
        assert_eq!(
            pick(&[
                a("2001:db8::9/64", false, true, false),
                a("2001:db8::5/64", false, false, false),
            ]),
            Some("2001:db8::5".into()),
            "stable beats temporary"
        );
        assert_eq!(
            pick(&[
                a("2001:db8::2/64", true, false, false),
                a("2001:db8::3/64", true, false, false),
            ]),
            Some("2001:db8::2".into()),
            "among equals, the kernel's order"
        );
        assert_eq!(pick(&[a("::1/128", true, false, false)]), None);
    }
}
