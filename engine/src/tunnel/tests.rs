//! The tunnel core without root: every backend and device kind, both
//! directions, every drop reason the core decides, from the captured kernel
//! vectors (`encap::vectors`) and a table built here.
//!
//! We are node B of the vectors (10.244.2.0/24, VtepMAC `MAC_B`); node A
//! (10.244.1.0/24, VtepMAC `MAC_A`) holds a lease with PublicIP 192.168.1.1.

use super::*;
use std::collections::HashSet;
use std::net::{SocketAddrV4, SocketAddrV6};
use weft_encap::vectors::KERNEL_V6_ECHO_REQUEST;
use weft_encap::vectors::{KERNEL_REPLY, KERNEL_REQUEST, MAC_A, MAC_B};
use weft_encap::{MacAddr, Vni, HEADROOM};
use weft_routes::Peer;

const A_PUBLIC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 99);
const MTU: usize = 1450;
/// Where the inner IP packet starts in a VXLAN datagram (UDP payload).
const IP_AT: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN;

fn endpoint() -> vxlan::Endpoint {
    vxlan::Endpoint {
        vni: Vni::new(1).unwrap(),
        mac: MacAddr(MAC_B),
    }
}

fn tunnel(mode: Mode) -> Tunnel {
    Tunnel::new(TunnelConfig {
        mode,
        local: Ipv4Addr::new(10, 244, 2, 0),
        gateway: Ipv4Addr::new(10, 244, 0, 0),
        subnet: "10.244.2.0/24".parse().unwrap(),
        allow_nat_peers: false,
        mtu: MTU,
        send_sockets: 4,
    })
}

fn modes() -> [Mode; 3] {
    [
        Mode::Udp,
        Mode::VxlanTun(endpoint()),
        Mode::VxlanTap(endpoint()),
    ]
}

/// Node A, reached on `port`, with or without a VtepMAC.
fn table_with(port: u16, mac: Option<[u8; 6]>) -> ForwardingTable {
    ForwardingTable::new(vec![Peer {
        subnet: "10.244.1.0/24".parse().unwrap(),
        endpoint: SocketAddrV4::new(A_PUBLIC, port),
        vtep_mac: mac.map(MacAddr),
    }])
}

fn table(mode: Mode) -> ForwardingTable {
    match mode {
        Mode::Udp => table_with(8285, None),
        _ => table_with(8472, Some(MAC_A)),
    }
}

/// The inner IPv4 packet of `KERNEL_REQUEST` (A → B's `.0`), edited by
/// `edit` and given a valid header checksum again.
fn request_ip(edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut ip = KERNEL_REQUEST[IP_AT..].to_vec();
    edit(&mut ip);
    Packet::new_unchecked(&mut ip[..]).fill_checksum();
    ip
}

/// `KERNEL_REQUEST` as `mode` carries it, with its inner packet edited.
fn datagram(mode: Mode, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let ip = request_ip(edit);
    match mode {
        Mode::Udp => ip,
        _ => [&KERNEL_REQUEST[..IP_AT], &ip[..]].concat(),
    }
}

fn inbound_from(t: &Tunnel, from: Ipv4Addr, mut d: Vec<u8>) -> (Inbound, Vec<u8>, IcmpScratch) {
    let mut scratch = [0; icmpv6::MAX_ERROR_LEN];
    let tbl = table(t.config.mode);
    let r = t.inbound(&tbl, &mut d, SocketAddrV4::new(from, 8472), &mut scratch);
    (r, d, scratch)
}

fn inbound(t: &Tunnel, d: Vec<u8>) -> Inbound {
    inbound_from(t, A_PUBLIC, d).0
}

fn dropped(r: &Inbound) -> Option<DropReason> {
    match r {
        Inbound::Drop(reason, _) => Some(*reason),
        Inbound::Deliver(_) => None,
    }
}

/// A packet as read from the device: `pkt` behind `HEADROOM` bytes.
fn device_buf(pkt: &[u8]) -> (Vec<u8>, Range<usize>) {
    let mut buf = vec![0; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(pkt);
    (buf, HEADROOM..HEADROOM + pkt.len())
}

fn outbound_with(
    t: &Tunnel,
    tbl: &ForwardingTable,
    pkt: &[u8],
) -> (Outbound, Vec<u8>, IcmpScratch) {
    let (mut buf, range) = device_buf(pkt);
    let mut scratch = [0; icmpv6::MAX_ERROR_LEN];
    let r = t.outbound(tbl, &mut buf, range, &mut scratch);
    (r, buf, scratch)
}

fn outbound(t: &Tunnel, pkt: &[u8]) -> Outbound {
    outbound_with(t, &table(t.config.mode), pkt).0
}

/// The reply B sends A (`KERNEL_REPLY`) as B's device hands it over: an IP
/// packet on a TUN, a frame on a TAP.
fn reply_from_device(mode: Mode) -> &'static [u8] {
    match mode {
        Mode::VxlanTap(_) => &KERNEL_REPLY[vxlan::HEADER_LEN..],
        _ => &KERNEL_REPLY[IP_AT..],
    }
}

#[test]
fn vxlan_encapsulation_matches_the_kernel_byte_for_byte() {
    for mode in [Mode::VxlanTun(endpoint()), Mode::VxlanTap(endpoint())] {
        let t = tunnel(mode);
        let (r, buf, _) = outbound_with(&t, &table(mode), reply_from_device(mode));
        let Outbound::Send {
            range,
            to,
            socket,
            peer: _,
        } = r
        else {
            panic!("{mode:?}: {r:?}");
        };
        assert_eq!(&buf[range], &KERNEL_REPLY[..], "{mode:?}");
        assert_eq!(to, SocketAddrV4::new(A_PUBLIC, 8472));
        assert!(usize::from(socket) < 4);
    }
}

#[test]
fn udp_encapsulation_is_the_packet_with_its_ttl_decremented() {
    let t = tunnel(Mode::Udp);
    let pkt = &KERNEL_REPLY[IP_AT..];
    let (r, buf, _) = outbound_with(&t, &table(Mode::Udp), pkt);
    let Outbound::Send {
        range, to, socket, ..
    } = r
    else {
        panic!("{r:?}");
    };
    assert_eq!((to, socket), (SocketAddrV4::new(A_PUBLIC, 8285), 0));
    let sent = Packet::new_checked(&buf[range]).unwrap();
    assert_eq!(sent.ttl(), Packet::new_unchecked(pkt).ttl() - 1);
    assert!(sent.verify_checksum());
    assert_eq!(sent.payload(), Packet::new_unchecked(pkt).payload());
}

/// Missing headroom is a bug of the caller's, told apart from any drop.
#[test]
fn no_headroom_is_a_bug_not_a_drop() {
    for mode in [Mode::VxlanTun(endpoint()), Mode::VxlanTap(endpoint())] {
        let t = tunnel(mode);
        let pkt = reply_from_device(mode);
        let mut buf = pkt.to_vec();
        let mut scratch = [0; icmpv6::MAX_ERROR_LEN];
        let r = t.outbound(&table(mode), &mut buf, 0..pkt.len(), &mut scratch);
        assert!(matches!(r, Outbound::Bug(_)), "{mode:?}: {r:?}");
    }
}

#[test]
fn one_flow_keeps_one_send_socket() {
    let t = tunnel(Mode::VxlanTun(endpoint()));
    let pick = |pkt: &[u8]| match outbound(&t, pkt) {
        Outbound::Send { socket, .. } => socket,
        r => panic!("{r:?}"),
    };
    let pkt = &KERNEL_REPLY[IP_AT..];
    assert_eq!(pick(pkt), pick(pkt));
}

#[test]
fn kernel_requests_are_delivered_on_every_backend() {
    for mode in modes() {
        let t = tunnel(mode);
        let (r, d, _) = inbound_from(&t, A_PUBLIC, datagram(mode, |_| {}));
        let Inbound::Deliver(del) = r else {
            panic!("{mode:?}: {r:?}");
        };
        let ip_at = if matches!(mode, Mode::Udp) { 0 } else { IP_AT };
        let deliver_at = match mode {
            Mode::VxlanTap(_) => vxlan::HEADER_LEN,
            _ => ip_at,
        };
        assert_eq!(del.ip, ip_at..d.len(), "{mode:?}");
        assert_eq!(del.deliver, deliver_at..d.len(), "{mode:?}");
        assert!(del.peer.is_some() && !del.whole);
        let ip = Packet::new_checked(&d[del.ip]).unwrap();
        assert_eq!(
            ip.dst(),
            Ipv4Addr::new(10, 244, 2, 0),
            "our .0 is delivered"
        );
    }
}

#[test]
fn nat_peers_are_accepted_only_when_allowed_and_only_from_lease_subnets() {
    for mode in modes() {
        let mut t = tunnel(mode);
        let r = inbound_from(&t, STRANGER, datagram(mode, |_| {})).0;
        assert_eq!(dropped(&r), Some(DropReason::UnknownSender), "{mode:?}");
        t.config.allow_nat_peers = true;
        match inbound_from(&t, STRANGER, datagram(mode, |_| {})).0 {
            Inbound::Deliver(d) => assert_eq!(d.peer, None, "{mode:?}"),
            r => panic!("{mode:?}: {r:?}"),
        }
        let spoofed = datagram(mode, |ip| ip[12..16].copy_from_slice(&[10, 244, 9, 9]));
        let r = inbound_from(&t, STRANGER, spoofed).0;
        assert_eq!(dropped(&r), Some(DropReason::SpoofedSource), "{mode:?}");
    }
}

#[test]
fn expired_packets_are_answered_only_to_lease_holders() {
    let t = tunnel(Mode::Udp);
    let expired = || datagram(Mode::Udp, |ip| ip[8] = 1);
    let (r, d, scratch) = inbound_from(&t, A_PUBLIC, expired());
    let Inbound::Drop(DropReason::TtlExpired, Reply::Icmp(n)) = r else {
        panic!("{r:?}");
    };
    let icmp = Packet::new_checked(&scratch[..n]).unwrap();
    assert_eq!(icmp.src(), t.config.local);
    assert_eq!(icmp.dst(), Packet::new_unchecked(&d[..]).src());
    assert_eq!(icmp.payload()[0], 11, "time exceeded");
    // A stranger gets nothing, also when NAT peers are allowed.
    let r = inbound_from(&t, STRANGER, expired()).0;
    assert_eq!(r, Inbound::Drop(DropReason::UnknownSender, Reply::None));
    let mut nat = tunnel(Mode::Udp);
    nat.config.allow_nat_peers = true;
    let r = inbound_from(&nat, STRANGER, expired()).0;
    assert_eq!(r, Inbound::Drop(DropReason::TtlExpired, Reply::None));
}

#[test]
fn unroutable_packets_get_icmp_from_the_gateway_except_on_a_tap() {
    for mode in [Mode::Udp, Mode::VxlanTun(endpoint())] {
        let t = tunnel(mode);
        let mut pkt = KERNEL_REPLY[IP_AT..].to_vec();
        pkt[16..20].copy_from_slice(&[10, 244, 9, 1]);
        Packet::new_unchecked(&mut pkt[..]).fill_checksum();
        let (r, _, scratch) = outbound_with(&t, &table(mode), &pkt);
        let Outbound::Drop(DropReason::NoRoute, Reply::Icmp(n)) = r else {
            panic!("{mode:?}: {r:?}");
        };
        let icmp = Packet::new_checked(&scratch[..n]).unwrap();
        assert_eq!(icmp.src(), t.config.gateway, "{mode:?}");
        assert_eq!(icmp.dst(), Ipv4Addr::new(10, 244, 2, 0));
        assert_eq!(icmp.payload()[0], 3, "destination unreachable");
    }
    let t = tunnel(Mode::VxlanTap(endpoint()));
    let mut frame = KERNEL_REPLY[vxlan::HEADER_LEN..].to_vec();
    frame[..6].copy_from_slice(&[0xff; 6]);
    assert_eq!(
        outbound(&t, &frame),
        Outbound::Drop(DropReason::UnknownMac, Reply::None)
    );
}

#[test]
fn icmp_errors_are_rate_limited() {
    let t = tunnel(Mode::VxlanTun(endpoint()));
    let mut pkt = KERNEL_REPLY[IP_AT..].to_vec();
    pkt[16..20].copy_from_slice(&[10, 244, 9, 1]);
    Packet::new_unchecked(&mut pkt[..]).fill_checksum();
    let tbl = table(t.config.mode);
    let (mut sent, mut held) = (0, 0);
    for _ in 0..1000 {
        match outbound_with(&t, &tbl, &pkt).0 {
            Outbound::Drop(DropReason::NoRoute, Reply::Icmp(_)) => sent += 1,
            Outbound::Drop(DropReason::NoRoute, Reply::Suppressed) => held += 1,
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(sent + held, 1000);
    assert!(sent >= IcmpBudget::BURST as usize, "{sent}");
    assert!(held > 0, "a burst of 1000 must hit the limit");
}

#[test]
fn super_datagrams_are_whole_and_others_oversize() {
    let t = tunnel(Mode::VxlanTun(endpoint()));
    // One inner IPv4 packet larger than the MTU, as a kernel peer sends a
    // TCP super-packet across a veth.
    let big = datagram(t.config.mode, |_| {});
    let mut big = [&big[..IP_AT], &vec![0u8; 3000][..]].concat();
    big[IP_AT..IP_AT + 20].copy_from_slice(&KERNEL_REQUEST[IP_AT..IP_AT + 20]);
    let total = (big.len() - IP_AT) as u16;
    big[IP_AT + 2..IP_AT + 4].copy_from_slice(&total.to_be_bytes());
    Packet::new_unchecked(&mut big[IP_AT..]).fill_checksum();
    assert!(t.super_datagram(&big));
    match inbound(&t, big.clone()) {
        Inbound::Deliver(d) => assert!(d.whole && d.ip.len() > MTU),
        r => panic!("{r:?}"),
    }
    // The same bytes with a trailer are not one packet: oversize.
    big.push(0);
    assert!(!t.super_datagram(&big));
    assert_eq!(dropped(&inbound(&t, big)), Some(DropReason::Oversize));
    // The udp backend has no super-datagrams.
    let u = tunnel(Mode::Udp);
    let long = datagram(Mode::Udp, |_| {});
    let long = [&long[..], &vec![0u8; MTU][..]].concat();
    assert_eq!(dropped(&inbound(&u, long)), Some(DropReason::Oversize));
}

/// Every reason the core decides, each from a minimal edit of a good
/// packet; the list must cover them all (`DropReason::ALL` minus what only
/// I/O decides), so a new reason needs a case here.
#[test]
fn every_drop_reason_of_the_core() {
    let tun = Mode::VxlanTun(endpoint());
    let tap = Mode::VxlanTap(endpoint());
    let vx = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut d = KERNEL_REQUEST.to_vec();
        edit(&mut d);
        d
    };
    let inbound_cases: Vec<(Mode, Vec<u8>, Ipv4Addr, DropReason)> = vec![
        (
            tun,
            KERNEL_REQUEST[..4].to_vec(),
            A_PUBLIC,
            DropReason::ShortHeader,
        ),
        (tun, vx(&|d| d[0] = 0), A_PUBLIC, DropReason::FlagsInvalid),
        (tun, vx(&|d| d[7] = 1), A_PUBLIC, DropReason::ReservedBits),
        (tun, vx(&|d| d[6] = 2), A_PUBLIC, DropReason::VniMismatch),
        (
            tun,
            KERNEL_REQUEST[..12].to_vec(),
            A_PUBLIC,
            DropReason::InnerTruncated,
        ),
        (tap, vx(&|d| d[8] = 0x02), A_PUBLIC, DropReason::OtherHost),
        (
            tap,
            vx(&|d| d[14..20].copy_from_slice(&MAC_B)),
            A_PUBLIC,
            DropReason::LoopedFrame,
        ),
        (
            tun,
            vx(&|d| d[20..22].copy_from_slice(&[0x08, 0x06])),
            A_PUBLIC,
            DropReason::EtherType,
        ),
        (
            tun,
            vx(&|d| d[IP_AT] = 0x44),
            A_PUBLIC,
            DropReason::Ipv4Malformed,
        ),
        (
            tun,
            vx(&|d| d[IP_AT + 10] ^= 0xff),
            A_PUBLIC,
            DropReason::Ipv4Checksum,
        ),
        (
            tun,
            vx(&|d| {
                d[20..22].copy_from_slice(&[0x86, 0xdd]);
                d.truncate(IP_AT + 20);
            }),
            A_PUBLIC,
            DropReason::Ipv6Malformed,
        ),
        (
            tun,
            vx(&|d| {
                d[20..22].copy_from_slice(&[0x86, 0xdd]);
                d.truncate(IP_AT);
                let mut v6 = [0u8; 40];
                v6[0] = 0x60;
                v6[6] = 59; // no next header
                v6[7] = 64;
                d.extend_from_slice(&v6);
            }),
            A_PUBLIC,
            DropReason::Ipv6Unsupported,
        ),
        (
            tun,
            vx(&|d| d.resize(2000, 0)),
            A_PUBLIC,
            DropReason::Oversize,
        ),
        (
            Mode::Udp,
            datagram(Mode::Udp, |ip| ip[8] = 1),
            A_PUBLIC,
            DropReason::TtlExpired,
        ),
        (
            tap,
            datagram(tap, |_| {}),
            STRANGER,
            DropReason::UnknownSender,
        ),
        (
            Mode::Udp,
            datagram(Mode::Udp, |ip| ip[12..16].copy_from_slice(&[10, 244, 3, 5])),
            A_PUBLIC,
            DropReason::SpoofedSource,
        ),
        (
            tun,
            datagram(tun, |ip| ip[16..20].copy_from_slice(&[10, 244, 3, 1])),
            A_PUBLIC,
            DropReason::NotForUs,
        ),
        (
            tun,
            datagram(tun, |ip| ip[16..20].copy_from_slice(&[10, 244, 2, 255])),
            A_PUBLIC,
            DropReason::NotForUs,
        ),
        (
            Mode::Udp,
            datagram(Mode::Udp, |ip| ip[16..20].copy_from_slice(&[224, 0, 0, 1])),
            A_PUBLIC,
            DropReason::NotForUs,
        ),
    ];
    let mut seen = HashSet::new();
    for (mode, d, from, want) in inbound_cases {
        let got = dropped(&inbound_from(&tunnel(mode), from, d).0);
        assert_eq!(got, Some(want), "{mode:?}");
        seen.insert(want);
    }

    let reply = &KERNEL_REPLY[IP_AT..];
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut p = reply.to_vec();
        edit(&mut p);
        p
    };
    let outbound_cases: Vec<(Mode, Vec<u8>, ForwardingTable, DropReason)> = vec![
        (
            Mode::Udp,
            with(&|p| p[0] = 0x60),
            table(Mode::Udp),
            DropReason::NoRoute,
        ),
        (
            tun,
            with(&|p| p.truncate(10)),
            table(tun),
            DropReason::Ipv4Malformed,
        ),
        (
            tun,
            reply.to_vec(),
            table_with(8472, None),
            DropReason::NoRoute,
        ),
        (
            Mode::Udp,
            with(&|p| {
                p[8] = 1;
                Packet::new_unchecked(&mut p[..]).fill_checksum();
            }),
            table(Mode::Udp),
            DropReason::TtlExpired,
        ),
        (
            tap,
            KERNEL_REPLY[8..16].to_vec(),
            table(tap),
            DropReason::InnerTruncated,
        ),
        (tap, with(&|_| {}), table(tap), DropReason::UnknownMac),
    ];
    for (mode, pkt, tbl, want) in outbound_cases {
        match outbound_with(&tunnel(mode), &tbl, &pkt).0 {
            Outbound::Drop(got, _) => assert_eq!(got, want, "{mode:?}"),
            r => panic!("{mode:?}: {r:?}"),
        }
        seen.insert(want);
    }
    // The IPv6 tunnel's own: an IPv4 packet through it.
    let (r, ..) = inbound6_from(A6_PUBLIC, vx6(&KERNEL_REQUEST[IP_AT..]));
    assert_eq!(dropped(&r), Some(DropReason::Ipv4Unsupported));
    seen.insert(DropReason::Ipv4Unsupported);
    // Decided by I/O, not by the core: the socket, the device, and the L4
    // checksum the worker checks right before the write (`l4`'s tests).
    let io_only = [
        DropReason::SendError,
        DropReason::DeviceError,
        DropReason::L4Checksum,
    ];
    let missing: Vec<_> = DropReason::ALL
        .iter()
        .filter(|r| !seen.contains(r) && !io_only.contains(r))
        .collect();
    assert!(missing.is_empty(), "no case for {missing:?}");
}

/// `authorize` fails closed on its own, whatever the decapsulators let
/// through: too short for an IPv4 header, or a version that is neither 4
/// nor 6, is a drop, never the sender's id.
#[test]
fn authorize_refuses_what_is_not_an_ipv4_packet() {
    for mode in modes() {
        let t = tunnel(mode);
        let table = table(mode);
        let good = request_ip(|_| {});
        assert!(t.authorize(&table, A_PUBLIC, &good).is_ok(), "{mode:?}");
        let short = &good[..ipv4::MIN_HEADER_LEN - 1];
        let mut v5 = good.clone();
        v5[0] = 0x55;
        let mut v0 = good.clone();
        v0[0] = 0x05;
        for (what, pkt) in [
            ("short", short),
            ("v5", &v5[..]),
            ("v0", &v0[..]),
            ("empty", &[][..]),
        ] {
            assert_eq!(
                t.authorize(&table, A_PUBLIC, pkt),
                Err(DropReason::Ipv4Malformed),
                "{mode:?} {what}"
            );
        }
        let mut v6 = good.clone();
        v6[0] = 0x60;
        assert_eq!(
            t.authorize(&table, A_PUBLIC, &v6),
            Err(DropReason::Ipv6Unsupported),
            "{mode:?}"
        );
    }
}

// The IPv6 tunnel (`Tunnel<Ipv6Addr>`, flannel-v6.<VNI>'s): the same core
// over IPv6 pods and an IPv6 underlay. We are fd00:10:244:2::/64 with
// VtepMAC `MAC_B`; node A holds fd00:10:244:1::/64 at PublicIPv6
// 2001:db8::1 with VtepMAC `MAC_A`.

const A6_PUBLIC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const STRANGER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);

fn tunnel6(mode: Mode) -> Tunnel<Ipv6Addr> {
    Tunnel::new(TunnelConfig {
        mode,
        local: "fd00:10:244:2::".parse().unwrap(),
        gateway: "fd00:10:244::".parse().unwrap(),
        subnet: "fd00:10:244:2::/64".parse().unwrap(),
        allow_nat_peers: false,
        mtu: MTU,
        send_sockets: 4,
    })
}

fn table6() -> ForwardingTable<Ipv6Addr> {
    ForwardingTable::new(vec![Peer {
        subnet: "fd00:10:244:1::/64".parse().unwrap(),
        endpoint: SocketAddrV6::new(A6_PUBLIC, 8472, 0, 0),
        vtep_mac: Some(MacAddr(MAC_A)),
    }])
}

/// The kernel's ICMPv6 echo request, from `src` to `dst`.
fn echo6(src: &str, dst: &str) -> Vec<u8> {
    let mut ip = KERNEL_V6_ECHO_REQUEST.to_vec();
    ip[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
    ip[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
    ip
}

/// `ip` in a VXLAN datagram to us (`KERNEL_REQUEST`'s VXLAN and Ethernet
/// headers), with the EtherType of its version.
fn vx6(ip: &[u8]) -> Vec<u8> {
    let mut d = [&KERNEL_REQUEST[..IP_AT], ip].concat();
    if weft_encap::ip_version(ip) == Some(6) {
        d[IP_AT - 2..IP_AT].copy_from_slice(&[0x86, 0xdd]);
    }
    d
}

fn inbound6_from(from: Ipv6Addr, mut d: Vec<u8>) -> (Inbound, Vec<u8>) {
    let mut scratch = [0; icmpv6::MAX_ERROR_LEN];
    let t = tunnel6(Mode::VxlanTun(endpoint()));
    let r = t.inbound(
        &table6(),
        &mut d,
        SocketAddrV6::new(from, 8472, 0, 0),
        &mut scratch,
    );
    (r, d)
}

#[test]
fn ipv6_inbound_delivers_a_peer_s_pod_packet_and_nothing_else() {
    let good = echo6("fd00:10:244:1::5", "fd00:10:244:2::1");
    let (r, d) = inbound6_from(A6_PUBLIC, vx6(&good));
    match r {
        Inbound::Deliver(del) => {
            assert_eq!(&d[del.ip.clone()], &good[..]);
            assert_eq!(del.deliver, del.ip, "a TUN gets the bare packet");
            assert!(del.peer.is_some());
        }
        r => panic!("{r:?}"),
    }
    let cases = [
        (STRANGER6, good.clone(), DropReason::UnknownSender),
        (
            A6_PUBLIC,
            echo6("fd00:10:244:9::5", "fd00:10:244:2::1"),
            DropReason::SpoofedSource,
        ),
        (
            A6_PUBLIC,
            echo6("fd00:10:244:1::5", "fd00:10:244:3::1"),
            DropReason::NotForUs,
        ),
        (
            A6_PUBLIC,
            echo6("fd00:10:244:1::5", "ff02::1"),
            DropReason::NotForUs,
        ),
        (A6_PUBLIC, good[..39].to_vec(), DropReason::Ipv6Malformed),
        (
            A6_PUBLIC,
            KERNEL_REQUEST[IP_AT..].to_vec(),
            DropReason::Ipv4Unsupported,
        ),
    ];
    for (from, ip, want) in cases {
        let (r, _) = inbound6_from(from, vx6(&ip));
        assert_eq!(dropped(&r), Some(want), "{from}");
    }
}

#[test]
fn ipv6_outbound_encapsulates_for_the_peer_s_public_ipv6() {
    let t = tunnel6(Mode::VxlanTun(endpoint()));
    let pkt = echo6("fd00:10:244:2::1", "fd00:10:244:1::5");
    let (mut buf, range) = device_buf(&pkt);
    let mut scratch = [0; icmpv6::MAX_ERROR_LEN];
    match t.outbound(&table6(), &mut buf, range, &mut scratch) {
        Outbound::Send { range, to, .. } => {
            assert_eq!(to, SocketAddrV6::new(A6_PUBLIC, 8472, 0, 0));
            let d = &buf[range];
            // VXLAN, then an Ethernet header to A's VtepMAC from ours,
            // EtherType IPv6, then the packet unchanged.
            assert_eq!(&d[..8], &KERNEL_REQUEST[..8], "flags and VNI 1");
            assert_eq!(&d[8..14], &MAC_A);
            assert_eq!(&d[14..20], &MAC_B);
            assert_eq!(&d[20..22], &[0x86, 0xdd]);
            assert_eq!(&d[IP_AT..], &pkt[..]);
        }
        r => panic!("{r:?}"),
    }
}

/// An unrouted IPv6 destination earns ICMPv6 destination unreachable, no
/// route (type 1, code 0), from the network's first address back to the
/// sender; an IPv4 packet has no route in the IPv6 tunnel and earns
/// nothing.
#[test]
fn ipv6_outbound_without_a_route_answers_with_icmpv6() {
    let t = tunnel6(Mode::VxlanTun(endpoint()));
    let pkt = echo6("fd00:10:244:2::1", "fd00:10:244:9::5");
    let (mut buf, range) = device_buf(&pkt);
    let mut scratch = [0; icmpv6::MAX_ERROR_LEN];
    match t.outbound(&table6(), &mut buf, range, &mut scratch) {
        Outbound::Drop(DropReason::NoRoute, Reply::Icmp(n)) => {
            let e = ipv6::Packet::new_checked(&scratch[..n]).unwrap();
            assert_eq!(e.src(), "fd00:10:244::".parse::<Ipv6Addr>().unwrap());
            assert_eq!(e.dst(), "fd00:10:244:2::1".parse::<Ipv6Addr>().unwrap());
            assert_eq!(e.next_header(), ipv6::next_header::ICMPV6);
            assert_eq!(
                &e.payload()[..2],
                &[1, 0],
                "destination unreachable, no route"
            );
            assert_eq!(&e.payload()[8..], &pkt[..], "the offender quoted whole");
        }
        r => panic!("{r:?}"),
    }
    let v4 = &KERNEL_REPLY[IP_AT..];
    let (mut buf, range) = device_buf(v4);
    assert_eq!(
        t.outbound(&table6(), &mut buf, range, &mut scratch),
        Outbound::Drop(DropReason::NoRoute, Reply::None)
    );
}
