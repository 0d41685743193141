//! A TCP header view (RFC 9293 §3.1), in the shape of smoltcp's
//! `wire/tcp.rs`: `Segment::new_checked` checks the lengths once, and every
//! accessor after that reads a field at its named offset.

use core::ops::Range;

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
}

/// The shortest TCP header.
pub const MIN_HEADER_LEN: usize = 20;
/// The longest TCP header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;
/// The checksum field's range in the header.
pub const CHECKSUM: Range<usize> = field::CHECKSUM;

/// TCP flag bits (the header's byte 13).
pub mod flags {
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Urgent pointer significant.
    pub const URG: u8 = 0x20;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// Reset.
    pub const RST: u8 = 0x04;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
}

/// A TCP segment (header and payload) over a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Segment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Segment<T> {
    /// A view without checks: accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Segment<T> {
        Segment { buffer }
    }

    /// A view of a buffer that holds the whole header its data offset
    /// announces (at least 20 bytes); `None` otherwise.
    pub fn new_checked(buffer: T) -> Option<Segment<T>> {
        let s = Segment::new_unchecked(buffer);
        let len = s.buffer.as_ref().len();
        (len >= MIN_HEADER_LEN && {
            let hl = s.header_len();
            hl >= MIN_HEADER_LEN && hl <= len
        })
        .then_some(s)
    }

    fn be16(&self, r: Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn be32(&self, r: Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.be16(field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.be16(field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        self.be32(field::SEQ)
    }

    /// Acknowledgment number.
    pub fn ack(&self) -> u32 {
        self.be32(field::ACK)
    }

    /// Header length in bytes, from the data offset.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The flag bits (`flags::*`).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Receive window.
    pub fn window(&self) -> u16 {
        self.be16(field::WINDOW)
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }

    /// The options: the header after its first 20 bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The payload: everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Whether `other` has the same ports, ACK, window and options: what
    /// Linux's GRO requires of TCP segments it merges (`tcp_gro_receive`).
    /// Both headers must be whole (`new_checked`).
    #[inline]
    pub fn same_flow_as<U: AsRef<[u8]>>(&self, other: &Segment<U>) -> bool {
        let (a, b) = (self.buffer.as_ref(), other.buffer.as_ref());
        let options = MIN_HEADER_LEN..self.header_len();
        a[field::SRC_PORT.start..field::DST_PORT.end]
            == b[field::SRC_PORT.start..field::DST_PORT.end]
            && a[field::ACK] == b[field::ACK]
            && a[field::WINDOW] == b[field::WINDOW]
            && a.get(options.clone()) == b.get(options)
    }

    /// The whole segment.
    pub fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Segment<T> {
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    /// Sets flag bits (`flags::*`), keeping the others.
    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] |= f;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::tcp_segment;

    #[test]
    fn fields_of_a_known_segment() {
        let p = tcp_segment(1000, 100, flags::ACK | flags::PSH);
        let s = Segment::new_checked(&p[20..]).unwrap();
        assert_eq!((s.src_port(), s.dst_port()), (40000, 5201));
        assert_eq!((s.seq(), s.ack(), s.window()), (1000, 7, 500));
        assert_eq!(s.header_len(), 32);
        assert_eq!(s.flags(), flags::ACK | flags::PSH);
        assert_eq!(s.options(), &[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        assert_eq!(s.payload().len(), 100);
    }

    #[test]
    fn short_or_inconsistent_headers_are_refused() {
        let p = tcp_segment(1, 0, flags::ACK);
        assert!(
            Segment::new_checked(&p[20..39]).is_none(),
            "shorter than 20"
        );
        assert!(
            Segment::new_checked(&p[20..45]).is_none(),
            "options cut off"
        );
        let mut q = p.clone();
        q[20 + 12] = 4 << 4;
        assert!(Segment::new_checked(&q[20..]).is_none(), "data offset < 5");
        assert!(Segment::new_checked(&p[20..]).is_some());
    }
}
