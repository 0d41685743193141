//! Flow hashing for the outer UDP source port.
//!
//! The kernel's VXLAN picks the outer source port from a hash of the inner
//! flow (`udp_flow_src_port`), so ECMP and RSS on the underlay spread flows
//! while each flow stays on one path. weft does the same: `hash` reads the
//! inner IP 5-tuple, `src_port` scales it into the kernel's default range.

use crate::ipv4::{self, protocol, Packet};
use crate::ipv6;

/// The kernel's default ephemeral range, which `udp_flow_src_port` uses.
pub const PORT_MIN: u16 = 32768;
/// Upper end of that range.
pub const PORT_MAX: u16 = 60999;

/// Hashes the flow of an inner IPv4 or IPv6 packet: addresses, protocol and,
/// for unfragmented TCP/UDP, the ports. Never panics on short input: it
/// hashes whatever part of the header is present.
pub fn hash(ip: &[u8]) -> u32 {
    let mut h = Mixer::default();
    match crate::ip_version(ip) {
        Some(4) if ip.len() >= ipv4::MIN_HEADER_LEN => {
            let p = Packet::new_unchecked(ip);
            h.add(&p.src().octets());
            h.add(&p.dst().octets());
            let proto = p.protocol();
            h.add(&[proto]);
            let hl = p.header_len();
            let unfragmented = !p.more_fragments() && p.frag_offset() == 0;
            if unfragmented && matches!(proto, protocol::TCP | protocol::UDP) {
                if let Some(ports) = ip.get(hl..hl + 4) {
                    h.add(ports);
                }
            }
        }
        Some(6) if ip.len() >= ipv6::HEADER_LEN => {
            let p = ipv6::Packet::new_unchecked(ip);
            h.add(p.addrs_bytes());
            let next = p.next_header();
            h.add(&[next]);
            if matches!(next, protocol::TCP | protocol::UDP) {
                if let Some(ports) = ip.get(ipv6::HEADER_LEN..ipv6::HEADER_LEN + 4) {
                    h.add(ports);
                }
            }
        }
        _ => h.add(ip.get(..ip.len().min(20)).unwrap_or_default()),
    }
    h.finish()
}

/// Scales a flow hash into `PORT_MIN..=PORT_MAX` the way the kernel does
/// (`((u64)hash * (max - min)) >> 32) + min`).
pub fn src_port(hash: u32) -> u16 {
    let span = u64::from(PORT_MAX - PORT_MIN);
    ((u64::from(hash) * span) >> 32) as u16 + PORT_MIN
}

/// A small multiplicative mixer (FxHash's constant with a final avalanche):
/// fast, and good enough to spread flows; not a defence against chosen flows.
#[derive(Default)]
struct Mixer(u64);

impl Mixer {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn add(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(4);
        for c in &mut chunks {
            let w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            self.0 = (self.0.rotate_left(5) ^ u64::from(w)).wrapping_mul(Self::K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(Self::K);
        }
    }

    fn finish(&self) -> u32 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(sport: u16) -> [u8; 24] {
        let mut p = [0u8; 24];
        p[0] = 0x45;
        p[9] = protocol::TCP;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p
    }

    #[test]
    fn stable_per_flow_and_varied_across_flows() {
        assert_eq!(hash(&tcp(40000)), hash(&tcp(40000)));
        let ports: std::collections::HashSet<u16> =
            (40000..40064).map(|p| src_port(hash(&tcp(p)))).collect();
        assert!(ports.len() > 50, "only {} distinct ports", ports.len());
    }

    #[test]
    fn ports_stay_in_range() {
        for h in [0, 1, u32::MAX / 2, u32::MAX] {
            let p = src_port(h);
            assert!((PORT_MIN..=PORT_MAX).contains(&p));
        }
    }

    #[test]
    fn short_input_does_not_panic() {
        for n in 0..24 {
            hash(&tcp(1)[..n]);
        }
        hash(&[0x60; 41]);
    }
}
