//! Fuzz properties of the tunnel core, over a forwarding table and a
//! configuration built from the input itself. The fuzz targets
//! `tunnel_inbound` and `tunnel_outbound` call these; `cargo test` replays
//! their committed inputs, so neither can rot.
//!
//! Input: one byte of configuration (mode, `allow_nat_peers`), one byte
//! for the number of peers (up to 8), 14 bytes per peer (its /24's second
//! and third octets, its PublicIP, its VtepMAC, two spare), the outer
//! source (4 bytes, inbound only), then the datagram or packet. We are
//! node B of the captured vectors (10.244.2.0/24, VtepMAC `MAC_B`).

use super::*;
use ipnet::Ipv4Net;
use std::net::SocketAddrV4;
use std::sync::Arc;
use weft_encap::vectors::MAC_B;
use weft_encap::{ethernet, MacAddr, Vni, HEADROOM};
use weft_routes::validate::is_vtep_mac;
use weft_routes::{Peer, PeerCounters, Sender};

/// This node: 10.244.2.0/24, node B of the captured vectors, MTU 1450.
const OUR_MAC: MacAddr = MacAddr(MAC_B);
const MTU: usize = 1450;
const PEER_LEN: usize = 14;

fn our_subnet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, 2, 0), 24).expect("a /24")
}

/// A tunnel and a table, and what is left of the input.
struct Setup<'a, F: Inner = Ipv4Addr> {
    tunnel: Tunnel<F>,
    table: ForwardingTable<F>,
    peers: Vec<Peer<F>>,
    rest: &'a [u8],
}

/// The table of `peers`, each a sender too, as the control plane builds it.
fn table_of<F: Inner>(peers: &[Peer<F>]) -> ForwardingTable<F> {
    let senders = peers
        .iter()
        .map(|p| Sender {
            public_ip: F::ip_of(&p.endpoint),
            subnet: p.subnet,
            counters: Arc::new(PeerCounters::default()),
        })
        .collect();
    ForwardingTable::with_senders(peers.to_vec(), senders)
}

fn setup(data: &[u8]) -> Option<Setup<'_>> {
    let (&conf, data) = data.split_first()?;
    let (&n, mut data) = data.split_first()?;
    let ep = vxlan::Endpoint {
        vni: Vni::DEFAULT,
        mac: OUR_MAC,
    };
    let (mode, port) = match conf % 3 {
        0 => (Mode::Udp, 8285),
        1 => (Mode::VxlanTun(ep), 8472),
        _ => (Mode::VxlanTap(ep), 8472),
    };
    let mut peers = Vec::new();
    for _ in 0..n % 9 {
        let (p, more) = data.split_at_checked(PEER_LEN)?;
        data = more;
        let subnet = Ipv4Net::new(Ipv4Addr::new(10, p[0], p[1], 0), 24).ok()?;
        let mac = MacAddr([p[6], p[7], p[8], p[9], p[10], p[11]]);
        let ip = Ipv4Addr::new(p[2], p[3], p[4], p[5]);
        // Admission never lets two peers share a subnet, PublicIP or
        // VtepMAC, nor one hold our subnet or our VtepMAC, nor a VtepMAC
        // that is not a unicast address (`LeasePolicy`); nor does this table.
        let taken =
            |q: &Peer| q.subnet == subnet || *q.endpoint.ip() == ip || q.vtep_mac == Some(mac);
        if subnet == our_subnet() || mac == OUR_MAC || !is_vtep_mac(mac) || peers.iter().any(taken)
        {
            continue;
        }
        peers.push(Peer {
            subnet,
            endpoint: SocketAddrV4::new(ip, port),
            vtep_mac: (!matches!(mode, Mode::Udp)).then_some(mac),
        });
    }
    let tunnel = Tunnel::new(TunnelConfig {
        mode,
        local: Ipv4Addr::new(10, 244, 2, 0),
        gateway: Ipv4Addr::new(10, 244, 0, 0),
        subnet: our_subnet(),
        allow_nat_peers: conf & 0x80 != 0,
        mtu: MTU,
        send_sockets: 4,
    });
    Some(Setup {
        tunnel,
        table: table_of(&peers),
        peers,
        rest: data,
    })
}

/// `Tunnel::inbound` never panics, and what it delivers passed every
/// check: an IPv4 packet inside the datagram, from a sender's subnet (the
/// sender's own when it holds a lease), to our subnet. True when it
/// delivered.
pub fn inbound(data: &[u8]) -> bool {
    let Some(s) = setup(data) else { return false };
    let Some((src, datagram)) = s.rest.split_at_checked(4) else {
        return false;
    };
    let src = SocketAddrV4::new(Ipv4Addr::new(src[0], src[1], src[2], src[3]), 8472);
    delivers_only_what_passed(&s, src, datagram, our_subnet())
}

/// `inbound`'s property, for either family: `s.tunnel.inbound` of
/// `datagram` from `src` never panics, and what it delivers is a packet
/// of the family from a sender's subnet (the sender's own when it holds a
/// lease) to `ours`, not to a group; an ICMP error goes to a sender only.
fn delivers_only_what_passed<F: Inner>(
    s: &Setup<'_, F>,
    src: F::SocketAddr,
    datagram: &[u8],
    ours: F::Net,
) -> bool {
    let mut d = datagram.to_vec();
    let mut scratch = [0; icmpv6::MAX_ERROR_LEN];
    let sender = F::ip_of(&src);
    match s.tunnel.inbound(&s.table, &mut d, src, &mut scratch) {
        Inbound::Deliver(del) => {
            assert!(del.deliver.end <= d.len() && del.ip.end <= d.len());
            assert!(del.deliver.start <= del.ip.start && del.ip.end <= del.deliver.end);
            let ip = &d[del.ip.clone()];
            assert_eq!(
                ip.first().map(|b| b >> 4),
                Some(F::VERSION),
                "delivered another family"
            );
            F::checked_dst(ip).expect("delivered a malformed packet");
            let (from, to) = F::src_dst(ip);
            assert!(F::contains(&ours, to) && !F::is_group(&ours, to), "to {to}");
            match del.peer {
                Some(_) => {
                    let (net, _) = s.table.sender_entry(sender).expect("an unknown sender");
                    assert!(F::contains(&net, from), "{from} outside the sender's {net}");
                }
                None => {
                    assert!(s.tunnel.config.allow_nat_peers, "a sender without a lease");
                    assert!(s.peers.iter().any(|p| F::contains(&p.subnet, from)));
                }
            }
            true
        }
        Inbound::Drop(_, Reply::Icmp(len)) => {
            assert!(len <= scratch.len());
            assert!(s.table.sender_entry(sender).is_some(), "ICMP to a stranger");
            false
        }
        Inbound::Drop(..) => false,
    }
}

/// The IPv6 side, for `inbound6`: we hold fd00:10:244:2::/64 behind
/// `flannel-v6.1` (MTU 1430).
fn our_subnet6() -> ipnet::Ipv6Net {
    "fd00:10:244:2::/64".parse().expect("a /64")
}

/// The IPv6 input: one byte of configuration (TUN or TAP,
/// `allow_nat_peers`), one for the number of peers (up to 8), 12 bytes per
/// peer (its /64 as the fourth group of fd00:10:244::/48, the last 32 bits
/// of its PublicIPv6 in 2001:db8:100::/96, its VtepMAC), the outer
/// source's last 32 bits, then the datagram.
const PEER6_LEN: usize = 12;

/// 2001:db8:100::/96 with `b` as its last 32 bits.
fn underlay6(b: &[u8]) -> Ipv6Addr {
    let low = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ipv6Addr::from(0x2001_0db8_0100_u128 << 80 | u128::from(low))
}

fn setup6(data: &[u8]) -> Option<Setup<'_, Ipv6Addr>> {
    use std::net::SocketAddrV6;
    let (&conf, data) = data.split_first()?;
    let (&n, mut data) = data.split_first()?;
    let ep = vxlan::Endpoint {
        vni: Vni::DEFAULT,
        mac: OUR_MAC,
    };
    let mode = match conf % 2 {
        0 => Mode::VxlanTun(ep),
        _ => Mode::VxlanTap(ep),
    };
    let mut peers: Vec<Peer<Ipv6Addr>> = Vec::new();
    for _ in 0..n % 9 {
        let (p, more) = data.split_at_checked(PEER6_LEN)?;
        data = more;
        let group = u128::from(u16::from_be_bytes([p[0], p[1]]));
        let net = Ipv6Addr::from(0xfd00_0010_0244_u128 << 80 | group << 64);
        let subnet = ipnet::Ipv6Net::new(net, 64).ok()?;
        let ip = underlay6(&p[2..6]);
        let mac = MacAddr([p[6], p[7], p[8], p[9], p[10], p[11]]);
        // What admission guarantees, as for IPv4.
        let taken = |q: &Peer<Ipv6Addr>| {
            q.subnet == subnet || *q.endpoint.ip() == ip || q.vtep_mac == Some(mac)
        };
        if subnet == our_subnet6() || mac == OUR_MAC || !is_vtep_mac(mac) || peers.iter().any(taken)
        {
            continue;
        }
        peers.push(Peer {
            subnet,
            endpoint: SocketAddrV6::new(ip, 8472, 0, 0),
            vtep_mac: Some(mac),
        });
    }
    let tunnel = Tunnel::new(TunnelConfig {
        mode,
        local: our_subnet6().network(),
        gateway: "fd00:10:244::".parse().expect("an address"),
        subnet: our_subnet6(),
        allow_nat_peers: conf & 0x80 != 0,
        mtu: 1430,
        send_sockets: 4,
    });
    Some(Setup {
        tunnel,
        table: table_of(&peers),
        peers,
        rest: data,
    })
}

/// `Tunnel<Ipv6Addr>::inbound` never panics, and what it delivers passed
/// every check: an IPv6 packet inside the datagram, from a sender's
/// subnet (the sender's own when it holds a lease), to our subnet, not to
/// a multicast group. True when it delivered.
pub fn inbound6(data: &[u8]) -> bool {
    use std::net::SocketAddrV6;
    let Some(s) = setup6(data) else { return false };
    let Some((src, datagram)) = s.rest.split_at_checked(4) else {
        return false;
    };
    let src = SocketAddrV6::new(underlay6(src), 8472, 0, 0);
    delivers_only_what_passed(&s, src, datagram, our_subnet6())
}

/// `Tunnel::outbound` never panics, sends only to a peer of the table
/// that routes the inner destination, and what it sends decapsulates (with
/// the peer's own view of it) to the packet it was given. True when it
/// sent.
pub fn outbound(data: &[u8]) -> bool {
    let Some(s) = setup(data) else { return false };
    let pkt = s.rest;
    let mut buf = vec![0; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(pkt);
    let mut scratch = [0; icmpv6::MAX_ERROR_LEN];
    let range = HEADROOM..buf.len();
    match s.tunnel.outbound(&s.table, &mut buf, range, &mut scratch) {
        Outbound::Send { range, to, .. } => {
            assert!(range.end <= buf.len());
            let peer = s
                .peers
                .iter()
                .find(|p| p.endpoint == to)
                .expect("sent to no peer of the table");
            let datagram = &buf[range];
            // What is sent is what was given, carried as the backend
            // carries it, to the peer the table routes it to.
            let routed = match s.tunnel.config.mode {
                Mode::Udp => {
                    // flannel's udp proxy forwards: the TTL goes down by
                    // one, the header checksum with it, nothing else moves;
                    // what lies past the IPv4 total length is not sent.
                    let total = usize::from(Packet::new_unchecked(pkt).total_len());
                    assert_eq!(datagram.len(), total);
                    for (i, (a, b)) in datagram.iter().zip(pkt).enumerate() {
                        if !matches!(i, 8 | 10 | 11) {
                            assert_eq!(a, b, "byte {i} changed");
                        }
                    }
                    assert_eq!(datagram[8], pkt[8].wrapping_sub(1), "TTL");
                    let (given, sent) =
                        (Packet::new_unchecked(pkt), Packet::new_unchecked(datagram));
                    if given.verify_checksum() {
                        assert!(sent.verify_checksum(), "weft broke a header checksum");
                    }
                    s.table.lookup(given.dst())
                }
                Mode::VxlanTun(_) | Mode::VxlanTap(_) => {
                    let tap = matches!(s.tunnel.config.mode, Mode::VxlanTap(_));
                    let at = vxlan::HEADER_LEN + if tap { 0 } else { ethernet::HEADER_LEN };
                    assert_eq!(&datagram[at..], pkt, "not carried unchanged");
                    let theirs = vxlan::Endpoint {
                        vni: Vni::DEFAULT,
                        mac: peer.vtep_mac.expect("a vxlan peer has a VtepMAC"),
                    };
                    // The peer may still drop what the local kernel wrote
                    // wrong into the inner packet (weft, like the kernel's
                    // VXLAN, forwards it untouched); never what weft wrote.
                    match theirs.decapsulate(datagram) {
                        Ok(_) => {}
                        Err(DropReason::Ipv4Checksum | DropReason::Ipv4Malformed) => {}
                        // A TAP frame's source MAC is the local kernel's too.
                        Err(
                            DropReason::Ipv6Malformed
                            | DropReason::InnerTruncated
                            | DropReason::EtherType
                            | DropReason::LoopedFrame,
                        ) if tap => {}
                        Err(r) => panic!("the peer drops our own datagram: {r:?}"),
                    }
                    match tap {
                        true => {
                            let frame = ethernet::Frame::new_checked(pkt).expect("was routed");
                            s.table.lookup_mac(frame.dst())
                        }
                        false => {
                            let ip = Packet::new_checked(pkt).expect("was routed");
                            s.table.lookup(ip.dst())
                        }
                    }
                }
            };
            assert_eq!(
                routed.map(|p| p.endpoint),
                Some(to),
                "sent where the table does not route"
            );
            true
        }
        Outbound::Drop(_, Reply::Icmp(len)) => {
            assert!(len <= scratch.len());
            false
        }
        Outbound::Drop(..) => false,
        Outbound::Bug(b) => panic!("internal error {b:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// Replays the committed inputs of `target`.
    fn replay(target: &str, f: fn(&[u8])) {
        weft_encap::harness::replay_committed(env!("CARGO_MANIFEST_DIR"), target, f);
    }

    #[test]
    fn inbound_corpus() {
        static DELIVERED: AtomicUsize = AtomicUsize::new(0);
        replay("tunnel_inbound", |d| {
            DELIVERED.fetch_add(usize::from(super::inbound(d)), Relaxed);
        });
        // The seeds reach the delivery checks, not only the drops.
        let n = DELIVERED.load(Relaxed);
        assert!(n >= 3, "{n} seeds delivered");
    }

    #[test]
    fn inbound6_corpus() {
        static DELIVERED: AtomicUsize = AtomicUsize::new(0);
        replay("tunnel_inbound6", |d| {
            DELIVERED.fetch_add(usize::from(super::inbound6(d)), Relaxed);
        });
        let n = DELIVERED.load(Relaxed);
        assert!(n >= 3, "{n} seeds delivered");
    }

    #[test]
    fn outbound_corpus() {
        static SENT: AtomicUsize = AtomicUsize::new(0);
        replay("tunnel_outbound", |d| {
            SENT.fetch_add(usize::from(super::outbound(d)), Relaxed);
        });
        let n = SENT.load(Relaxed);
        assert!(n >= 3, "{n} seeds sent");
    }
}
