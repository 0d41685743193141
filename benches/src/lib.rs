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
    use weft_encap::checksum;
    let total = 20 + 32 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 244, 1, 2]);
    p[16..20].copy_from_slice(&[10, 244, 2, 3]);
    let c = checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&7u32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = 0x10;
    t[14..16].copy_from_slice(&500u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
    for (i, b) in t[32..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_add(i) as u8;
    }
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = 6;
    pseudo[10..].copy_from_slice(&((total - 20) as u16).to_be_bytes());
    let c = !checksum::fold(checksum::sum(&p[20..], checksum::sum(&pseudo, 0)));
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}
