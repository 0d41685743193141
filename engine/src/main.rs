//! The `weft` command line.

use clap::{Parser, Subcommand};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use weft::device::DeviceKind;

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
    /// Join the overlay: acquire a subnet lease (from a file registry or
    /// etcd), create the device and routes, forward traffic, and clean up
    /// on SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Build two nodes in network namespaces on this host, measure ping and
    /// throughput through the tunnel for each backend, print a table, and
    /// remove everything (needs root).
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// File registry directory: DIR/config holds net-conf.json,
    /// DIR/subnets/<ip>-<len> one lease each, in flannel's JSON.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "etcd_endpoints",
        conflicts_with = "etcd_endpoints"
    )]
    registry_dir: Option<PathBuf>,
    /// etcd client URLs, comma-separated (flanneld's flag): leases live in
    /// etcd under --etcd-prefix, shared with flanneld nodes.
    #[arg(long, value_name = "URL[,URL…]", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// etcd key prefix.
    #[arg(long, value_name = "PREFIX", default_value = "/coreos.com/network")]
    etcd_prefix: String,
    /// CA certificate (PEM) that signed etcd's certificate.
    #[arg(long, value_name = "FILE")]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// Username for etcd authentication.
    #[arg(long, value_name = "USER", requires = "etcd_password")]
    etcd_username: Option<String>,
    /// Password for etcd authentication.
    #[arg(long, value_name = "PASSWORD", requires = "etcd_username")]
    etcd_password: Option<String>,
    /// Renew our subnet lease this many minutes before it expires (flanneld's
    /// --subnet-lease-renew-margin).
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    subnet_lease_renew_margin: u64,
    /// The address peers send to (the lease's PublicIP). Default: the
    /// underlay interface's first IPv4 address.
    #[arg(long, value_name = "IP")]
    public_ip: Option<Ipv4Addr>,
    /// Underlay interface. Default: the interface of the default route.
    #[arg(long, value_name = "NAME")]
    iface: Option<String>,
    /// Where to write subnet.env for the CNI plugin.
    #[arg(long, value_name = "PATH", default_value = "/run/flannel/subnet.env")]
    subnet_file: PathBuf,
    /// Device kind for the vxlan backend: tap (an Ethernet flannel.1 with
    /// neighbor entries, like the kernel's) or tun (L3; weft writes the inner
    /// Ethernet header). The udp backend always uses a TUN.
    #[arg(long, value_enum, default_value_t = DeviceKind::Tun)]
    device: DeviceKind,
    /// Serve Prometheus metrics at /metrics (and /healthz, /readyz) here,
    /// e.g. 127.0.0.1:9153.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Segmentation offloads: the TUN device hands weft 64 KiB TCP
    /// super-packets (IFF_VNET_HDR, TSO) and takes coalesced ones, and the
    /// UDP sockets send with GSO. `off` moves one packet per device read and
    /// write (for comparison). TAP devices never use them.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    offload: Switch,
    /// Accept encapsulated traffic from addresses that hold no lease, for
    /// peers behind NAT whose packets arrive from another address than
    /// their PublicIP. The inner source must still lie in some lease's
    /// subnet and the inner destination in ours.
    #[arg(long)]
    allow_nat_peers: bool,
    /// Worker threads, one device queue and socket each.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Seconds of throughput measurement per backend.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
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
        Command::Run(a) => weft::daemon::run(weft::daemon::RunOptions {
            etcd: (!a.etcd_endpoints.is_empty()).then_some(weft_routes::EtcdConfig {
                endpoints: a.etcd_endpoints,
                prefix: a.etcd_prefix,
                ca_file: a.etcd_cafile,
                cert_file: a.etcd_certfile,
                key_file: a.etcd_keyfile,
                username: a.etcd_username,
                password: a.etcd_password,
            }),
            registry_dir: a.registry_dir,
            renew_margin: std::time::Duration::from_secs(a.subnet_lease_renew_margin * 60),
            public_ip: a.public_ip,
            iface: a.iface,
            subnet_file: a.subnet_file,
            device: a.device,
            metrics_addr: a.metrics_addr,
            threads: a.threads,
            offload: a.offload == Switch::On,
            allow_nat_peers: a.allow_nat_peers,
        }),
        Command::Demo(a) => weft::demo::run(a.seconds),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}
