//! Coalescing received TCP segments (over IPv4 or IPv6) into one
//! super-packet for a TUN or TAP device with `IFF_VNET_HDR`: a userspace
//! GRO, zero-copy.
//!
//! The caller keeps the segments where they were received and writes, with
//! one `writev`, a header this module builds (`virtio_net_hdr` + the first
//! segment's IPv4 and TCP headers, adjusted to the whole) followed by each
//! segment's payload in place. The kernel then treats the result like a
//! packet its own GRO made.
//!
//! Segments merge only under the rules Linux's `tcp_gro_receive` uses: one
//! flow, IPv4 without options or fragmentation (IPv6 without extension
//! headers), contiguous sequence numbers, the same ACK, window, TTL (hop
//! limit), TOS (traffic class and flow label) and TCP options, only ACK and PSH
//! flags (PSH ends a run), equal payload sizes except a shorter last one,
//! and at most 64 KiB in all. Every merged segment's TCP checksum is
//! verified first: the merged packet is handed over as CHECKSUM_PARTIAL,
//! which the receiving stack does not check again.

use crate::ipv4::{self, protocol, Packet};
use crate::virtio::{self, gso};
use crate::{checksum, ipv6, l4, tcp};

/// Bytes of a `virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = virtio::HEADER_LEN;
/// The longest link-layer header `super_header_after` puts in front of the
/// merged packet (Ethernet, for a TAP device).
pub const L2_MAX: usize = 14;
/// Room for the header `super_header_after` writes: the vnet header, a
/// link-layer header, and IPv4 (20 bytes) or IPv6 (40) and TCP (at most
/// 60) headers.
pub const SUPER_HEADER_MAX: usize = VNET_HDR_LEN + L2_MAX + ipv6::HEADER_LEN + 60;
/// The most bytes a merged IPv4 packet may have.
pub const MAX_MERGED: usize = 65535;
/// The most segments merged into one packet (as Linux's GRO).
pub const MAX_SEGMENTS: usize = 64;

/// A `virtio_net_hdr` (`include/uapi/linux/virtio_net.h`) that hands the
/// device one TCP/IPv4 packet to segment, its TCP checksum to complete
/// (NEEDS_CSUM). Offsets count from the start of the link-layer header.
struct TcpGso {
    /// Link-layer, IPv4 and TCP header bytes.
    hdr_len: usize,
    /// Payload bytes per segment.
    gso_size: usize,
    /// Where the TCP header starts.
    csum_start: usize,
    /// Marks SKB_GSO_TCP_ECN: the first segment carries CWR.
    ecn: bool,
    /// TCP over IPv6 (`SKB_GSO_TCPV6`), not IPv4.
    v6: bool,
}

impl TcpGso {
    fn encode(&self) -> [u8; VNET_HDR_LEN] {
        virtio::Repr {
            flags: virtio::flags::NEEDS_CSUM,
            gso_type: match (self.v6, self.ecn) {
                (false, false) => gso::TCPV4,
                (false, true) => gso::TCPV4 | gso::ECN,
                (true, false) => gso::TCPV6,
                (true, true) => gso::TCPV6 | gso::ECN,
            },
            hdr_len: self.hdr_len as u16,
            gso_size: self.gso_size as u16,
            csum_start: self.csum_start as u16,
            csum_offset: tcp::CHECKSUM.start as u16,
        }
        .to_bytes()
    }
}
const TCP_CWR: u8 = tcp::flags::CWR;
const TCP_ACK: u8 = tcp::flags::ACK;
const TCP_PSH: u8 = tcp::flags::PSH;

/// A TCP segment (over IPv4 or IPv6) that may merge with its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// IP header length: 20 (IPv4 without options) or 40 (IPv6 without
    /// extension headers).
    ip_len: usize,
    /// TCP header length.
    tcp_len: usize,
    /// Sequence number.
    seq: u32,
    /// Payload bytes.
    payload: usize,
    /// PSH set: nothing may follow it in a run.
    psh: bool,
}

impl Segment {
    /// Header bytes (IP + TCP) in front of the payload.
    pub fn header_len(&self) -> usize {
        self.ip_len + self.tcp_len
    }

    fn v6(&self) -> bool {
        self.ip_len == ipv6::HEADER_LEN
    }

    /// Payload bytes.
    pub fn payload_len(&self) -> usize {
        self.payload
    }
}

/// Looks at one IP packet (exactly its bytes): a `Segment` if it is a TCP
/// segment that may merge (and its checksum is right), else `None` (write it
/// alone; the kernel checks it). The IP header is assumed already checked
/// by the decapsulator (version, length, IPv4 header checksum).
pub fn segment(pkt: &[u8]) -> Option<Segment> {
    segment_unverified(pkt).filter(|s| tcp_checksum_ok(pkt, s.ip_len))
}

/// Whether the TCP checksum of `pkt` (behind `ip_len` bytes of IP header)
/// is right.
fn tcp_checksum_ok(pkt: &[u8], ip_len: usize) -> bool {
    let tcp = &pkt[ip_len..];
    let pseudo = match ip_len {
        ipv4::MIN_HEADER_LEN => {
            let ip = Packet::new_unchecked(pkt);
            let (src, dst) = (ip.src().octets(), ip.dst().octets());
            l4::pseudo_header_sum(src, dst, protocol::TCP, tcp.len() as u16)
        }
        _ => ipv6::Packet::new_unchecked(pkt).pseudo_header_sum(protocol::TCP, tcp.len() as u32),
    };
    checksum::fold(checksum::sum(tcp, pseudo)) == 0xffff
}

/// `segment` for a packet whose TCP checksum the caller has verified
/// already (`l4::verify_or_complete`): the same rules, without summing the
/// packet a second time.
pub fn segment_unverified(pkt: &[u8]) -> Option<Segment> {
    let ip_len = match crate::ip_version(pkt)? {
        4 => {
            let ip = Packet::new_checked(pkt).ok()?;
            // IPv4 without options, TCP, exactly this long, not a fragment.
            let whole = ip.header_len() == ipv4::MIN_HEADER_LEN
                && ip.protocol() == protocol::TCP
                && usize::from(ip.total_len()) == pkt.len()
                && !ip.is_fragment();
            whole.then_some(ipv4::MIN_HEADER_LEN)?
        }
        6 => {
            let ip = ipv6::Packet::new_checked(pkt).ok()?;
            // TCP right behind the fixed header, exactly this long.
            let whole = ip.next_header() == ipv6::next_header::TCP && ip.total_len() == pkt.len();
            whole.then_some(ipv6::HEADER_LEN)?
        }
        _ => return None,
    };
    let tcp = tcp::Segment::new_checked(pkt.get(ip_len..)?)?;
    let (tcp_len, len) = (tcp.header_len(), tcp.bytes().len());
    if tcp_len < tcp::MIN_HEADER_LEN || len < tcp_len {
        return None;
    }
    let flags = tcp.flags();
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    let payload = len - tcp_len;
    if payload == 0 {
        return None;
    }
    Some(Segment {
        ip_len,
        tcp_len,
        seq: tcp.seq(),
        payload,
        psh: flags & TCP_PSH != 0,
    })
}

/// The `virtio_net_hdr` that hands the TCP super-packet `ip` (IPv4, or
/// IPv6 with TCP right behind its fixed header; behind `l2_len` bytes of
/// link-layer header) to the device as one GSO packet, the way a kernel
/// peer sent it: segments of `mss` payload bytes, or, when `mss` is 0 or
/// would exceed `mtu`, as many as fit an `mtu`-byte packet. The TCP
/// checksum field is rewritten to the partial sum that NEEDS_CSUM asks
/// for (the caller verified the full one). `None` for anything but such a
/// TCP packet with room for at least one segment.
pub fn gso_header(
    l2_len: usize,
    ip: &mut [u8],
    mss: usize,
    mtu: usize,
) -> Option<[u8; VNET_HDR_LEN]> {
    let (hl, total, pseudo, v6) = match crate::ip_version(ip)? {
        4 => {
            let p = Packet::new_checked(&*ip).ok()?;
            let (hl, total) = (p.header_len(), usize::from(p.total_len()));
            let pseudo = l4::pseudo_header_sum(
                p.src().octets(),
                p.dst().octets(),
                protocol::TCP,
                (total - hl) as u16,
            );
            (p.protocol() == protocol::TCP).then_some((hl, total, pseudo, false))?
        }
        6 => {
            let p = ipv6::Packet::new_checked(&*ip).ok()?;
            let (hl, total) = (ipv6::HEADER_LEN, p.total_len());
            let pseudo = p.pseudo_header_sum(protocol::TCP, (total - hl) as u32);
            (p.next_header() == ipv6::next_header::TCP).then_some((hl, total, pseudo, true))?
        }
        _ => return None,
    };
    let mut tcp = tcp::Segment::new_checked(ip.get_mut(hl..total)?)?;
    let tcp_len = tcp.header_len();
    if tcp.payload().is_empty() {
        return None;
    }
    let fits = mtu.checked_sub(hl + tcp_len).filter(|&m| m > 0)?;
    let gso_size = if mss == 0 || mss > fits { fits } else { mss };
    let gso_size = u16::try_from(gso_size).ok()?;
    tcp.set_checksum(checksum::fold(pseudo));
    Some(
        TcpGso {
            hdr_len: l2_len + hl + tcp_len,
            gso_size: usize::from(gso_size),
            csum_start: l2_len + hl,
            // As the kernel's virtio_net_hdr_from_skb marks SKB_GSO_TCP_ECN.
            ecn: tcp.flags() & TCP_CWR != 0,
            v6,
        }
        .encode(),
    )
}

/// Whether two segments (IPv4 without options or IPv6 without extension
/// headers, `ip_len` bytes; whole TCP headers of equal length: `Run::push`
/// checked) may merge: the same flow and the same headers where
/// `tcp_gro_receive` requires it.
#[inline]
fn same_flow_and_headers(ip_len: usize, a: &[u8], b: &[u8]) -> bool {
    let same_ip = match ip_len {
        ipv4::MIN_HEADER_LEN => Packet::new_unchecked(a).same_flow_as(&Packet::new_unchecked(b)),
        _ => ipv6::Packet::new_unchecked(a).same_flow_as(&ipv6::Packet::new_unchecked(b)),
    };
    let (ta, tb) = (
        tcp::Segment::new_unchecked(&a[ip_len..]),
        tcp::Segment::new_unchecked(&b[ip_len..]),
    );
    same_ip && ta.same_flow_as(&tb)
}

/// A run of segments being merged.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    first: Segment,
    last: Segment,
    count: usize,
    bytes: usize,
}

impl Run {
    /// A run of one.
    pub fn new(s: Segment) -> Run {
        Run {
            first: s,
            last: s,
            count: 1,
            bytes: s.header_len() + s.payload,
        }
    }

    /// Segments in the run.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Tries to add `next` (whose packet is `next_pkt`) after the run's
    /// last segment, whose packet is `last_pkt`. True if it joined.
    pub fn push(&mut self, last_pkt: &[u8], next: Segment, next_pkt: &[u8]) -> bool {
        let (l, f) = (&self.last, &self.first);
        let ok = last_pkt.len() >= l.header_len()
            && next_pkt.len() >= next.header_len()
            && self.count < MAX_SEGMENTS
            && next.tcp_len == l.tcp_len
            && next.ip_len == l.ip_len
            && !l.psh
            // Equal sizes; only the last may be shorter, so nothing may follow a shorter one.
            && next.payload <= f.payload
            && l.payload == f.payload
            && self.bytes + next.payload <= MAX_MERGED
            && next.seq == l.seq.wrapping_add(l.payload as u32)
            && same_flow_and_headers(l.ip_len, last_pkt, next_pkt);
        if ok {
            self.last = next;
            self.count += 1;
            self.bytes += next.payload;
        }
        ok
    }

    /// Writes into `out` the vnet header and the merged packet's IP and
    /// TCP headers, built from the first segment's packet `first_pkt`; the
    /// payloads follow it on the wire. Returns the bytes written. For a run
    /// of one, writes an empty vnet header only (the packet goes as is).
    pub fn super_header(&self, first_pkt: &[u8], out: &mut [u8; SUPER_HEADER_MAX]) -> usize {
        self.super_header_after(&[], first_pkt, out)
    }

    /// `super_header` for a device that carries a link-layer header (a TAP):
    /// `l2` (at most `L2_MAX` bytes, the first frame's Ethernet header) goes
    /// between the vnet header and the IP header, and the vnet header's
    /// offsets count it, as the kernel reads them from the frame's start.
    pub fn super_header_after(
        &self,
        l2: &[u8],
        first_pkt: &[u8],
        out: &mut [u8; SUPER_HEADER_MAX],
    ) -> usize {
        if self.count == 1 {
            out[..VNET_HDR_LEN].fill(0);
            return VNET_HDR_LEN;
        }
        let hl = self.first.header_len();
        let (Some(first), true) = (first_pkt.get(..hl), l2.len() <= L2_MAX) else {
            // Not the packet the run began with: a caller bug; never panic.
            out[..VNET_HDR_LEN].fill(0);
            return VNET_HDR_LEN;
        };
        let ip_len = self.first.ip_len;
        let tcp_len = self.bytes - ip_len;
        let l2_len = l2.len();
        let vnet = TcpGso {
            hdr_len: l2_len + hl,
            gso_size: self.first.payload,
            csum_start: l2_len + ip_len,
            // A segment with CWR never joins a run: only ACK and PSH may be set.
            ecn: false,
            v6: self.first.v6(),
        };
        out[..VNET_HDR_LEN].copy_from_slice(&vnet.encode());
        out[VNET_HDR_LEN..VNET_HDR_LEN + l2_len].copy_from_slice(l2);
        let at = VNET_HDR_LEN + l2_len;
        let h = &mut out[at..at + hl];
        h.copy_from_slice(first);
        let (iph, tcph) = h.split_at_mut(ip_len);
        // CHECKSUM_PARTIAL: the TCP checksum field holds the folded
        // pseudo-header sum; the kernel completes it if it ever must.
        let pseudo = match self.first.v6() {
            false => {
                let mut ip = Packet::new_unchecked(iph);
                ip.set_total_len(self.bytes as u16);
                ip.fill_checksum();
                let (src, dst) = (ip.src().octets(), ip.dst().octets());
                l4::pseudo_header_sum(src, dst, protocol::TCP, tcp_len as u16)
            }
            true => {
                let mut ip = ipv6::Packet::new_unchecked(iph);
                ip.set_payload_len(tcp_len as u16);
                ip.pseudo_header_sum(protocol::TCP, tcp_len as u32)
            }
        };
        let mut tcp = tcp::Segment::new_unchecked(tcph);
        if self.last.psh {
            tcp.set_flags(TCP_PSH);
        }
        tcp.set_checksum(checksum::fold(pseudo));
        at + hl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel peer's TCP/IPv6 super-packet goes to the device as one
    /// `SKB_GSO_TCPV6` packet: segments of its MSS after 40 + 32 bytes of
    /// headers, its checksum handed over partial (the pseudo-header sum).
    #[test]
    fn gso_header_hands_over_a_tcpv6_super_packet() {
        let mut p = crate::vectors::tcp_segment6(1, 20_000, TCP_ACK);
        assert_eq!(l4::verify_or_complete(&mut p), Ok(l4::Verdict::Valid));
        let h = gso_header(14, &mut p, 1200, 1430).expect("a TCP/IPv6 super-packet");
        let r = virtio::Repr::parse(&virtio::Header::new_checked(&h[..]).unwrap());
        assert_eq!(r.gso_type, gso::TCPV6);
        assert_eq!(r.flags, virtio::flags::NEEDS_CSUM);
        assert_eq!(
            (r.hdr_len, r.csum_start, r.gso_size),
            (14 + 72, 14 + 40, 1200)
        );
        let pseudo =
            ipv6::Packet::new_unchecked(&p[..]).pseudo_header_sum(6, (p.len() - 40) as u32);
        assert_eq!(p[56..58], checksum::fold(pseudo).to_be_bytes());
        // An MSS past the MTU is cut to what fits: 1430 − 40 − 32.
        let mut p = crate::vectors::tcp_segment6(1, 20_000, TCP_ACK);
        let h = gso_header(0, &mut p, 9000, 1430).unwrap();
        let r = virtio::Repr::parse(&virtio::Header::new_checked(&h[..]).unwrap());
        assert_eq!(r.gso_size, 1358);
        // UDP, or TCP behind an extension header, is not handed over.
        let mut p = crate::vectors::tcp_segment6(1, 20_000, TCP_ACK);
        p[6] = ipv6::next_header::FRAGMENT;
        assert_eq!(gso_header(0, &mut p, 0, 1430), None);
    }

    /// A TCP/IPv4 segment with a valid checksum.
    fn seg(seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        crate::vectors::tcp_segment(seq, payload, flags)
    }

    fn fix_tcp_checksum(p: &mut [u8]) {
        p[36..38].fill(0);
        let pseudo = l4::pseudo_header_sum(
            p[12..16].try_into().unwrap(),
            p[16..20].try_into().unwrap(),
            6,
            (p.len() - 20) as u16,
        );
        let c = !checksum::fold(checksum::sum(&p[20..], pseudo));
        p[36..38].copy_from_slice(&c.to_be_bytes());
    }

    /// `seg` with one byte changed (the checksum fixed up again).
    fn changed(seq: u32, at: usize, v: u8) -> Vec<u8> {
        let mut p = seg(seq, 1400, TCP_ACK);
        p[at] = v;
        if at < 20 {
            p[10..12].fill(0);
            let c = checksum::checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        fix_tcp_checksum(&mut p);
        p
    }

    #[test]
    fn contiguous_segments_merge_into_a_valid_super_packet() {
        let a = seg(1000, 1400, TCP_ACK);
        let b = seg(2400, 1400, TCP_ACK);
        let c = seg(3800, 600, TCP_ACK | TCP_PSH);
        let mut run = Run::new(segment(&a).unwrap());
        assert!(run.push(&a, segment(&b).unwrap(), &b));
        assert!(run.push(&b, segment(&c).unwrap(), &c));
        assert_eq!(run.count(), 3);
        let mut out = [0u8; SUPER_HEADER_MAX];
        let n = run.super_header(&a, &mut out);
        assert_eq!(n, VNET_HDR_LEN + 52);
        assert_eq!(&out[..10], &[1, 1, 52, 0, 120, 5, 20, 0, 16, 0]);
        // The merged packet: header, then the three payloads; completing
        // its partial checksum gives a valid TCP segment.
        let mut merged = out[VNET_HDR_LEN..n].to_vec();
        for p in [&a, &b, &c] {
            merged.extend_from_slice(&p[52..]);
        }
        assert_eq!(merged.len(), 52 + 3400);
        assert_eq!(
            u16::from_be_bytes([merged[2], merged[3]]) as usize,
            merged.len()
        );
        assert_eq!(checksum::checksum(&merged[..20]), 0);
        assert_eq!(merged[33] & TCP_PSH, TCP_PSH);
        let c = checksum::checksum(&merged[20..]);
        merged[36..38].copy_from_slice(&c.to_be_bytes());
        assert!(tcp_checksum_ok(&merged, 20));
    }

    /// The same over IPv6: one `SKB_GSO_TCPV6` packet whose payload length
    /// covers the three segments; segments of another hop limit or flow
    /// label, or an IPv4 segment, do not join.
    #[test]
    fn contiguous_ipv6_segments_merge_into_a_valid_super_packet() {
        let seg6 = crate::vectors::tcp_segment6;
        let (a, b, c) = (
            seg6(1000, 1400, TCP_ACK),
            seg6(2400, 1400, TCP_ACK),
            seg6(3800, 600, TCP_ACK | TCP_PSH),
        );
        let mut run = Run::new(segment(&a).unwrap());
        assert!(run.push(&a, segment(&b).unwrap(), &b));
        assert!(run.push(&b, segment(&c).unwrap(), &c));
        let mut out = [0u8; SUPER_HEADER_MAX];
        let n = run.super_header(&a, &mut out);
        assert_eq!(n, VNET_HDR_LEN + 72);
        let r = virtio::Repr::parse(&virtio::Header::new_checked(&out[..]).unwrap());
        assert_eq!(r.gso_type, gso::TCPV6);
        assert_eq!((r.hdr_len, r.gso_size, r.csum_start), (72, 1400, 40));
        let mut merged = out[VNET_HDR_LEN..n].to_vec();
        for p in [&a, &b, &c] {
            merged.extend_from_slice(&p[72..]);
        }
        let ip = ipv6::Packet::new_checked(&merged[..]).unwrap();
        assert_eq!(ip.total_len(), merged.len());
        assert_eq!(merged[40 + 13] & TCP_PSH, TCP_PSH);
        // Completing the partial checksum gives a valid segment.
        let pseudo = ip.pseudo_header_sum(protocol::TCP, (merged.len() - 40) as u32);
        assert_eq!(merged[56..58], checksum::fold(pseudo).to_be_bytes());
        merged[56..58].fill(0);
        let c = !checksum::fold(checksum::sum(&merged[40..], pseudo));
        merged[56..58].copy_from_slice(&c.to_be_bytes());
        assert!(tcp_checksum_ok(&merged, 40));

        let mut run = Run::new(segment(&a).unwrap());
        let mut hop = b.clone();
        hop[7] = 63;
        assert!(
            !run.push(&a, segment(&hop).unwrap(), &hop),
            "another hop limit"
        );
        let mut flow = b.clone();
        flow[3] = 1;
        assert!(
            !run.push(&a, segment(&flow).unwrap(), &flow),
            "another flow label"
        );
        let v4 = seg(2400, 1400, TCP_ACK);
        assert!(!run.push(&a, segment(&v4).unwrap(), &v4), "IPv4 after IPv6");
        // A wrong checksum is no segment to merge.
        let mut bad = b.clone();
        bad[100] ^= 1;
        assert_eq!(segment(&bad), None);
    }

    #[test]
    fn a_link_layer_header_goes_first_and_shifts_the_offsets() {
        let a = seg(1000, 1400, TCP_ACK);
        let b = seg(2400, 1400, TCP_ACK);
        let mut run = Run::new(segment(&a).unwrap());
        assert!(run.push(&a, segment(&b).unwrap(), &b));
        let eth: [u8; 14] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let mut l3 = [0u8; SUPER_HEADER_MAX];
        let n3 = run.super_header(&a, &mut l3);
        let mut out = [0u8; SUPER_HEADER_MAX];
        let n = run.super_header_after(&eth, &a, &mut out);
        assert_eq!(n, n3 + 14);
        // hdr_len and csum_start count the Ethernet header.
        assert_eq!(&out[..10], &[1, 1, 66, 0, 120, 5, 34, 0, 16, 0]);
        assert_eq!(&out[10..24], &eth);
        assert_eq!(&out[24..n], &l3[VNET_HDR_LEN..n3]);
        // Too long a link-layer header is refused, not a panic.
        let mut bad = [0u8; SUPER_HEADER_MAX];
        assert_eq!(run.super_header_after(&[0; 15], &a, &mut bad), VNET_HDR_LEN);
    }

    #[test]
    fn what_must_not_merge_does_not() {
        let a = seg(1000, 1400, TCP_ACK);
        let sa = segment(&a).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("gap in sequence", seg(2401, 1400, TCP_ACK)),
            ("longer than the first", seg(2400, 1401, TCP_ACK)),
            ("other ACK", changed(2400, 28, 1)),
            ("other window", changed(2400, 34, 9)),
            ("other source port", changed(2400, 20, 9)),
            ("other destination", changed(2400, 19, 9)),
            ("other TTL", changed(2400, 8, 9)),
            ("other TOS", changed(2400, 1, 4)),
            ("other timestamp option", changed(2400, 47, 4)),
        ];
        for (why, p) in &cases {
            let s = segment(p).unwrap_or_else(|| panic!("{why}: not a segment"));
            assert!(!Run::new(sa).push(&a, s, p), "{why}");
        }
        // The control: the unchanged next segment does join.
        let b = seg(2400, 1400, TCP_ACK);
        assert!(Run::new(sa).push(&a, segment(&b).unwrap(), &b));
        // After a shorter segment nothing may follow.
        let b = seg(2400, 700, TCP_ACK);
        let c = seg(3100, 700, TCP_ACK);
        let mut run = Run::new(sa);
        assert!(run.push(&a, segment(&b).unwrap(), &b));
        assert!(!run.push(&b, segment(&c).unwrap(), &c));
        // After PSH nothing may follow.
        let p = seg(2400, 1400, TCP_ACK | TCP_PSH);
        let q = seg(3800, 1400, TCP_ACK);
        let mut run = Run::new(sa);
        assert!(run.push(&a, segment(&p).unwrap(), &p));
        assert!(!run.push(&p, segment(&q).unwrap(), &q));
    }

    #[test]
    fn unmergeable_packets_are_refused() {
        let mut bad = seg(1000, 100, TCP_ACK);
        bad[60] ^= 0xff; // payload corrupted: checksum wrong
        assert_eq!(segment(&bad), None);
        assert_eq!(segment(&seg(1000, 0, TCP_ACK)), None, "pure ACK");
        assert_eq!(segment(&seg(1000, 10, 0x02)), None, "SYN");
        assert_eq!(segment(&seg(1000, 10, TCP_ACK | 0x01)), None, "FIN");
        let mut frag = seg(1000, 100, TCP_ACK);
        frag[6] = 0x20; // MF
        assert_eq!(segment(&frag), None);
        assert_eq!(segment(&[0x45; 30]), None);
        assert_eq!(segment(&[]), None);
    }

    #[test]
    fn a_run_of_one_gets_an_empty_header() {
        let a = seg(1000, 1400, TCP_ACK);
        let run = Run::new(segment(&a).unwrap());
        let mut out = [0xffu8; SUPER_HEADER_MAX];
        assert_eq!(run.super_header(&a, &mut out), VNET_HDR_LEN);
        assert_eq!(&out[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    }
}
