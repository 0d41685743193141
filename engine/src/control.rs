//! Turns the registry's leases into peers: kernel state (neighbors and
//! routes, as flanneld programs them) and the forwarding-table snapshot the
//! workers read. Applied as a diff, so a change to one lease never disturbs
//! traffic to the others.

use crate::device::DeviceKind;
use crate::netlink::{Netlink, NetlinkError};
use arc_swap::ArcSwap;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use weft_encap::{MacAddr, Vni};
use weft_routes::{Backend, ForwardingTable, Lease, LeaseAttrs, Peer, SubnetKey};

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
}

impl Programming {
    /// The programming for a backend and device kind.
    pub fn for_backend(backend: &Backend, kind: DeviceKind) -> Programming {
        match (backend, kind) {
            (Backend::Vxlan { .. }, DeviceKind::Tap) => Programming::NeighborAndOnlinkRoute,
            (Backend::Vxlan { .. }, DeviceKind::Tun) => Programming::DeviceRoute,
            _ => Programming::NetworkRoute,
        }
    }
}

/// The peer set, as last applied.
pub struct Peers {
    nl: Netlink,
    device: u32,
    programming: Programming,
    backend: Backend,
    port: u16,
    own: SubnetKey,
    table: Arc<ArcSwap<ForwardingTable>>,
    metrics: Arc<crate::metrics::Metrics>,
    current: BTreeMap<SubnetKey, Peer>,
    /// Leases we ignore, remembered so each is warned about once per change.
    ignored: BTreeMap<SubnetKey, LeaseAttrs>,
}

impl Peers {
    /// An empty peer set for device `device`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        nl: Netlink,
        device: u32,
        programming: Programming,
        backend: Backend,
        port: u16,
        own: SubnetKey,
        table: Arc<ArcSwap<ForwardingTable>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Peers {
        Peers {
            nl,
            device,
            programming,
            backend,
            port,
            own,
            table,
            metrics,
            current: BTreeMap::new(),
            ignored: BTreeMap::new(),
        }
    }

    /// The peers now programmed.
    pub fn current(&self) -> impl Iterator<Item = &Peer> {
        self.current.values()
    }

    /// What a lease means for us: a peer, or a reason to ignore it.
    fn peer_of(&self, lease: &Lease) -> Result<Peer, String> {
        let a = &lease.attrs;
        let want = self.backend.type_name();
        if a.backend_type() != want {
            return Err(format!(
                "its BackendType is {:?}, this cluster runs {want:?}",
                a.backend_type()
            ));
        }
        let vtep_mac = match self.backend {
            Backend::Vxlan { vni, .. } => {
                let d = a
                    .vxlan_data()
                    .ok_or("its BackendData has no valid VtepMAC")?;
                if d.vni != vni {
                    return Err(format!("its VNI is {}, ours is {vni}", d.vni));
                }
                Some(d.vtep_mac)
            }
            _ => None,
        };
        Ok(Peer {
            subnet: lease.subnet(),
            endpoint: SocketAddrV4::new(a.public_ip, self.port),
            vtep_mac,
        })
    }

    /// Brings kernel state and the snapshot in line with `leases`. Kernel
    /// errors for one peer are logged and retried on the next sync; they do
    /// not stop the others.
    pub async fn sync(&mut self, leases: &[Lease]) {
        let mut desired = BTreeMap::new();
        for l in leases.iter().filter(|l| l.key != self.own) {
            match self.peer_of(l) {
                Ok(p) => {
                    self.ignored.remove(&l.key);
                    desired.insert(l.key, p);
                }
                Err(why) => {
                    if self.ignored.get(&l.key) != Some(&l.attrs) {
                        tracing::warn!(lease = %l.key, public_ip = %l.attrs.public_ip, "ignoring lease: {why}");
                        self.ignored.insert(l.key, l.attrs.clone());
                    }
                }
            }
        }
        self.ignored
            .retain(|k, _| leases.iter().any(|l| &l.key == k));
        if desired == self.current {
            return;
        }
        let removed: Vec<(SubnetKey, Peer)> = self
            .current
            .iter()
            .filter(|(k, _)| !desired.contains_key(k))
            .map(|(k, p)| (*k, p.clone()))
            .collect();
        // Stop forwarding to removed peers before their routes go, and start
        // forwarding to new ones only after their kernel state is in place.
        let mut failed = Vec::new();
        for (k, p) in &desired {
            if self.current.get(k) != Some(p) {
                match self.program(p).await {
                    Ok(()) => {
                        tracing::info!(subnet = %p.subnet, public_ip = %p.endpoint.ip(), vtep_mac = ?p.vtep_mac.map(|m| m.to_string()), "peer added")
                    }
                    Err(e) => {
                        tracing::warn!(subnet = %p.subnet, error = %e, "cannot program peer; will retry");
                        failed.push(*k);
                    }
                }
            }
        }
        for k in failed {
            desired.remove(&k);
        }
        self.current = desired;
        self.publish();
        for (_, p) in removed {
            if let Err(e) = self.unprogram(&p).await {
                tracing::warn!(subnet = %p.subnet, error = %e, "cannot remove peer state");
            }
            tracing::info!(subnet = %p.subnet, "peer removed");
        }
    }

    fn publish(&self) {
        let peers: Vec<Peer> = self.current.values().cloned().collect();
        self.metrics.peers.store(peers.len() as u64, Relaxed);
        self.table.store(Arc::new(ForwardingTable::new(peers)));
    }

    async fn program(&self, p: &Peer) -> Result<(), NetlinkError> {
        let gw = Ipv4Addr::from(u32::from(p.subnet.network()));
        match (self.programming, p.vtep_mac) {
            (Programming::NeighborAndOnlinkRoute, Some(mac)) => {
                self.nl.replace_neighbor(self.device, gw, mac).await?;
                self.nl
                    .replace_route(p.subnet, self.device, Some(gw), true)
                    .await
            }
            (Programming::DeviceRoute, _) => {
                self.nl
                    .replace_route(p.subnet, self.device, None, false)
                    .await
            }
            _ => Ok(()),
        }
    }

    async fn unprogram(&self, p: &Peer) -> Result<(), NetlinkError> {
        match self.programming {
            Programming::NeighborAndOnlinkRoute => {
                self.nl.delete_route(p.subnet, self.device).await?;
                self.nl
                    .delete_neighbor(self.device, p.subnet.network())
                    .await
            }
            Programming::DeviceRoute => self.nl.delete_route(p.subnet, self.device).await,
            Programming::NetworkRoute => Ok(()),
        }
    }

    /// Removes every peer's kernel state (at shutdown).
    pub async fn clear(&mut self) {
        let all: Vec<Peer> = self.current.values().cloned().collect();
        self.current.clear();
        self.publish();
        for p in all {
            let _ = self.unprogram(&p).await;
        }
    }
}

/// The VtepMAC to use: the one in our previous lease (so peers need not
/// reprogram anything across a restart), else a fresh random one.
pub fn vtep_mac_for(leases: &[Lease], public_ip: Ipv4Addr, vni: Vni) -> MacAddr {
    weft_routes::alloc::lease_of(leases, public_ip)
        .and_then(|l| l.attrs.vxlan_data())
        .filter(|d| d.vni == vni)
        .map(|d| d.vtep_mac)
        .unwrap_or_else(|| MacAddr::vtep_from_random(rand::random()))
}

/// `<subnet>.0`, the tunnel device's address.
pub fn tunnel_addr(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.network()
}
