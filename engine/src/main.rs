//! The `weft` command line.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use weft::device::DeviceKind;

#[cfg(feature = "demo")]
mod demo;

/// weft: a userspace data plane for flannel overlay networks. It speaks
/// flannel's udp and VXLAN encapsulations, wire-compatible with flannel
/// nodes and the Linux kernel's VXLAN, on kernels without the vxlan module.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the overlay: take a subnet lease (from a file registry, etcd,
    /// or the node's podCIDR with --kube-subnet-mgr), create the device and
    /// routes, forward traffic, and clean up on SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Build a small cluster in network namespaces on this host, run weft on
    /// every node, show live per-peer traffic, compare ping and throughput
    /// with the kernel's VXLAN, and remove everything (needs root).
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Show a running node's lease, peers, counters and drops, read from its
    /// metrics endpoint.
    Status(StatusArgs),
    /// Preflight for a new board or host: what this kernel offers weft
    /// (TUN/TAP, multi-queue, offloads, UDP GSO/GRO, iptables, sysctls,
    /// ports, the vxlan module), what weft will use or degrade to, and why
    /// it cannot run if it cannot (then the exit status is 1).
    Check,
}

/// (A flag given twice takes its last value, as Go's flag package does for
/// flanneld.)
#[derive(clap::Args)]
#[command(args_override_self = true)]
struct RunArgs {
    /// File registry directory: DIR/config holds net-conf.json,
    /// DIR/subnets/<ip>-<len> one lease each, in flannel's JSON.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present_any = ["etcd_endpoints", "kube_subnet_mgr"],
        conflicts_with_all = ["etcd_endpoints", "kube_subnet_mgr"]
    )]
    registry_dir: Option<PathBuf>,
    /// Leases from the Kubernetes API (flanneld's --kube-subnet-mgr): the
    /// node's spec.podCIDR, with flannel's node annotations.
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, conflicts_with = "etcd_endpoints")]
    kube_subnet_mgr: bool,
    /// kubeconfig for --kube-subnet-mgr; default: in-cluster, else
    /// ~/.kube/config.
    #[arg(long, value_name = "FILE", env = "FLANNELD_KUBECONFIG_FILE")]
    kubeconfig_file: Option<PathBuf>,
    /// The API server's URL, overriding the kubeconfig's.
    #[arg(long, value_name = "URL", env = "FLANNELD_KUBE_API_URL")]
    kube_api_url: Option<String>,
    /// Prefix of flannel's node annotations.
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "flannel.alpha.coreos.com",
        env = "FLANNELD_KUBE_ANNOTATION_PREFIX"
    )]
    kube_annotation_prefix: String,
    /// net-conf.json for --kube-subnet-mgr (the kube-flannel-cfg ConfigMap).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/kube-flannel/net-conf.json",
        env = "FLANNELD_NET_CONFIG_PATH"
    )]
    net_config_path: PathBuf,
    /// With --kube-subnet-mgr: set the node's NetworkUnavailable condition
    /// to False once ready, as flanneld does.
    #[arg(long, env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    set_node_network_unavailable: bool,
    /// etcd client URLs, comma-separated (flanneld's flag): leases live in
    /// etcd under --etcd-prefix, shared with flanneld nodes.
    #[arg(
        long,
        value_name = "URL[,URL…]",
        value_delimiter = ',',
        env = "FLANNELD_ETCD_ENDPOINTS"
    )]
    etcd_endpoints: Vec<String>,
    /// etcd key prefix.
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = weft_routes::registry::DEFAULT_PREFIX,
        env = "FLANNELD_ETCD_PREFIX"
    )]
    etcd_prefix: String,
    /// CA certificate (PEM) that signed etcd's certificate.
    #[arg(long, value_name = "FILE", env = "FLANNELD_ETCD_CAFILE")]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(
        long,
        value_name = "FILE",
        requires = "etcd_keyfile",
        env = "FLANNELD_ETCD_CERTFILE"
    )]
    etcd_certfile: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(
        long,
        value_name = "FILE",
        requires = "etcd_certfile",
        env = "FLANNELD_ETCD_KEYFILE"
    )]
    etcd_keyfile: Option<PathBuf>,
    /// Username for etcd authentication (also FLANNELD_ETCD_USERNAME).
    #[arg(long, value_name = "USER", env = "FLANNELD_ETCD_USERNAME")]
    etcd_username: Option<String>,
    /// Password for etcd authentication. Prefer the environment variable
    /// FLANNELD_ETCD_PASSWORD or --etcd-password-file: a command line is
    /// visible to every user of the host.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "FLANNELD_ETCD_PASSWORD",
        hide_env_values = true,
        conflicts_with = "etcd_password_file"
    )]
    etcd_password: Option<String>,
    /// A file holding the etcd password (its first line), e.g. a mounted
    /// Kubernetes secret.
    #[arg(long, value_name = "FILE")]
    etcd_password_file: Option<PathBuf>,
    /// Renew our subnet lease this many minutes before it expires (flanneld's
    /// --subnet-lease-renew-margin).
    #[arg(
        long,
        value_name = "MINUTES",
        default_value_t = 60,
        env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN"
    )]
    subnet_lease_renew_margin: u64,
    /// The address peers send to (the lease's PublicIP). Default: the
    /// underlay interface's first IPv4 address.
    #[arg(long, value_name = "IP", env = "FLANNELD_PUBLIC_IP")]
    public_ip: Option<Ipv4Addr>,
    /// The IPv6 address peers reach this node at (the lease's PublicIPv6),
    /// with `EnableIPv6`. Default: the underlay interface's preferred
    /// global IPv6 address.
    #[arg(long, value_name = "IPV6", env = "FLANNELD_PUBLIC_IPV6")]
    public_ipv6: Option<Ipv6Addr>,
    /// Underlay interface. Default: the interface of the default route
    /// (the IPv6 one in an IPv6-only cluster). (A name or an IPv4 address,
    /// or an IPv6 address in an IPv6-only cluster; repeatable: the first
    /// that exists wins, as with flanneld.)
    #[arg(long, value_name = "NAME|IP", env = "FLANNELD_IFACE")]
    iface: Vec<String>,
    /// A regular expression over interface addresses, then names, for the
    /// underlay; repeatable, tried after every --iface.
    #[arg(long, value_name = "REGEX", env = "FLANNELD_IFACE_REGEX")]
    iface_regex: Vec<String>,
    /// Use the interface the kernel routes this address through (as `ip
    /// route get` says), when no --iface or --iface-regex matched.
    #[arg(long, value_name = "IP", env = "FLANNELD_IFACE_CAN_REACH")]
    iface_can_reach: Option<Ipv4Addr>,
    /// Serve /healthz and /readyz (only) on this address as well, as
    /// flanneld's --healthz-ip does (with --healthz-port).
    #[arg(
        long,
        value_name = "IP",
        default_value = "0.0.0.0",
        env = "FLANNELD_HEALTHZ_IP"
    )]
    healthz_ip: std::net::IpAddr,
    /// The port for --healthz-ip; 0 serves nothing (flanneld's default).
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 0,
        env = "FLANNELD_HEALTHZ_PORT"
    )]
    healthz_port: u16,
    /// Where to write subnet.env for the CNI plugin.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/flannel/subnet.env",
        env = "FLANNELD_SUBNET_FILE"
    )]
    subnet_file: PathBuf,
    /// Device kind for the vxlan backend: tap (an Ethernet flannel.1 with
    /// neighbor entries, like the kernel's) or tun (L3; weft writes the inner
    /// Ethernet header). The udp backend always uses a TUN.
    #[arg(long, value_enum, default_value_t = DeviceKind::Tun)]
    device: DeviceKind,
    /// Serve Prometheus metrics at /metrics (and /healthz, /readyz) here;
    /// `off` serves nothing. `weft status` reads it. Default
    /// 127.0.0.1:9474 (a node keeps running if that port is taken).
    #[arg(long, value_name = "ADDR|off")]
    metrics_addr: Option<String>,
    /// Segmentation offloads: the TUN or TAP device hands weft 64 KiB TCP
    /// super-packets (IFF_VNET_HDR, TSO) and takes coalesced ones, and the
    /// UDP sockets send with GSO. `off` moves one packet per device read and
    /// write (for comparison).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    offload: Switch,
    /// Data-path techniques to switch off, for measuring each one:
    /// comma-separated gso, gro, mmsg, flowports, sockbuf (benchmarking
    /// only).
    #[arg(
        long,
        hide = true,
        value_name = "LIST",
        env = "WEFT_DISABLE",
        default_value = ""
    )]
    disable: weft::tuning::Tuning,
    /// Accept encapsulated traffic from addresses that hold no lease, for
    /// peers behind NAT whose packets arrive from another address than
    /// their PublicIP. The inner source must still lie in some lease's
    /// subnet and the inner destination in ours.
    #[arg(long)]
    allow_nat_peers: bool,
    /// Masquerade traffic from pods to outside the cluster network, with
    /// flanneld's iptables rules (chain FLANNEL-POSTRTG in nat);
    /// subnet.env then says FLANNEL_IPMASQ=true.
    #[arg(long, env = "FLANNELD_IP_MASQ", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    ip_masq: bool,
    /// Leave --random-fully off the MASQUERADE rules (flanneld's flag).
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    ip_masq_fully_random_disable: bool,
    /// Accept forwarded traffic to and from the cluster network (chain
    /// FLANNEL-FWD in filter), as flanneld does by default; `=false` to
    /// leave FORWARD alone.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, env = "FLANNELD_IPTABLES_FORWARD_RULES")]
    iptables_forward_rules: bool,
    /// Add a blackhole route for this node's subnet (for setups without
    /// the bridge plugin), checked with the rules.
    #[arg(long, env = "FLANNELD_IP_BLACKHOLE_ROUTE", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    ip_blackhole_route: bool,
    /// How often the rules are checked and put back, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 5,
        env = "FLANNELD_IPTABLES_RESYNC"
    )]
    iptables_resync: u64,
    /// Worker threads, one device queue and socket each.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
}

#[cfg(feature = "demo")]
#[derive(clap::Args)]
struct DemoArgs {
    /// The backend every node runs.
    #[arg(long, value_enum, default_value_t = demo::DemoBackend::Vxlan)]
    backend: demo::DemoBackend,
    /// How many nodes (2 to 20).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=20))]
    nodes: u16,
    /// Device kind for the vxlan backend.
    #[arg(long, value_enum, default_value_t = DeviceKind::Tun)]
    device: DeviceKind,
    /// Seconds of traffic in the live phase, and of each throughput
    /// measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Skip the kernel-VXLAN reference measurement.
    #[arg(long)]
    no_reference: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Where the node serves its metrics (its --metrics-addr).
    #[arg(long, value_name = "ADDR", default_value = weft::status::DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(*a),
        #[cfg(feature = "demo")]
        Command::Demo(a) => demo::run(demo::DemoOptions {
            backend: a.backend,
            nodes: usize::from(a.nodes),
            device: a.device,
            seconds: a.seconds,
            reference: !a.no_reference,
        }),
        Command::Status(a) => weft::status::run(a.metrics_addr),
        Command::Check => weft::check::run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let (metrics_addr, metrics_required) = match a.metrics_addr.as_deref() {
        Some("off") => (None, false),
        Some(addr) => (
            Some(addr.parse::<SocketAddr>().map_err(|e| {
                anyhow::anyhow!("--metrics-addr {addr}: {e} (want IP:PORT or off)")
            })?),
            true,
        ),
        None => (weft::status::DEFAULT_METRICS_ADDR.parse().ok(), false),
    };
    let etcd_password = match (a.etcd_password, a.etcd_password_file) {
        (Some(p), _) => Some(p),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read --etcd-password-file {}", f.display()))?;
            Some(text.lines().next().unwrap_or("").to_string())
        }
        (None, None) => None,
    };
    event_queue_depth(std::env::var("EVENT_QUEUE_DEPTH").ok().as_deref())?;
    if a.etcd_username.is_some() != etcd_password.is_some() {
        anyhow::bail!(
            "etcd authentication needs both a username and a password \
             (--etcd-username and --etcd-password, FLANNELD_ETCD_PASSWORD or --etcd-password-file)"
        );
    }
    weft::daemon::run(weft::daemon::RunOptions {
        kube: a.kube_subnet_mgr.then_some(weft_routes::kube::KubeConfig {
            kubeconfig: a.kubeconfig_file,
            api_url: a.kube_api_url,
            annotation_prefix: a.kube_annotation_prefix,
            net_conf_path: a.net_config_path,
        }),
        set_node_network_unavailable: a.set_node_network_unavailable,
        etcd: (!a.etcd_endpoints.is_empty()).then_some(weft_routes::EtcdConfig {
            endpoints: a.etcd_endpoints,
            prefix: a.etcd_prefix,
            ca_file: a.etcd_cafile,
            cert_file: a.etcd_certfile,
            key_file: a.etcd_keyfile,
            username: a.etcd_username,
            password: etcd_password,
        }),
        registry_dir: a.registry_dir,
        renew_margin: std::time::Duration::from_secs(a.subnet_lease_renew_margin * 60),
        public_ip: a.public_ip,
        public_ipv6: a.public_ipv6,
        iface: weft::netlink::IfaceChoice {
            ifaces: a.iface,
            regexes: a
                .iface_regex
                .iter()
                .map(|r| regex::Regex::new(r).with_context(|| format!("--iface-regex {r}")))
                .collect::<anyhow::Result<_>>()?,
            can_reach: a.iface_can_reach,
        },
        healthz_addr: (a.healthz_port != 0).then(|| SocketAddr::new(a.healthz_ip, a.healthz_port)),
        subnet_file: a.subnet_file,
        device: a.device,
        metrics_addr,
        metrics_required,
        threads: a.threads,
        offload: a.offload == Switch::On,
        tuning: {
            if !a.disable.all_on() {
                tracing::warn!(off = %a.disable, "WEFT_DISABLE is set: some data-path techniques are off (benchmarking only)");
            }
            a.disable
        },
        allow_nat_peers: a.allow_nat_peers,
        traffic: weft::daemon::TrafficOptions {
            ip_masq: a.ip_masq,
            random_fully: !a.ip_masq_fully_random_disable,
            forward_rules: a.iptables_forward_rules,
            blackhole_route: a.ip_blackhole_route,
            resync: std::time::Duration::from_secs(a.iptables_resync.max(1)),
        },
    })
}

/// flanneld's `EVENT_QUEUE_DEPTH` (kube-flannel.yml sets 5000): the size of
/// the channel its Kubernetes subnet manager queues node events in, which
/// drops events when full. weft has no such queue to size: it reads every
/// poll from the node store the watch keeps, so no event can be lost. A
/// value flanneld would take is accepted and said to have no effect; one
/// it would not (not a positive whole number) is refused, rather than
/// ignored as flanneld does.
fn event_queue_depth(value: Option<&str>) -> anyhow::Result<()> {
    let Some(v) = value else { return Ok(()) };
    match v.trim().parse::<u32>() {
        Ok(n) if n > 0 => {
            tracing::info!(
                EVENT_QUEUE_DEPTH = n,
                "EVENT_QUEUE_DEPTH has nothing to size in weft: it reads nodes from the watch's store, with no event queue that could fill up"
            );
            Ok(())
        }
        _ => anyhow::bail!(
            "EVENT_QUEUE_DEPTH={v:?} is not a positive whole number (flanneld's default is 5000)"
        ),
    }
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}
