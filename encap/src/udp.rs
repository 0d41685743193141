//! flannel's original `udp` backend: the inner IPv4 packet *is* the UDP
//! payload (port 8285), with no header, magic or VNI.
//!
//! flannel's C proxy decrements TTL on send and on receive (RFC 1624
//! incremental checksum) and writes anything of 20 bytes or more to its TUN.
//! weft keeps the TTL behaviour and adds what the proxy lacks: the inner
//! header is validated, and an expired TTL is reported to the caller so it
//! can answer with ICMP time exceeded instead of dropping silently.

use crate::ipv4::{Malformed, Packet};
use crate::DropReason;

/// flannel's default udp backend port.
pub const DEFAULT_PORT: u16 = 8285;

/// The udp backend's overhead on an IPv4 underlay: outer IPv4 (20) + UDP (8).
pub const IPV4_OVERHEAD: usize = 28;

/// Checks an IPv4 packet read from the TUN device before it is sent to a
/// peer and decrements its TTL. Returns the packet's length (trailing bytes
/// excluded). `TtlExpired` means the caller should send ICMP time exceeded.
pub fn prepare_send(packet: &mut [u8]) -> Result<usize, DropReason> {
    forward(packet, false)
}

/// Validates a datagram received from a peer (header, checksum, length) and
/// decrements its TTL. Returns the inner packet's length; `TtlExpired` means
/// the caller should answer with ICMP time exceeded.
pub fn decapsulate(datagram: &mut [u8]) -> Result<usize, DropReason> {
    forward(datagram, true)
}

/// The datagram length at which `datagram` holds exactly the IPv4 packet
/// its header announces (see `vxlan::carried_len`).
pub fn carried_len(datagram: &[u8]) -> Option<usize> {
    let p = Packet::new_unchecked(datagram);
    (datagram.len() >= crate::ipv4::MIN_HEADER_LEN && p.version() == 4)
        .then(|| usize::from(p.total_len()))
}

fn forward(buf: &mut [u8], verify: bool) -> Result<usize, DropReason> {
    let mut p = Packet::new_checked(buf).map_err(|e| match e {
        Malformed::Checksum => DropReason::Ipv4Checksum,
        _ => DropReason::Ipv4Malformed,
    })?;
    if verify && !p.verify_checksum() {
        return Err(DropReason::Ipv4Checksum);
    }
    if p.ttl() <= 1 {
        return Err(DropReason::TtlExpired);
    }
    p.decrement_ttl();
    Ok(usize::from(p.total_len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::KERNEL_REQUEST;

    fn inner() -> Vec<u8> {
        KERNEL_REQUEST[22..].to_vec()
    }

    #[test]
    fn ttl_is_decremented_with_a_valid_checksum() {
        let mut p = inner();
        let n = decapsulate(&mut p).unwrap();
        assert_eq!(n, p.len());
        let v = Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.ttl(), 63);
        assert!(v.verify_checksum());
        assert_eq!(prepare_send(&mut p), Ok(n));
        assert_eq!(Packet::new_unchecked(&p[..]).ttl(), 62);
    }

    #[test]
    fn expired_ttl_is_reported() {
        let mut p = inner();
        p[8] = 1;
        Packet::new_unchecked(&mut p[..]).fill_checksum();
        assert_eq!(decapsulate(&mut p.clone()), Err(DropReason::TtlExpired));
        assert_eq!(prepare_send(&mut p), Err(DropReason::TtlExpired));
    }

    #[test]
    fn malformed_input_is_dropped() {
        assert_eq!(
            decapsulate(&mut inner()[..19].to_vec()),
            Err(DropReason::Ipv4Malformed)
        );
        let mut bad = inner();
        bad[11] ^= 0xff;
        assert_eq!(decapsulate(&mut bad), Err(DropReason::Ipv4Checksum));
        let mut v6 = inner();
        v6[0] = 0x60;
        assert_eq!(decapsulate(&mut v6), Err(DropReason::Ipv4Malformed));
    }

    #[test]
    fn trailing_bytes_are_excluded() {
        let mut p = inner();
        let n = p.len();
        p.extend_from_slice(&[0xee; 9]);
        assert_eq!(decapsulate(&mut p), Ok(n));
    }
}
