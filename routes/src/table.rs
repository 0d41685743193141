//! The forwarding table the data path reads: peers by subnet (longest prefix
//! match) and by VtepMAC. Built once per change by the control plane and
//! published as an immutable snapshot; lookups take no lock and allocate
//! nothing. One table per address family (`Family`; IPv4 by default): a
//! dual-stack node's IPv6 data plane has a table of its own.

use crate::family::Family;
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use weft_encap::MacAddr;

/// One peer's traffic counters. The control plane keeps them for as long as
/// the peer's lease lives, so they survive every new snapshot; workers add a
/// run of packets at a time, never one by one.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Packets from the peer delivered to the device.
    pub rx_packets: AtomicU64,
    /// Bytes of those packets.
    pub rx_bytes: AtomicU64,
    /// Packets encapsulated toward the peer and handed to the socket.
    pub tx_packets: AtomicU64,
    /// Bytes of those datagrams (UDP payload).
    pub tx_bytes: AtomicU64,
}

/// A peer's place in one snapshot, for `ForwardingTable::counters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerId(u32);

/// A node whose encapsulated traffic we accept.
#[derive(Debug, Clone)]
pub struct Sender<F: Family = Ipv4Addr> {
    /// Its PublicIP: the outer source of its datagrams.
    pub public_ip: F,
    /// Its subnet: the inner sources it may use.
    pub subnet: F::Net,
    /// Its counters.
    pub counters: Arc<PeerCounters>,
}

/// Packets counted against one peer until the peer changes, so a batch
/// touches each peer's shared counters once per run rather than per packet.
#[derive(Debug, Default)]
pub struct PeerTally {
    peer: Option<PeerId>,
    packets: u64,
    bytes: u64,
}

/// Which way a tally counts.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// From the peer.
    Rx,
    /// To the peer.
    Tx,
}

impl PeerTally {
    /// Counts one packet of `bytes` for `peer`, publishing the previous
    /// peer's run into `table` when the peer changes.
    #[inline]
    pub fn add<F: Family>(
        &mut self,
        table: &ForwardingTable<F>,
        dir: Direction,
        peer: PeerId,
        bytes: usize,
    ) {
        if self.peer != Some(peer) {
            self.flush(table, dir);
            self.peer = Some(peer);
        }
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    /// Publishes the run in progress. Call before `table` is let go.
    #[inline]
    pub fn flush<F: Family>(&mut self, table: &ForwardingTable<F>, dir: Direction) {
        if let Some(p) = self.peer.take() {
            let c = table.counters(p);
            let (packets, bytes) = match dir {
                Direction::Rx => (&c.rx_packets, &c.rx_bytes),
                Direction::Tx => (&c.tx_packets, &c.tx_bytes),
            };
            packets.fetch_add(self.packets, Relaxed);
            bytes.fetch_add(self.bytes, Relaxed);
        }
        self.packets = 0;
        self.bytes = 0;
    }
}

/// A remote node as the data path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer<F: Family = Ipv4Addr> {
    /// The peer's pod subnet.
    pub subnet: F::Net,
    /// Where its encapsulated traffic goes: PublicIP and the backend port.
    pub endpoint: F::SocketAddr,
    /// The peer's VtepMAC (vxlan only).
    pub vtep_mac: Option<MacAddr>,
}

/// One exact-match map per prefix length, by mask, longest first: keys
/// are the prefixes' first addresses as integers.
type ByPrefix<B, V> = Vec<(B, FxHashMap<B, V>)>;

/// Peers indexed for the per-packet lookups.
#[derive(Debug)]
pub struct ForwardingTable<F: Family = Ipv4Addr> {
    peers: Vec<Peer<F>>,
    /// Each peer's index into `counters`.
    peer_ids: Vec<PeerId>,
    /// Every sender's counters; a `PeerId` indexes this.
    counters: Vec<Arc<PeerCounters>>,
    /// One exact-match map per prefix length present, longest first. A
    /// cluster has one SubnetLen, so this is usually a single hash probe.
    by_prefix: ByPrefix<F::Bits, u32>,
    by_mac: FxHashMap<MacAddr, u32>,
    /// Every node whose encapsulated traffic we accept: PublicIP to its
    /// subnet and counters. This is every lease, also peers we route to
    /// directly (they may still send to us over the tunnel).
    senders: FxHashMap<F::Bits, (F::Net, PeerId)>,
    /// The senders' subnets, for `is_sender_subnet`: one map per prefix
    /// length, longest first.
    sender_nets: ByPrefix<F::Bits, ()>,
}

impl<F: Family> Default for ForwardingTable<F> {
    fn default() -> Self {
        ForwardingTable {
            peers: Vec::new(),
            peer_ids: Vec::new(),
            counters: Vec::new(),
            by_prefix: Vec::new(),
            by_mac: FxHashMap::default(),
            senders: FxHashMap::default(),
            sender_nets: Vec::new(),
        }
    }
}

impl<F: Family> ForwardingTable<F> {
    /// Indexes `peers`, who are also the only senders accepted. Later
    /// entries with the same subnet or MAC win.
    pub fn new(peers: Vec<Peer<F>>) -> ForwardingTable<F> {
        let senders: Vec<Sender<F>> = peers
            .iter()
            .map(|p| Sender {
                public_ip: F::ip_of(&p.endpoint),
                subnet: p.subnet,
                counters: Arc::default(),
            })
            .collect();
        ForwardingTable::with_senders(peers, senders)
    }

    /// Indexes `peers` to forward to, and `senders` to accept encapsulated
    /// traffic from. A peer counts its traffic in the counters of the sender
    /// with its subnet (fresh ones if there is none).
    pub fn with_senders(peers: Vec<Peer<F>>, senders: Vec<Sender<F>>) -> ForwardingTable<F> {
        let mut counters: Vec<Arc<PeerCounters>> = Vec::with_capacity(senders.len());
        let mut by_subnet: FxHashMap<F::Net, PeerId> = FxHashMap::default();
        let mut sender_map = FxHashMap::default();
        for s in &senders {
            let id = PeerId(counters.len() as u32);
            counters.push(s.counters.clone());
            by_subnet.insert(s.subnet, id);
            sender_map.insert(s.public_ip.bits(), (s.subnet, id));
        }
        let peer_ids = peers
            .iter()
            .map(|p| {
                *by_subnet.entry(p.subnet).or_insert_with(|| {
                    counters.push(Arc::default());
                    PeerId(counters.len() as u32 - 1)
                })
            })
            .collect();
        let mut by_len: FxHashMap<u8, FxHashMap<F::Bits, u32>> = FxHashMap::default();
        let mut by_mac = FxHashMap::default();
        for (i, p) in peers.iter().enumerate() {
            let i = i as u32;
            by_len
                .entry(F::prefix_len(&p.subnet))
                .or_default()
                .insert(F::network(&p.subnet).bits(), i);
            if let Some(m) = p.vtep_mac {
                by_mac.insert(m, i);
            }
        }
        let mut by_prefix: Vec<(u8, FxHashMap<F::Bits, u32>)> = by_len.into_iter().collect();
        by_prefix.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        let by_prefix = by_prefix
            .into_iter()
            .map(|(len, m)| (F::prefix_mask(len), m))
            .collect();
        let mut nets: FxHashMap<u8, FxHashMap<F::Bits, ()>> = FxHashMap::default();
        for n in senders.iter().map(|s| s.subnet) {
            nets.entry(F::prefix_len(&n))
                .or_default()
                .insert(F::network(&n).bits(), ());
        }
        let mut sender_nets: Vec<(u8, FxHashMap<F::Bits, ()>)> = nets.into_iter().collect();
        sender_nets.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        ForwardingTable {
            peers,
            peer_ids,
            counters,
            by_prefix,
            by_mac,
            senders: sender_map,
            sender_nets: sender_nets
                .into_iter()
                .map(|(len, m)| (F::prefix_mask(len), m))
                .collect(),
        }
    }

    /// The subnet of the node whose PublicIP is `ip`, if it holds a lease.
    #[inline]
    pub fn sender(&self, ip: F) -> Option<F::Net> {
        self.sender_entry(ip).map(|(net, _)| net)
    }

    /// The subnet and counters of the node whose PublicIP is `ip`.
    #[inline]
    pub fn sender_entry(&self, ip: F) -> Option<(F::Net, PeerId)> {
        self.senders.get(&ip.bits()).copied()
    }

    /// The counters behind `id`, an id from this snapshot.
    #[inline]
    pub fn counters(&self, id: PeerId) -> &PeerCounters {
        &self.counters[id.0 as usize]
    }

    /// True if `ip` lies in some lease holder's subnet.
    #[inline]
    pub fn is_sender_subnet(&self, ip: F) -> bool {
        let a = ip.bits();
        self.sender_nets
            .iter()
            .any(|(mask, m)| m.contains_key(&(a & *mask)))
    }

    /// The peer whose subnet is the longest match for `dst`.
    #[inline]
    pub fn lookup(&self, dst: F) -> Option<&Peer<F>> {
        self.route(dst).map(|(p, _)| p)
    }

    /// `lookup`, with the peer's counters.
    #[inline]
    pub fn route(&self, dst: F) -> Option<(&Peer<F>, PeerId)> {
        let a = dst.bits();
        self.by_prefix
            .iter()
            .find_map(|(mask, m)| m.get(&(a & *mask)))
            .map(|&i| self.entry(i))
    }

    /// The peer that owns VtepMAC `mac`.
    #[inline]
    pub fn lookup_mac(&self, mac: MacAddr) -> Option<&Peer<F>> {
        self.route_mac(mac).map(|(p, _)| p)
    }

    /// `lookup_mac`, with the peer's counters.
    #[inline]
    pub fn route_mac(&self, mac: MacAddr) -> Option<(&Peer<F>, PeerId)> {
        self.by_mac.get(&mac).map(|&i| self.entry(i))
    }

    #[inline]
    fn entry(&self, i: u32) -> (&Peer<F>, PeerId) {
        (&self.peers[i as usize], self.peer_ids[i as usize])
    }

    /// All peers.
    pub fn peers(&self) -> &[Peer<F>] {
        &self.peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::Ipv4Net;
    use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

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
        let sender = |ip: [u8; 4], subnet: Ipv4Net| Sender {
            public_ip: ip.into(),
            subnet,
            counters: Arc::default(),
        };
        let t = ForwardingTable::with_senders(
            vec![peer("10.244.2.0/24", [192, 0, 2, 2], 2)],
            vec![
                sender([192, 0, 2, 2], "10.244.2.0/24".parse().unwrap()),
                sender([192, 0, 2, 3], direct),
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
    fn tallies_count_runs_into_the_shared_counters() {
        let a = Arc::new(PeerCounters::default());
        let b = Arc::new(PeerCounters::default());
        let sender = |ip: [u8; 4], net: &str, c: &Arc<PeerCounters>| Sender {
            public_ip: ip.into(),
            subnet: net.parse().unwrap(),
            counters: c.clone(),
        };
        let t = ForwardingTable::with_senders(
            vec![
                peer("10.244.2.0/24", [192, 0, 2, 2], 2),
                peer("10.244.3.0/24", [192, 0, 2, 3], 3),
            ],
            vec![
                sender([192, 0, 2, 2], "10.244.2.0/24", &a),
                sender([192, 0, 2, 3], "10.244.3.0/24", &b),
            ],
        );
        let (_, pa) = t.route([10, 244, 2, 9].into()).unwrap();
        let (_, pb) = t.route_mac(MacAddr([2, 0, 0, 0, 0, 3])).unwrap();
        let mut tx = PeerTally::default();
        for (p, len) in [(pa, 100), (pa, 50), (pb, 10), (pa, 1)] {
            tx.add(&t, Direction::Tx, p, len);
        }
        tx.flush(&t, Direction::Tx);
        tx.flush(&t, Direction::Tx);
        assert_eq!(a.tx_packets.load(Relaxed), 3);
        assert_eq!(a.tx_bytes.load(Relaxed), 151);
        assert_eq!(b.tx_packets.load(Relaxed), 1);
        assert_eq!(b.tx_bytes.load(Relaxed), 10);
        let (_, sb) = t.sender_entry([192, 0, 2, 3].into()).unwrap();
        assert_eq!(sb, pb, "a peer and its sender entry share counters");
        let mut rx = PeerTally::default();
        rx.add(&t, Direction::Rx, sb, 70);
        rx.flush(&t, Direction::Rx);
        assert_eq!(b.rx_packets.load(Relaxed), 1);
        assert_eq!(b.rx_bytes.load(Relaxed), 70);
        assert_eq!(a.rx_packets.load(Relaxed), 0);
    }

    /// The IPv6 table is the same code over 128-bit addresses.
    #[test]
    fn ipv6_longest_prefix_and_senders() {
        let peer6 = |net: &str, ip: &str, mac: u8| Peer::<Ipv6Addr> {
            subnet: net.parse().unwrap(),
            endpoint: SocketAddrV6::new(ip.parse().unwrap(), 8472, 0, 0),
            vtep_mac: Some(MacAddr([2, 0, 0, 0, 6, mac])),
        };
        let t = ForwardingTable::new(vec![
            peer6("fd00:10:244::/56", "2001:db8::1", 1),
            peer6("fd00:10:244:2::/64", "2001:db8::2", 2),
            peer6("fd00:10:244:2:8000::/65", "2001:db8::3", 3),
        ]);
        let hit = |a: &str| {
            t.lookup(a.parse::<Ipv6Addr>().unwrap())
                .map(|p| p.endpoint.ip().segments()[7])
        };
        assert_eq!(hit("fd00:10:244:2:8000::9"), Some(3));
        assert_eq!(hit("fd00:10:244:2::9"), Some(2));
        assert_eq!(hit("fd00:10:244:7::9"), Some(1));
        assert_eq!(hit("fd00:10:245::1"), None);
        assert_eq!(
            t.sender("2001:db8::2".parse().unwrap())
                .map(|n| n.to_string()),
            Some("fd00:10:244:2::/64".into())
        );
        assert!(t.is_sender_subnet("fd00:10:244:2::77".parse().unwrap()));
        assert!(!t.is_sender_subnet("fd00:10:245::1".parse().unwrap()));
        assert!(t.lookup_mac(MacAddr([2, 0, 0, 0, 6, 2])).is_some());
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
