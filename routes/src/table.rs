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
    /// Every node whose encapsulated traffic we accept: PublicIP to its
    /// subnet. This is every lease, also peers we route to directly (they
    /// may still send to us over the tunnel).
    senders: FxHashMap<u32, Ipv4Net>,
    /// The senders' subnets, for `is_sender_subnet`: one map per prefix
    /// length, longest first.
    sender_nets: Vec<(u32, FxHashMap<u32, ()>)>,
}

impl ForwardingTable {
    /// Indexes `peers`, who are also the only senders accepted. Later
    /// entries with the same subnet or MAC win.
    pub fn new(peers: Vec<Peer>) -> ForwardingTable {
        let senders: Vec<(Ipv4Addr, Ipv4Net)> =
            peers.iter().map(|p| (*p.endpoint.ip(), p.subnet)).collect();
        ForwardingTable::with_senders(peers, &senders)
    }

    /// Indexes `peers` to forward to, and `senders` (PublicIP, subnet) to
    /// accept encapsulated traffic from.
    pub fn with_senders(peers: Vec<Peer>, senders: &[(Ipv4Addr, Ipv4Net)]) -> ForwardingTable {
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
        let mut nets: FxHashMap<u8, FxHashMap<u32, ()>> = FxHashMap::default();
        for (_, n) in senders {
            nets.entry(n.prefix_len())
                .or_default()
                .insert(u32::from(n.network()), ());
        }
        let mut sender_nets: Vec<(u8, FxHashMap<u32, ()>)> = nets.into_iter().collect();
        sender_nets.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        ForwardingTable {
            peers,
            by_prefix,
            by_mac,
            senders: senders.iter().map(|(ip, n)| (u32::from(*ip), *n)).collect(),
            sender_nets: sender_nets
                .into_iter()
                .map(|(len, m)| (prefix_mask(len), m))
                .collect(),
        }
    }

    /// The subnet of the node whose PublicIP is `ip`, if it holds a lease.
    #[inline]
    pub fn sender(&self, ip: Ipv4Addr) -> Option<Ipv4Net> {
        self.senders.get(&u32::from(ip)).copied()
    }

    /// True if `ip` lies in some lease holder's subnet.
    #[inline]
    pub fn is_sender_subnet(&self, ip: Ipv4Addr) -> bool {
        let a = u32::from(ip);
        self.sender_nets
            .iter()
            .any(|(mask, m)| m.contains_key(&(a & mask)))
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
    fn senders_include_peers_not_routed_through_the_tunnel() {
        let direct: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let t = ForwardingTable::with_senders(
            vec![peer("10.244.2.0/24", [192, 0, 2, 2], 2)],
            &[
                ([192, 0, 2, 2].into(), "10.244.2.0/24".parse().unwrap()),
                ([192, 0, 2, 3].into(), direct),
            ],
        );
        assert_eq!(t.sender([192, 0, 2, 3].into()), Some(direct));
        assert_eq!(t.sender([192, 0, 2, 9].into()), None);
        assert!(
            t.lookup([10, 244, 3, 1].into()).is_none(),
            "not forwarded to"
        );
        assert!(t.is_sender_subnet([10, 244, 3, 1].into()));
        assert!(t.is_sender_subnet([10, 244, 2, 0].into()));
        assert!(!t.is_sender_subnet([10, 244, 4, 1].into()));
        let plain = ForwardingTable::new(vec![peer("10.244.2.0/24", [192, 0, 2, 2], 2)]);
        assert!(plain.sender([192, 0, 2, 2].into()).is_some());
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
