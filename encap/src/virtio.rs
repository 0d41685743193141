//! The `virtio_net_hdr` (`include/uapi/linux/virtio_net.h`) a TUN or TAP
//! device opened with `IFF_VNET_HDR` puts in front of every packet: a view
//! and its meaning. weft writes one to hand the kernel a super-packet to
//! segment (GSO) with its checksum to complete.
//!
//! The fields are little-endian, as the device takes them on a
//! little-endian host without `TUNSETVNETBE`, and as a virtio 1.0 device
//! always does. The 10-byte header has no `num_buffers`.

use crate::Truncated;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
}

/// Length of the header.
pub const HEADER_LEN: usize = field::CSUM_OFFSET.end;

/// `flags` bits.
pub mod flags {
    /// The checksum at `csum_start + csum_offset` holds the pseudo-header
    /// sum only; the device (or whoever takes the packet) completes it.
    pub const NEEDS_CSUM: u8 = 1;
}

/// `gso_type` values.
pub mod gso {
    /// Not a super-packet.
    pub const NONE: u8 = 0;
    /// TCP over IPv4.
    pub const TCPV4: u8 = 1;
    /// UDP (fragmentation offload).
    pub const UDP: u8 = 3;
    /// TCP over IPv6.
    pub const TCPV6: u8 = 4;
    /// Set with the TCP types when the first segment carries CWR.
    pub const ECN: u8 = 0x80;
}

/// A read/write view of a `virtio_net_hdr`.
#[derive(Debug)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// Wraps a buffer after `check_len`.
    pub fn new_checked(buffer: T) -> Result<Header<T>, Truncated> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Checks that the header fits; after this no accessor panics.
    pub fn check_len(&self) -> Result<(), Truncated> {
        match self.buffer.as_ref().len() >= HEADER_LEN {
            true => Ok(()),
            false => Err(Truncated),
        }
    }

    /// `flags`.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// `gso_type`.
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// `hdr_len`: the bytes of headers (link layer included) in front of
    /// the payload that each segment repeats.
    pub fn hdr_len(&self) -> u16 {
        self.le16(field::HDR_LEN)
    }

    /// `gso_size`: payload bytes per segment.
    pub fn gso_size(&self) -> u16 {
        self.le16(field::GSO_SIZE)
    }

    /// `csum_start`: where the checksummed header starts.
    pub fn csum_start(&self) -> u16 {
        self.le16(field::CSUM_START)
    }

    /// `csum_offset`: where the checksum sits, from `csum_start`.
    pub fn csum_offset(&self) -> u16 {
        self.le16(field::CSUM_OFFSET)
    }

    fn le16(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_le_bytes([b[0], b[1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn set_le16(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_le_bytes());
    }
}

/// A header's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repr {
    /// `flags`.
    pub flags: u8,
    /// `gso_type`.
    pub gso_type: u8,
    /// `hdr_len`.
    pub hdr_len: u16,
    /// `gso_size`.
    pub gso_size: u16,
    /// `csum_start`.
    pub csum_start: u16,
    /// `csum_offset`.
    pub csum_offset: u16,
}

impl Repr {
    /// The header that says "one whole packet, nothing to do" (all zero).
    pub const NONE: Repr = Repr {
        flags: 0,
        gso_type: gso::NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads a checked header.
    pub fn parse<T: AsRef<[u8]>>(h: &Header<T>) -> Repr {
        Repr {
            flags: h.flags(),
            gso_type: h.gso_type(),
            hdr_len: h.hdr_len(),
            gso_size: h.gso_size(),
            csum_start: h.csum_start(),
            csum_offset: h.csum_offset(),
        }
    }

    /// Bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first `HEADER_LEN` bytes of `h`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Header<T>) {
        let b = h.buffer.as_mut();
        b[field::FLAGS] = self.flags;
        b[field::GSO_TYPE] = self.gso_type;
        h.set_le16(field::HDR_LEN, self.hdr_len);
        h.set_le16(field::GSO_SIZE, self.gso_size);
        h.set_le16(field::CSUM_START, self.csum_start);
        h.set_le16(field::CSUM_OFFSET, self.csum_offset);
    }

    /// The header as an array, as a `writev` takes it.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        self.emit(&mut Header::new_unchecked(&mut out));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header for a TCP/IPv4 super-packet on a TUN (no link layer),
    /// little-endian: NEEDS_CSUM, TCPV4, 52 bytes of headers, 1448-byte
    /// segments, the TCP header at 20 and its checksum 16 bytes into it.
    const TCPV4: [u8; HEADER_LEN] = [0x01, 0x01, 0x34, 0x00, 0xa8, 0x05, 0x14, 0x00, 0x10, 0x00];

    #[test]
    fn parse_and_emit_are_each_other_s_inverse() {
        let h = Header::new_checked(&TCPV4[..]).unwrap();
        let r = Repr::parse(&h);
        assert_eq!(
            r,
            Repr {
                flags: flags::NEEDS_CSUM,
                gso_type: gso::TCPV4,
                hdr_len: 52,
                gso_size: 1448,
                csum_start: 20,
                csum_offset: 16,
            }
        );
        let mut junk = [0xa5u8; HEADER_LEN + 3];
        r.emit(&mut Header::new_unchecked(&mut junk[..]));
        assert_eq!(&junk[..HEADER_LEN], &TCPV4);
        assert_eq!(&junk[HEADER_LEN..], &[0xa5; 3]);
        assert_eq!(r.to_bytes(), TCPV4);
        assert_eq!(Repr::NONE.to_bytes(), [0; HEADER_LEN]);
        assert!(Header::new_checked(&TCPV4[..9]).is_err());
    }
}
