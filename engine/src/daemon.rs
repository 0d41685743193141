//! `weft run`: acquire a lease, build the device, start the workers, keep
//! peers in sync with the registry, and undo it all on SIGTERM/SIGINT.
//!
//! `Node` (here) holds the three states; what it is made of lives beside
//! it: the plan decided once from the backend and the device (`plan`),
//! the device and its workers (`data_plane`), our lease (`lease`) and
//! where leases come from (`registry`). The rules are `masq`'s.

mod data_plane;
mod lease;
mod plan;
mod registry;

use crate::control::{self, Peers};
use crate::masq::Traffic;
use crate::metrics::{Metrics, WorkerStats};
use crate::netlink::Netlink;
use anyhow::Context;
use arc_swap::ArcSwap;
use data_plane::{DataPlane, Tended};
use ipnet::{IpNet, Ipv6Net};
use lease::{set_expiry, LeaseKeeper};
use plan::Plan;
use registry::{open_registry, Leases};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use weft_routes::{subnet_env, ForwardingTable, Registry};

pub use crate::masq::TrafficOptions;

/// How often the registry is polled: changes take effect within this.
const POLL: Duration = Duration::from_millis(500);
/// How often every peer's routes are checked (and put back if deleted), as
/// flanneld's host-gw does.
const RECHECK: Duration = Duration::from_secs(10);

/// Options of `weft run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The file registry's directory.
    pub registry_dir: Option<PathBuf>,
    /// etcd, when the leases live there instead.
    pub etcd: Option<weft_routes::EtcdConfig>,
    /// The Kubernetes API, when leases are nodes' podCIDRs
    /// (`--kube-subnet-mgr`).
    pub kube: Option<weft_routes::kube::KubeConfig>,
    /// With `kube`: mark the node's network available once ready.
    pub set_node_network_unavailable: bool,
    /// Renew our lease this long before it expires.
    pub renew_margin: Duration,
    /// Our PublicIP; default the underlay interface's address.
    pub public_ip: Option<Ipv4Addr>,
    /// Our PublicIPv6 (with `EnableIPv6`); default the underlay
    /// interface's preferred global IPv6 address.
    pub public_ipv6: Option<Ipv6Addr>,
    /// How to pick the underlay interface; by default the default route's.
    pub iface: crate::netlink::IfaceChoice,
    /// Also serve /healthz and /readyz here (flanneld's --healthz-ip and
    /// --healthz-port).
    pub healthz_addr: Option<SocketAddr>,
    /// Where subnet.env goes.
    pub subnet_file: PathBuf,
    /// TUN or TAP for vxlan.
    pub device: crate::device::DeviceKind,
    /// Where to serve metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// A metrics address that cannot be bound is fatal (it was asked for),
    /// rather than a warning (it is the default).
    pub metrics_required: bool,
    /// Worker threads (device queues).
    pub threads: usize,
    /// TUN offloads and UDP GSO.
    pub offload: bool,
    /// Data-path techniques switched off for measurements (`WEFT_DISABLE`).
    pub tuning: crate::tuning::Tuning,
    /// Accept encapsulated traffic from outer sources that hold no lease
    /// (peers behind NAT); the inner source must still be a lease's.
    pub allow_nat_peers: bool,
    /// Masquerading and forwarding rules.
    pub traffic: TrafficOptions,
}

/// Runs the daemon until a signal; Ok means a clean shutdown.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control-plane runtime")?;
    rt.block_on(run_async(opts))
}

/// `weft run` as three states: `Node::start` takes the lease and puts the
/// device, routes, rules and subnet.env in place (ready); `Node::serve` keeps
/// them until a signal or a fatal error; `Node::stop` removes them. The
/// lease's own state is `LeaseKeeper`.
async fn run_async(opts: RunOptions) -> anyhow::Result<()> {
    let mut node = Node::start(opts).await?;
    let outcome = node.serve().await;
    node.stop().await;
    outcome
}

/// A running node: what `start` put in place, `serve` keeps and `stop`
/// removes.
struct Node {
    opts: RunOptions,
    nl: Netlink,
    leases_from: Leases,
    /// Our IPv4 subnet; none in an IPv6-only cluster.
    subnet: Option<ipnet::Ipv4Net>,
    /// Our IPv6 subnet, with `EnableIPv6`.
    subnet6: Option<Ipv6Net>,
    data_plane: Option<DataPlane>,
    /// The IPv6 pods' device and workers, with vxlan and `EnableIPv6`.
    data_plane6: Option<DataPlane<Ipv6Addr>>,
    metrics: Arc<Metrics>,
    peers: Peers,
    traffic: Option<Traffic>,
    keeper: LeaseKeeper,
    /// SIGTERM and SIGINT, registered before subnet.env is written.
    signals: (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    /// Underlay route changes, when host-gw or DirectRouting watch them.
    underlay_events: Option<tokio::sync::mpsc::UnboundedReceiver<()>>,
}

impl Node {
    /// Starting: takes the lease and puts the device, workers, routes,
    /// rules and subnet.env in place; the node is ready when this returns.
    async fn start(opts: RunOptions) -> anyhow::Result<Node> {
        let nl = Netlink::open()?;
        let leases_from = open_registry(&opts).await?;
        let conf = leases_from.config().await?;
        // The underlay as flanneld picks it for the cluster's IP stack: an
        // IPv6-only cluster needs no IPv4 on the host.
        let stack = match conf.ipv4 {
            Some(_) => crate::netlink::Stack::WithIpv4,
            None => crate::netlink::Stack::Ipv6Only,
        };
        let underlay = nl.choose_underlay(&opts.iface, stack).await?;
        let public_ip = match conf.ipv4 {
            Some(_) => Some(opts.public_ip.or(underlay.addr).with_context(|| {
                format!("{} has no IPv4 address: pass --public-ip", underlay.name)
            })?),
            None => None,
        };
        let public_ipv6 = match conf.ipv6 {
            Some(_) => Some(public_ipv6(&opts, &underlay)?),
            None => None,
        };
        let previous = subnet_env::previous_subnet(&opts.subnet_file);
        let plan = Plan::new(
            &conf.backend,
            &opts,
            &underlay,
            (public_ip, public_ipv6),
            &leases_from,
            previous,
        )
        .await?;
        let previous_network = subnet_env::previous_network(&opts.subnet_file);
        let lease = leases_from
            .acquire(&conf, &plan.attrs, &opts.subnet_file)
            .await?;
        let subnet = lease.subnet();
        let subnet6 = lease.key.v6;
        if let (Some(v6), None) = (&conf.ipv6, subnet6) {
            anyhow::bail!(
                "EnableIPv6 is set, but our lease {} has no IPv6 subnet in {}",
                lease.key,
                v6.network
            );
        }
        if let (Some(v4), None) = (&conf.ipv4, subnet) {
            anyhow::bail!(
                "our lease {} has no IPv4 subnet in {}",
                lease.key,
                v4.network
            );
        }
        let shown = |ip: Option<std::net::IpAddr>| ip.map_or("-".into(), |ip| ip.to_string());
        tracing::info!(
            subnet = %lease.key,
            public_ip = %shown(public_ip.map(Into::into)),
            public_ipv6 = %shown(public_ipv6.map(Into::into)),
            iface = %underlay.name,
            backend = conf.backend.type_name(),
            "lease acquired"
        );

        let threads = opts.threads.max(1);
        let table = Arc::new(ArcSwap::from_pointee(ForwardingTable::default()));
        let table6 = Arc::new(ArcSwap::from_pointee(ForwardingTable::default()));
        // One set of counters per worker slot, kept across device recreations.
        let new_stats = |device: bool| -> Vec<Arc<WorkerStats>> {
            match device {
                true => (0..threads).map(|_| Arc::default()).collect(),
                false => Vec::new(),
            }
        };
        let stats = new_stats(plan.device.is_some());
        let stats6 = new_stats(plan.device6.is_some() && subnet6.is_some());
        let nets = conf.ipv4.as_ref().map(|c| c.network).zip(subnet);
        let spec = match (nets, public_ip) {
            (Some(nets), Some(ip)) => plan.data_plane_spec(&opts, nets, ip, &table, &stats),
            _ => None,
        };
        let data_plane = match spec {
            Some(spec) => Some(DataPlane::start(&nl, spec).await?),
            None => None,
        };
        let nets6 = conf.ipv6.as_ref().map(|c| c.network).zip(subnet6);
        let spec6 = match (nets6, public_ipv6) {
            (Some(nets6), Some(ip)) => plan.data_plane_spec6(&opts, nets6, ip, &table6, &stats6),
            _ => None,
        };
        let data_plane6 = match spec6 {
            Some(spec) => Some(DataPlane::start(&nl, spec).await?),
            None => None,
        };
        let metrics = Arc::new(Metrics {
            workers: stats.into_iter().chain(stats6).collect(),
            ..Default::default()
        });
        let _ = metrics.node.set(crate::metrics::NodeView {
            subnet,
            public_ip,
            backend: conf.backend.type_name(),
            device: plan
                .device
                .as_ref()
                .map(|d| d.name.clone())
                .unwrap_or_default(),
            mtu: plan.mtu,
            ipv6: subnet6.map(|subnet| crate::metrics::NodeView6 {
                subnet,
                public_ip: public_ipv6,
                device: plan
                    .device6
                    .as_ref()
                    .map(|(d, _)| d.name.clone())
                    .unwrap_or_default(),
                mtu: plan.device6.as_ref().map_or(0, |(_, mtu)| *mtu),
            }),
        });
        serve_endpoints(&opts, &metrics).await?;
        let policy = lease_policy(&conf, &leases_from, &plan, &lease, &underlay);
        let mut peers = Peers::new(control::PeersConfig {
            nl: nl.clone(),
            device: data_plane.as_ref().map(|d| d.index),
            device6: data_plane6.as_ref().map(|d| d.index),
            underlay: underlay.clone(),
            programming: plan.programming,
            port: plan.port,
            policy,
            table,
            table6,
            metrics: metrics.clone(),
        });
        peers.sync(&leases_from.registry().leases().await?).await;
        // Routes of ours a previous run left behind (it crashed, or a
        // removal failed) go now, not at the first periodic check.
        peers.recheck().await;
        // Rules before readiness: /readyz and subnet.env come once they are in.
        let traffic = Traffic::start(
            opts.traffic,
            conf.enable_nftables,
            &family_nets(
                &conf,
                &opts,
                subnet,
                subnet6,
                previous_network.zip(previous),
            ),
        )?;
        if opts.traffic.blackhole_route {
            ensure_blackholes(&nl, subnet, subnet6).await;
        }
        let env = subnet_env::SubnetEnv {
            ipv4: conf.ipv4.as_ref().map(|c| c.network).zip(subnet),
            mtu: plan.mtu,
            ipmasq: opts.traffic.ip_masq,
            ipv6: conf.ipv6.as_ref().zip(subnet6).map(|(c, s)| (c.network, s)),
        };
        // From the moment subnet.env says we are up, SIGTERM and SIGINT mean a
        // clean shutdown (routes, rules and device removed), even if they come
        // while the last start-up steps (the node condition) are in flight.
        let term = signal(SignalKind::terminate())?;
        let int = signal(SignalKind::interrupt())?;
        env.write(&opts.subnet_file)
            .with_context(|| format!("cannot write {}", opts.subnet_file.display()))?;
        set_expiry(&metrics, lease.expiration);
        metrics.ready.store(true, Ordering::Relaxed);
        announce_ready(&opts, &leases_from, &plan, &underlay).await;
        // host-gw and DirectRouting decide per peer from the underlay's routes:
        // re-decide as soon as those change.
        let underlay_events = match plan.watch_underlay {
            true => {
                let ours = conf.ipv4.as_ref().map(|c| IpNet::from(c.network));
                let ours = ours
                    .into_iter()
                    .chain(conf.ipv6.as_ref().map(|c| IpNet::from(c.network)))
                    .collect();
                Some(crate::netlink::watch_routes(ours)?)
            }
            false => None,
        };
        if underlay_events.is_some() {
            warn_strict_rp_filter(&underlay.name);
        }
        let keeper = LeaseKeeper::new(lease, plan.attrs.clone(), opts.renew_margin);
        Ok(Node {
            nl,
            leases_from,
            subnet,
            subnet6,
            data_plane,
            data_plane6,
            metrics,
            peers,
            traffic,
            keeper,
            signals: (term, int),
            underlay_events,
            opts,
        })
    }

    /// Running: polls the registry and the device, keeps the lease, the
    /// peers and the rules, until SIGTERM or SIGINT (`Ok`) or a fatal
    /// error.
    async fn serve(&mut self) -> anyhow::Result<()> {
        let Node {
            opts,
            nl,
            leases_from,
            subnet,
            subnet6,
            data_plane,
            data_plane6,
            metrics,
            peers,
            traffic,
            keeper,
            signals: (term, int),
            underlay_events,
            ..
        } = self;
        let (subnet, subnet6) = (*subnet, *subnet6);
        let reg: &dyn Registry = leases_from.registry();
        let mut blackhole_checked = tokio::time::Instant::now();
        let mut underlay_changed = false;
        let mut last_recheck = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(POLL);
        let mut registry_log = tokio::time::Instant::now() - Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = tick.tick() => {}
                Some(()) = recv_event(underlay_events) => {
                    underlay_changed = true;
                    continue;
                }
            }
            let mut up = true;
            if let Some(dp) = data_plane.as_mut() {
                if let Tended::Recreated = dp.tend(nl).await? {
                    metrics.device_recreations.fetch_add(1, Ordering::Relaxed);
                    peers.set_device(control::Family::V4, dp.index).await;
                }
                up &= dp.is_up();
            }
            if let Some(dp) = data_plane6.as_mut() {
                if let Tended::Recreated = dp.tend(nl).await? {
                    metrics.device_recreations.fetch_add(1, Ordering::Relaxed);
                    peers.set_device(control::Family::V6, dp.index).await;
                }
                up &= dp.is_up();
            }
            // Not ready while a device is gone: /readyz says so.
            metrics.ready.store(up, Ordering::Relaxed);
            let leases = match reg.leases().await {
                Ok(l) => l,
                Err(e) => {
                    // Keep forwarding with the peers we know.
                    if registry_log.elapsed() > Duration::from_secs(30) {
                        tracing::warn!(error = %e, "registry unavailable; forwarding to the last known peers");
                        registry_log = tokio::time::Instant::now();
                    }
                    continue;
                }
            };
            // Keeping the lease can wait on the registry (in Kubernetes, for
            // our Node to exist again): a signal still stops us cleanly.
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                kept = keeper.keep(reg, &leases) => kept?,
            }
            set_expiry(metrics, keeper.lease.expiration);
            if let Some(t) = traffic.as_mut() {
                t.resync();
            }
            if opts.traffic.blackhole_route && blackhole_checked.elapsed() >= opts.traffic.resync {
                blackhole_checked = tokio::time::Instant::now();
                ensure_blackholes(nl, subnet, subnet6).await;
            }
            peers.sync(&leases).await;
            if underlay_changed || last_recheck.elapsed() >= RECHECK {
                if underlay_changed {
                    tracing::debug!("underlay routes changed; re-deciding peers");
                }
                underlay_changed = false;
                last_recheck = tokio::time::Instant::now();
                peers.recheck().await;
            }
        }
    }

    /// Stopping: removes what `start` put in place (the lease stays, as
    /// flanneld leaves it, for the next start to take again).
    async fn stop(self) {
        let Node {
            opts,
            nl,
            subnet,
            subnet6,
            mut data_plane,
            mut data_plane6,
            metrics,
            mut peers,
            mut traffic,
            ..
        } = self;
        tracing::info!("shutting down");
        metrics.ready.store(false, Ordering::Relaxed);
        if let Some(dp) = data_plane.as_mut() {
            dp.stop_workers();
        }
        if let Some(dp) = data_plane6.as_mut() {
            dp.stop_workers();
        }
        peers.clear().await;
        if let Some(t) = traffic.take() {
            t.remove();
        }
        if opts.traffic.blackhole_route {
            let nets = subnet.map(IpNet::from).into_iter();
            for s in nets.chain(subnet6.map(IpNet::from)) {
                let _ = nl.delete_blackhole(s).await;
            }
        }
        if let Some(dp) = data_plane {
            dp.remove(&nl).await;
        }
        if let Some(dp) = data_plane6 {
            dp.remove(&nl).await;
        }
    }
}

/// Says the node is up: the node condition in Kubernetes (when asked to
/// set it), and the log line.
async fn announce_ready(
    opts: &RunOptions,
    leases_from: &Leases,
    plan: &Plan,
    underlay: &crate::netlink::Underlay,
) {
    if let (Leases::Kube(k), true) = (leases_from, opts.set_node_network_unavailable) {
        match k.set_network_available().await {
            Ok(()) => tracing::info!(
                node = k.node_name(),
                "node condition NetworkUnavailable set to False (FlannelIsUp)"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot set the node's NetworkUnavailable condition")
            }
        }
    }
    let subnet_file = opts.subnet_file.display();
    match (&plan.device, &plan.device6) {
        (Some(device), Some((device6, mtu6))) => {
            let threads = opts.threads.max(1);
            tracing::info!(device = %device.name, mtu = plan.mtu, device6 = %device6.name, mtu6, threads, %subnet_file, "ready")
        }
        (Some(device), None) => {
            let threads = opts.threads.max(1);
            tracing::info!(device = %device.name, mtu = plan.mtu, threads, %subnet_file, "ready")
        }
        (None, Some((device6, mtu6))) => {
            let threads = opts.threads.max(1);
            tracing::info!(device6 = %device6.name, mtu6, threads, %subnet_file, "ready (IPv6-only)")
        }
        (None, _) => {
            tracing::info!(mtu = plan.mtu, iface = %underlay.name, %subnet_file, "ready (host-gw: routes only, no device)")
        }
    }
}

/// What a peer lease must agree with: the config, our own lease, plan
/// and underlay.
fn lease_policy(
    conf: &weft_routes::NetConf,
    leases_from: &Leases,
    plan: &Plan,
    lease: &weft_routes::Lease,
    underlay: &crate::netlink::Underlay,
) -> weft_routes::LeasePolicy {
    let ipv4 = (conf.ipv4.as_ref(), lease.key.v4, lease.attrs.public_ip);
    weft_routes::LeasePolicy {
        backend: conf.backend.clone(),
        ipv4: match ipv4 {
            (Some(c), Some(own), Some(own_public_ip)) => Some(weft_routes::validate::V4Policy {
                network: c.network,
                // flanneld takes any podCIDR inside Network; the
                // controller manager decides the length.
                subnet_len: match leases_from {
                    Leases::Kube(_) => None,
                    Leases::Store(_) => Some(c.subnet_len),
                },
                own,
                own_public_ip,
                own_mac: plan.vtep().map(|e| e.mac),
                underlay: underlay.networks.clone(),
                network_routed: plan.programming == control::Programming::NetworkRoute,
            }),
            _ => None,
        },
        ipv6: conf.ipv6.as_ref().map(|c| weft_routes::validate::V6Policy {
            network: c.network,
            subnet_len: match leases_from {
                Leases::Kube(_) => None,
                Leases::Store(_) => Some(c.subnet_len),
            },
            own: lease.key.v6,
            own_public_ip: lease.attrs.public_ipv6,
            own_mac: plan
                .device6
                .as_ref()
                .and_then(|(d, _)| d.vtep())
                .map(|e| e.mac),
            underlay: underlay.networks6.clone(),
        }),
    }
}

/// Our PublicIPv6: `--public-ipv6`, else the underlay's preferred global
/// IPv6 address.
fn public_ipv6(opts: &RunOptions, underlay: &crate::netlink::Underlay) -> anyhow::Result<Ipv6Addr> {
    opts.public_ipv6.or(underlay.addr6).with_context(|| {
        format!(
            "EnableIPv6 is set, but {} has no usable global IPv6 address (link-local, deprecated and \
             tentative addresses do not count): add one, or pass --public-ipv6",
            underlay.name
        )
    })
}

/// Each family's network and our subnet in it, for the rules: IPv4
/// unless `EnableIPv4` is false, and IPv6 with `EnableIPv6`. `previous` is
/// the last subnet.env's IPv4 network and subnet.
fn family_nets(
    conf: &weft_routes::NetConf,
    opts: &RunOptions,
    subnet: Option<ipnet::Ipv4Net>,
    subnet6: Option<Ipv6Net>,
    previous: Option<(ipnet::Ipv4Net, ipnet::Ipv4Net)>,
) -> Vec<crate::masq::FamilyNets> {
    let mut nets = Vec::new();
    if let (Some(c), Some(s)) = (&conf.ipv4, subnet) {
        nets.push(crate::masq::FamilyNets {
            network: c.network.into(),
            subnet: s.into(),
            previous: previous.map(|(n, s)| (n.into(), s.into())),
        });
    }
    if let (Some(c), Some(s)) = (&conf.ipv6, subnet6) {
        let file = &opts.subnet_file;
        let previous =
            subnet_env::previous_ipv6_network(file).zip(subnet_env::previous_ipv6_subnet(file));
        nets.push(crate::masq::FamilyNets {
            network: c.network.into(),
            subnet: s.into(),
            previous: previous.map(|(n, s)| (n.into(), s.into())),
        });
    }
    nets
}

/// Serves /metrics, /healthz and /readyz where the options say. A
/// metrics address that cannot be bound is fatal only when it was asked
/// for; the health address always is (the kubelet's probe needs it).
async fn serve_endpoints(opts: &RunOptions, metrics: &Arc<Metrics>) -> anyhow::Result<()> {
    if let Some(addr) = opts.metrics_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
                tokio::spawn(crate::metrics::serve(l, metrics.clone()));
            }
            Err(e) if !opts.metrics_required => {
                tracing::warn!(%addr, error = %e, "cannot serve metrics on the default address; pass --metrics-addr to choose another")
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot listen on --metrics-addr {addr}"))
            }
        }
    }
    if let Some(addr) = opts.healthz_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --healthz-ip/--healthz-port {addr}"))?;
        tracing::info!(%addr, "serving /healthz and /readyz");
        tokio::spawn(crate::metrics::serve_health(l, metrics.clone()));
    }
    Ok(())
}

/// Plain routing can be one-sided (each node decides for itself), so pod
/// packets may arrive on the underlay from a peer whose route back goes
/// through the tunnel; strict reverse-path filtering drops those.
/// `--ip-blackhole-route`: puts `blackhole <subnet>` in place unless the
/// kernel routes the subnet already (the bridge plugin's route, say).
/// With `EnableIPv6`, our IPv6 subnet gets one too, as flanneld's does.
async fn ensure_blackholes(nl: &Netlink, subnet: Option<ipnet::Ipv4Net>, subnet6: Option<Ipv6Net>) {
    let nets = subnet.map(IpNet::from).into_iter();
    let nets = nets.chain(subnet6.map(IpNet::from));
    for subnet in nets {
        match nl.ensure_blackhole(subnet).await {
            Ok(true) => tracing::info!(%subnet, "blackhole route in place"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%subnet, error = %e, "cannot add the blackhole route"),
        }
    }
}

fn warn_strict_rp_filter(iface: &str) {
    let read = |dev: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter"))
            .ok()
            .and_then(|v| v.trim().parse::<u8>().ok())
            .unwrap_or(0)
    };
    // The kernel uses the larger of `all` and the interface's value.
    if read("all").max(read(iface)) == 1 {
        tracing::warn!(
            %iface,
            "strict reverse-path filtering (rp_filter=1) is on: when a peer routes to us directly \
             while we reach it through the tunnel, its packets are dropped; \
             set net.ipv4.conf.all.rp_filter=2 and net.ipv4.conf.{iface}.rp_filter=2 (loose)"
        );
    }
}

/// The next underlay route event, or never when nothing is watched.
async fn recv_event(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
