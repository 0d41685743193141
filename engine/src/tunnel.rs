//! The tunnel core: what happens to one packet in each direction, decided
//! without file descriptors or syscalls (the shape of boringtun's
//! `Tunn::encapsulate`/`decapsulate` and their `TunnResult`).
//!
//! - `outbound`: a packet read from the device becomes a datagram for one
//!   peer (which send socket, which endpoint), or a drop with its reason,
//!   perhaps with an ICMP error to write back into the device.
//! - `inbound`: a datagram received from a peer becomes the bytes to write
//!   to the device (and the peer to count them against), or a drop with
//!   its reason, perhaps with an ICMP error to send back to the sender.
//!
//! Encapsulation, both decapsulations, source authorization, the size
//! limits and every ICMP decision (and its rate limit) live here, once, for
//! every backend and device kind, and for both families of inner packets:
//! a `Tunnel<Ipv4Addr>` carries IPv4 pods over the IPv4 underlay, a
//! `Tunnel<Ipv6Addr>` IPv6 pods over the IPv6 underlay, as flannel's
//! `flannel.<VNI>` and `flannel-v6.<VNI>` do (`Inner` says what differs).
//! The worker (`worker.rs`) does the I/O around it; `encap` holds the wire
//! formats it uses.

use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::time::Instant;
use weft_encap::ethernet::{self, Frame};
use weft_encap::icmp::{self, ErrorKind};
use weft_encap::ipv4::{self, Packet};
use weft_encap::{flow, icmpv6, ipv6, udp, vxlan, DropReason};
use weft_routes::{Family, ForwardingTable, Peer, PeerId};

/// Room for one ICMP error the core writes, of either family (an ICMPv6
/// error may fill the IPv6 minimum MTU).
pub type IcmpScratch = [u8; icmpv6::MAX_ERROR_LEN];

/// What the tunnel core needs of the family of the inner packets it
/// carries, beyond the forwarding table's `Family`: the family's header
/// view, the destinations no peer may send to, and its ICMP errors. Its
/// socket addresses are those of the underlay its tunnel runs on: IPv4
/// pods over IPv4, IPv6 pods over IPv6, as flannel carries them.
pub trait Inner: Family<SocketAddr: crate::udp_io::SockAddr> {
    /// The family's minimum header length.
    const MIN_HEADER_LEN: usize;
    /// Why a packet of this family is dropped as malformed.
    const MALFORMED: DropReason;
    /// Why a packet of the other family is dropped by this tunnel.
    const OTHER_FAMILY: DropReason;
    /// The destination of `ip`, a packet of this family, its header checked.
    fn checked_dst(ip: &[u8]) -> Result<Self, DropReason>;
    /// Source and destination of `ip`, whose version and length were
    /// checked.
    fn src_dst(ip: &[u8]) -> (Self, Self);
    /// True when no peer may send to `dst` in `subnet`: a multicast
    /// group, and in IPv4 the subnet's broadcast address.
    fn is_group(subnet: &Self::Net, dst: Self) -> bool;
    /// Writes the ICMP error of `kind` about `offender` (a packet of this
    /// family) from `src` into `out`: its length, or `None` when the
    /// offender is malformed or must not be answered (an error about an
    /// error, a multicast destination).
    fn emit_error(
        kind: ErrorKind,
        offender: &[u8],
        src: Self,
        out: &mut IcmpScratch,
    ) -> Option<usize>;
}

impl Inner for Ipv4Addr {
    const MIN_HEADER_LEN: usize = ipv4::MIN_HEADER_LEN;
    const MALFORMED: DropReason = DropReason::Ipv4Malformed;
    const OTHER_FAMILY: DropReason = DropReason::Ipv6Unsupported;

    #[inline]
    fn checked_dst(ip: &[u8]) -> Result<Ipv4Addr, DropReason> {
        Packet::new_checked(ip)
            .map(|p| p.dst())
            .map_err(|_| DropReason::Ipv4Malformed)
    }

    #[inline]
    fn src_dst(ip: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
        let p = Packet::new_unchecked(ip);
        (p.src(), p.dst())
    }

    #[inline]
    fn is_group(subnet: &ipnet::Ipv4Net, dst: Ipv4Addr) -> bool {
        dst == subnet.broadcast() || dst.is_multicast()
    }

    fn emit_error(
        kind: ErrorKind,
        offender: &[u8],
        src: Ipv4Addr,
        out: &mut IcmpScratch,
    ) -> Option<usize> {
        icmp::emit_error(kind, &Packet::new_checked(offender).ok()?, src, out)
    }
}

impl Inner for Ipv6Addr {
    const MIN_HEADER_LEN: usize = ipv6::HEADER_LEN;
    const MALFORMED: DropReason = DropReason::Ipv6Malformed;
    const OTHER_FAMILY: DropReason = DropReason::Ipv4Unsupported;

    #[inline]
    fn checked_dst(ip: &[u8]) -> Result<Ipv6Addr, DropReason> {
        ipv6::Packet::new_checked(ip)
            .map(|p| p.dst())
            .map_err(|_| DropReason::Ipv6Malformed)
    }

    #[inline]
    fn src_dst(ip: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
        let p = ipv6::Packet::new_unchecked(ip);
        (p.src(), p.dst())
    }

    #[inline]
    fn is_group(_: &ipnet::Ipv6Net, dst: Ipv6Addr) -> bool {
        dst.is_multicast()
    }

    /// ICMPv6's kinds for IPv4's: no route is destination unreachable,
    /// code 0 (RFC 4443 §3.1); TTL exceeded is hop limit exceeded.
    fn emit_error(
        kind: ErrorKind,
        offender: &[u8],
        src: Ipv6Addr,
        out: &mut IcmpScratch,
    ) -> Option<usize> {
        let kind = match kind {
            ErrorKind::NetUnreachable => {
                icmpv6::ErrorKind::DstUnreachable(icmpv6::unreachable::NO_ROUTE)
            }
            ErrorKind::TtlExceeded => icmpv6::ErrorKind::HopLimitExceeded,
        };
        icmpv6::emit_error(kind, &ipv6::Packet::new_checked(offender).ok()?, src, out)
    }
}

/// What the tunnel carries, and how.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// flannel's udp backend on a TUN device.
    Udp,
    /// VXLAN on an L3 TUN device: weft writes the inner Ethernet header.
    VxlanTun(vxlan::Endpoint),
    /// VXLAN on an Ethernet TAP device: frames carry their own header.
    VxlanTap(vxlan::Endpoint),
}

/// The ICMP side of a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// No ICMP error is due.
    None,
    /// One was due, but the rate limit held it back.
    Suppressed,
    /// The first this many bytes of the scratch hold an ICMP error: into
    /// the device for `outbound`, back to the sender for `inbound`.
    Icmp(usize),
}

/// What to do with a packet read from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound<F: Family = Ipv4Addr> {
    /// Send `buf[range]` (the UDP payload, encapsulated in place) to `to`
    /// from send socket number `socket`; it is `peer`'s traffic.
    Send {
        /// The datagram within the buffer.
        range: Range<usize>,
        /// The peer's endpoint.
        to: F::SocketAddr,
        /// Which send socket: one flow keeps one outer source port.
        socket: u8,
        /// The peer, for its counters.
        peer: PeerId,
    },
    /// Drop it.
    Drop(DropReason, Reply),
    /// Not handled because the caller broke a precondition (too little
    /// headroom in front of the packet): a bug in weft, not a fault of the
    /// packet, counted and logged apart from drops.
    Bug(&'static str),
}

/// What `outbound` says when the caller left no room for the headers.
const NO_HEADROOM: &str = "no headroom in front of a packet from the device";

/// A received packet that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// What goes to the device, within the datagram: the inner IP packet,
    /// or on a TAP the inner frame.
    pub deliver: Range<usize>,
    /// The inner IP packet within the datagram.
    pub ip: Range<usize>,
    /// The sender, when it holds a lease (`None`: an accepted NAT peer).
    pub peer: Option<PeerId>,
    /// A kernel peer's TCP super-packet, larger than the device MTU, to be
    /// segmented by the device or by us (`Tunnel::super_datagram`).
    pub whole: bool,
}

/// What to do with a datagram received from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Write it to the device, once its L4 checksum is checked (`l4`).
    Deliver(Delivery),
    /// Drop it.
    Drop(DropReason, Reply),
}

/// One end of the overlay, as the per-packet decisions need it, in the
/// family `F` of the packets it carries.
#[derive(Debug, Clone, Copy)]
pub struct TunnelConfig<F: Inner = Ipv4Addr> {
    /// The backend and device kind.
    pub mode: Mode,
    /// Our tunnel address (`<subnet>.0`): the source of ICMP errors sent to
    /// peers.
    pub local: F,
    /// The source of ICMP errors written into our own device: the Network's
    /// first address, which no node holds. An error from a local address
    /// (as flannel's proxy sends it) is dropped by the kernel as a martian.
    pub gateway: F,
    /// Our subnet: inner destinations of received packets must lie in it.
    pub subnet: F::Net,
    /// Accept encapsulated traffic from any outer source whose inner source
    /// lies in some lease's subnet (peers behind NAT).
    pub allow_nat_peers: bool,
    /// Device MTU: larger inner packets are dropped as oversize.
    pub mtu: usize,
    /// VXLAN send sockets that flows are spread over (0 or 1: one).
    pub send_sockets: usize,
}

/// The tunnel core: a `TunnelConfig` and the state its decisions keep (the
/// ICMP budget).
#[derive(Debug)]
pub struct Tunnel<F: Inner = Ipv4Addr> {
    /// What it decides by.
    pub config: TunnelConfig<F>,
    icmp_budget: IcmpBudget,
}

impl<F: Inner> Tunnel<F> {
    /// A tunnel with a full ICMP budget.
    pub fn new(config: TunnelConfig<F>) -> Tunnel<F> {
        Tunnel {
            config,
            icmp_budget: IcmpBudget::new(),
        }
    }

    /// The largest datagram (UDP payload) the underlay carries to us, plus
    /// a frame header: what receive buffers and size checks are built on.
    pub fn max_datagram(&self) -> usize {
        self.config.mtu + vxlan::IPV4_OVERHEAD + ethernet::HEADER_LEN
    }

    /// True when `datagram` is one datagram longer than the underlay MTU
    /// that carries exactly one whole inner IPv4 packet: a kernel peer's
    /// TCP super-packet, sent unsegmented across a veth or virtio link
    /// (see `vxlan::carried_len`), not a UDP GRO run.
    #[inline]
    pub fn super_datagram(&self, datagram: &[u8]) -> bool {
        if datagram.len() <= self.max_datagram() {
            return false;
        }
        match self.config.mode {
            Mode::Udp => false,
            Mode::VxlanTun(_) | Mode::VxlanTap(_) => {
                vxlan::carried_len(datagram) == Some(datagram.len())
            }
        }
    }

    /// Encapsulates the packet at `buf[pkt]`, read from the device with
    /// `HEADROOM` bytes free in front of it, for the peer that routes it.
    /// An ICMP error for the device goes into `scratch`.
    #[inline]
    pub fn outbound(
        &self,
        table: &ForwardingTable<F>,
        buf: &mut [u8],
        pkt: Range<usize>,
        scratch: &mut IcmpScratch,
    ) -> Outbound<F> {
        let decided = match self.config.mode {
            Mode::Udp => self.outbound_udp(table, buf, pkt.clone()),
            Mode::VxlanTun(ep) => self.outbound_vxlan_tun(ep, table, buf, pkt.clone()),
            Mode::VxlanTap(ep) => self.outbound_vxlan_tap(ep, table, buf, pkt.clone()),
        };
        match decided {
            Ok(send) => send,
            Err((reason, icmp)) => {
                let reply = match icmp {
                    Some(kind) => self.icmp_to_device(kind, &buf[pkt], scratch),
                    None => Reply::None,
                };
                Outbound::Drop(reason, reply)
            }
        }
    }

    /// The peer that routes the packet `ip` from the device, of our
    /// family. A packet of the other family has no route here (the other
    /// family's tunnel carries it); an unrouted destination earns an ICMP
    /// net unreachable (ICMPv6 no route).
    fn route_ip<'t>(
        &self,
        table: &'t ForwardingTable<F>,
        ip: &[u8],
    ) -> Result<(&'t Peer<F>, PeerId), Refusal> {
        if weft_encap::ip_version(ip) != Some(F::VERSION) {
            return Err((DropReason::NoRoute, None));
        }
        let dst = F::checked_dst(ip).map_err(|r| (r, None))?;
        table
            .route(dst)
            .ok_or((DropReason::NoRoute, Some(ErrorKind::NetUnreachable)))
    }

    fn outbound_udp(
        &self,
        table: &ForwardingTable<F>,
        buf: &mut [u8],
        pkt: Range<usize>,
    ) -> Result<Outbound<F>, Refusal> {
        let packet = &mut buf[pkt.clone()];
        let (peer, id) = self.route_ip(table, packet)?;
        match udp::prepare_send(packet) {
            Ok(len) => Ok(send(pkt.start..pkt.start + len, peer, 0, id)),
            Err(DropReason::TtlExpired) => {
                Err((DropReason::TtlExpired, Some(ErrorKind::TtlExceeded)))
            }
            Err(r) => Err((r, None)),
        }
    }

    fn outbound_vxlan_tun(
        &self,
        ep: vxlan::Endpoint,
        table: &ForwardingTable<F>,
        buf: &mut [u8],
        pkt: Range<usize>,
    ) -> Result<Outbound<F>, Refusal> {
        let ip = &buf[pkt.clone()];
        let (peer, id) = self.route_ip(table, ip)?;
        let Some(mac) = peer.vtep_mac else {
            return Err((DropReason::NoRoute, None));
        };
        let socket = self.pick_socket(ip);
        match ep.encapsulate_ip(buf, pkt, mac) {
            Ok(range) => Ok(send(range, peer, socket, id)),
            Err(e) => encap_error(e),
        }
    }

    fn outbound_vxlan_tap(
        &self,
        ep: vxlan::Endpoint,
        table: &ForwardingTable<F>,
        buf: &mut [u8],
        pkt: Range<usize>,
    ) -> Result<Outbound<F>, Refusal> {
        let dst = match Frame::new_checked(&buf[pkt.clone()]) {
            Ok(frame) => frame.dst(),
            Err(_) => return Err((DropReason::InnerTruncated, None)),
        };
        // A TAP never lacks a route in a way ICMP could report: frames to
        // unknown MACs (broadcast, neighbor discovery) are dropped quietly.
        let Some((peer, id)) = table.route_mac(dst) else {
            return Err((DropReason::UnknownMac, None));
        };
        let socket = self.pick_socket(&buf[pkt.start + ethernet::HEADER_LEN..pkt.end]);
        match ep.encapsulate_frame(buf, pkt) {
            Ok(range) => Ok(send(range, peer, socket, id)),
            Err(e) => encap_error(e),
        }
    }

    /// The send socket for an inner packet: by flow hash, so one flow keeps
    /// one outer source port and flows spread across ports.
    #[inline]
    fn pick_socket(&self, inner_ip: &[u8]) -> u8 {
        match self.config.send_sockets {
            0 | 1 => 0,
            n => (flow::hash(inner_ip) as usize % n) as u8,
        }
    }

    /// An ICMP error about `offender` (a packet of our family from our
    /// device) to write back into the device, from the Network's gateway
    /// address. Not on a TAP: it would need a frame.
    fn icmp_to_device(&self, kind: ErrorKind, offender: &[u8], scratch: &mut IcmpScratch) -> Reply {
        if F::checked_dst(offender).is_err() || matches!(self.config.mode, Mode::VxlanTap(_)) {
            return Reply::None;
        }
        if !self.icmp_budget.take() {
            return Reply::Suppressed;
        }
        match F::emit_error(kind, offender, self.config.gateway, scratch) {
            Some(n) => Reply::Icmp(n),
            None => Reply::None,
        }
    }

    /// Decapsulates the datagram (UDP payload) `datagram` received from
    /// `src` in place and checks everything but its L4 checksum, which the
    /// caller checks (`l4::verify_or_complete`) right before the write, so
    /// the bytes are in cache for the kernel's copy. An ICMP error for the
    /// sender goes into `scratch`.
    #[inline]
    pub fn inbound(
        &self,
        table: &ForwardingTable<F>,
        datagram: &mut [u8],
        src: F::SocketAddr,
        scratch: &mut IcmpScratch,
    ) -> Inbound {
        let whole = self.super_datagram(datagram);
        if datagram.len() > self.max_datagram() && !whole {
            return Inbound::Drop(DropReason::Oversize, Reply::None);
        }
        let decapsulated = match self.config.mode {
            Mode::Udp => {
                if datagram.len() > self.config.mtu {
                    return Inbound::Drop(DropReason::Oversize, Reply::None);
                }
                udp::decapsulate(datagram).map(|len| (0..len, 0..len))
            }
            Mode::VxlanTun(ep) => ep
                .decapsulate(datagram)
                .map(|inner| (inner.ip.clone(), inner.ip)),
            Mode::VxlanTap(ep) => ep
                .decapsulate(datagram)
                .map(|inner| (inner.frame, inner.ip)),
        };
        let (deliver, ip) = match decapsulated {
            Ok(d) => d,
            // Only the udp backend forwards, so only its datagram is an IP
            // packet whose TTL can run out here.
            Err(DropReason::TtlExpired) => return self.expired(table, datagram, src, scratch),
            Err(r) => return Inbound::Drop(r, Reply::None),
        };
        if ip.len() > self.config.mtu && !whole {
            return Inbound::Drop(DropReason::Oversize, Reply::None);
        }
        match self.authorize(table, F::ip_of(&src), &datagram[ip.clone()]) {
            Ok(peer) => Inbound::Deliver(Delivery {
                deliver,
                ip,
                peer,
                whole,
            }),
            Err(r) => Inbound::Drop(r, Reply::None),
        }
    }

    /// A received packet whose TTL ran out: answered with ICMP time
    /// exceeded, from our tunnel address, only to a lease holder we accept,
    /// so weft never reflects errors at forged sources.
    fn expired(
        &self,
        table: &ForwardingTable<F>,
        packet: &[u8],
        src: F::SocketAddr,
        scratch: &mut IcmpScratch,
    ) -> Inbound {
        match self.authorize(table, F::ip_of(&src), packet) {
            Ok(Some(_)) => {
                let reply = match F::checked_dst(packet) {
                    Err(_) => Reply::None,
                    Ok(_) if !self.icmp_budget.take() => Reply::Suppressed,
                    Ok(_) => {
                        F::emit_error(ErrorKind::TtlExceeded, packet, self.config.local, scratch)
                            .map_or(Reply::None, Reply::Icmp)
                    }
                };
                Inbound::Drop(DropReason::TtlExpired, reply)
            }
            Ok(None) => Inbound::Drop(DropReason::TtlExpired, Reply::None),
            Err(r) => Inbound::Drop(r, Reply::None),
        }
    }

    /// Source authentication, before anything reaches the device: the outer
    /// source must hold a lease (unless `allow_nat_peers`), the inner source
    /// must lie in that node's subnet (with `allow_nat_peers`: in some
    /// node's), and the inner destination in ours, and not be our subnet's
    /// broadcast address or multicast. Inner packets of the other family
    /// are dropped: that family's tunnel authenticates them against its
    /// own leases; so is anything shorter than our family's header or of
    /// another version, though the decapsulators refuse those first.
    /// Returns the sender, when it holds a lease.
    #[inline]
    pub fn authorize(
        &self,
        table: &ForwardingTable<F>,
        from: F,
        ip: &[u8],
    ) -> Result<Option<PeerId>, DropReason> {
        let entry = table.sender_entry(from);
        if entry.is_none() && !self.config.allow_nat_peers {
            return Err(DropReason::UnknownSender);
        }
        let (sender, id) = match entry {
            Some((net, id)) => (Some(net), Some(id)),
            None => (None, None),
        };
        match weft_encap::ip_version(ip) {
            Some(v) if v == F::VERSION && ip.len() >= F::MIN_HEADER_LEN => {}
            Some(v @ (4 | 6)) if v != F::VERSION => return Err(F::OTHER_FAMILY),
            // The decapsulators check this first; the core fails closed on
            // its own all the same.
            _ => return Err(F::MALFORMED),
        }
        let (src, dst) = F::src_dst(ip);
        let src_ok = match sender {
            Some(net) => F::contains(&net, src),
            None => table.is_sender_subnet(src),
        };
        if !src_ok {
            return Err(DropReason::SpoofedSource);
        }
        // Our `.0` stays: it is the device's own address, the source the
        // kernel picks for this host's traffic to remote pods, so replies
        // come back to it (as they do with flannel).
        if !F::contains(&self.config.subnet, dst) || F::is_group(&self.config.subnet, dst) {
            return Err(DropReason::NotForUs);
        }
        Ok(id)
    }
}

/// Why `outbound` will not send a packet, and the ICMP error it earns.
type Refusal = (DropReason, Option<ErrorKind>);

/// The datagram at `range` for `peer`.
fn send<F: Family>(range: Range<usize>, peer: &Peer<F>, socket: u8, id: PeerId) -> Outbound<F> {
    Outbound::Send {
        range,
        to: peer.endpoint,
        socket,
        peer: id,
    }
}

/// A wire drop stays a drop; missing headroom is the caller's bug.
fn encap_error<F: Family>(e: vxlan::EncapError) -> Result<Outbound<F>, Refusal> {
    match e {
        vxlan::EncapError::Drop(r) => Err((r, None)),
        vxlan::EncapError::NoHeadroom => Ok(Outbound::Bug(NO_HEADROOM)),
    }
}

/// The budget for ICMP errors weft generates, a token bucket like the
/// kernel's `icmp_ratelimit`/`icmp_msgs_per_sec`: `RATE` a second with
/// bursts of `BURST`, per tunnel (one per worker). A flood of expired or
/// unroutable packets must not turn weft into an ICMP amplifier. Cells: the
/// tunnel is one worker's, and its decisions take `&self`.
#[derive(Debug)]
struct IcmpBudget {
    tokens: Cell<u32>,
    last: Cell<Instant>,
}

impl IcmpBudget {
    const RATE: u32 = 1000;
    const BURST: u32 = 50;

    fn new() -> Self {
        IcmpBudget {
            tokens: Cell::new(Self::BURST),
            last: Cell::new(Instant::now()),
        }
    }

    /// Takes a token if there is one.
    fn take(&self) -> bool {
        if self.tokens.get() == 0 {
            let now = Instant::now();
            let earned = now.duration_since(self.last.get()).as_micros() * u128::from(Self::RATE)
                / 1_000_000;
            if earned == 0 {
                return false;
            }
            self.tokens.set(earned.min(u128::from(Self::BURST)) as u32);
            self.last.set(now);
        }
        self.tokens.set(self.tokens.get() - 1);
        true
    }
}

#[doc(hidden)]
pub mod harness;
#[cfg(test)]
mod tests;
