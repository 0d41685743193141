//! Ethernet II frames (no FCS, as VXLAN carries them) and MAC addresses.

use crate::Truncated;

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = field::ETHERTYPE.end;

/// EtherType values weft cares about.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IEEE 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// A VtepMAC from six random bytes: locally administered (bit 1 of the
    /// first octet set) and unicast (bit 0 clear), as flannel makes them.
    pub fn vtep_from_random(mut bytes: [u8; 6]) -> MacAddr {
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        MacAddr(bytes)
    }

    /// True for group (multicast and broadcast) addresses.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for a locally administered address.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The raw bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl core::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Error for a string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMacError;

impl core::fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MAC address must be six hex octets separated by ':'")
    }
}

impl std::error::Error for ParseMacError {}

impl core::str::FromStr for MacAddr {
    type Err = ParseMacError;

    /// Six octets of one or two hex digits each, separated by `:`. One
    /// pass over the bytes: the control plane parses every lease's VtepMAC
    /// on every change.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let (mut octet, mut digits) = (0, 0);
        for &c in s.as_bytes() {
            match c {
                b':' if digits > 0 && octet < 5 => {
                    octet += 1;
                    digits = 0;
                }
                _ => {
                    let d = (c as char).to_digit(16).ok_or(ParseMacError)? as u8;
                    if digits == 2 {
                        return Err(ParseMacError);
                    }
                    out[octet] = out[octet] << 4 | d;
                    digits += 1;
                }
            }
        }
        if octet != 5 || digits == 0 {
            return Err(ParseMacError);
        }
        Ok(MacAddr(out))
    }
}

/// A read/write view of an Ethernet II frame.
#[derive(Debug)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking its length.
    pub fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer after `check_len`.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, Truncated> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Ensures the header fits; after this no accessor panics.
    pub fn check_len(&self) -> Result<(), Truncated> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Truncated)
        } else {
            Ok(())
        }
    }

    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        MacAddr(octets(&self.buffer.as_ref()[field::DST]))
    }

    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        MacAddr(octets(&self.buffer.as_ref()[field::SRC]))
    }

    /// EtherType.
    pub fn ethertype(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC.
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ty: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&ty.to_be_bytes());
    }
}

fn octets(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// The parsed meaning of an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// EtherType.
    pub ethertype: u16,
}

impl Repr {
    /// Reads a checked frame's header.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Repr {
        Repr {
            dst: frame.dst(),
            src: frame.src(),
            ethertype: frame.ethertype(),
        }
    }

    /// Bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into a frame whose length was checked.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst(self.dst);
        frame.set_src(self.src);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 14] = [
        0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, 0x0e, 0x01, 0x02, 0x03, 0x04, 0x05, 0x08, 0x00,
    ];

    #[test]
    fn parse_and_emit() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        let r = Repr::parse(&f);
        assert_eq!(r.dst.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(r.src, MacAddr([0x0e, 1, 2, 3, 4, 5]));
        assert_eq!(r.ethertype, ethertype::IPV4);
        let mut junk = [0xa5u8; 14];
        r.emit(&mut Frame::new_unchecked(&mut junk[..]));
        assert_eq!(junk, FRAME);
    }

    #[test]
    fn short_frame_is_refused() {
        assert_eq!(Frame::new_checked(&FRAME[..13]).unwrap_err(), Truncated);
    }

    #[test]
    fn mac_parse_and_print() {
        let m: MacAddr = "c6:d2:32:6f:8f:44".parse().unwrap();
        assert_eq!(m.to_string(), "c6:d2:32:6f:8f:44");
        assert!("c6:d2:32:6f:8f".parse::<MacAddr>().is_err());
        assert!("c6:d2:32:6f:8f:44:00".parse::<MacAddr>().is_err());
        assert!("c6:d2:32:6f:8f:4g".parse::<MacAddr>().is_err());
        assert!("c6:d2:32:6f:8f:".parse::<MacAddr>().is_err());
        // One or two digits an octet, either case; nothing else.
        assert_eq!(
            "e:0:A:b:00:ff".parse::<MacAddr>(),
            Ok(MacAddr([0x0e, 0, 0x0a, 0x0b, 0, 0xff]))
        );
        for bad in [
            "",
            ":",
            "c6::d2:32:6f:8f",
            "c6:d2:32:6f:8f:444",
            "+6:d2:32:6f:8f:44",
            ":c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:",
            "c6-d2-32-6f-8f-44",
            "c6:d2:32:6f:8f: 4",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vtep_mac_is_local_unicast() {
        let m = MacAddr::vtep_from_random([0xff; 6]);
        assert!(m.is_local() && !m.is_multicast());
        let m = MacAddr::vtep_from_random([0x00; 6]);
        assert!(m.is_local() && !m.is_multicast());
    }
}
