//! Byte vectors captured from real traffic, shared by unit tests, fuzz seeds
//! and benches.
//!
//! The VXLAN vectors were captured with tcpdump on the underlay veth between
//! two namespaces whose `flannel.1` devices were the Linux kernel's VXLAN
//! (Linux 6.18), configured exactly as flanneld configures them: VNI 1,
//! dstport 8472, nolearning, neighbor + FDB + onlink route. Node A is
//! 10.244.1.0/24 with VtepMAC c6:d2:32:6f:8f:44, node B 10.244.2.0/24 with
//! VtepMAC 0e:11:22:33:44:55; A pinged B's `.0` once with 16 bytes of data.

/// A's VtepMAC in the captured vectors.
pub const MAC_A: [u8; 6] = [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44];
/// B's VtepMAC in the captured vectors.
pub const MAC_B: [u8; 6] = [0x0e, 0x11, 0x22, 0x33, 0x44, 0x55];

/// UDP payload of a kernel VXLAN datagram (request).
pub const KERNEL_REQUEST: [u8; 66] = [
    0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x0e, 0x11, 0x22, 0x33, 0x44, 0x55, 0xc6, 0xd2,
    0x32, 0x6f, 0x8f, 0x44, 0x08, 0x00, 0x45, 0x00, 0x00, 0x2c, 0xdb, 0x4c, 0x40, 0x00, 0x40, 0x01,
    0x46, 0x9d, 0x0a, 0xf4, 0x01, 0x00, 0x0a, 0xf4, 0x02, 0x00, 0x08, 0x00, 0x5d, 0x6c, 0x09, 0xff,
    0x00, 0x01, 0xc6, 0x98, 0x06, 0x6b, 0x00, 0x00, 0x00, 0x00, 0xc3, 0x8f, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00,
];

/// UDP payload of a kernel VXLAN datagram (reply).
pub const KERNEL_REPLY: [u8; 66] = [
    0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, 0x0e, 0x11,
    0x22, 0x33, 0x44, 0x55, 0x08, 0x00, 0x45, 0x00, 0x00, 0x2c, 0x68, 0xc9, 0x00, 0x00, 0x40, 0x01,
    0xf9, 0x20, 0x0a, 0xf4, 0x02, 0x00, 0x0a, 0xf4, 0x01, 0x00, 0x00, 0x00, 0x65, 0x6c, 0x09, 0xff,
    0x00, 0x01, 0xc6, 0x98, 0x06, 0x6b, 0x00, 0x00, 0x00, 0x00, 0xc3, 0x8f, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00,
];

/// A synthetic TCP/IPv4 segment with valid checksums, as a bulk sender emits
/// it: 10.244.1.2:40000 → 10.244.2.3:5201, 12 bytes of timestamp option,
/// TCP `flags`, and `payload` bytes at sequence `seq`. For the coalescer's
/// tests and benches.
pub fn tcp_segment(seq: u32, payload: usize, flags: u8) -> Vec<u8> {
    use crate::checksum;
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
    t[13] = flags;
    t[14..16].copy_from_slice(&500u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
    for (i, b) in t[32..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_add(i) as u8;
    }
    let pseudo =
        crate::l4::pseudo_header_sum([10, 244, 1, 2], [10, 244, 2, 3], 6, (total - 20) as u16);
    let c = !checksum::fold(checksum::sum(&p[20..], pseudo));
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}
