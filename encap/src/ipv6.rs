//! IPv6 fixed headers (RFC 8200): a checked view, its parsed meaning, and
//! the pseudo-header every upper-layer checksum over IPv6 starts from.
//!
//! `check_len` verifies that the fixed header and the payload its length
//! field announces fit in the buffer and that the version is 6; after that
//! no accessor panics. Extension headers are payload here: weft forwards
//! them untouched and reads no further than `next_header`.

use crate::Truncated;
use core::net::Ipv6Addr;

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST.end;

/// The smallest MTU every IPv6 link has (RFC 8200 §5): no packet-too-big
/// message may announce less, and an ICMPv6 error is never longer.
pub const MIN_MTU: usize = 1280;

/// Next-header values weft looks at.
pub mod next_header {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// The fragment extension header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Why a buffer is not a well-formed IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the fixed header, or than the payload length says.
    Truncated,
    /// Version nibble is not 6.
    Version,
}

impl From<Truncated> for Malformed {
    fn from(_: Truncated) -> Self {
        Malformed::Truncated
    }
}

/// A read/write view of an IPv6 packet.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after `check_len`.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Malformed> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the fixed header, the version and the payload length against
    /// the buffer; after this no accessor panics. The buffer may hold more
    /// than the packet (link padding): `total_len` says where it ends.
    pub fn check_len(&self) -> Result<(), Malformed> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Malformed::Truncated);
        }
        if self.version() != 6 {
            return Err(Malformed::Version);
        }
        if b.len() < self.total_len() {
            return Err(Malformed::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version nibble.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    /// Traffic class (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// Payload length field: what follows the fixed header, extension
    /// headers included.
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The whole packet's length: fixed header plus payload.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// Next header (the first extension header's or the upper layer's
    /// protocol number).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.addr(field::SRC))
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.addr(field::DST))
    }

    /// The source and destination addresses as they sit on the wire (what
    /// a flow hash reads).
    pub fn addrs_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[field::SRC.start..field::DST.end]
    }

    /// The packet, header and payload, without any padding after it
    /// (after `check_len`).
    pub fn bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len()]
    }

    /// The payload, as long as the payload length says (after `check_len`).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }

    /// The folded ones'-complement sum of the IPv6 pseudo-header (RFC 8200
    /// §8.1) for an upper-layer packet of `len` bytes with protocol `next`:
    /// source, destination, length, next header.
    pub fn pseudo_header_sum(&self, next: u8, len: u32) -> u64 {
        pseudo_header_sum(&self.src(), &self.dst(), next, len)
    }

    /// True when `other` belongs to the same flow with the same header
    /// where Linux's `ipv6_gro_receive` requires it: traffic class, flow
    /// label, next header, hop limit, source and destination (only the
    /// payload length may differ).
    pub fn same_flow_as<U: AsRef<[u8]>>(&self, other: &Packet<U>) -> bool {
        let (a, b) = (self.buffer.as_ref(), other.buffer.as_ref());
        a[field::VER_TC_FLOW] == b[field::VER_TC_FLOW]
            && a[field::NXT_HDR..field::DST.end] == b[field::NXT_HDR..field::DST.end]
    }

    fn ver_tc_flow(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn addr(&self, r: core::ops::Range<usize>) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[r]);
        a
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, the traffic class and the flow label.
    pub fn set_ver_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let w = (6 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, next: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = next;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hops: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hops;
    }

    /// Sets the source address.
    pub fn set_src(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    /// The payload, writable (after `check_len`).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The pseudo-header sum (RFC 8200 §8.1) for `len` bytes of protocol
/// `next` from `src` to `dst`, unfolded: add the upper-layer bytes to it
/// and fold.
pub fn pseudo_header_sum(src: &Ipv6Addr, dst: &Ipv6Addr, next: u8, len: u32) -> u64 {
    let mut acc = 0u64;
    for a in [src, dst] {
        for w in a.segments() {
            acc += u64::from(w);
        }
    }
    acc + u64::from(len >> 16) + u64::from(len & 0xffff) + u64::from(next)
}

/// The fixed header's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next header.
    pub next_header: u8,
    /// Payload length.
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
}

impl Repr {
    /// Reads a checked packet's header. Traffic class and flow label are
    /// not kept: weft writes 0 for both in what it originates.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Repr {
        Repr {
            src: p.src(),
            dst: p.dst(),
            next_header: p.next_header(),
            payload_len: p.payload_len(),
            hop_limit: p.hop_limit(),
        }
    }

    /// Bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first `HEADER_LEN` bytes of `p`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_ver_tc_flow(0, 0);
        p.set_payload_len(self.payload_len);
        p.set_next_header(self.next_header);
        p.set_hop_limit(self.hop_limit);
        p.set_src(self.src);
        p.set_dst(self.dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;
    use crate::vectors::{KERNEL_V6_ECHO_REQUEST, KERNEL_V6_PORT_UNREACHABLE, KERNEL_V6_UDP};

    #[test]
    fn reads_the_kernel_s_header() {
        let p = Packet::new_checked(&KERNEL_V6_UDP[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0);
        assert_eq!(p.flow_label(), 0xd8541);
        assert_eq!(p.payload_len(), 13);
        assert_eq!(p.total_len(), KERNEL_V6_UDP.len());
        assert_eq!(p.next_header(), next_header::UDP);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src(), Ipv6Addr::LOCALHOST);
        assert_eq!(p.dst(), Ipv6Addr::LOCALHOST);
        assert_eq!(&p.payload()[8..], b"hello");
    }

    /// The kernel's ICMPv6 checksums verify over the pseudo-header, and
    /// the partial UDP checksum `lo` left (its offload completes it) is
    /// exactly the pseudo-header sum.
    #[test]
    fn the_kernel_s_checksums_agree_with_the_pseudo_header() {
        for v in [&KERNEL_V6_ECHO_REQUEST[..], &KERNEL_V6_PORT_UNREACHABLE[..]] {
            let p = Packet::new_checked(v).unwrap();
            let len = u32::from(p.payload_len());
            let acc = checksum::sum(p.payload(), p.pseudo_header_sum(p.next_header(), len));
            assert_eq!(checksum::fold(acc), 0xffff, "{v:02x?}");
        }
        let p = Packet::new_checked(&KERNEL_V6_UDP[..]).unwrap();
        let partial = u16::from_be_bytes([p.payload()[6], p.payload()[7]]);
        let pseudo = p.pseudo_header_sum(next_header::UDP, u32::from(p.payload_len()));
        assert_eq!(partial, checksum::fold(pseudo));
    }

    /// The quartet: parse a captured header, emit it into junk, and read
    /// back the same packet (the capture's flow label aside, which `Repr`
    /// does not keep).
    #[test]
    fn emit_writes_what_parse_read() {
        let p = Packet::new_checked(&KERNEL_V6_ECHO_REQUEST[..]).unwrap();
        let repr = Repr::parse(&p);
        let mut buf = [0xa5u8; KERNEL_V6_ECHO_REQUEST.len()];
        buf[HEADER_LEN..].copy_from_slice(p.payload());
        let mut q = Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut q);
        let q = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&q), repr);
        assert_eq!(q.flow_label(), 0);
        assert_eq!(&buf[4..], &KERNEL_V6_ECHO_REQUEST[4..]);
    }

    #[test]
    fn short_wrong_version_and_overlong_payload_are_refused() {
        let v = &KERNEL_V6_UDP[..];
        assert_eq!(
            Packet::new_checked(&v[..HEADER_LEN - 1]).unwrap_err(),
            Malformed::Truncated
        );
        assert_eq!(
            Packet::new_checked(&v[..v.len() - 1]).unwrap_err(),
            Malformed::Truncated
        );
        let mut four = v.to_vec();
        four[0] = 0x45;
        assert_eq!(
            Packet::new_checked(&four[..]).unwrap_err(),
            Malformed::Version
        );
        // Padding after the packet is allowed; the payload ends where the
        // length says.
        let mut padded = v.to_vec();
        padded.extend_from_slice(&[0; 7]);
        let p = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload().len(), 13);
    }
}
