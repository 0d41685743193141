//! Fuzz harnesses: one function per target, each asserting properties, not
//! just "no crash". The cargo-fuzz targets in `fuzz/` call these, and so
//! does a unit test over the committed seeds (`fuzz/seeds/`) and every
//! input that ever failed (`fuzz/regressions/`), so targets cannot rot.

use crate::ipv4::Packet;
use crate::vxlan::{Endpoint, Vni, HEADER_LEN};
use crate::{checksum, gro, udp, MacAddr, HEADROOM};

/// The endpoint the VXLAN harness decapsulates for: VNI 1 and the VtepMAC
/// of node B in `vectors`, so the captured kernel datagrams are accepted.
pub const ENDPOINT: Endpoint = Endpoint {
    vni: Vni::DEFAULT,
    mac: MacAddr(crate::vectors::MAC_B),
};

/// VXLAN decapsulation never panics; whatever it accepts lies inside the
/// datagram, and re-encapsulating the accepted frame reproduces the
/// datagram's header exactly (an accepted header has no freedom left).
pub fn vxlan_decap(data: &[u8]) {
    let Ok(inner) = ENDPOINT.decapsulate(data) else {
        return;
    };
    assert!(inner.frame.start == HEADER_LEN && inner.frame.end <= data.len());
    assert!(inner.ip.start == inner.frame.start + 14 && inner.ip.end == inner.frame.end);
    let frame = &data[inner.frame.clone()];
    let mut buf = vec![0xeeu8; HEADROOM + frame.len()];
    buf[HEADROOM..].copy_from_slice(frame);
    let out = ENDPOINT
        .encapsulate_frame(&mut buf, HEADROOM..HEADROOM + frame.len())
        .expect("HEADROOM is larger than the VXLAN header");
    assert_eq!(&buf[out], &data[..inner.frame.end]);
}

/// flannel-udp decapsulation never panics; what it accepts is a valid IPv4
/// packet with a correct checksum and a TTL one lower than it arrived with.
pub fn udp_decap(data: &[u8]) {
    let mut buf = data.to_vec();
    let Ok(len) = udp::decapsulate(&mut buf) else {
        return;
    };
    assert!(len <= data.len());
    let before = Packet::new_checked(data).expect("accepted input parses");
    let after = Packet::new_checked(&buf[..len]).expect("accepted output parses");
    assert!(after.verify_checksum());
    assert_eq!(after.ttl() + 1, before.ttl());
}

/// The coalescer never panics, and what it merges is right: the input is
/// a sequence of packets, each behind a 2-byte big-endian length. Runs are
/// built as the worker builds them; for each merged run the header plus
/// the payloads form one IPv4 packet with the summed length and a valid
/// header checksum, whose TCP checksum, completed as the kernel completes
/// CHECKSUM_PARTIAL, is valid, and whose payload is the inputs' payloads
/// in order.
pub fn tcp_gro(data: &[u8]) {
    let mut pkts = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        pkts.push(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    let mut k = 0;
    while k < pkts.len() {
        let Some(first) = gro::segment(pkts[k]) else {
            k += 1;
            continue;
        };
        let mut run = gro::Run::new(first);
        let mut end = k + 1;
        while end < pkts.len() {
            match gro::segment(pkts[end]) {
                Some(s) if run.push(pkts[end - 1], s, pkts[end]) => end += 1,
                _ => break,
            }
        }
        let mut hdr = [0u8; gro::SUPER_HEADER_MAX];
        let h = run.super_header(pkts[k], &mut hdr);
        if run.count() > 1 {
            let hl = first.header_len();
            let mut merged = hdr[gro::VNET_HDR_LEN..h].to_vec();
            for p in &pkts[k..end] {
                merged.extend_from_slice(&p[hl..]);
            }
            assert!(merged.len() <= gro::MAX_MERGED);
            assert_eq!(
                usize::from(u16::from_be_bytes([merged[2], merged[3]])),
                merged.len()
            );
            assert_eq!(checksum::checksum(&merged[..20]), 0);
            let c = checksum::checksum(&merged[20..]);
            merged[36..38].copy_from_slice(&c.to_be_bytes());
            assert!(gro::segment(&merged).is_some(), "merged packet invalid");
        } else {
            assert_eq!(h, gro::VNET_HDR_LEN);
        }
        k = end;
    }
}

/// Inner L4 checksums (`l4::verify_or_complete`) never panic, leave the
/// bytes untouched unless they complete a partial sum, and what they
/// complete then verifies; a super-packet's vnet header (`gro::gso_header`)
/// and the carried length (`vxlan::carried_len`) never panic either, and
/// the header's offsets lie inside the packet.
pub fn l4_checksum(data: &[u8]) {
    use crate::l4::{verify_or_complete, Verdict};
    let mut buf = data.to_vec();
    match verify_or_complete(&mut buf) {
        Ok(Verdict::Completed) => {
            assert_eq!(verify_or_complete(&mut buf.clone()), Ok(Verdict::Valid));
            assert_eq!(buf.len(), data.len());
        }
        Ok(_) | Err(_) => assert_eq!(buf, data),
    }
    let _ = crate::vxlan::carried_len(data);
    let _ = udp::carried_len(data);
    let mut ip = data.to_vec();
    if let Some(h) = gro::gso_header(0, &mut ip, 1400, 1450) {
        let h = crate::virtio::Header::new_unchecked(&h[..]);
        let (hdr_len, csum_start) = (usize::from(h.hdr_len()), usize::from(h.csum_start()));
        assert!(csum_start < hdr_len && hdr_len <= ip.len());
    }
}

/// Differential check against an independent parser (etherparse): the
/// same bytes read as an Ethernet frame, and as an IPv4 packet at their
/// start and behind an Ethernet header, are accepted or refused alike by
/// encap's views and by etherparse, and every field both expose agrees;
/// the same for IPv6 and ICMPv6. (An IPv4 packet whose IPsec authentication header etherparse refuses,
/// malformed or cut short, still has a valid IPv4 header: encap does not
/// look past it.)
#[cfg(any(test, feature = "differential"))]
pub fn differential(data: &[u8]) {
    use crate::ethernet::Frame;
    use etherparse::err::ipv4::SliceError;
    use etherparse::{Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv4Slice};
    let ours = Frame::new_checked(data);
    let theirs = Ethernet2HeaderSlice::from_slice(data);
    assert_eq!(ours.is_ok(), theirs.is_ok(), "Ethernet accept/reject");
    if let (Ok(f), Ok(e)) = (&ours, &theirs) {
        assert_eq!(f.dst().octets(), e.destination());
        assert_eq!(f.src().octets(), e.source());
        assert_eq!(f.ethertype(), e.ether_type().0);
    }
    for ip in [data, data.get(14..).unwrap_or(&[])] {
        let ours = Packet::new_checked(ip);
        let theirs = Ipv4Slice::from_slice(ip);
        let theirs_ok = match &theirs {
            Ok(_) | Err(SliceError::Exts(_)) => true,
            Err(SliceError::Len(l)) => l.layer == etherparse::err::Layer::IpAuthHeader,
            Err(_) => false,
        };
        assert_eq!(ours.is_ok(), theirs_ok, "IPv4 accept/reject: {theirs:?}");
        let (Ok(p), Ok(h)) = (ours, Ipv4HeaderSlice::from_slice(ip)) else {
            continue;
        };
        assert_eq!(p.version(), h.version());
        assert_eq!(p.header_len(), usize::from(h.ihl()) * 4);
        assert_eq!(p.tos(), h.dcp().value() << 2 | h.ecn().value());
        assert_eq!(p.total_len(), h.total_len());
        assert_eq!(p.ident(), h.identification());
        assert_eq!(p.frag_offset(), h.fragments_offset().value());
        assert_eq!(p.more_fragments(), h.more_fragments());
        assert_eq!(p.ttl(), h.ttl());
        assert_eq!(p.protocol(), h.protocol().0);
        assert_eq!(p.checksum(), h.header_checksum());
        assert_eq!(p.src(), h.source_addr());
        assert_eq!(p.dst(), h.destination_addr());
        // etherparse's header model drops the reserved flag bit (RFC 791's
        // bit 0 of the flags), so its recomputed checksum is only
        // comparable when that bit is clear.
        let reserved_flag = h.slice()[6] & 0x80 != 0;
        if !reserved_flag {
            // 0x0000 and 0xffff are both zero in ones' complement: a
            // receiver that sums the header accepts either (RFC 1624 §3).
            let norm = |c: u16| if c == 0xffff { 0 } else { c };
            let right = norm(h.to_header().calc_header_checksum()) == norm(h.header_checksum());
            assert_eq!(p.verify_checksum(), right, "header checksum verdict");
        }
        assert_eq!(p.header(), h.slice());
    }
    for ip in [data, data.get(14..).unwrap_or(&[])] {
        differential_ipv6(ip);
    }
}

/// The IPv6 and ICMPv6 views against etherparse's: the same accept/reject
/// verdict and the same fields, the same ICMPv6 checksum verdict.
#[cfg(any(test, feature = "differential"))]
fn differential_ipv6(ip: &[u8]) {
    use crate::{icmpv6, ipv6};
    use etherparse::err::ipv6::SliceError;
    use etherparse::err::Layer;
    use etherparse::{Icmpv6Slice, Ipv6HeaderSlice, Ipv6Slice};
    let ours = ipv6::Packet::new_checked(ip);
    let theirs = Ipv6Slice::from_slice(ip);
    // etherparse also parses the extension headers, which weft forwards
    // untouched; and it reads a zero payload length as a jumbogram's (the
    // rest of the slice), where weft reads an empty payload.
    let theirs_ok = match &theirs {
        Ok(_) | Err(SliceError::Exts(_)) => true,
        Err(SliceError::Len(l)) => !matches!(l.layer, Layer::Ipv6Header | Layer::Ipv6Packet),
        Err(_) => false,
    };
    assert_eq!(ours.is_ok(), theirs_ok, "IPv6 accept/reject: {theirs:?}");
    let (Ok(p), Ok(h)) = (ours, Ipv6HeaderSlice::from_slice(ip)) else {
        return;
    };
    assert_eq!(p.version(), h.version());
    assert_eq!(p.traffic_class(), h.traffic_class());
    assert_eq!(p.flow_label(), h.flow_label().value());
    assert_eq!(p.payload_len(), h.payload_length());
    assert_eq!(p.next_header(), h.next_header().0);
    assert_eq!(p.hop_limit(), h.hop_limit());
    assert_eq!(p.src(), h.source_addr());
    assert_eq!(p.dst(), h.destination_addr());
    assert_eq!(
        p.bytes().len(),
        ipv6::HEADER_LEN + usize::from(h.payload_length())
    );
    if p.next_header() != ipv6::next_header::ICMPV6 {
        return;
    }
    let ours = icmpv6::Packet::new_checked(p.payload());
    let theirs = Icmpv6Slice::from_slice(p.payload());
    assert_eq!(ours.is_ok(), theirs.is_ok(), "ICMPv6 accept/reject");
    let (Ok(m), Ok(t)) = (ours, theirs) else {
        return;
    };
    assert_eq!(m.msg_type(), t.type_u8());
    assert_eq!(m.code(), t.code_u8());
    assert_eq!(m.checksum(), t.checksum());
    assert_eq!(m.body(), t.payload());
    let (src, dst) = (p.src(), p.dst());
    assert_eq!(
        m.verify_checksum(&src, &dst),
        t.is_checksum_valid(src.octets(), dst.octets()),
        "ICMPv6 checksum verdict"
    );
}

/// Runs `f` over every file in `fuzz/seeds/<target>` and
/// `fuzz/regressions/<target>` under `fuzz_dir`; returns how many. Unit
/// tests call this so the committed inputs are replayed by `cargo test`.
pub fn replay(fuzz_dir: &std::path::Path, target: &str, f: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in [
        fuzz_dir.join("seeds").join(target),
        fuzz_dir.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path())
                .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            f(&data);
            n += 1;
        }
    }
    n
}

/// `replay` for a unit test in the crate at `manifest_dir` (its
/// `CARGO_MANIFEST_DIR`, beside `fuzz/`); panics when `target` has no
/// committed input, so a renamed seed directory cannot pass unnoticed.
pub fn replay_committed(manifest_dir: &str, target: &str, f: fn(&[u8])) {
    let fuzz = std::path::Path::new(manifest_dir).join("../fuzz");
    assert!(replay(&fuzz, target, f) > 0, "no seeds for {target}");
}

#[cfg(test)]
mod tests {
    fn replay(target: &str, f: fn(&[u8])) {
        super::replay_committed(env!("CARGO_MANIFEST_DIR"), target, f);
    }

    #[test]
    fn vxlan_corpus() {
        replay("vxlan_decap", super::vxlan_decap);
    }

    #[test]
    fn gro_corpus() {
        replay("tcp_gro", super::tcp_gro);
    }

    #[test]
    fn differential_corpus() {
        replay("differential", super::differential);
    }

    #[test]
    fn l4_corpus() {
        replay("l4_checksum", super::l4_checksum);
    }

    #[test]
    fn udp_corpus() {
        replay("udp_decap", super::udp_decap);
    }
}
