//! ICMPv6 (RFC 4443): a checked view of a message, and the errors a
//! forwarder writes back to a sender: destination unreachable, packet too
//! big (nothing fragments IPv6 on the way, so a sender learns the path MTU
//! only from this), and hop limit exceeded.
//!
//! Like the kernel (RFC 4443 §2.4 (e)), weft never answers an ICMPv6
//! error, a packet from an unspecified or multicast source, or one sent to
//! a multicast group (packet too big aside, which path MTU discovery for
//! multicast needs). An error is as long as fits in the minimum IPv6 MTU:
//! it quotes as much of the offender as fits in 1 280 bytes.

use crate::checksum;
use crate::ipv6::{self, next_header};
use crate::Truncated;
use core::net::Ipv6Addr;

mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Unused in unreachable and time exceeded, the MTU in packet too big,
    /// identifier and sequence number in echo.
    pub const REST: Range<usize> = 4..8;
}

/// Length of the ICMPv6 header: type, code, checksum and the 4-byte field
/// every message type has.
pub const HEADER_LEN: usize = field::REST.end;

/// The longest error `emit_error` writes (the minimum IPv6 MTU).
pub const MAX_ERROR_LEN: usize = ipv6::MIN_MTU;

/// Message types weft looks at.
pub mod msg_type {
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
}

/// Destination unreachable codes.
pub mod unreachable {
    /// No route to destination.
    pub const NO_ROUTE: u8 = 0;
    /// Port unreachable.
    pub const PORT: u8 = 4;
}

/// A read/write view of an ICMPv6 message (the IPv6 payload).
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
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Truncated> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header fits; after this no accessor panics.
    pub fn check_len(&self) -> Result<(), Truncated> {
        match self.buffer.as_ref().len() >= HEADER_LEN {
            true => Ok(()),
            false => Err(Truncated),
        }
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The MTU a packet too big announces (the 4-byte field of any type).
    pub fn mtu(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::REST];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// An error's quote of the offending packet (what follows the header).
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// True for an error message (types below 128, RFC 4443 §2.1).
    pub fn is_error(&self) -> bool {
        self.msg_type() < 128
    }

    /// Whether the checksum verifies for a message from `src` to `dst`.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        let b = self.buffer.as_ref();
        let pseudo = ipv6::pseudo_header_sum(src, dst, next_header::ICMPV6, b.len() as u32);
        checksum::fold(checksum::sum(b, pseudo)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets type and code.
    pub fn set_type_code(&mut self, ty: u8, code: u8) {
        let b = self.buffer.as_mut();
        b[field::TYPE] = ty;
        b[field::CODE] = code;
    }

    /// Sets the 4-byte field (the MTU of a packet too big; zero otherwise).
    pub fn set_rest(&mut self, v: u32) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&v.to_be_bytes());
    }

    /// The body, writable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Computes and writes the checksum for a message from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.buffer.as_mut()[field::CHECKSUM].fill(0);
        let b = self.buffer.as_ref();
        let pseudo = ipv6::pseudo_header_sum(src, dst, next_header::ICMPV6, b.len() as u32);
        let c = !checksum::fold(checksum::sum(b, pseudo));
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// Which error to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Type 1, with its code (`unreachable::*`).
    DstUnreachable(u8),
    /// Type 2: the packet does not fit a link of this MTU.
    PacketTooBig {
        /// The MTU to announce; never below 1 280.
        mtu: u32,
    },
    /// Type 3 code 0: hop limit exceeded in transit.
    HopLimitExceeded,
}

impl ErrorKind {
    fn type_code_rest(self) -> (u8, u8, u32) {
        match self {
            ErrorKind::DstUnreachable(code) => (msg_type::DST_UNREACHABLE, code, 0),
            ErrorKind::PacketTooBig { mtu } => {
                (msg_type::PACKET_TOO_BIG, 0, mtu.max(ipv6::MIN_MTU as u32))
            }
            ErrorKind::HopLimitExceeded => (msg_type::TIME_EXCEEDED, 0, 0),
        }
    }
}

/// True when RFC 4443 §2.4 (e) allows `kind` about this (checked) packet.
pub fn may_answer<T: AsRef<[u8]>>(kind: ErrorKind, offender: &ipv6::Packet<T>) -> bool {
    let src = offender.src();
    if src.is_unspecified() || src.is_multicast() {
        return false;
    }
    if offender.dst().is_multicast() && !matches!(kind, ErrorKind::PacketTooBig { .. }) {
        return false;
    }
    if offender.next_header() == next_header::ICMPV6 {
        // Errors about errors are forbidden; informational messages (echo)
        // may be answered. An ICMPv6 payload too short to say which it is
        // is not answered either.
        match Packet::new_checked(offender.payload()) {
            Ok(m) if !m.is_error() => {}
            _ => return false,
        }
    }
    true
}

/// Writes a complete IPv6 packet carrying an ICMPv6 error about `offender`
/// from `src` into `out` and returns its length, or `None` when RFC 4443
/// forbids answering or `out` is shorter than `MAX_ERROR_LEN`.
pub fn emit_error<T: AsRef<[u8]>>(
    kind: ErrorKind,
    offender: &ipv6::Packet<T>,
    src: Ipv6Addr,
    out: &mut [u8],
) -> Option<usize> {
    if out.len() < MAX_ERROR_LEN || !may_answer(kind, offender) {
        return None;
    }
    let whole = offender.bytes();
    let quote = whole
        .len()
        .min(MAX_ERROR_LEN - ipv6::HEADER_LEN - HEADER_LEN);
    let icmp_len = HEADER_LEN + quote;
    let dst = offender.src();
    let ip = ipv6::Repr {
        src,
        dst,
        next_header: next_header::ICMPV6,
        payload_len: icmp_len as u16,
        hop_limit: 64,
    };
    let (head, rest) = out.split_at_mut(ipv6::HEADER_LEN);
    ip.emit(&mut ipv6::Packet::new_unchecked(head));
    let mut icmp = Packet::new_unchecked(&mut rest[..icmp_len]);
    let (ty, code, field) = kind.type_code_rest();
    icmp.set_type_code(ty, code);
    icmp.set_rest(field);
    icmp.body_mut().copy_from_slice(&whole[..quote]);
    icmp.fill_checksum(&src, &dst);
    Some(ipv6::HEADER_LEN + icmp_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::{KERNEL_V6_ECHO_REQUEST, KERNEL_V6_PORT_UNREACHABLE, KERNEL_V6_UDP};

    /// The kernel's port unreachable, written by weft: the same bytes
    /// after the flow label (which the kernel sets per flow and weft
    /// leaves 0).
    #[test]
    fn port_unreachable_equals_the_kernel_s() {
        let off = ipv6::Packet::new_checked(&KERNEL_V6_UDP[..]).unwrap();
        let mut out = [0xeeu8; MAX_ERROR_LEN];
        let kind = ErrorKind::DstUnreachable(unreachable::PORT);
        let n = emit_error(kind, &off, Ipv6Addr::LOCALHOST, &mut out).unwrap();
        assert_eq!(&out[4..n], &KERNEL_V6_PORT_UNREACHABLE[4..]);
        let reply = ipv6::Packet::new_checked(&out[..n]).unwrap();
        let m = Packet::new_checked(reply.payload()).unwrap();
        assert!(m.verify_checksum(&reply.src(), &reply.dst()));
    }

    #[test]
    fn reads_the_kernel_s_messages() {
        let p = ipv6::Packet::new_checked(&KERNEL_V6_PORT_UNREACHABLE[..]).unwrap();
        let m = Packet::new_checked(p.payload()).unwrap();
        assert_eq!((m.msg_type(), m.code()), (1, 4));
        assert!(m.is_error());
        assert!(m.verify_checksum(&p.src(), &p.dst()));
        assert_eq!(m.body(), &KERNEL_V6_UDP[..]);
        let p = ipv6::Packet::new_checked(&KERNEL_V6_ECHO_REQUEST[..]).unwrap();
        let m = Packet::new_checked(p.payload()).unwrap();
        assert_eq!(m.msg_type(), msg_type::ECHO_REQUEST);
        assert!(!m.is_error());
        assert!(m.verify_checksum(&p.src(), &p.dst()));
    }

    /// A packet too big for a full-size offender quotes what fits in
    /// 1 280 bytes, and never announces less than 1 280.
    #[test]
    fn packet_too_big_fits_the_minimum_mtu() {
        let mut big = [0u8; 1500];
        big[..KERNEL_V6_UDP.len()].copy_from_slice(&KERNEL_V6_UDP);
        let mut off = ipv6::Packet::new_unchecked(&mut big[..]);
        off.set_payload_len(1460);
        let off = ipv6::Packet::new_checked(&big[..]).unwrap();
        let mut out = [0u8; MAX_ERROR_LEN];
        let me: Ipv6Addr = "fd00:10:244:1::".parse().unwrap();
        for (asked, told) in [(1430, 1430), (1000, 1280)] {
            let kind = ErrorKind::PacketTooBig { mtu: asked };
            let n = emit_error(kind, &off, me, &mut out).unwrap();
            assert_eq!(n, MAX_ERROR_LEN);
            let reply = ipv6::Packet::new_checked(&out[..n]).unwrap();
            assert_eq!((reply.src(), reply.dst()), (me, off.src()));
            let m = Packet::new_checked(reply.payload()).unwrap();
            assert_eq!((m.msg_type(), m.code(), m.mtu()), (2, 0, told));
            assert!(m.verify_checksum(&me, &off.src()));
            assert_eq!(m.body(), &big[..m.body().len()]);
        }
    }

    #[test]
    fn never_answers_errors_multicast_or_unspecified() {
        let mut out = [0u8; MAX_ERROR_LEN];
        let me = Ipv6Addr::LOCALHOST;
        let no_route = ErrorKind::DstUnreachable(unreachable::NO_ROUTE);
        let err = ipv6::Packet::new_checked(&KERNEL_V6_PORT_UNREACHABLE[..]).unwrap();
        assert!(emit_error(no_route, &err, me, &mut out).is_none());
        let echo = ipv6::Packet::new_checked(&KERNEL_V6_ECHO_REQUEST[..]).unwrap();
        assert!(emit_error(ErrorKind::HopLimitExceeded, &echo, me, &mut out).is_some());
        let mut v = KERNEL_V6_UDP;
        v[24] = 0xff; // to a multicast group
        let group = ipv6::Packet::new_checked(&v[..]).unwrap();
        assert!(emit_error(no_route, &group, me, &mut out).is_none());
        assert!(emit_error(ErrorKind::PacketTooBig { mtu: 1400 }, &group, me, &mut out).is_some());
        let mut v = KERNEL_V6_UDP;
        v[8..24].fill(0); // from ::
        let unspecified = ipv6::Packet::new_checked(&v[..]).unwrap();
        assert!(emit_error(no_route, &unspecified, me, &mut out).is_none());
        let mut short = [0u8; 100];
        assert!(emit_error(no_route, &echo, me, &mut short).is_none());
    }
}
