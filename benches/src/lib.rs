//! Packet builders shared by weft's criterion benches.

use weft_encap::ipv4;

/// A valid IPv4/UDP packet of `len` bytes (header checksum filled in).
pub fn ipv4_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0xabu8; len.max(28)];
    let repr = ipv4::Repr {
        src: [10, 244, 1, 2].into(),
        dst: [10, 244, 2, 2].into(),
        protocol: ipv4::protocol::UDP,
        payload_len: p.len() - ipv4::MIN_HEADER_LEN,
        ttl: 64,
    };
    repr.emit(&mut p);
    p
}

/// A TCP/IPv4 segment (ACK, 12 bytes of timestamp option) with `payload`
/// bytes at sequence `seq` and valid checksums: what a bulk sender emits.
pub fn tcp_segment(seq: u32, payload: usize) -> Vec<u8> {
    weft_encap::vectors::tcp_segment(seq, payload, 0x10)
}

/// The same segment over IPv6 (fd00:10:244:1::2 → fd00:10:244:2::3).
pub fn tcp_segment6(seq: u32, payload: usize) -> Vec<u8> {
    weft_encap::vectors::tcp_segment6(seq, payload, 0x10)
}
