//! The forwarding table the data path reads: peers by subnet (longest prefix
//! match) and by VtepMAC. Built once per change by the control plane and
//! published as an immutable snapshot; lookups take no lock and allocate
//! nothing.

use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use weft_encap::MacAddr;

/// A remote node as the data path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's pod subnet.
    pub subnet: Ipv4Net,
    /// Where its encapsulated traffic goes: PublicIP and the backend port.
    pub endpoint: SocketAddrV4,
    /// The peer's VtepMAC (vxlan only).
    pub vtep_mac: Option<MacAddr>,
}

/// Peers indexed for the per-packet lookups.
#[derive(Debug, Default)]
pub struct ForwardingTable {
    peers: Vec<Peer>,
    /// One exact-match map per prefix length present, longest first. A
    /// cluster has one SubnetLen, so this is usually a single hash probe.
    by_prefix: Vec<(u32, FxHashMap<u32, u32>)>,
    by_mac: FxHashMap<MacAddr, u32>,
}

impl ForwardingTable {
    /// Indexes `peers`. Later entries with the same subnet or MAC win.
    pub fn new(peers: Vec<Peer>) -> ForwardingTable {
        let mut by_len: FxHashMap<u8, FxHashMap<u32, u32>> = FxHashMap::default();
        let mut by_mac = FxHashMap::default();
        for (i, p) in peers.iter().enumerate() {
            let i = i as u32;
            by_len
                .entry(p.subnet.prefix_len())
                .or_default()
                .insert(u32::from(p.subnet.network()), i);
            if let Some(m) = p.vtep_mac {
                by_mac.insert(m, i);
            }
        }
        let mut by_prefix: Vec<(u8, FxHashMap<u32, u32>)> = by_len.into_iter().collect();
        by_prefix.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        let by_prefix = by_prefix
            .into_iter()
            .map(|(len, m)| (prefix_mask(len), m))
            .collect();
        ForwardingTable {
            peers,
            by_prefix,
            by_mac,
        }
    }

    /// The peer whose subnet is the longest match for `dst`.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let a = u32::from(dst);
        self.by_prefix
            .iter()
            .find_map(|(mask, m)| m.get(&(a & mask)))
            .map(|&i| &self.peers[i as usize])
    }

    /// The peer that owns VtepMAC `mac`.
    #[inline]
    pub fn lookup_mac(&self, mac: MacAddr) -> Option<&Peer> {
        self.by_mac.get(&mac).map(|&i| &self.peers[i as usize])
    }

    /// All peers.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }
}

fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(net: &str, ip: [u8; 4], mac: u8) -> Peer {
        Peer {
            subnet: net.parse().unwrap(),
            endpoint: SocketAddrV4::new(Ipv4Addr::from(ip), 8472),
            vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, mac])),
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let t = ForwardingTable::new(vec![
            peer("10.244.0.0/16", [192, 0, 2, 1], 1),
            peer("10.244.2.0/24", [192, 0, 2, 2], 2),
            peer("10.244.2.128/25", [192, 0, 2, 3], 3),
        ]);
        let hit = |a: [u8; 4]| {
            t.lookup(Ipv4Addr::from(a))
                .map(|p| p.endpoint.ip().octets()[3])
        };
        assert_eq!(hit([10, 244, 2, 200]), Some(3));
        assert_eq!(hit([10, 244, 2, 5]), Some(2));
        assert_eq!(hit([10, 244, 9, 5]), Some(1));
        assert_eq!(hit([10, 245, 0, 1]), None);
    }

    #[test]
    fn mac_lookup() {
        let t = ForwardingTable::new(vec![peer("10.244.2.0/24", [192, 0, 2, 2], 2)]);
        assert!(t.lookup_mac(MacAddr([2, 0, 0, 0, 0, 2])).is_some());
        assert!(t.lookup_mac(MacAddr::BROADCAST).is_none());
        assert!(ForwardingTable::default()
            .lookup(Ipv4Addr::LOCALHOST)
            .is_none());
    }
}
