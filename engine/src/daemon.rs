//! `weft run`: acquire a lease, build the device, start the workers, keep
//! peers in sync with the registry, and undo it all on SIGTERM/SIGINT.

use crate::control::{self, Peers, Programming};
use crate::device::{self, DeviceKind};
use crate::metrics::{Metrics, WorkerStats};
use crate::netlink::{Netlink, Underlay};
use crate::tunnel::{Mode, Tunnel, TunnelConfig};
use crate::udp_io;
use crate::worker::Worker;
use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, SignalKind};
use weft_encap::{udp, vxlan};
use weft_routes::{
    alloc, subnet_env, Backend, FileRegistry, ForwardingTable, Lease, LeaseAttrs, Registry,
};

/// How often the registry is polled: changes take effect within this.
const POLL: Duration = Duration::from_millis(500);
/// How often every peer's routes are checked (and put back if deleted), as
/// flanneld's host-gw does.
const RECHECK: Duration = Duration::from_secs(10);
/// How long after a failed renewal the next try comes (flanneld's minute).
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// VXLAN send sockets per worker (outer source ports picked by flow hash).
const VXLAN_TX_SOCKETS: usize = 4;
/// Backoff between tries to recreate a deleted device: 1 s doubling to 30 s.
const RECREATE_FIRST: Duration = Duration::from_secs(1);
const RECREATE_MAX: Duration = Duration::from_secs(30);

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
    /// How to pick the underlay interface; by default the default route's.
    pub iface: crate::netlink::IfaceChoice,
    /// Also serve /healthz and /readyz here (flanneld's --healthz-ip and
    /// --healthz-port).
    pub healthz_addr: Option<SocketAddr>,
    /// Where subnet.env goes.
    pub subnet_file: PathBuf,
    /// TUN or TAP for vxlan.
    pub device: DeviceKind,
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

/// flanneld's `--ip-masq`, `--iptables-forward-rules` and friends.
#[derive(Debug, Clone, Copy)]
pub struct TrafficOptions {
    /// Install the masquerading rules.
    pub ip_masq: bool,
    /// `--random-fully` on MASQUERADE (where iptables has it).
    pub random_fully: bool,
    /// Install the forwarding rules.
    pub forward_rules: bool,
    /// Keep a blackhole route for our subnet (`--ip-blackhole-route`).
    pub blackhole_route: bool,
    /// How often the rules are checked and put back.
    pub resync: Duration,
}

impl Default for TrafficOptions {
    /// No rules at all (for tools that start weft themselves).
    fn default() -> Self {
        TrafficOptions {
            ip_masq: false,
            random_fully: true,
            forward_rules: false,
            blackhole_route: false,
            resync: Duration::from_secs(5),
        }
    }
}

/// The rule sets weft keeps in place, and when it last checked them.
struct Traffic {
    rules: RuleSets,
    resync: Duration,
    last: tokio::time::Instant,
}

/// Where the rules live.
enum RuleSets {
    /// iptables: (what, rules) per set.
    Iptables(Vec<(&'static str, Vec<crate::masq::Rule>)>),
    /// nftables (`EnableNFTables`): flanneld's tables, written whole.
    Nftables(crate::masq::nft::Rules),
}

impl Traffic {
    /// Installs the rules `t` asks for, first removing masquerading rules
    /// a previous run left for another network or subnet. Masquerading
    /// that cannot be installed is fatal (pods would lose the outside
    /// silently); forwarding rules are warned about, as flanneld does.
    fn start(
        t: TrafficOptions,
        conf: &weft_routes::NetConf,
        subnet: ipnet::Ipv4Net,
        previous: (Option<ipnet::Ipv4Net>, Option<ipnet::Ipv4Net>),
    ) -> anyhow::Result<Option<Traffic>> {
        use crate::masq::{forward_rules, masq_rules, nft, Iptables};
        let ipt = Iptables;
        if conf.enable_nftables {
            if !t.ip_masq && !t.forward_rules {
                return Ok(None);
            }
            let rules = nft::Rules {
                masq: t.ip_masq.then_some((conf.network, subnet, t.random_fully)),
                forward: t.forward_rules.then_some(conf.network),
            };
            // The tables are rewritten whole (chains flushed), so rules of a
            // previous network or subnet cannot survive.
            match rules.ensure() {
                Ok(_) => {
                    tracing::info!(network = %conf.network, %subnet, ip_masq = t.ip_masq, forward = t.forward_rules, "nftables rules in place (table ip flannel-ipv4)")
                }
                Err(e) if t.ip_masq => {
                    return Err(e).context("cannot install the masquerading rules in nftables")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the forwarding rules in nftables; FORWARD is left as it is");
                    return Ok(None);
                }
            }
            return Ok(Some(Traffic {
                rules: RuleSets::Nftables(rules),
                resync: t.resync,
                last: tokio::time::Instant::now(),
            }));
        }
        let mut sets = Vec::new();
        if t.ip_masq {
            let rf = t.random_fully && ipt.has_random_fully().context("--ip-masq")?;
            if let (Some(net), Some(sub)) = previous {
                if (net, sub) != (conf.network, subnet) {
                    tracing::info!(previous_network = %net, previous_subnet = %sub, "network or subnet changed since the last run: removing its masquerading rules");
                    if let Err(e) = ipt.remove(&masq_rules(net, sub, rf)) {
                        tracing::warn!(error = %e, "cannot remove the previous masquerading rules");
                    }
                }
            }
            let rules = masq_rules(conf.network, subnet, rf);
            ipt.ensure(&rules)
                .context("cannot install the masquerading rules")?;
            tracing::info!(network = %conf.network, %subnet, random_fully = rf, "masquerading rules in place (nat FLANNEL-POSTRTG)");
            sets.push(("masquerading", rules));
        }
        if t.forward_rules {
            let rules = forward_rules(conf.network);
            match ipt.ensure(&rules) {
                Ok(_) => {
                    tracing::info!(network = %conf.network, "forwarding rules in place (filter FLANNEL-FWD)");
                    sets.push(("forwarding", rules));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the forwarding rules; FORWARD is left as it is")
                }
            }
        }
        Ok((!sets.is_empty()).then(|| Traffic {
            rules: RuleSets::Iptables(sets),
            resync: t.resync,
            last: tokio::time::Instant::now(),
        }))
    }

    /// Puts back what someone removed, once per resync period.
    fn resync(&mut self) {
        if self.last.elapsed() < self.resync {
            return;
        }
        self.last = tokio::time::Instant::now();
        let report = |what: &str, r: Result<bool, crate::masq::MasqError>| match r {
            Ok(true) => tracing::warn!("some {what} rules were missing; wrote them all again"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the {what} rules"),
        };
        match &self.rules {
            RuleSets::Nftables(n) => report("nftables", n.ensure()),
            RuleSets::Iptables(sets) => {
                for (what, rules) in sets {
                    report(what, crate::masq::Iptables.ensure(rules));
                }
            }
        }
    }

    /// Removes every rule and chain weft installed.
    fn remove(&self) {
        let report = |what: &str, r: Result<(), crate::masq::MasqError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot remove the {what} rules");
            }
        };
        match &self.rules {
            RuleSets::Nftables(n) => report("nftables", n.remove()),
            RuleSets::Iptables(sets) => {
                for (what, rules) in sets {
                    report(what, crate::masq::Iptables.remove(rules));
                }
            }
        }
    }
}

/// Runs the daemon until a signal; Ok means a clean shutdown.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control-plane runtime")?;
    rt.block_on(run_async(opts))
}

struct Plan {
    /// weft's device, name and kind; none for host-gw.
    device: Option<(String, DeviceKind)>,
    mtu: u32,
    port: u16,
    attrs: LeaseAttrs,
    vtep: Option<vxlan::Endpoint>,
}

async fn plan(
    backend: &Backend,
    opts: &RunOptions,
    underlay: &Underlay,
    public_ip: Ipv4Addr,
    leases_from: &Leases,
    previous: Option<ipnet::Ipv4Net>,
) -> anyhow::Result<Plan> {
    let underlay_mtu = underlay.mtu;
    match *backend {
        Backend::Udp { port } => {
            if opts.device == DeviceKind::Tap {
                tracing::info!(
                    "the udp backend always uses a TUN device (flannel0); ignoring --device tap"
                );
            }
            Ok(Plan {
                device: Some(("flannel0".into(), DeviceKind::Tun)),
                mtu: underlay_mtu.saturating_sub(udp::IPV4_OVERHEAD as u32),
                port,
                attrs: LeaseAttrs::udp(public_ip),
                vtep: None,
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
            // What we announced last time, to keep our VtepMAC: in
            // Kubernetes only our own Node says that (another Node that
            // names our PublicIP says nothing about us).
            let leases = match leases_from {
                Leases::Kube(k) => k.own_lease().into_iter().collect(),
                Leases::Store(r) => r.leases().await.context("cannot list leases")?,
            };
            let mac = control::vtep_mac_for(&leases, public_ip, previous, vni);
            let data = weft_routes::lease::VxlanData { vni, vtep_mac: mac };
            Ok(Plan {
                device: Some((format!("flannel.{vni}"), opts.device)),
                // Backend.MTU is the underlay's, as in flanneld's
                // vxlan.go: the device gets 50 bytes less.
                mtu: mtu
                    .unwrap_or(underlay_mtu)
                    .saturating_sub(vxlan::IPV4_OVERHEAD as u32),
                port,
                attrs: LeaseAttrs::vxlan(public_ip, data),
                vtep: Some(vxlan::Endpoint { vni, mac }),
            })
        }
        Backend::HostGw => {
            if public_ip != underlay.addr {
                bail!(
                    "host-gw cannot work behind NAT: PublicIP {public_ip} is not the address of {} ({}). \
                     Peers route this node's pods via its PublicIP, so it must be this host's own address \
                     on the shared layer-2 segment; drop --public-ip, or use the vxlan backend",
                    underlay.name,
                    underlay.addr
                );
            }
            Ok(Plan {
                device: None,
                mtu: underlay_mtu,
                port: 0,
                attrs: LeaseAttrs::host_gw(public_ip),
                vtep: None,
            })
        }
    }
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
    conf: weft_routes::NetConf,
    plan: Plan,
    subnet: ipnet::Ipv4Net,
    public_ip: Ipv4Addr,
    table: Arc<ArcSwap<ForwardingTable>>,
    /// One set of counters per worker slot, kept across device recreations.
    stats: Vec<Arc<WorkerStats>>,
    programming: Programming,
    data_plane: Option<DataPlane>,
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
        let underlay = nl.choose_underlay(&opts.iface).await?;
        let public_ip = opts.public_ip.unwrap_or(underlay.addr);
        let leases_from = open_registry(&opts).await?;
        let reg: &dyn Registry = leases_from.registry();
        let conf = reg
            .config()
            .await
            .context("cannot read the network config")?;
        if conf.backend_defaulted {
            tracing::warn!("net-conf.json has no Backend: running udp, as flanneld's code does (its docs say vxlan)");
        }
        let previous = subnet_env::previous_subnet(&opts.subnet_file);
        let plan = plan(
            &conf.backend,
            &opts,
            &underlay,
            public_ip,
            &leases_from,
            previous,
        )
        .await?;
        let previous_network = subnet_env::previous_network(&opts.subnet_file);
        let lease = match &leases_from {
            Leases::Kube(k) => k.acquire(&plan.attrs).await?,
            Leases::Store(_) => alloc::acquire(reg, &conf, &plan.attrs, previous).await?,
        };
        let subnet = lease.subnet();
        tracing::info!(%subnet, %public_ip, iface = %underlay.name, backend = conf.backend.type_name(), "lease acquired");

        let threads = opts.threads.max(1);
        let table = Arc::new(ArcSwap::from_pointee(ForwardingTable::default()));
        let programming = Programming::for_backend(
            &conf.backend,
            plan.device.as_ref().map_or(DeviceKind::Tun, |d| d.1),
        );
        // One set of counters per worker slot, kept across device recreations.
        let stats: Vec<Arc<WorkerStats>> = match plan.device {
            Some(_) => (0..threads).map(|_| Arc::default()).collect(),
            None => Vec::new(),
        };
        let dp_config = DataPlaneConfig {
            plan: &plan,
            subnet,
            public_ip,
            conf: &conf,
            table: &table,
            offload: opts.offload,
            tuning: opts.tuning,
            allow_nat_peers: opts.allow_nat_peers,
            stats: &stats,
        };
        let data_plane = match &plan.device {
            Some((name, kind)) => Some(start_data_plane(&nl, &dp_config, name, *kind).await?),
            None => None,
        };
        let metrics = Arc::new(Metrics {
            workers: stats.clone(),
            ..Default::default()
        });
        let _ = metrics.node.set(crate::metrics::NodeView {
            subnet,
            public_ip,
            backend: conf.backend.type_name(),
            device: plan
                .device
                .as_ref()
                .map(|d| d.0.clone())
                .unwrap_or_default(),
            mtu: plan.mtu,
        });
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
                    return Err(e)
                        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))
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
        let mut peers = Peers::new(control::PeersConfig {
            nl: nl.clone(),
            device: data_plane.as_ref().map(|d| d.index),
            underlay: underlay.clone(),
            programming,
            port: plan.port,
            policy: weft_routes::LeasePolicy {
                backend: conf.backend.clone(),
                network: conf.network,
                // flanneld takes any podCIDR inside Network; the
                // controller manager decides the length.
                subnet_len: match leases_from {
                    Leases::Kube(_) => None,
                    Leases::Store(_) => Some(conf.subnet_len),
                },
                network_routed: programming == Programming::NetworkRoute,
                own: lease.key,
                own_public_ip: lease.attrs.public_ip,
                own_mac: plan.vtep.map(|e| e.mac),
                underlay: underlay.networks.clone(),
            },
            table: table.clone(),
            metrics: metrics.clone(),
        });
        peers.sync(&reg.leases().await?).await;
        // Routes of ours a previous run left behind (it crashed, or a
        // removal failed) go now, not at the first periodic check.
        peers.recheck().await;
        // Rules before readiness: /readyz and subnet.env come once they are in.
        let traffic = Traffic::start(opts.traffic, &conf, subnet, (previous_network, previous))?;
        if opts.traffic.blackhole_route {
            ensure_blackhole(&nl, subnet).await;
        }
        let env = subnet_env::SubnetEnv {
            network: conf.network,
            subnet,
            mtu: plan.mtu,
            ipmasq: opts.traffic.ip_masq,
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
        if let (Leases::Kube(k), true) = (&leases_from, opts.set_node_network_unavailable) {
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
        match &plan.device {
            Some((device, _)) => {
                tracing::info!(%device, mtu = plan.mtu, threads, subnet_file = %opts.subnet_file.display(), "ready")
            }
            None => {
                tracing::info!(mtu = plan.mtu, iface = %underlay.name, subnet_file = %opts.subnet_file.display(), "ready (host-gw: routes only, no device)")
            }
        }
        // host-gw and DirectRouting decide per peer from the underlay's routes:
        // re-decide as soon as those change.
        let underlay_events = match programming == Programming::Gateway
            || matches!(
                conf.backend,
                Backend::Vxlan {
                    direct_routing: true,
                    ..
                }
            ) {
            true => Some(crate::netlink::watch_routes(conf.network)?),
            false => None,
        };
        if underlay_events.is_some() {
            warn_strict_rp_filter(&underlay.name);
        }
        let keeper = LeaseKeeper {
            lease,
            attrs: plan.attrs.clone(),
            renew_margin: opts.renew_margin,
            last_renew_try: None,
        };
        Ok(Node {
            nl,
            leases_from,
            conf,
            plan,
            subnet,
            public_ip,
            table,
            stats,
            programming,
            data_plane,
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
            conf,
            plan,
            subnet,
            public_ip,
            table,
            stats,
            programming: _,
            data_plane,
            metrics,
            peers,
            traffic,
            keeper,
            signals: (term, int),
            underlay_events,
        } = self;
        let (subnet, public_ip) = (*subnet, *public_ip);
        let reg: &dyn Registry = leases_from.registry();
        let dp_config = DataPlaneConfig {
            plan,
            subnet,
            public_ip,
            conf,
            table,
            offload: opts.offload,
            tuning: opts.tuning,
            allow_nat_peers: opts.allow_nat_peers,
            stats,
        };
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
            if let (Some(dp), Some((name, kind))) = (data_plane.as_mut(), &plan.device) {
                if let Some((i, r)) = dp.workers.finished() {
                    return Err(anyhow::anyhow!("worker {i} stopped: {r:?}"));
                }
                if let Some(index) = dp.watch(nl, name).await {
                    match start_data_plane(nl, &dp_config, name, *kind).await {
                        Ok(new) => {
                            tracing::warn!(device = %name, old_index = index, index = new.index, "device recreated; restoring routes");
                            *dp = new;
                            metrics.device_recreations.fetch_add(1, Ordering::Relaxed);
                            peers.set_device(dp.index).await;
                        }
                        Err(e) => {
                            tracing::warn!(device = %name, error = format!("{e:#}"), retry_in = ?dp.backoff, "cannot recreate the device");
                            dp.retry_later();
                        }
                    }
                }
                // Not ready while the device is gone: /readyz says so.
                metrics.ready.store(dp.lost.is_none(), Ordering::Relaxed);
            }
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
                ensure_blackhole(nl, subnet).await;
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
            conf,
            subnet,
            programming,
            mut data_plane,
            metrics,
            mut peers,
            mut traffic,
            ..
        } = self;
        tracing::info!("shutting down");
        metrics.ready.store(false, Ordering::Relaxed);
        if let Some(dp) = data_plane.as_mut() {
            dp.workers.stop();
        }
        peers.clear().await;
        if let Some(t) = traffic.take() {
            t.remove();
        }
        if opts.traffic.blackhole_route {
            let _ = nl.delete_blackhole(subnet).await;
        }
        if let Some(dp) = data_plane.filter(|dp| dp.lost.is_none()) {
            if programming == Programming::NetworkRoute {
                let _ = nl.delete_route(conf.network, dp.index).await;
            }
            // Dropping the queues would delete it too, but only when the
            // last one closes; deleting it here means it is gone before we
            // say we are done.
            if let Err(e) = nl.delete_link(dp.index).await {
                tracing::warn!(error = %e, "cannot delete the device");
            }
        }
    }
}

/// Our lease, kept: checked against each poll's leases, taken again when it
/// was removed, renewed ahead of its expiry. All of the lease's state in
/// the control loop lives here.
struct LeaseKeeper {
    lease: Lease,
    /// What we (re)announce: our PublicIP and backend data.
    attrs: LeaseAttrs,
    /// Renew this long before the lease expires.
    renew_margin: Duration,
    /// When the last failed renewal was tried (retried once a minute).
    last_renew_try: Option<tokio::time::Instant>,
}

impl LeaseKeeper {
    /// One poll's worth of keeping; an error when the lease is lost for
    /// good (revoked and taken, or another node's now).
    async fn keep(&mut self, reg: &dyn Registry, leases: &[Lease]) -> anyhow::Result<()> {
        // Ours is the lease with our key and our PublicIP (which a node
        // annotation may override). In Kubernetes another node may claim
        // our podCIDR too: that is a refused lease, not a reason to leave.
        let mut with_our_key = leases.iter().filter(|l| l.key == self.lease.key);
        let ours = with_our_key
            .clone()
            .find(|l| l.attrs.public_ip == self.lease.attrs.public_ip);
        match ours.or_else(|| with_our_key.next()) {
            Some(l) if l.attrs.public_ip == self.lease.attrs.public_ip => {
                self.lease.expiration = l.expiration;
            }
            Some(l) => {
                return Err(anyhow::anyhow!(
                    "our lease {} now names PublicIP {}: another node took our subnet",
                    self.lease.key,
                    l.attrs.public_ip
                ))
            }
            None => match reg.create(&self.lease.key, &self.attrs).await {
                Ok(Some(l)) => {
                    tracing::warn!(subnet = %self.lease.subnet(), "our lease was removed; took it again");
                    self.lease = l;
                }
                Ok(None) => {
                    return Err(anyhow::anyhow!(
                        "our lease {} was revoked and the subnet is taken",
                        self.lease.key
                    ))
                }
                Err(e) => tracing::warn!(error = %e, "cannot re-create our lease"),
            },
        }
        // A reservation (no expiry) is never renewed. A failed renewal is
        // retried once a minute, as flanneld does.
        let renew_due = self.lease.expiration.is_some_and(|t| {
            t.duration_since(SystemTime::now())
                .map_or(true, |left| left < self.renew_margin)
        });
        if renew_due
            && self
                .last_renew_try
                .is_none_or(|t| t.elapsed() >= RENEW_RETRY)
        {
            self.last_renew_try = Some(tokio::time::Instant::now());
            match reg.renew(&self.lease.key, &self.attrs).await {
                Ok(l) => {
                    tracing::info!(subnet = %self.lease.subnet(), "lease renewed");
                    self.lease = l;
                    self.last_renew_try = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew our lease; retrying in a minute")
                }
            }
        }
        Ok(())
    }
}

/// Plain routing can be one-sided (each node decides for itself), so pod
/// packets may arrive on the underlay from a peer whose route back goes
/// through the tunnel; strict reverse-path filtering drops those.
/// `--ip-blackhole-route`: puts `blackhole <subnet>` in place unless the
/// kernel routes the subnet already (the bridge plugin's route, say).
async fn ensure_blackhole(nl: &Netlink, subnet: ipnet::Ipv4Net) {
    match nl.ensure_blackhole(subnet).await {
        Ok(true) => tracing::info!(%subnet, "blackhole route in place"),
        Ok(false) => {}
        Err(e) => tracing::warn!(%subnet, error = %e, "cannot add the blackhole route"),
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

/// weft's device and the workers that move its packets.
struct DataPlane {
    index: u32,
    workers: Workers,
    /// Set once the device was found deleted: when, and the next try to
    /// recreate it.
    lost: Option<(std::time::Instant, std::time::Instant)>,
    /// The wait after the next failed try.
    backoff: Duration,
}

/// The worker threads of one device, each owning one of its queues; a
/// guard that stops and joins them when dropped. Whatever drops it (a clean
/// stop, the device found deleted, a start that failed after its first
/// workers were running), no worker outlives its data plane. Once the last
/// queue is closed the kernel deletes the device, which is not persistent,
/// with its addresses and routes.
struct Workers {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Workers {
    fn new() -> Self {
        Workers {
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
        }
    }

    /// Sets the stop flag and waits for every worker: each checks the flag
    /// at least once per poll timeout.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }

    /// A worker that has returned (with the error that ended it), taken out.
    fn finished(&mut self) -> Option<(usize, std::thread::Result<std::io::Result<()>>)> {
        let i = self.handles.iter().position(|h| h.is_finished())?;
        Some((i, self.handles.remove(i).join()))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

impl DataPlane {
    /// Checks that our device still exists. Once it has been deleted (or
    /// replaced by another link of its name), stops the workers and returns
    /// the old index whenever a try to recreate it is due.
    async fn watch(&mut self, nl: &Netlink, name: &str) -> Option<u32> {
        let now = std::time::Instant::now();
        if self.lost.is_none() {
            match nl.link(name).await {
                Ok(Some((index, _))) if index == self.index => return None,
                Ok(_) => {
                    tracing::warn!(device = %name, index = self.index, "the device was deleted; recreating it");
                    self.workers.stop();
                    self.lost = Some((now, now));
                    self.backoff = RECREATE_FIRST;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot check the device");
                    return None;
                }
            }
        }
        match self.lost {
            Some((_, next)) if now >= next => Some(self.index),
            _ => None,
        }
    }

    /// Schedules the next try after a failed one, doubling the wait.
    fn retry_later(&mut self) {
        if let Some((_, next)) = self.lost.as_mut() {
            *next = std::time::Instant::now() + self.backoff;
        }
        self.backoff = (self.backoff * 2).min(RECREATE_MAX);
    }
}

/// What a data plane is built from, at start and on every recreation.
struct DataPlaneConfig<'a> {
    plan: &'a Plan,
    subnet: ipnet::Ipv4Net,
    public_ip: Ipv4Addr,
    conf: &'a weft_routes::NetConf,
    table: &'a Arc<ArcSwap<ForwardingTable>>,
    offload: bool,
    tuning: crate::tuning::Tuning,
    allow_nat_peers: bool,
    /// One per worker; its length is the number of workers.
    stats: &'a [Arc<WorkerStats>],
}

/// Creates the device (one queue per worker), configures it and starts the
/// workers.
async fn start_data_plane(
    nl: &Netlink,
    c: &DataPlaneConfig<'_>,
    name: &str,
    kind: DeviceKind,
) -> anyhow::Result<DataPlane> {
    let DataPlaneConfig {
        plan,
        subnet,
        public_ip,
        conf,
        table,
        offload,
        tuning,
        allow_nat_peers,
        stats,
    } = *c;
    let queues = device::create(name, kind, stats.len(), offload)?;
    let (index, _) = nl
        .link(name)
        .await?
        .with_context(|| format!("device {name} vanished after creation"))?;
    disable_ipv6(name);
    let tap_mac = match kind {
        DeviceKind::Tap => plan.vtep.map(|v| v.mac),
        DeviceKind::Tun => None,
    };
    nl.configure_link(index, plan.mtu, tap_mac).await?;
    let local = control::tunnel_addr(subnet);
    nl.add_address(index, local, 32).await?;
    if Programming::for_backend(&conf.backend, kind) == Programming::NetworkRoute {
        // weft replaces only its own routes: a Network that the kernel
        // routes already (the LAN's own prefix, the default route's
        // 0.0.0.0/0, a static route) would be taken from under the host.
        let routes = nl.main_routes().await?;
        if let Some(r) = routes.iter().find(|r| r.dst == conf.network && !r.ours) {
            bail!(
                "refusing to route the Network {} into {name}: the kernel routes it already with a route weft did not install ({}); \
                 the udp backend routes the whole Network into its device, which would replace that route. \
                 Choose a Network that no interface or route of this host uses",
                conf.network,
                describe_route(r)
            );
        }
        nl.replace_route(conf.network, index, None, false).await?;
    }
    // From here on, returning early stops the workers already started.
    let mut workers = Workers::new();
    for (id, (queue, s)) in queues.into_iter().zip(stats).enumerate() {
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, plan.port);
        let socket = udp_io::bind(any, true, tuning.socket_buffers)
            .with_context(|| format!("cannot bind UDP port {}", plan.port))?;
        let tx_sockets = if plan.vtep.is_some() {
            let n = if tuning.flow_ports {
                VXLAN_TX_SOCKETS
            } else {
                1
            };
            (0..n)
                .map(|_| bind_tx(public_ip, tuning.socket_buffers))
                .collect::<std::io::Result<Vec<_>>>()
                .context("cannot open VXLAN send sockets")?
        } else {
            Vec::new()
        };
        let mode = match (plan.vtep, kind) {
            (None, _) => Mode::Udp,
            (Some(ep), DeviceKind::Tun) => Mode::VxlanTun(ep),
            (Some(ep), DeviceKind::Tap) => Mode::VxlanTap(ep),
        };
        let tunnel = Tunnel::new(TunnelConfig {
            mode,
            local,
            gateway: conf.network.network(),
            subnet,
            allow_nat_peers,
            mtu: plan.mtu as usize,
            send_sockets: tx_sockets.len(),
        });
        let w = Worker {
            id,
            tunnel,
            queue,
            socket,
            tx_sockets,
            tuning,
            table: table.clone(),
            stats: s.clone(),
            stop: workers.stop.clone(),
        };
        workers.handles.push(
            std::thread::Builder::new()
                .name(format!("weft-worker-{id}"))
                .spawn(move || w.run())
                .context("cannot spawn a worker thread")?,
        );
    }
    Ok(DataPlane {
        index,
        workers,
        lost: None,
        backoff: RECREATE_FIRST,
    })
}

/// A route as `ip route` would show its gist.
fn describe_route(r: &crate::netlink::RouteEntry) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = r.oif {
        s += &format!(" dev index {oif}");
    }
    s
}

/// Where leases come from.
enum Leases {
    /// The file registry or etcd: leases allocated by weft.
    Store(Box<dyn Registry>),
    /// The Kubernetes API: our lease is our node's podCIDR.
    Kube(Box<weft_routes::kube::KubeRegistry>),
}

impl Leases {
    fn registry(&self) -> &dyn Registry {
        match self {
            Leases::Store(r) => r.as_ref(),
            Leases::Kube(k) => k.as_ref(),
        }
    }
}

/// Opens the registry the options name. etcd is retried with backoff
/// (1 to 30 s) until it answers, as flanneld does at startup.
async fn open_registry(opts: &RunOptions) -> anyhow::Result<Leases> {
    if let Some(k) = &opts.kube {
        let r = weft_routes::kube::KubeRegistry::open(k)
            .await
            .context("kube subnet manager")?;
        return Ok(Leases::Kube(Box::new(r)));
    }
    match (&opts.registry_dir, &opts.etcd) {
        (Some(dir), _) => Ok(Leases::Store(Box::new(
            FileRegistry::open(dir)
                .with_context(|| format!("cannot open registry {}", dir.display()))?,
        ))),
        (None, Some(cfg)) => Ok(Leases::Store(connect_etcd(cfg).await?)),
        (None, None) => {
            bail!("no registry: pass --registry-dir, --etcd-endpoints or --kube-subnet-mgr")
        }
    }
}

#[cfg(feature = "etcd")]
async fn connect_etcd(cfg: &weft_routes::EtcdConfig) -> anyhow::Result<Box<dyn Registry>> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match weft_routes::etcd::EtcdRegistry::connect(cfg).await {
            Ok(r) => return Ok(Box::new(r)),
            Err(weft_routes::RegistryError::Io { path, error }) => {
                bail!("cannot read {}: {error}", path.display())
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "etcd unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(_: &weft_routes::EtcdConfig) -> anyhow::Result<Box<dyn Registry>> {
    bail!("this weft was built without etcd support: rebuild with `cargo build --features etcd` (needs protoc)")
}

fn set_expiry(m: &Metrics, t: Option<SystemTime>) {
    let secs = t
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    m.lease_expiry.store(secs, Ordering::Relaxed);
}

/// Turns IPv6 off on our device: weft carries no IPv6 overlay yet, and
/// without this the kernel sends router solicitations and MLD reports into
/// it. Best effort: a kernel without IPv6 has nothing to turn off.
fn disable_ipv6(device: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(path, error = %e, "cannot disable IPv6 on the device");
    }
}

/// A send socket on an ephemeral port, sourced from our PublicIP when it is
/// a local address (it is not behind NAT).
fn bind_tx(public_ip: Ipv4Addr, big_buffers: bool) -> std::io::Result<UdpSocket> {
    udp_io::bind(SocketAddrV4::new(public_ip, 0), false, big_buffers).or_else(|_| {
        udp_io::bind(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            false,
            big_buffers,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A start that fails after its first workers are running (the second
    /// socket cannot be bound, say) leaves none of them running: they would
    /// keep the device's queues open and forward with a stale table.
    #[test]
    fn workers_stop_when_a_start_fails_half_way() {
        let exited = Arc::new(AtomicUsize::new(0));
        let start = |exited: Arc<AtomicUsize>| -> anyhow::Result<Workers> {
            let mut workers = Workers::new();
            for _ in 0..2 {
                let stop = workers.stop.clone();
                let exited = exited.clone();
                workers.handles.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    exited.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }));
            }
            bail!("cannot bind UDP port 8472")
        };
        assert!(start(exited.clone()).is_err());
        assert_eq!(exited.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_finished_worker_is_reported_with_its_error() {
        let mut workers = Workers::new();
        workers
            .handles
            .push(std::thread::spawn(|| Err(std::io::Error::other("epoll"))));
        let stop = workers.stop.clone();
        workers.handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (i, r) = loop {
            if let Some(f) = workers.finished() {
                break f;
            }
            assert!(std::time::Instant::now() < deadline, "no worker finished");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(i, 0);
        assert_eq!(r.unwrap().unwrap_err().to_string(), "epoll");
        assert_eq!(workers.handles.len(), 1);
    }
}
