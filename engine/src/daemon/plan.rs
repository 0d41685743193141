//! What `weft run` will build, decided once from the backend, the device
//! kind and the underlay: the device and how the tunnel runs on it, the
//! MTU, the port, what is programmed per peer and what our lease says.
//! `Node` owns the plan; a recreated device is built from it again.

use super::data_plane::DataPlaneSpec;
use super::registry::Leases;
use super::RunOptions;
use crate::control::{self, Programming};
use crate::device::DeviceKind;
use crate::metrics::WorkerStats;
use crate::netlink::Underlay;
use crate::tunnel::{Inner, Mode};
use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use weft_encap::{udp, vxlan};
use weft_routes::ForwardingTable;
use weft_routes::{Backend, LeaseAttrs};

/// weft's device: its name, its kind and what the tunnel carries on it.
#[derive(Debug, Clone)]
pub(super) struct DevicePlan {
    pub name: String,
    pub kind: DeviceKind,
    pub mode: Mode,
}

/// The plan of one node.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// weft's device for IPv4 pods; none for host-gw and in an IPv6-only
    /// cluster.
    pub device: Option<DevicePlan>,
    /// The IPv4 device's MTU (the underlay's for host-gw), which
    /// subnet.env's FLANNEL_MTU says even in an IPv6-only cluster, as
    /// flanneld's does.
    pub mtu: u32,
    /// weft's device for IPv6 pods (`flannel-v6.<VNI>`), with vxlan and
    /// `EnableIPv6`, and its MTU.
    pub device6: Option<(DevicePlan, u32)>,
    /// The data port; 0 for host-gw.
    pub port: u16,
    /// What our lease announces.
    pub attrs: LeaseAttrs,
    /// What is programmed per peer.
    pub programming: Programming,
    /// host-gw and DirectRouting decide per peer from the underlay's
    /// routes, so their changes are watched.
    pub watch_underlay: bool,
}

impl DevicePlan {
    /// Our VXLAN endpoint, when the device carries VXLAN.
    pub fn vtep(&self) -> Option<vxlan::Endpoint> {
        match self.mode {
            Mode::VxlanTun(ep) | Mode::VxlanTap(ep) => Some(ep),
            Mode::Udp => None,
        }
    }
}

impl Plan {
    /// Our VXLAN endpoint, for the vxlan backend.
    pub fn vtep(&self) -> Option<vxlan::Endpoint> {
        self.device.as_ref().and_then(DevicePlan::vtep)
    }

    /// Decides the plan for our PublicIP (none in an IPv6-only cluster)
    /// and (with `EnableIPv6`) PublicIPv6. `previous` is the subnet of the
    /// last subnet.env, which names the lease whose VtepMAC we keep.
    pub async fn new(
        backend: &Backend,
        opts: &RunOptions,
        underlay: &Underlay,
        (public_ip, public_ipv6): (Option<Ipv4Addr>, Option<Ipv6Addr>),
        leases_from: &Leases,
        previous: Option<ipnet::Ipv4Net>,
    ) -> anyhow::Result<Plan> {
        // What we announced last time, to keep our VtepMACs: in Kubernetes
        // only our own Node says that (another Node that names our
        // PublicIP says nothing about us).
        let leases = match (backend, leases_from) {
            (Backend::Vxlan { .. }, Leases::Kube(k)) => k.own_lease().into_iter().collect(),
            (Backend::Vxlan { .. }, Leases::Store(r)) => {
                r.leases().await.context("cannot list leases")?
            }
            _ => Vec::new(),
        };
        let ours = match public_ip {
            Some(ip) => weft_routes::alloc::lease_of(&leases, ip, previous),
            // IPv6-only is Kubernetes only: `leases` is our Node's lease.
            None => leases.first(),
        };
        let mut plan = Plan::for_ipv4(backend, opts, underlay, public_ip, ours)?;
        if let Some(ip) = public_ipv6 {
            if plan.programming == Programming::Gateway
                && !underlay.networks6.iter().any(|n| n.contains(&ip))
            {
                bail!(
                    "host-gw cannot work behind NAT: PublicIPv6 {ip} is on none of {}'s IPv6 networks ({:?}). \
                     Peers route this node's IPv6 pods via its PublicIPv6, so it must be this host's own address \
                     on the shared layer-2 segment; drop --public-ipv6",
                    underlay.name,
                    underlay.networks6
                );
            }
            plan.attrs.public_ipv6 = Some(ip);
            if let Backend::Vxlan { vni, mtu, .. } = *backend {
                // The second device has the same VNI and port and a VtepMAC
                // of its own. flanneld asks for Backend.MTU − 50 and the
                // kernel clamps it to the underlay's − 70 (an IPv6 outer
                // header is 20 bytes longer); weft sets that at once.
                let mac = control::vtep_mac_for(ours, vni, |a| a.vxlan_v6_data());
                let vtep = vxlan::Endpoint { vni, mac };
                let mtu6 = mtu
                    .unwrap_or(underlay.mtu)
                    .saturating_sub(vxlan::IPV4_OVERHEAD as u32)
                    .min(underlay.mtu.saturating_sub(vxlan::IPV6_OVERHEAD as u32));
                plan.device6 = Some((
                    DevicePlan {
                        name: format!("flannel-v6.{vni}"),
                        kind: opts.device,
                        mode: match opts.device {
                            DeviceKind::Tun => Mode::VxlanTun(vtep),
                            DeviceKind::Tap => Mode::VxlanTap(vtep),
                        },
                    },
                    mtu6,
                ));
                let data = weft_routes::lease::VxlanData { vni, vtep_mac: mac };
                plan.attrs.backend_v6_data = Some(data.to_value());
            }
        }
        Ok(plan)
    }

    /// The plan of the backend and its IPv4 side: no IPv4 device and no
    /// IPv4 attributes without a PublicIP (an IPv6-only cluster). `ours`
    /// is our earlier lease, if any.
    fn for_ipv4(
        backend: &Backend,
        opts: &RunOptions,
        underlay: &Underlay,
        public_ip: Option<Ipv4Addr>,
        ours: Option<&weft_routes::Lease>,
    ) -> anyhow::Result<Plan> {
        let underlay_mtu = underlay.mtu;
        let Some(public_ip) = public_ip else {
            return Ok(Plan::ipv6_only(backend, opts, underlay_mtu));
        };
        match *backend {
            Backend::Udp { port } => {
                if opts.device == DeviceKind::Tap {
                    tracing::info!(
                        "the udp backend always uses a TUN device (flannel0); ignoring --device tap"
                    );
                }
                Ok(Plan {
                    device: Some(DevicePlan {
                        name: "flannel0".into(),
                        kind: DeviceKind::Tun,
                        mode: Mode::Udp,
                    }),
                    mtu: underlay_mtu.saturating_sub(udp::IPV4_OVERHEAD as u32),
                    port,
                    attrs: LeaseAttrs::udp(public_ip),
                    programming: Programming::for_backend(backend, DeviceKind::Tun),
                    watch_underlay: false,
                    device6: None,
                })
            }
            Backend::Vxlan {
                vni,
                port,
                direct_routing,
                mtu,
            } => {
                if direct_routing {
                    tracing::info!("DirectRouting: peers on a directly connected network are routed without encapsulation");
                }
                let mac = control::vtep_mac_for(ours, vni, |a| a.vxlan_data());
                let data = weft_routes::lease::VxlanData { vni, vtep_mac: mac };
                let vtep = vxlan::Endpoint { vni, mac };
                let kind = opts.device;
                Ok(Plan {
                    device: Some(DevicePlan {
                        name: format!("flannel.{vni}"),
                        kind,
                        mode: match kind {
                            DeviceKind::Tun => Mode::VxlanTun(vtep),
                            DeviceKind::Tap => Mode::VxlanTap(vtep),
                        },
                    }),
                    // Backend.MTU is the underlay's, as in flanneld's
                    // vxlan.go: the device gets 50 bytes less.
                    mtu: mtu
                        .unwrap_or(underlay_mtu)
                        .saturating_sub(vxlan::IPV4_OVERHEAD as u32),
                    port,
                    attrs: LeaseAttrs::vxlan(public_ip, data),
                    programming: Programming::for_backend(backend, kind),
                    watch_underlay: direct_routing,
                    device6: None,
                })
            }
            Backend::HostGw => {
                if Some(public_ip) != underlay.addr {
                    bail!(
                        "host-gw cannot work behind NAT: PublicIP {public_ip} is not the address of {} ({}). \
                         Peers route this node's pods via its PublicIP, so it must be this host's own address \
                         on the shared layer-2 segment; drop --public-ip, or use the vxlan backend",
                        underlay.name,
                        underlay.addr.map_or("none".into(), |a| a.to_string())
                    );
                }
                Ok(Plan {
                    device: None,
                    mtu: underlay_mtu,
                    port: 0,
                    attrs: LeaseAttrs::host_gw(public_ip),
                    programming: Programming::Gateway,
                    watch_underlay: true,
                    device6: None,
                })
            }
        }
    }
    /// The plan of an IPv6-only cluster before its IPv6 side: no IPv4
    /// device, and attributes with no PublicIP or BackendData, as
    /// flanneld's vxlan and host-gw backends announce then. The udp
    /// backend never gets here (`EnableIPv6` with udp is refused).
    fn ipv6_only(backend: &Backend, opts: &RunOptions, underlay_mtu: u32) -> Plan {
        let (mtu, port, watch_underlay) = match *backend {
            Backend::Vxlan {
                port,
                direct_routing,
                mtu,
                ..
            } => (
                mtu.unwrap_or(underlay_mtu)
                    .saturating_sub(vxlan::IPV4_OVERHEAD as u32),
                port,
                direct_routing,
            ),
            Backend::Udp { port } => (
                underlay_mtu.saturating_sub(udp::IPV4_OVERHEAD as u32),
                port,
                false,
            ),
            Backend::HostGw => (underlay_mtu, 0, true),
        };
        Plan {
            device: None,
            mtu,
            device6: None,
            port,
            attrs: LeaseAttrs {
                backend_type: Some(backend.type_name().into()),
                ..LeaseAttrs::default()
            },
            programming: Programming::for_backend(backend, opts.device),
            watch_underlay,
        }
    }

    /// What the data plane is built from (and rebuilt from when the device
    /// is deleted); none for host-gw, which has no device.
    pub fn data_plane_spec(
        &self,
        opts: &RunOptions,
        (network, subnet): (ipnet::Ipv4Net, ipnet::Ipv4Net),
        public_ip: Ipv4Addr,
        table: &Arc<ArcSwap<ForwardingTable>>,
        stats: &[Arc<WorkerStats>],
    ) -> Option<DataPlaneSpec> {
        let device = self.device.as_ref()?;
        Some(self.spec(
            (device, self.mtu),
            opts,
            (network, subnet),
            public_ip,
            table,
            stats,
        ))
    }

    /// The same for IPv6 pods: none unless vxlan carries them.
    pub fn data_plane_spec6(
        &self,
        opts: &RunOptions,
        (network, subnet): (ipnet::Ipv6Net, ipnet::Ipv6Net),
        public_ip: Ipv6Addr,
        table: &Arc<ArcSwap<ForwardingTable<Ipv6Addr>>>,
        stats: &[Arc<WorkerStats>],
    ) -> Option<DataPlaneSpec<Ipv6Addr>> {
        let (device, mtu) = self.device6.as_ref()?;
        Some(self.spec(
            (device, *mtu),
            opts,
            (network, subnet),
            public_ip,
            table,
            stats,
        ))
    }

    /// The spec of one family's data plane: its device and MTU, its
    /// Network and subnet, our address in it, its table and counters.
    fn spec<F: Inner>(
        &self,
        (device, mtu): (&DevicePlan, u32),
        opts: &RunOptions,
        (network, subnet): (F::Net, F::Net),
        public_ip: F,
        table: &Arc<ArcSwap<ForwardingTable<F>>>,
        stats: &[Arc<WorkerStats>],
    ) -> DataPlaneSpec<F> {
        DataPlaneSpec {
            device: device.clone(),
            mtu,
            port: self.port,
            programming: self.programming,
            subnet,
            public_ip,
            network,
            table: table.clone(),
            offload: opts.offload,
            tuning: opts.tuning,
            allow_nat_peers: opts.allow_nat_peers,
            stats: stats.to_vec(),
        }
    }
}
