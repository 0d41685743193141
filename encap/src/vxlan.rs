//! VXLAN (RFC 7348) as the Linux driver and flannel put it on the wire, and
//! the checks the Linux receiver makes (`vxlan_rcv` in vxlan_core.c).
//!
//! Wire: 8-byte header (byte 0 = 0x08, the I flag; bytes 4–6 = VNI; all else
//! zero), then an untagged Ethernet frame without FCS.

use crate::ethernet::{self, ethertype, Frame, MacAddr};
use crate::ipv4;
use crate::DropReason;
use core::ops::Range;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const RESERVED1: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED2: usize = 7;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::RESERVED2 + 1;

/// The I flag: the VNI is valid. The only flag flannel peers send.
pub const FLAG_I: u8 = 0x08;

/// Bytes VXLAN adds in front of an IP packet inside the outer UDP payload.
pub const ENCAP_LEN: usize = HEADER_LEN + ethernet::HEADER_LEN;

/// The whole VXLAN overhead on an IPv4 underlay: outer IPv4 (20) + UDP (8) +
/// VXLAN (8) + inner Ethernet (14). Device MTU = underlay MTU − this.
pub const IPV4_OVERHEAD: usize = 20 + 8 + ENCAP_LEN;
/// The same over an IPv6 underlay, whose header is 40 bytes: 70, why the
/// kernel caps a `flannel-v6` device's MTU at the underlay's − 70.
pub const IPV6_OVERHEAD: usize = 40 + 8 + ENCAP_LEN;

/// The Linux default VXLAN port, which flannel uses (IANA's is 4789).
pub const DEFAULT_PORT: u16 = 8472;

/// A 24-bit VXLAN network identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// flannel's default VNI.
    pub const DEFAULT: Vni = Vni(1);

    /// A VNI, if `v` fits 24 bits.
    pub const fn new(v: u32) -> Option<Vni> {
        if v < (1 << 24) {
            Some(Vni(v))
        } else {
            None
        }
    }

    /// The numeric value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl core::fmt::Display for Vni {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

/// A read/write view of a VXLAN header.
#[derive(Debug)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps a buffer without checking its length.
    pub fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// Wraps a buffer after `check_len`.
    pub fn new_checked(buffer: T) -> Result<Header<T>, DropReason> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Ensures the 8-byte header fits; after this no accessor panics.
    pub fn check_len(&self) -> Result<(), DropReason> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(DropReason::ShortHeader)
        } else {
            Ok(())
        }
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True when any bit the Linux receiver requires to be zero is set:
    /// every flag but I, and both reserved fields.
    pub fn reserved_bits_set(&self) -> bool {
        let b = self.buffer.as_ref();
        b[field::FLAGS] & !FLAG_I != 0
            || b[field::RESERVED1].iter().any(|&x| x != 0)
            || b[field::RESERVED2] != 0
    }

    /// The VNI field.
    pub fn vni(&self) -> Vni {
        let b = &self.buffer.as_ref()[field::VNI];
        Vni(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI and clears both reserved fields.
    pub fn set_vni(&mut self, vni: Vni) {
        let b = self.buffer.as_mut();
        b[field::RESERVED1].fill(0);
        b[field::VNI].copy_from_slice(&vni.0.to_be_bytes()[1..]);
        b[field::RESERVED2] = 0;
    }
}

/// The parsed meaning of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The network identifier.
    pub vni: Vni,
}

impl Repr {
    /// Checks the header as Linux does: I flag set, no reserved bit set.
    pub fn parse<T: AsRef<[u8]>>(h: &Header<T>) -> Result<Repr, DropReason> {
        if h.flags() & FLAG_I == 0 {
            return Err(DropReason::FlagsInvalid);
        }
        if h.reserved_bits_set() {
            return Err(DropReason::ReservedBits);
        }
        Ok(Repr { vni: h.vni() })
    }

    /// Bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into a checked view.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Header<T>) {
        h.set_flags(FLAG_I);
        h.set_vni(self.vni);
    }
}

/// Where the inner packet of an accepted datagram lies, as ranges into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inner {
    /// The inner Ethernet frame, trimmed to the IP packet's own length.
    pub frame: Range<usize>,
    /// The inner IP packet.
    pub ip: Range<usize>,
    /// The inner EtherType (IPv4 or IPv6).
    pub ethertype: u16,
}

/// Why `Endpoint::encapsulate_ip` or `encapsulate_frame` built no datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapError {
    /// The packet cannot be carried: a drop with this reason.
    Drop(DropReason),
    /// The caller left less headroom in front of the packet than the
    /// headers need: a bug in the caller, not a fault of the packet.
    NoHeadroom,
}

/// One end of a VXLAN tunnel: our VNI and our VtepMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The VNI every node of the cluster uses.
    pub vni: Vni,
    /// Our VtepMAC: the inner source we send, the inner destination we accept.
    pub mac: MacAddr,
}

impl Endpoint {
    /// Validates a received VXLAN payload (the UDP payload) the way the Linux
    /// receiver does, plus inner-IP header checks (docs/security.md lists
    /// them), and says where the inner packet is.
    pub fn decapsulate(&self, datagram: &[u8]) -> Result<Inner, DropReason> {
        let header = Header::new_checked(datagram)?;
        let repr = Repr::parse(&header)?;
        if repr.vni != self.vni {
            return Err(DropReason::VniMismatch);
        }
        let frame =
            Frame::new_checked(&datagram[HEADER_LEN..]).map_err(|_| DropReason::InnerTruncated)?;
        if frame.src() == self.mac {
            return Err(DropReason::LoopedFrame);
        }
        if frame.dst() != self.mac {
            return Err(DropReason::OtherHost);
        }
        let ethertype = frame.ethertype();
        let ip_start = HEADER_LEN + ethernet::HEADER_LEN;
        let ip_len = match ethertype {
            ethertype::IPV4 => check_ipv4(&datagram[ip_start..])?,
            ethertype::IPV6 => check_ipv6(&datagram[ip_start..])?,
            _ => return Err(DropReason::EtherType),
        };
        Ok(Inner {
            frame: HEADER_LEN..ip_start + ip_len,
            ip: ip_start..ip_start + ip_len,
            ethertype,
        })
    }

    /// Encapsulates an IP packet at `buf[packet]` for a peer whose VtepMAC
    /// is `dst`: writes the inner Ethernet header and the VXLAN header into
    /// the headroom in front of it and returns the UDP payload's range.
    /// Fails with a drop (`EtherType`) for a packet that is neither IPv4
    /// nor IPv6, and with `NoHeadroom` when the caller left too little.
    pub fn encapsulate_ip(
        &self,
        buf: &mut [u8],
        packet: Range<usize>,
        dst: MacAddr,
    ) -> Result<Range<usize>, EncapError> {
        let ethertype = match buf.get(packet.start..).and_then(crate::ip_version) {
            Some(4) => ethertype::IPV4,
            Some(6) => ethertype::IPV6,
            _ => return Err(EncapError::Drop(DropReason::EtherType)),
        };
        let frame_start = packet
            .start
            .checked_sub(ethernet::HEADER_LEN)
            .ok_or(EncapError::NoHeadroom)?;
        let eth = ethernet::Repr {
            dst,
            src: self.mac,
            ethertype,
        };
        eth.emit(&mut Frame::new_unchecked(
            &mut buf[frame_start..packet.start],
        ));
        self.encapsulate_frame(buf, frame_start..packet.end)
    }

    /// Encapsulates an Ethernet frame at `buf[frame]` (from a TAP device):
    /// writes the VXLAN header in front of it and returns the UDP payload's
    /// range. Fails with `NoHeadroom` when there is none.
    pub fn encapsulate_frame(
        &self,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> Result<Range<usize>, EncapError> {
        let start = frame
            .start
            .checked_sub(HEADER_LEN)
            .ok_or(EncapError::NoHeadroom)?;
        Repr { vni: self.vni }.emit(&mut Header::new_unchecked(&mut buf[start..frame.start]));
        Ok(start..frame.end)
    }
}

/// The datagram length at which `datagram` would hold exactly the VXLAN
/// header, the inner Ethernet header and the whole inner IPv4 or IPv6
/// packet its header announces; `None` if it does not start with an IP
/// frame.
///
/// A kernel VXLAN peer on the same host hands its TCP super-packets to the
/// underlay unsegmented (SKB_GSO_UDP_TUNNEL), and the receiving UDP socket
/// gets each as one datagram of up to 64 KiB. A run of datagrams coalesced
/// by UDP GRO instead starts with a datagram that ends at its first
/// segment. This length tells the two apart.
pub fn carried_len(datagram: &[u8]) -> Option<usize> {
    let ip_start = HEADER_LEN + ethernet::HEADER_LEN;
    let frame = Frame::new_checked(datagram.get(HEADER_LEN..)?).ok()?;
    let ip = datagram.get(ip_start..)?;
    match frame.ethertype() {
        ethertype::IPV4 => {
            let p = ipv4::Packet::new_unchecked(ip);
            (ip.len() >= ipv4::MIN_HEADER_LEN && p.version() == 4)
                .then(|| ip_start + usize::from(p.total_len()))
        }
        ethertype::IPV6 => {
            let p = crate::ipv6::Packet::new_unchecked(ip);
            (ip.len() >= crate::ipv6::HEADER_LEN && p.version() == 6)
                .then(|| ip_start + p.total_len())
        }
        _ => None,
    }
}

/// Checks an inner IPv4 packet and returns its total length.
fn check_ipv4(b: &[u8]) -> Result<usize, DropReason> {
    let p = ipv4::Packet::new_checked(b).map_err(|_| DropReason::Ipv4Malformed)?;
    if !p.verify_checksum() {
        return Err(DropReason::Ipv4Checksum);
    }
    Ok(usize::from(p.total_len()))
}

/// Checks an inner IPv6 fixed header and returns the packet's length.
fn check_ipv6(b: &[u8]) -> Result<usize, DropReason> {
    let p = crate::ipv6::Packet::new_checked(b).map_err(|_| DropReason::Ipv6Malformed)?;
    Ok(p.total_len())
}

#[cfg(test)]
mod tests;
