//! With offloads on, the kernel hands weft TCP super-packets whose checksums
//! are only partial. Every inner packet weft puts on the wire must carry a
//! complete, valid checksum: a peer that trusts them (the kernel's VXLAN
//! does not re-check) would otherwise deliver corrupt data, the bug behind
//! flannel's "63-second delay". This captures what weft sends and checks
//! every inner IPv4 and TCP checksum.

mod common;
use common::*;
use weft_encap::checksum;
use weft_testbed::{Cluster, UdpCapture};

/// Checks the IPv4 header and, for TCP, the segment checksum of `ip`.
/// Returns Some(is TCP) if valid, None if a checksum is wrong.
fn valid(ip: &[u8]) -> Option<bool> {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if checksum::checksum(&ip[..ihl]) != 0 {
        return None;
    }
    if ip[9] != 6 {
        return Some(false);
    }
    let seg = &ip[ihl..];
    let pseudo = pseudo_header(ip, seg.len() as u16);
    let acc = checksum::sum(seg, pseudo);
    (checksum::fold(acc) == 0xffff).then_some(true)
}

/// Walks the inner packets of captured frames: each UDP payload holds one
/// datagram, or several back to back when sent with UDP GSO. `inner_at` is
/// where the IPv4 packet starts in a datagram (VXLAN: after its 8-byte
/// header and the 14-byte inner Ethernet header; udp: at once).
fn check(frames: &[Vec<u8>], inner_at: usize) -> (usize, usize) {
    let (mut tcp, mut bad) = (0, 0);
    for f in frames {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let mut rest = &f[14 + ihl + 8..];
        while rest.len() >= inner_at + 20 {
            let ip = &rest[inner_at..];
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if total < 20 || ip.len() < total {
                bad += 1;
                break;
            }
            match valid(&ip[..total]) {
                Some(true) => tcp += 1,
                Some(false) => {}
                None => bad += 1,
            }
            rest = &rest[inner_at + total..];
        }
    }
    (tcp, bad)
}

fn inner_checksums(tag: &str, backend: &str, device: &str, port: u16, inner_at: usize) {
    let mut c = Cluster::new(tag, 2, &net_conf(backend)).expect("testbed");
    for i in 0..2 {
        c.start(i, weft(), &["--offload", "on", "--device", device])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    assert!(wait_ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap()));
    let cap = UdpCapture::start(&c, port, 4000).unwrap();
    transfer(&c, 0, 1, 16, 5001);
    transfer(&c, 1, 0, 16, 5002);
    let frames = cap.finish();
    let (tcp, bad) = check(&frames, inner_at);
    assert_eq!(bad, 0, "{bad} inner packets with a wrong checksum");
    assert!(
        tcp > 2000,
        "only {tcp} TCP segments checked in {} frames",
        frames.len()
    );
    eprintln!(
        "{backend}: {tcp} inner TCP segments in {} frames, all valid",
        frames.len()
    );
}

#[test]
fn vxlan_inner_checksums_are_complete_on_the_wire() {
    inner_checksums("ckx", "vxlan", "tun", 8472, 8 + 14);
}

/// The TAP device splits Ethernet frames that carry TCP super-packets.
#[test]
fn vxlan_tap_inner_checksums_are_complete_on_the_wire() {
    inner_checksums("ckt", "vxlan", "tap", 8472, 8 + 14);
}

#[test]
fn udp_inner_checksums_are_complete_on_the_wire() {
    inner_checksums("cku", "udp", "tun", 8285, 0);
}

#[test]
fn the_checker_catches_a_partial_checksum() {
    // A TCP segment as the kernel hands it over with offloads: the checksum
    // field holds only the folded pseudo-header sum.
    let mut ip = vec![0u8; 40 + 100];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&140u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 244, 1, 1]);
    ip[16..20].copy_from_slice(&[10, 244, 2, 1]);
    let h = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&h.to_be_bytes());
    ip[20 + 12] = 0x50;
    for (i, b) in ip[40..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let pseudo = pseudo_header(&ip, 120);
    let partial = !checksum::fold(pseudo);
    ip[20 + 16..20 + 18].copy_from_slice(&(!partial).to_be_bytes());
    assert_eq!(valid(&ip), None, "a partial checksum passed");
    // Completed, it passes.
    ip[36..38].copy_from_slice(&[0, 0]);
    let full = checksum::fold(checksum::sum(&ip[20..], pseudo));
    ip[36..38].copy_from_slice(&(!full).to_be_bytes());
    assert_eq!(valid(&ip), Some(true));
}

/// The TCP pseudo-header sum of the IPv4 packet `ip` for `len` TCP bytes.
fn pseudo_header(ip: &[u8], len: u16) -> u64 {
    let p = weft_encap::ipv4::Packet::new_unchecked(ip);
    weft_encap::l4::pseudo_header_sum(p.src().octets(), p.dst().octets(), 6, len)
}
