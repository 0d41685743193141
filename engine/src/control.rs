//! Turns the registry's leases into peers: kernel state (neighbors and
//! routes, as flanneld programs them) and the forwarding-table snapshot the
//! workers read. Applied as a diff, so a change to one lease never disturbs
//! traffic to the others.

use crate::device::DeviceKind;
use crate::netlink::{Netlink, NetlinkError, RouteEntry, Underlay};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use weft_encap::{MacAddr, Vni};
use weft_routes::lease::Origin;
use weft_routes::{
    Backend, Claim, ForwardingTable, Lease, LeasePolicy, Peer, PeerCounters, Rejection, Sender,
    SubnetKey,
};

/// How peers are reached, which decides what is programmed per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Programming {
    /// udp: one route for the whole network, installed once; nothing per peer.
    NetworkRoute,
    /// vxlan on a TAP: neighbor `<subnet>.0 lladdr <VtepMAC>`, then route
    /// `<subnet> via <subnet>.0 onlink`, in flanneld's order.
    NeighborAndOnlinkRoute,
    /// vxlan on a TUN: route `<subnet> dev <device>`.
    DeviceRoute,
    /// host-gw: route `<subnet> via <PublicIP> dev <underlay>`; no device.
    Gateway,
}

impl Programming {
    /// The programming for a backend and device kind.
    pub fn for_backend(backend: &Backend, kind: DeviceKind) -> Programming {
        match (backend, kind) {
            (Backend::HostGw, _) => Programming::Gateway,
            (Backend::Vxlan { .. }, DeviceKind::Tap) => Programming::NeighborAndOnlinkRoute,
            (Backend::Vxlan { .. }, DeviceKind::Tun) => Programming::DeviceRoute,
            (Backend::Udp { .. }, _) => Programming::NetworkRoute,
        }
    }
}

/// How one peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Encapsulated, through weft's device and workers.
    Tunnel,
    /// Plainly routed, `<subnet> via <PublicIP> dev <oif>`: host-gw, and
    /// vxlan peers on a directly connected network with DirectRouting.
    Direct {
        /// The interface the kernel reaches the peer's PublicIP through.
        oif: u32,
    },
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Tunnel => "tunnel",
            Via::Direct { .. } => "direct",
        })
    }
}

/// An address family: a peer lease has a half in each it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4: `Network`, the lease's subnet and PublicIP.
    V4,
    /// IPv6 (`EnableIPv6`): `IPv6Network`, its IPv6 subnet and PublicIPv6.
    V6,
}

impl Family {
    /// As flannel's metric labels and weft's spell it.
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    fn of(net: IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

/// One family's half of an admitted peer lease: what the kernel is
/// programmed with for it. Both families take the same path through
/// `Peers`; only the addresses differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Half {
    /// The peer's subnet in this family.
    pub subnet: IpNet,
    /// Its PublicIP (or PublicIPv6): the gateway of a direct route.
    pub public_ip: IpAddr,
    /// Its VtepMAC in this family (vxlan only).
    pub vtep_mac: Option<MacAddr>,
}

impl Half {
    fn family(&self) -> Family {
        Family::of(self.subnet)
    }
}

/// A half's place: its lease's key and its family.
type HalfKey = (SubnetKey, Family);

/// What `Peers` works with.
pub struct PeersConfig {
    /// The kernel.
    pub nl: Netlink,
    /// weft's device; `None` for host-gw.
    pub device: Option<u32>,
    /// weft's device for IPv6 pods, with vxlan and `EnableIPv6`.
    pub device6: Option<u32>,
    /// The interface peers are reached through.
    pub underlay: Underlay,
    /// What is programmed per peer.
    pub programming: Programming,
    /// The backend's UDP port, the same on every node.
    pub port: u16,
    /// What a peer lease must agree with (backend, Network, our lease).
    pub policy: LeasePolicy,
    /// The snapshot the IPv4 workers read.
    pub table: Arc<ArcSwap<ForwardingTable>>,
    /// The snapshot the IPv6 workers read.
    pub table6: Arc<ArcSwap<ForwardingTable<Ipv6Addr>>>,
    /// Where counts and views go.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The peer set, as last applied: each admitted lease as one half per
/// family it carries.
pub struct Peers {
    nl: Netlink,
    /// weft's devices, for IPv4 and IPv6 pods; `None` for host-gw.
    device: Option<u32>,
    device6: Option<u32>,
    underlay: Underlay,
    programming: Programming,
    direct_routing: bool,
    port: u16,
    policy: LeasePolicy,
    table: Arc<ArcSwap<ForwardingTable>>,
    table6: Arc<ArcSwap<ForwardingTable<Ipv6Addr>>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The halves the registry gives us, as last synced.
    wanted: BTreeMap<HalfKey, Half>,
    /// Who holds each lease: a lease with the same key but another
    /// holder (a second Node with one podCIDR) is not that peer.
    holders: BTreeMap<SubnetKey, Origin>,
    /// The halves whose kernel state is in place, and how each is reached.
    routed: BTreeMap<HalfKey, Via>,
    /// Those whose kernel state failed, with the error last logged (each
    /// distinct error is logged once; they are retried by `recheck`).
    failing: BTreeMap<HalfKey, String>,
    /// Lease halves we refuse (by key, holder and family), with the
    /// address they claim and why, remembered so each is warned about and
    /// counted once per change. A refused IPv4 half is the whole lease.
    rejected: BTreeMap<(SubnetKey, Origin, Family), (IpAddr, Rejection)>,
    /// Each peer lease's traffic counters, kept for as long as its lease.
    counters: BTreeMap<SubnetKey, Arc<PeerCounters>>,
    /// The leases of the last sync: a poll that finds them unchanged has
    /// nothing to decide (admission depends only on them and on the peers
    /// the last sync chose).
    last_leases: Vec<Lease>,
}

impl Peers {
    /// An empty peer set.
    pub fn new(c: PeersConfig) -> Peers {
        let direct_routing = matches!(
            c.policy.backend,
            Backend::Vxlan {
                direct_routing: true,
                ..
            }
        );
        Peers {
            nl: c.nl,
            device: c.device,
            device6: c.device6,
            underlay: c.underlay,
            programming: c.programming,
            direct_routing,
            port: c.port,
            policy: c.policy,
            table: c.table,
            table6: c.table6,
            metrics: c.metrics,
            wanted: BTreeMap::new(),
            holders: BTreeMap::new(),
            routed: BTreeMap::new(),
            failing: BTreeMap::new(),
            rejected: BTreeMap::new(),
            counters: BTreeMap::new(),
            last_leases: Vec::new(),
        }
    }

    /// weft's device for `family`'s tunnel halves.
    fn device(&self, family: Family) -> Option<u32> {
        match family {
            Family::V4 => self.device,
            Family::V6 => self.device6,
        }
    }

    /// The prefixes the main table routes under another protocol than
    /// weft's: the underlay's, the CNI bridge's, static and daemon routes.
    /// weft never programs a peer over one of them, so when they cannot be
    /// listed (`None`) nothing is programmed until they can.
    async fn foreign_prefixes(&self) -> Option<HashSet<IpNet>> {
        match self.nl.main_routes().await {
            Ok(r) => Some(foreign(&r)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list routes to check for conflicts; programming no peer until they can be listed");
                None
            }
        }
    }

    /// Programs each of `keys` unless the kernel's routes are unknown
    /// (`foreign` is `None`): then each is left unrouted, for `recheck`.
    async fn apply_all(&mut self, keys: Vec<HalfKey>, foreign: Option<&HashSet<IpNet>>) {
        for k in keys {
            match foreign {
                Some(f) => self.apply(k, f).await,
                None => {
                    self.routed.remove(&k);
                    self.failing.insert(
                        k,
                        "cannot list the kernel's routes to check for conflicts; retrying every 10 s".into(),
                    );
                }
            }
        }
    }

    /// Points `family`'s tunnel peers at a new device (after it was
    /// recreated): their kernel state went with the old one, so every one
    /// is programmed again. Peers reached directly are left alone, and so
    /// is the other family.
    pub async fn set_device(&mut self, family: Family, device: u32) {
        match family {
            Family::V4 => self.device = Some(device),
            Family::V6 => self.device6 = Some(device),
        }
        self.routed
            .retain(|(_, f), via| *f != family || *via != Via::Tunnel);
        let foreign = self.foreign_prefixes().await;
        let keys: Vec<HalfKey> = self
            .wanted
            .keys()
            .filter(|k| !self.routed.contains_key(k))
            .copied()
            .collect();
        self.apply_all(keys, foreign.as_ref()).await;
        self.publish();
    }

    /// The peer halves, each with how it is reached (`None`: not routable
    /// now).
    pub fn current(&self) -> impl Iterator<Item = (&Half, Option<Via>)> {
        self.wanted
            .iter()
            .map(|(k, p)| (p, self.routed.get(k).copied()))
    }

    /// Brings kernel state and the snapshot in line with `leases`. Every
    /// lease first passes `LeasePolicy::admit`; a refused lease (or IPv6
    /// half) is warned about and counted once per change, and gets no
    /// kernel state. Kernel errors for one peer are logged and retried by
    /// `recheck`; they do not stop the others.
    pub async fn sync(&mut self, leases: &[Lease]) {
        if leases == self.last_leases.as_slice() {
            return;
        }
        self.last_leases = leases.to_vec();
        let (admitted, refused) = self.policy.admit(leases, |l, c| self.is_peer(l, c));
        let mut desired = BTreeMap::new();
        let mut holders = BTreeMap::new();
        let mut rejected = BTreeMap::new();
        for a in &admitted {
            let l = a.lease;
            if let Some(h) = a.v4 {
                let v4 = Half {
                    subnet: h.subnet.into(),
                    public_ip: h.public_ip.into(),
                    vtep_mac: h.vtep_mac,
                };
                desired.insert((l.key, Family::V4), v4);
            }
            if let Some(h) = a.v6 {
                let v6 = Half {
                    subnet: h.subnet.into(),
                    public_ip: h.public_ip.into(),
                    vtep_mac: h.vtep_mac,
                };
                desired.insert((l.key, Family::V6), v6);
            }
            if let Some(reason) = a.v6_refused {
                let ip = l.attrs.public_ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED);
                rejected.insert((l.key, l.origin.clone(), Family::V6), (ip.into(), reason));
            }
            holders.insert(l.key, l.origin.clone());
        }
        for r in refused {
            let l = r.lease;
            // In an IPv6-only cluster a lease is its IPv6 half.
            let (family, ip) = match self.policy.ipv4 {
                Some(_) => (
                    Family::V4,
                    IpAddr::from(l.attrs.public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
                ),
                None => (
                    Family::V6,
                    IpAddr::from(l.attrs.public_ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED)),
                ),
            };
            rejected.insert((l.key, l.origin.clone(), family), (ip, r.reason));
        }
        self.report_rejected(rejected, leases);
        // Only admission reads the holders: they may change alone (a
        // lease re-created with what it held before).
        self.holders = holders;
        if desired == self.wanted {
            return;
        }
        // Stop forwarding to removed peers before their routes go, and start
        // forwarding to new ones only after their kernel state is in place.
        let removed: Vec<(Half, Option<Via>)> = self
            .wanted
            .iter()
            .filter(|(k, _)| !desired.contains_key(k))
            .map(|(k, p)| (*p, self.routed.get(k).copied()))
            .collect();
        let changed: Vec<HalfKey> = desired
            .iter()
            .filter(|(k, p)| self.wanted.get(k) != Some(p))
            .map(|(k, _)| *k)
            .collect();
        self.wanted = desired;
        self.routed.retain(|k, _| self.wanted.contains_key(k));
        self.failing.retain(|k, _| self.wanted.contains_key(k));
        self.publish();
        let foreign = if changed.is_empty() {
            Some(HashSet::new())
        } else {
            self.foreign_prefixes().await
        };
        for (p, via) in removed {
            let r = match via {
                Some(via) => self.unprogram(&p, via).await,
                None => self.nl.delete_unreachable(p.subnet).await,
            };
            if let Err(e) = r {
                tracing::warn!(subnet = %p.subnet, error = %e, "cannot remove peer state");
            }
            tracing::info!(subnet = %p.subnet, "peer removed");
        }
        self.apply_all(changed, foreign.as_ref()).await;
        self.publish();
    }

    /// Warns about and counts each refusal in `rejected` that is new or
    /// changed, and publishes them all.
    fn report_rejected(
        &mut self,
        rejected: BTreeMap<(SubnetKey, Origin, Family), (IpAddr, Rejection)>,
        leases: &[Lease],
    ) {
        if rejected == self.rejected {
            return;
        }
        for (id @ (key, origin, family), entry @ (ip, reason)) in &rejected {
            if self.rejected.get(id) == Some(entry) {
                continue;
            }
            let node = &origin.name;
            // In an IPv6-only cluster the IPv6 half is the whole lease.
            let half = *family == Family::V6 && self.policy.ipv4.is_some();
            match half {
                false => {
                    let detail = match reason {
                        Rejection::BackendType => {
                            let theirs = leases
                                .iter()
                                .find(|l| l.key == *key && l.origin == *origin)
                                .map(|l| l.attrs.backend_type())
                                .unwrap_or_default();
                            format!(
                                "its BackendType is {theirs:?}, this cluster runs {:?}; mixed-backend clusters do not work",
                                self.policy.backend.type_name()
                            )
                        }
                        why => why.explain().to_string(),
                    };
                    tracing::warn!(lease = %key, node, public_ip = %ip, %reason, "ignoring lease: {detail}; no route, neighbor or FDB entry is programmed for it");
                    self.metrics.leases_rejected[reason.index()].fetch_add(1, Relaxed);
                }
                true => {
                    tracing::warn!(lease = %key, node, public_ipv6 = %ip, %reason, "ignoring the lease's IPv6 half: {}; its IPv4 half is a peer on its own merits", reason.explain());
                    self.metrics.ipv6_halves_rejected[reason.index()].fetch_add(1, Relaxed);
                }
            }
        }
        self.rejected = rejected;
        *self
            .metrics
            .rejected_views
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self
            .rejected
            .iter()
            .map(
                |((key, origin, family), (public_ip, reason))| crate::metrics::RejectedView {
                    key: *key,
                    node: origin.name.clone(),
                    family: family.label(),
                    public_ip: *public_ip,
                    reason: *reason,
                },
            )
            .collect();
    }

    /// True when claim `c` of lease `l` is a peer's we have, unchanged:
    /// the same holder, and in the claim's family the same PublicIP and
    /// VtepMAC (and IPv6 subnet).
    fn is_peer(&self, l: &Lease, c: Claim<'_>) -> bool {
        let (family, want) = match c {
            Claim::V4(h) => (
                Family::V4,
                Half {
                    subnet: h.subnet.into(),
                    public_ip: h.public_ip.into(),
                    vtep_mac: h.vtep_mac,
                },
            ),
            Claim::V6(h) => (
                Family::V6,
                Half {
                    subnet: h.subnet.into(),
                    public_ip: h.public_ip.into(),
                    vtep_mac: h.vtep_mac,
                },
            ),
        };
        self.holders.get(&l.key) == Some(&l.origin)
            && self.wanted.get(&(l.key, family)) == Some(&want)
    }

    /// Re-evaluates every peer against the kernel, as flanneld's host-gw
    /// does every 10 s and its DirectRouting does on route changes: puts
    /// back routes someone deleted, moves peers between tunnel and direct
    /// when the underlay's routes changed, and retries failed peers.
    /// Returns how many deleted routes it put back.
    pub async fn recheck(&mut self) -> usize {
        let routes = match self.nl.main_routes().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list routes to check ours");
                return 0;
            }
        };
        self.sweep(&routes).await;
        let mut recovered = 0;
        let foreign = foreign(&routes);
        let keys: Vec<HalfKey> = self.wanted.keys().copied().collect();
        for k in keys {
            let p = self.wanted[&k];
            let via = self.decide(&p).await;
            match self.routed.get(&k) {
                Some(&now) if now == via => {
                    if self
                        .expected_route(&p, via)
                        .is_none_or(|r| routes.contains(&r))
                    {
                        continue;
                    }
                    if foreign.contains(&p.subnet) {
                        // Someone replaced our route with theirs: not ours
                        // to take back; `apply` refuses and says so.
                        self.apply(k, &foreign).await;
                        continue;
                    }
                    tracing::warn!(subnet = %p.subnet, public_ip = %p.public_ip, "route recovered: our route to the peer was deleted; put it back");
                    recovered += 1;
                }
                Some(_) | None => {}
            }
            self.apply(k, &foreign).await;
        }
        self.metrics
            .routes_recovered
            .fetch_add(recovered as u64, Relaxed);
        self.publish();
        recovered
    }

    /// True for the overlay networks' own prefixes that are not peers':
    /// the networks themselves (the udp backend's route) and our own
    /// subnets (their blackhole routes).
    fn is_own_prefix(&self, dst: IpNet) -> bool {
        let v4 = self
            .policy
            .ipv4
            .iter()
            .flat_map(|p| [IpNet::from(p.network), IpNet::from(p.own)]);
        let v6 =
            self.policy.ipv6.iter().flat_map(|p| {
                std::iter::once(IpNet::from(p.network)).chain(p.own.map(IpNet::from))
            });
        v4.chain(v6).any(|n| n == dst)
    }

    /// True when `dst` lies inside one of the overlay networks.
    fn in_overlay(&self, dst: IpNet) -> bool {
        self.policy
            .ipv4
            .as_ref()
            .is_some_and(|p| IpNet::from(p.network).contains(&dst))
            || self
                .policy
                .ipv6
                .as_ref()
                .is_some_and(|p| IpNet::from(p.network).contains(&dst))
    }

    /// Deletes routes of ours (protocol 87) into the overlay networks that
    /// no peer wants: left by a run that crashed, or whose removal failed.
    /// The udp backend's route for the whole Network and our own subnets'
    /// blackhole routes are not peers' and stay.
    async fn sweep(&self, routes: &HashSet<RouteEntry>) {
        let wanted: HashSet<IpNet> = self.wanted.values().map(|p| p.subnet).collect();
        let stale = routes.iter().filter(|r| {
            r.ours
                && self.in_overlay(r.dst)
                && !self.is_own_prefix(r.dst)
                && !wanted.contains(&r.dst)
        });
        for r in stale {
            let done = match r.oif {
                _ if r.unreachable => self.nl.delete_unreachable(r.dst).await,
                Some(oif) => self.nl.delete_route(r.dst, oif).await,
                None => continue,
            };
            match done {
                Ok(()) => {
                    tracing::info!(dst = %r.dst, "removed a stale route of ours that no peer wants")
                }
                Err(e) => {
                    tracing::warn!(dst = %r.dst, error = %e, "cannot remove a stale route of ours; retrying every 10 s")
                }
            }
        }
    }

    /// How `p` should be reached now.
    async fn decide(&self, p: &Half) -> Via {
        match self.programming {
            Programming::Gateway => Via::Direct {
                oif: self.underlay.index,
            },
            _ if self.direct_routing => match self.nl.route_to(p.public_ip).await {
                // flanneld's rule: exactly one route, without a gateway.
                Ok(r) => match r[..] {
                    [(None, Some(oif))] if Some(oif) != self.device(p.family()) => {
                        Via::Direct { oif }
                    }
                    _ => Via::Tunnel,
                },
                Err(e) => {
                    tracing::debug!(error = %e, "route lookup failed; using the tunnel");
                    Via::Tunnel
                }
            },
            _ => Via::Tunnel,
        }
    }

    /// Programs half `k` the way `decide` says, recording the outcome;
    /// refuses when the kernel routes its subnet under another protocol
    /// (`foreign`).
    async fn apply(&mut self, k: HalfKey, foreign: &HashSet<IpNet>) {
        let p = self.wanted[&k];
        if self.programming != Programming::NetworkRoute && foreign.contains(&p.subnet) {
            self.routed.remove(&k);
            let msg = format!(
                "refusing to route {}: the kernel already routes it some other way, with a route weft did not install (see `ip route show {}`); retrying every 10 s",
                p.subnet, p.subnet
            );
            if self.failing.get(&k) != Some(&msg) {
                tracing::warn!(subnet = %p.subnet, public_ip = %p.public_ip, "{msg}");
                self.metrics.routes_refused.fetch_add(1, Relaxed);
                self.failing.insert(k, msg);
            }
            return;
        }
        let via = self.decide(&p).await;
        let before = self.routed.get(&k).copied();
        match self.program(&p, via).await {
            Ok(()) => {
                if before == Some(Via::Tunnel) && via != Via::Tunnel {
                    // The neighbor entry the tunnel route needed.
                    if let (Programming::NeighborAndOnlinkRoute, Some(dev)) =
                        (self.programming, self.device(p.family()))
                    {
                        let _ = self.nl.delete_neighbor(dev, tunnel_addr(p.subnet)).await;
                    }
                }
                if self.failing.remove(&k).is_some() {
                    tracing::info!(subnet = %p.subnet, public_ip = %p.public_ip, %via, "peer reachable again");
                } else if before.is_some_and(|b| b != via) {
                    tracing::info!(subnet = %p.subnet, public_ip = %p.public_ip, %via, "underlay routes changed: peer now reached {}", describe(via));
                } else if before.is_none() {
                    tracing::info!(subnet = %p.subnet, public_ip = %p.public_ip, vtep_mac = ?p.vtep_mac.map(|m| m.to_string()), %via, "peer added");
                }
                self.routed.insert(k, via);
            }
            Err(e) => {
                self.routed.remove(&k);
                let msg = match via {
                    Via::Direct { .. } if e.is_unreachable() => {
                        // Make local senders fail fast rather than leak their
                        // packets to the default route.
                        let _ = self.nl.replace_unreachable(p.subnet).await;
                        format!(
                            "the kernel refuses {} as a gateway: it is not on a network {} is connected to. \
                             host-gw needs every node on one layer-2 segment, and this peer is behind a router. \
                             Its subnet is marked unreachable here; retrying every 10 s",
                            p.public_ip,
                            self.underlay.name
                        )
                    }
                    _ => format!("cannot program the peer: {e}; retrying every 10 s"),
                };
                if self.failing.get(&k) != Some(&msg) {
                    tracing::warn!(subnet = %p.subnet, public_ip = %p.public_ip, "{msg}");
                    self.failing.insert(k, msg);
                }
            }
        }
    }

    fn publish(&mut self) {
        // A lease's counters live as long as one of its halves is wanted.
        let leases: BTreeSet<SubnetKey> = self.wanted.keys().map(|(k, _)| *k).collect();
        self.counters.retain(|k, _| leases.contains(k));
        for k in &leases {
            self.counters.entry(*k).or_default();
        }
        self.table.store(Arc::new(self.table_of()));
        self.table6.store(Arc::new(self.table_of()));
        let direct = self
            .routed
            .values()
            .filter(|v| matches!(v, Via::Direct { .. }))
            .count();
        let m = &self.metrics;
        *m.peer_views.lock().unwrap_or_else(|e| e.into_inner()) = self
            .wanted
            .iter()
            .map(|(k, p)| crate::metrics::PeerView {
                subnet: p.subnet,
                public_ip: p.public_ip,
                vtep_mac: p.vtep_mac,
                via: match self.routed.get(k) {
                    Some(Via::Tunnel) => "tunnel",
                    Some(Via::Direct { .. }) => "direct",
                    None => "unreachable",
                },
                counters: self.counters[&k.0].clone(),
                counted: k.1 == Family::V4 || !self.wanted.contains_key(&(k.0, Family::V4)),
            })
            .collect();
        m.peers.store(leases.len() as u64, Relaxed);
        m.peers_direct.store(direct as u64, Relaxed);
        m.peers_unreachable
            .store(self.failing.len() as u64, Relaxed);
    }

    /// The forwarding table of family `F`: its halves reached over the
    /// tunnel as peers, and every admitted half as a sender (peers we
    /// route to directly may send to us too), with its lease's counters.
    fn table_of<F: weft_routes::Family>(&self) -> ForwardingTable<F> {
        let halves = || {
            self.wanted.iter().filter_map(|(k, h)| {
                let subnet = F::net_of(h.subnet)?;
                Some((k, subnet, F::ip_of_any(h.public_ip)?, h.vtep_mac))
            })
        };
        let peers = halves()
            .filter(|(k, ..)| self.routed.get(k) == Some(&Via::Tunnel))
            .map(|(_, subnet, ip, vtep_mac)| Peer {
                subnet,
                endpoint: F::socket_addr(ip, self.port),
                vtep_mac,
            })
            .collect();
        let senders = halves()
            .map(|(k, subnet, public_ip, _)| Sender {
                public_ip,
                subnet,
                counters: self.counters[&k.0].clone(),
            })
            .collect();
        ForwardingTable::with_senders(peers, senders)
    }

    /// The route `program` installs for `p`, if it installs one per peer.
    fn expected_route(&self, p: &Half, via: Via) -> Option<RouteEntry> {
        let (oif, gateway) = match (via, self.programming) {
            (Via::Direct { oif }, _) => (oif, Some(p.public_ip)),
            (Via::Tunnel, Programming::DeviceRoute) => (self.device(p.family())?, None),
            (Via::Tunnel, Programming::NeighborAndOnlinkRoute) => {
                (self.device(p.family())?, Some(tunnel_addr(p.subnet)))
            }
            (Via::Tunnel, _) => return None,
        };
        Some(RouteEntry {
            dst: p.subnet,
            oif: Some(oif),
            gateway,
            unreachable: false,
            ours: true,
        })
    }

    async fn program(&self, p: &Half, via: Via) -> Result<(), NetlinkError> {
        let gw = tunnel_addr(p.subnet);
        let device = self.device(p.family());
        match (via, self.programming, device, p.vtep_mac) {
            (Via::Direct { oif }, ..) => {
                self.nl
                    .replace_route(p.subnet, oif, Some(p.public_ip), false)
                    .await
            }
            (Via::Tunnel, Programming::NeighborAndOnlinkRoute, Some(dev), Some(mac)) => {
                self.nl.replace_neighbor(dev, gw, mac).await?;
                self.nl.replace_route(p.subnet, dev, Some(gw), true).await
            }
            (Via::Tunnel, Programming::DeviceRoute, Some(dev), _) => {
                self.nl.replace_route(p.subnet, dev, None, false).await
            }
            _ => Ok(()),
        }
    }

    async fn unprogram(&self, p: &Half, via: Via) -> Result<(), NetlinkError> {
        match (via, self.programming, self.device(p.family())) {
            (Via::Direct { oif }, ..) => self.nl.delete_route(p.subnet, oif).await,
            (Via::Tunnel, Programming::NeighborAndOnlinkRoute, Some(dev)) => {
                self.nl.delete_route(p.subnet, dev).await?;
                self.nl.delete_neighbor(dev, tunnel_addr(p.subnet)).await
            }
            (Via::Tunnel, Programming::DeviceRoute, Some(dev)) => {
                self.nl.delete_route(p.subnet, dev).await
            }
            _ => Ok(()),
        }
    }

    /// Removes every peer's kernel state (at shutdown).
    pub async fn clear(&mut self) {
        let all: Vec<(Half, Option<Via>)> = self
            .wanted
            .iter()
            .map(|(k, p)| (*p, self.routed.get(k).copied()))
            .collect();
        self.wanted.clear();
        self.holders.clear();
        self.last_leases.clear();
        self.routed.clear();
        self.failing.clear();
        self.publish();
        for (p, via) in all {
            let _ = match via {
                Some(via) => self.unprogram(&p, via).await,
                None => self.nl.delete_unreachable(p.subnet).await,
            };
        }
    }
}

/// The destinations of `routes` that weft did not install.
fn foreign(routes: &HashSet<RouteEntry>) -> HashSet<IpNet> {
    routes.iter().filter(|r| !r.ours).map(|r| r.dst).collect()
}

fn describe(via: Via) -> &'static str {
    match via {
        Via::Tunnel => "over the tunnel",
        Via::Direct { .. } => "directly, without encapsulation",
    }
}

/// The VtepMAC to use for one family's device (`side` reads its
/// BackendData or BackendV6Data): the one in our previous lease (so peers
/// need not reprogram anything across a restart), else a fresh random one.
pub fn vtep_mac_for(
    ours: Option<&Lease>,
    vni: Vni,
    side: impl Fn(&weft_routes::LeaseAttrs) -> Option<weft_routes::lease::VxlanData>,
) -> MacAddr {
    ours.and_then(|l| side(&l.attrs))
        .filter(|d| d.vni == vni && weft_routes::validate::is_vtep_mac(d.vtep_mac))
        .map(|d| d.vtep_mac)
        .unwrap_or_else(|| MacAddr::vtep_from_random(rand::random()))
}

/// A subnet's first address (`<subnet>.0`, `<subnet>::`): the tunnel
/// device's address, and the gateway of a tunnel peer's route on a TAP.
pub fn tunnel_addr(subnet: IpNet) -> IpAddr {
    subnet.network()
}
