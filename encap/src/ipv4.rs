//! IPv4 headers (RFC 791): a checked view and the few edits a forwarder makes.
//!
//! `check_len` verifies that the fixed header, the options (IHL) and the
//! total length all fit in the buffer; after that no accessor panics.

use crate::checksum;
use crate::Truncated;
use core::net::Ipv4Addr;

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = field::DST.end;

/// IP protocol numbers weft looks at.
pub mod protocol {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Why a buffer is not a well-formed IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the header or the total length says.
    Truncated,
    /// Version nibble is not 4.
    Version,
    /// IHL below 5, or total length below the header length.
    HeaderLength,
    /// Header checksum does not verify.
    Checksum,
}

impl From<Truncated> for Malformed {
    fn from(_: Truncated) -> Self {
        Malformed::Truncated
    }
}

/// A read/write view of an IPv4 packet.
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

    /// Checks version, IHL and total length against the buffer; after this
    /// no accessor panics. The checksum is checked by `verify_checksum`.
    pub fn check_len(&self) -> Result<(), Malformed> {
        let b = self.buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(Malformed::Truncated);
        }
        if self.version() != 4 {
            return Err(Malformed::Version);
        }
        let hl = self.header_len();
        let total = usize::from(self.total_len());
        if hl < MIN_HEADER_LEN || total < hl {
            return Err(Malformed::HeaderLength);
        }
        if b.len() < total {
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
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Type of service / DSCP+ECN byte.
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// Total length field.
    pub fn total_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Identification field.
    pub fn ident(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::IDENT])
    }

    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::FLG_OFF]) & 0x1fff
    }

    /// Whether `other` has the same TOS, TTL, DF bit and addresses: what
    /// Linux's GRO requires of IPv4 packets it merges (`inet_gro_receive`).
    /// Both headers must be whole (`check_len`).
    #[inline]
    pub fn same_flow_as<U: AsRef<[u8]>>(&self, other: &Packet<U>) -> bool {
        let (a, b) = (self.buffer.as_ref(), other.buffer.as_ref());
        const DF: u8 = 0x40;
        a[field::TOS] == b[field::TOS]
            && a[field::TTL] == b[field::TTL]
            && a[field::FLG_OFF.start] & DF == b[field::FLG_OFF.start] & DF
            && a[field::SRC.start..field::DST.end] == b[field::SRC.start..field::DST.end]
    }

    /// True for a fragment: MF set or a fragment offset (DF may be either).
    pub fn is_fragment(&self) -> bool {
        be16(&self.buffer.as_ref()[field::FLG_OFF]) & 0x3fff != 0
    }

    /// The DF (don't fragment) flag.
    pub fn dont_fragment(&self) -> bool {
        be16(&self.buffer.as_ref()[field::FLG_OFF]) & 0x4000 != 0
    }

    /// The more-fragments flag.
    pub fn more_fragments(&self) -> bool {
        be16(&self.buffer.as_ref()[field::FLG_OFF]) & 0x2000 != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol number.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::DST])
    }

    /// True when the header (options included) sums to zero.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.buffer.as_ref()[..self.header_len()], 0)) == 0xffff
    }

    /// The packet up to its total length (trailing bytes excluded).
    pub fn bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.total_len())]
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The bytes after the header, up to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the total length (the caller refills the checksum).
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Decrements TTL by one and patches the checksum incrementally
    /// (RFC 1624), as flannel's proxy does. Returns the new TTL. The caller
    /// checks for TTL ≤ 1 first.
    pub fn decrement_ttl(&mut self) -> u8 {
        let b = self.buffer.as_mut();
        let old = be16(&b[field::TTL..field::PROTOCOL + 1]);
        b[field::TTL] = b[field::TTL].saturating_sub(1);
        let new = be16(&b[field::TTL..field::PROTOCOL + 1]);
        let c = checksum::update16(be16(&b[field::CHECKSUM]), old, new);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        b[field::TTL]
    }

    /// Recomputes the header checksum.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buffer.as_mut();
        b[field::CHECKSUM].fill(0);
        let c = checksum::checksum(&b[..hl]);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// The fields of a header weft builds itself (for ICMP replies): no options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub protocol: u8,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
}

impl Repr {
    /// Bytes `emit` writes: the header only.
    pub const fn buffer_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Writes a 20-byte header with a valid checksum into `buf[..20]`.
    /// `buf` must hold at least `buffer_len()` bytes and the total length
    /// must fit 16 bits; both are the caller's invariants.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..MIN_HEADER_LEN];
        b[field::VER_IHL] = 0x45;
        b[field::TOS] = 0;
        let total = (MIN_HEADER_LEN + self.payload_len) as u16;
        b[field::LENGTH].copy_from_slice(&total.to_be_bytes());
        b[field::IDENT].fill(0);
        b[field::FLG_OFF].fill(0);
        b[field::TTL] = self.ttl;
        b[field::PROTOCOL] = self.protocol;
        b[field::CHECKSUM].fill(0);
        b[field::SRC].copy_from_slice(&self.src.octets());
        b[field::DST].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(b);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ICMP echo request 10.244.1.0 → 10.244.2.2 (header checksum
    /// computed independently with Python's struct module).
    pub const ECHO: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x8c, 0x5b, 0x40, 0x00, 0x40, 0x01, 0x95, 0x9c, 0x0a, 0xf4, 0x01,
        0x00, 0x0a, 0xf4, 0x02, 0x02, 0x08, 0x00, 0xf7, 0xff, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn parse_valid() {
        let p = Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), protocol::ICMP);
        assert_eq!(p.src(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 244, 2, 2));
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn malformed_cases() {
        assert_eq!(
            Packet::new_checked(&ECHO[..19]).unwrap_err(),
            Malformed::Truncated
        );
        let mut v6 = ECHO;
        v6[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&v6[..]).unwrap_err(),
            Malformed::Version
        );
        let mut ihl = ECHO;
        ihl[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&ihl[..]).unwrap_err(),
            Malformed::HeaderLength
        );
        let mut long = ECHO;
        long[3] = 0x40;
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap_err(),
            Malformed::Truncated
        );
        let mut bad = ECHO;
        bad[11] ^= 1;
        assert!(!Packet::new_checked(&bad[..]).unwrap().verify_checksum());
    }

    #[test]
    fn decrement_ttl_keeps_checksum_valid() {
        let mut b = ECHO;
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.decrement_ttl(), 63);
        assert!(p.verify_checksum());
        let mut again = b;
        again[10..12].fill(0);
        let mut q = Packet::new_unchecked(&mut again[..]);
        q.fill_checksum();
        assert_eq!(q.checksum(), Packet::new_unchecked(&b[..]).checksum());
    }

    #[test]
    fn emit_writes_a_valid_header_over_junk() {
        let repr = Repr {
            src: Ipv4Addr::new(10, 244, 1, 0),
            dst: Ipv4Addr::new(10, 244, 2, 2),
            protocol: protocol::ICMP,
            payload_len: 8,
            ttl: 64,
        };
        let mut junk = [0x5au8; 28];
        repr.emit(&mut junk);
        let p = Packet::new_checked(&junk[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.src(), repr.src);
        assert_eq!(p.dst(), repr.dst);
        assert_eq!(usize::from(p.total_len()), 28);
    }
}
