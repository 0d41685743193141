//! ICMP error messages a forwarder writes back to a sender (RFC 792):
//! destination unreachable when no peer covers a destination, and time
//! exceeded when TTL runs out.
//!
//! flannel's proxy sends the first and silently drops at TTL 0 (a TODO in its
//! code); weft sends both. Like the kernel (RFC 1122 §3.2.2), weft never
//! answers an ICMP error, a non-first fragment, or a packet from an
//! unspecified, broadcast or multicast source.

use crate::checksum;
use crate::ipv4::{self, protocol, Packet};
use core::net::Ipv4Addr;

mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const UNUSED: Range<usize> = 4..8;
}

/// Length of the ICMP error header (type, code, checksum, unused).
pub const HEADER_LEN: usize = field::UNUSED.end;

/// How much of the offender an error quotes beyond its IP header.
const QUOTE_DATA: usize = 8;

/// The longest reply `emit_error` writes: 20 + 8 + 60 (header with options) + 8.
pub const MAX_ERROR_LEN: usize = ipv4::MIN_HEADER_LEN + HEADER_LEN + 60 + QUOTE_DATA;

/// Which error to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Type 3 code 0: no route to the destination network.
    NetUnreachable,
    /// Type 11 code 0: TTL exceeded in transit.
    TtlExceeded,
}

impl ErrorKind {
    fn type_code(self) -> (u8, u8) {
        match self {
            ErrorKind::NetUnreachable => (3, 0),
            ErrorKind::TtlExceeded => (11, 0),
        }
    }
}

/// True when RFC 1122 allows an ICMP error about this (checked) packet.
pub fn may_answer<T: AsRef<[u8]>>(offender: &Packet<T>) -> bool {
    let src = offender.src();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
        return false;
    }
    if offender.dst().is_broadcast() || offender.dst().is_multicast() {
        return false;
    }
    if offender.frag_offset() != 0 {
        return false;
    }
    if offender.protocol() == protocol::ICMP {
        // Errors about errors are forbidden; queries (echo) may be answered.
        let ty = offender.payload().first().copied();
        if !matches!(ty, Some(0 | 8 | 13 | 14 | 15 | 16 | 17 | 18)) {
            return false;
        }
    }
    true
}

/// Writes a complete IPv4 ICMP error about `offender` from `src` into `out`
/// and returns its length, or `None` when RFC 1122 forbids answering or `out`
/// is shorter than `MAX_ERROR_LEN`.
pub fn emit_error<T: AsRef<[u8]>>(
    kind: ErrorKind,
    offender: &Packet<T>,
    src: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    if out.len() < MAX_ERROR_LEN || !may_answer(offender) {
        return None;
    }
    let hl = offender.header_len();
    let quote = (hl + QUOTE_DATA).min(usize::from(offender.total_len()));
    let icmp_len = HEADER_LEN + quote;
    let ip = ipv4::Repr {
        src,
        dst: offender.src(),
        protocol: protocol::ICMP,
        payload_len: icmp_len,
        ttl: 64,
    };
    ip.emit(out);
    let icmp = &mut out[ipv4::MIN_HEADER_LEN..ipv4::MIN_HEADER_LEN + icmp_len];
    let (ty, code) = kind.type_code();
    icmp[field::TYPE] = ty;
    icmp[field::CODE] = code;
    icmp[field::CHECKSUM].fill(0);
    icmp[field::UNUSED].fill(0);
    icmp[HEADER_LEN..].copy_from_slice(&offender.bytes()[..quote]);
    let c = checksum::checksum(icmp);
    icmp[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    Some(ipv4::MIN_HEADER_LEN + icmp_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::tests::ECHO;

    #[test]
    fn net_unreachable_quotes_header_and_8_bytes() {
        let off = Packet::new_checked(&ECHO[..]).unwrap();
        let mut out = [0xeeu8; MAX_ERROR_LEN];
        let me = Ipv4Addr::new(10, 244, 1, 0);
        let n = emit_error(ErrorKind::NetUnreachable, &off, me, &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 28);
        let reply = Packet::new_checked(&out[..n]).unwrap();
        assert!(reply.verify_checksum());
        assert_eq!(reply.src(), me);
        assert_eq!(reply.dst(), off.src());
        let icmp = reply.payload();
        assert_eq!((icmp[0], icmp[1]), (3, 0));
        assert_eq!(checksum::checksum(icmp), 0);
        assert_eq!(&icmp[8..], &ECHO[..]);
    }

    #[test]
    fn never_answers_errors_or_fragments() {
        let mut err = ECHO;
        err[20] = 3; // the offender is itself a destination unreachable
        let p = Packet::new_checked(&err[..]).unwrap();
        assert!(!may_answer(&p));
        let mut frag = ECHO;
        frag[6] = 0x00;
        frag[7] = 0x10;
        assert!(!may_answer(&Packet::new_checked(&frag[..]).unwrap()));
        let mut bcast = ECHO;
        bcast[12..16].copy_from_slice(&[0, 0, 0, 0]);
        assert!(!may_answer(&Packet::new_checked(&bcast[..]).unwrap()));
    }

    #[test]
    fn short_output_buffer_is_refused() {
        let off = Packet::new_checked(&ECHO[..]).unwrap();
        let mut out = [0u8; 40];
        assert!(emit_error(ErrorKind::TtlExceeded, &off, Ipv4Addr::LOCALHOST, &mut out).is_none());
    }
}
