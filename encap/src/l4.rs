//! Inner TCP and UDP checksums of received packets: verified, and completed
//! when a kernel peer handed the segment over still partial.
//!
//! The Linux stack leaves an outgoing segment's checksum to the device
//! (CHECKSUM_PARTIAL): the field holds only the folded pseudo-header sum
//! (`__tcp_v4_send_check` and `udp4_hwcsum` in the kernel), and the NIC
//! finishes it. A veth, or a virtio NIC with checksum offload, never does,
//! so a kernel VXLAN peer on the same host or hypervisor puts such segments
//! on the wire. A kernel receiver accepts them because its skb says
//! "partial"; weft receives bytes, so it completes them itself: the sum is
//! computed once, over data already in cache, and the two-byte field is
//! patched in place. Any other wrong checksum is a drop.

use crate::checksum;
use crate::ipv4::Packet;
use crate::ipv6;
use crate::DropReason;

/// IP protocol numbers this module checks.
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

mod field {
    /// Offset of the checksum in a TCP header (RFC 9293 §3.1).
    pub const TCP_CHECKSUM: usize = crate::tcp::CHECKSUM.start;
    /// Offset of the checksum in a UDP header (RFC 768).
    pub const UDP_CHECKSUM: usize = 6;
    /// The shortest TCP header.
    pub const TCP_MIN: usize = crate::tcp::MIN_HEADER_LEN;
    /// The UDP header.
    pub const UDP_LEN: usize = 8;
}

/// What `verify_or_complete` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a TCP or UDP segment whose checksum can be checked here: a
    /// fragment, another protocol, a UDP datagram without a checksum, or a
    /// header too short to hold the field (the receiving stack decides).
    Unchecked,
    /// The checksum was right.
    Valid,
    /// The checksum was partial (the pseudo-header sum only) and is now
    /// complete.
    Completed,
}

/// The folded ones'-complement sum of the IPv4 pseudo-header (RFC 9293
/// §3.1, RFC 768) for a segment of `len` bytes: source, destination, zero,
/// protocol, length. Every TCP and UDP checksum over IPv4 starts from it.
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u64 {
    let word = |b: [u8; 2]| u64::from(u16::from_be_bytes(b));
    word([src[0], src[1]])
        + word([src[2], src[3]])
        + word([dst[0], dst[1]])
        + word([dst[2], dst[3]])
        + u64::from(protocol)
        + u64::from(len)
}

/// Checks the TCP or UDP checksum of the IP packet `ip` (its header
/// already validated by the decapsulator) and completes it when it holds
/// exactly the pseudo-header sum. `L4Checksum` for any other wrong sum.
pub fn verify_or_complete(ip: &mut [u8]) -> Result<Verdict, DropReason> {
    let Some(Segment {
        start,
        end,
        at,
        pseudo,
    }) = (match crate::ip_version(ip) {
        Some(4) => segment_v4(ip),
        Some(6) => segment_v6(ip),
        _ => None,
    })
    else {
        return Ok(Verdict::Unchecked);
    };
    let seg = &mut ip[start..end];
    let stored = u16::from_be_bytes([seg[at], seg[at + 1]]);
    if p_is_udp_without_checksum(at, stored) {
        return Ok(Verdict::Unchecked);
    }
    let acc = checksum::sum(seg, pseudo);
    if checksum::fold(acc) == 0xffff {
        return Ok(Verdict::Valid);
    }
    // Ones'-complement equality: 0x0000 and 0xffff are both zero.
    let norm = |x: u16| if x == 0 { 0xffff } else { x };
    if norm(stored) != norm(checksum::fold(pseudo)) {
        return Err(DropReason::L4Checksum);
    }
    // The sum without the field is acc − stored: add its complement.
    let mut full = !checksum::fold(acc + u64::from(!stored));
    if at == field::UDP_CHECKSUM && full == 0 {
        // RFC 768: a computed zero is sent as all ones.
        full = 0xffff;
    }
    seg[at..at + 2].copy_from_slice(&full.to_be_bytes());
    Ok(Verdict::Completed)
}

/// RFC 768: a UDP checksum of zero over IPv4 means "none was computed".
/// Over IPv6 a zero is not allowed at all (RFC 8200 §8.1): the receiving
/// stack drops it, so it is left to the stack here too.
fn p_is_udp_without_checksum(at: usize, stored: u16) -> bool {
    at == field::UDP_CHECKSUM && stored == 0
}

/// Where a packet's TCP or UDP segment lies, where its checksum field is
/// within it, and the pseudo-header sum it starts from.
struct Segment {
    start: usize,
    end: usize,
    at: usize,
    pseudo: u64,
}

/// The checksum field's offset in a segment of `protocol`, when it is
/// TCP or UDP and `len` bytes hold its header.
fn checksum_at(protocol: u8, len: usize) -> Option<usize> {
    let (at, min) = match protocol {
        PROTO_TCP => (field::TCP_CHECKSUM, field::TCP_MIN),
        PROTO_UDP => (field::UDP_CHECKSUM, field::UDP_LEN),
        _ => return None,
    };
    (len >= min).then_some(at)
}

/// The segment of an IPv4 packet: only a whole datagram carries a
/// checkable sum (MF clear, offset zero).
fn segment_v4(ip: &[u8]) -> Option<Segment> {
    let p = Packet::new_checked(ip).ok()?;
    if p.more_fragments() || p.frag_offset() != 0 {
        return None;
    }
    let (hl, total) = (p.header_len(), usize::from(p.total_len()));
    let len = total - hl;
    Some(Segment {
        start: hl,
        end: total,
        at: checksum_at(p.protocol(), len)?,
        pseudo: pseudo_header_sum(p.src().octets(), p.dst().octets(), p.protocol(), len as u16),
    })
}

/// The segment of an IPv6 packet whose fixed header is followed directly
/// by TCP or UDP; behind an extension header (a fragment header above
/// all) the receiving stack decides.
fn segment_v6(ip: &[u8]) -> Option<Segment> {
    let p = ipv6::Packet::new_checked(ip).ok()?;
    let (hl, total) = (ipv6::HEADER_LEN, p.total_len());
    let len = total - hl;
    Some(Segment {
        start: hl,
        end: total,
        at: checksum_at(p.next_header(), len)?,
        pseudo: p.pseudo_header_sum(p.next_header(), len as u32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::tcp_segment;

    /// A UDP datagram 10.244.1.5:4000 → 10.244.2.7:53 with `payload`, its
    /// checksum complete.
    fn udp_datagram(payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[10, 244, 1, 5]);
        p[16..20].copy_from_slice(&[10, 244, 2, 7]);
        let ip = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&ip.to_be_bytes());
        p[20..22].copy_from_slice(&4000u16.to_be_bytes());
        p[22..24].copy_from_slice(&53u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        let pseudo = pseudo_header_sum(
            [10, 244, 1, 5],
            [10, 244, 2, 7],
            17,
            (8 + payload.len()) as u16,
        );
        let c = !checksum::fold(checksum::sum(&p[20..], pseudo));
        p[26..28].copy_from_slice(&if c == 0 { 0xffff } else { c }.to_be_bytes());
        p
    }

    /// Rewrites the L4 checksum at `at` as the kernel leaves it under
    /// CHECKSUM_PARTIAL: the folded pseudo-header sum.
    fn make_partial(p: &mut [u8], at: usize) {
        let len = (p.len() - 20) as u16;
        let pseudo = pseudo_header_sum(
            p[12..16].try_into().unwrap(),
            p[16..20].try_into().unwrap(),
            p[9],
            len,
        );
        let f = checksum::fold(pseudo);
        p[20 + at..22 + at].copy_from_slice(&f.to_be_bytes());
    }

    #[test]
    fn complete_checksums_are_valid_and_untouched() {
        for mut p in [tcp_segment(1000, 1448, 0x10), udp_datagram(b"hello, world")] {
            let before = p.clone();
            assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Valid));
            assert_eq!(p, before);
        }
    }

    #[test]
    fn partial_checksums_are_completed_to_the_right_value() {
        for size in [0usize, 1, 7, 100, 1400, 1448] {
            let good = tcp_segment(7, size, 0x18);
            let mut p = good.clone();
            make_partial(&mut p, field::TCP_CHECKSUM);
            assert_ne!(p, good, "the partial sum differs from the full one");
            assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Completed));
            assert_eq!(p, good, "tcp, {size} bytes");
            let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let good = udp_datagram(&payload);
            let mut p = good.clone();
            make_partial(&mut p, field::UDP_CHECKSUM);
            assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Completed));
            assert_eq!(p, good, "udp, {size} bytes");
        }
    }

    /// IPv6: the kernel's own UDP datagram, its checksum left partial as
    /// `lo` (and a kernel VXLAN peer) leaves it, is completed, and then
    /// checks out as it is; a flipped byte is dropped; behind an extension
    /// header it is the stack's to check.
    #[test]
    fn ipv6_segments_are_checked_and_completed() {
        use crate::vectors::KERNEL_V6_UDP;
        const AT: usize = ipv6::HEADER_LEN + field::UDP_CHECKSUM;
        let mut p = KERNEL_V6_UDP.to_vec();
        assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Completed));
        assert_ne!(p[AT..AT + 2], KERNEL_V6_UDP[AT..AT + 2]);
        let complete = p.clone();
        assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Valid));
        assert_eq!(p, complete);
        let v6 = ipv6::Packet::new_checked(&complete[..]).unwrap();
        let sum = checksum::fold(checksum::sum(
            &complete[ipv6::HEADER_LEN..],
            v6.pseudo_header_sum(PROTO_UDP, 13),
        ));
        assert_eq!(sum, 0xffff, "the completed sum is the full one");
        p[ipv6::HEADER_LEN + 9] ^= 0x10;
        assert_eq!(verify_or_complete(&mut p), Err(DropReason::L4Checksum));
        let mut p = KERNEL_V6_UDP.to_vec();
        p[6] = ipv6::next_header::FRAGMENT;
        assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Unchecked));
        assert_eq!(p[AT..AT + 2], KERNEL_V6_UDP[AT..AT + 2], "left as it was");
    }

    #[test]
    fn any_other_wrong_checksum_is_dropped() {
        let mut p = tcp_segment(7, 500, 0x10);
        p[20 + 16] ^= 0x01;
        assert_eq!(verify_or_complete(&mut p), Err(DropReason::L4Checksum));
        let mut p = tcp_segment(7, 500, 0x10);
        make_partial(&mut p, field::TCP_CHECKSUM);
        // A partial sum covers no data, so a payload byte changed in flight
        // still completes, as a kernel receiver would accept it.
        p[60] ^= 0x40;
        let before = p.clone();
        assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Completed));
        assert_ne!(p, before);
        let mut p = udp_datagram(b"abc");
        p[26] ^= 0x80;
        assert_eq!(verify_or_complete(&mut p), Err(DropReason::L4Checksum));
    }

    #[test]
    fn what_is_not_checked() {
        // UDP without a checksum.
        let mut p = udp_datagram(b"abc");
        p[26..28].fill(0);
        assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Unchecked));
        // A fragment.
        let mut p = tcp_segment(7, 100, 0x10);
        p[6] |= 0x20;
        assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Unchecked));
        // ICMP, and bytes that are not IPv4.
        let mut p = crate::vectors::KERNEL_REQUEST[22..].to_vec();
        assert_eq!(verify_or_complete(&mut p), Ok(Verdict::Unchecked));
        assert_eq!(verify_or_complete(&mut [0x60; 40]), Ok(Verdict::Unchecked));
        assert_eq!(verify_or_complete(&mut []), Ok(Verdict::Unchecked));
    }
}
