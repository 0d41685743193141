//! `weft demo`: a small cluster in network namespaces on this host, every
//! node running weft on one backend with the embedded file registry. It
//! shows its progress while it sets up, a live table of each peer's
//! traffic while TCP streams run around the ring of nodes, and a summary of
//! ping RTT and throughput next to the kernel's own VXLAN measured on the
//! same kind of testbed. Everything it makes is removed at the end, also
//! on Ctrl-C.

use anyhow::{bail, Context};
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::device::DeviceKind;
use weft::metrics::name;
use weft::status::{self, Sample};
use weft_testbed::{self as testbed, Cluster};

/// Where every demo node serves its metrics (each in its own namespace).
const METRICS: &str = status::DEFAULT_METRICS_ADDR;
/// First TCP port of the ring streams; the single-stream measurement uses
/// the one below it.
const RING_PORT: u16 = 5301;

/// The backends the demo can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoBackend {
    /// flannel's original udp encapsulation (port 8285).
    Udp,
    /// VXLAN (VNI 1, port 8472), as the kernel and flannel speak it.
    Vxlan,
    /// Plain routes via each node's address: no tunnel at all.
    HostGw,
}

impl DemoBackend {
    fn type_name(self) -> &'static str {
        match self {
            DemoBackend::Udp => "udp",
            DemoBackend::Vxlan => "vxlan",
            DemoBackend::HostGw => "host-gw",
        }
    }
}

/// What `weft demo` was asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The backend every node runs.
    pub backend: DemoBackend,
    /// Nodes in the cluster (at least 2).
    pub nodes: usize,
    /// Device kind for vxlan.
    pub device: DeviceKind,
    /// Seconds of live traffic, and of each throughput measurement.
    pub seconds: u64,
    /// Measure the kernel's VXLAN for comparison.
    pub reference: bool,
}

/// What one data plane measured.
struct Measured {
    rtt_p50: Option<Duration>,
    rtt_p99: Option<Duration>,
    gbits: f64,
}

/// Runs the demo.
pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    if !testbed::is_root() {
        bail!("weft demo needs root: it creates network namespaces and devices");
    }
    if opts.nodes < 2 {
        bail!("the demo needs at least 2 nodes");
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second Ctrl-C exits at once; the first one cleans up.
        signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone())
            .context("cannot install a signal handler")?;
        signal_hook::flag::register(sig, interrupted.clone())
            .context("cannot install a signal handler")?;
    }
    let weft = std::env::current_exe().context("cannot find the weft binary")?;
    let outcome = demo(&weft, &opts, &interrupted);
    if interrupted.load(Ordering::Relaxed) {
        println!("\ninterrupted: everything the demo made has been removed");
        return Ok(());
    }
    outcome
}

fn demo(weft: &Path, opts: &DemoOptions, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let backend = opts.backend.type_name();
    let kind = match (opts.backend, opts.device) {
        (DemoBackend::Vxlan, DeviceKind::Tap) => " (tap device)",
        (DemoBackend::Vxlan, DeviceKind::Tun) => " (tun device)",
        _ => "",
    };
    println!(
        "weft demo: {} nodes on one bridge, backend {backend}{kind}, the embedded file registry\n",
        opts.nodes
    );
    let conf = format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}"}}}}"#);

    let t = Instant::now();
    step(
        1,
        &format!("building {} hosts in network namespaces", opts.nodes),
    );
    let mut c = Cluster::new("demo", opts.nodes, &conf).context("cannot build the testbed")?;
    done(t);
    interrupted(stop)?;

    heading(2, "starting weft on every node");
    let device = match opts.device {
        DeviceKind::Tap => "tap",
        DeviceKind::Tun => "tun",
    };
    for i in 0..opts.nodes {
        let t = Instant::now();
        c.start(i, weft, &["--device", device, "--metrics-addr", METRICS])?;
        c.nodes[i].add_pod_bridge()?;
        println!(
            "      node {}  {:<15} subnet {:<16} ready in {:.2} s",
            i + 1,
            c.nodes[i].underlay,
            c.nodes[i]
                .subnet()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            t.elapsed().as_secs_f64()
        );
        interrupted(stop)?;
    }

    let t = Instant::now();
    let paths = opts.nodes * (opts.nodes - 1);
    step(
        3,
        &format!("checking that every node reaches every other ({paths} paths)"),
    );
    for a in 0..opts.nodes {
        for b in (0..opts.nodes).filter(|&b| b != a) {
            let to = c.nodes[b].pod_ip().context("no subnet")?;
            let ok = Cluster::wait_for(Duration::from_secs(5), || {
                testbed::ping_rtts(&c.nodes[a].ns, to, 1, Duration::ZERO)
                    .is_ok_and(|r| !r.is_empty())
            });
            if !ok {
                bail!(
                    "node {} cannot reach node {}'s pods at {to}\n--- node {} log:\n{}",
                    a + 1,
                    b + 1,
                    a + 1,
                    c.nodes[a].log_text()
                );
            }
            interrupted(stop)?;
        }
    }
    print!("{paths}/{paths} reachable, ");
    done(t);

    heading(
        4,
        &format!(
            "traffic: a TCP stream from each node to the next, for {} s",
            opts.seconds
        ),
    );
    let ring = live_ring(&c, opts, stop)?;
    interrupted(stop)?;

    step(
        5,
        &format!(
            "measuring node 1 → node 2: 100 pings, then one TCP stream for {} s",
            opts.seconds
        ),
    );
    let t = Instant::now();
    let ours = measure(&c, 0, 1, opts.seconds, RING_PORT - 1, stop)?;
    done(t);
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let status = n.stop()?;
        if !status.success() {
            bail!(
                "weft on node {} exited with {status} on shutdown:\n{}",
                i + 1,
                n.log_text()
            );
        }
    }
    drop(c);
    interrupted(stop)?;

    let kernel = if opts.reference {
        step(6, "the kernel's VXLAN on the same testbed, for reference");
        let t = Instant::now();
        match kernel_reference(opts.seconds, stop) {
            Ok(m) => {
                done(t);
                Some(m)
            }
            Err(e) => {
                println!("not available: {e:#}");
                None
            }
        }
    } else {
        None
    };
    interrupted(stop)?;
    summary(opts, &ours, kernel.as_ref(), ring);
    Ok(())
}

fn step(n: u32, what: &str) {
    print!("[{n}] {what} … ");
    let _ = std::io::stdout().flush();
}

fn heading(n: u32, what: &str) {
    println!("[{n}] {what}");
}

fn done(t: Instant) {
    println!("done ({:.1} s)", t.elapsed().as_secs_f64());
}

fn interrupted(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Streams from every node to the next while a table of every peer's
/// traffic is redrawn each second. Returns the streams' total Gbit/s.
fn live_ring(c: &Cluster, opts: &DemoOptions, stop: &Arc<AtomicBool>) -> anyhow::Result<f64> {
    let n = c.nodes.len();
    let duration = Duration::from_secs(opts.seconds);
    let addr: SocketAddr = METRICS.parse().expect("a literal address");
    let tty = std::io::stdout().is_terminal();
    std::thread::scope(|s| -> anyhow::Result<f64> {
        let streams: Vec<_> = (0..n)
            .map(|i| {
                let j = (i + 1) % n;
                let (from, to) = (&c.nodes[i].ns, &c.nodes[j].ns);
                let ip = c.nodes[j].pod_ip();
                let stop = stop.clone();
                s.spawn(move || {
                    let ip = ip.ok_or_else(|| std::io::Error::other("no subnet"))?;
                    testbed::tcp_stream(from, to, ip, RING_PORT + i as u16, duration, stop)
                })
            })
            .collect();
        let mut before: Vec<Sample> = scrape_all(c, addr);
        let mut drawn = 0;
        let start = Instant::now();
        let mut last = Instant::now();
        while !streams.iter().all(|h| h.is_finished()) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() < Duration::from_secs(1) && !streams.iter().all(|h| h.is_finished()) {
                continue;
            }
            let dt = last.elapsed().as_secs_f64();
            last = Instant::now();
            let now = scrape_all(c, addr);
            let table = traffic_table(&before, &now, dt, start.elapsed(), opts.backend);
            if tty {
                if drawn > 0 {
                    print!("\x1b[{drawn}A\x1b[J");
                }
                print!("{table}");
                drawn = table.lines().count();
            } else if streams.iter().all(|h| h.is_finished()) {
                print!("{table}");
            }
            let _ = std::io::stdout().flush();
            before = now;
        }
        let mut total = 0.0;
        interrupted(stop)?;
        for (i, h) in streams.into_iter().enumerate() {
            let g = h
                .join()
                .map_err(|_| anyhow::anyhow!("stream {} panicked", i + 1))?
                .with_context(|| format!("TCP stream node {} → node {}", i + 1, (i + 1) % n + 1))?;
            total += g;
        }
        println!(
            "      {n} streams at once: {total:.2} Gbit/s in total on this host's {} cores",
            std::thread::available_parallelism().map_or(1, |p| p.get())
        );
        Ok(total)
    })
}

fn scrape_all(c: &Cluster, addr: SocketAddr) -> Vec<Sample> {
    c.nodes
        .iter()
        .map(|n| {
            n.ns.enter(move || status::fetch(addr))
                .ok()
                .and_then(|r| r.ok())
                .map(|t| Sample::parse(&t))
                .unwrap_or_default()
        })
        .collect()
}

/// One row per node and peer: rates over the last interval, totals so far.
fn traffic_table(
    before: &[Sample],
    now: &[Sample],
    dt: f64,
    elapsed: Duration,
    backend: DemoBackend,
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "      {:<6} {:<16} {:<7} {:>11} {:>11} {:>10} {:>10} {:>7}",
        "NODE", "PEER SUBNET", "VIA", "TX Mbit/s", "RX Mbit/s", "TX PKTS", "RX PKTS", "DROPS"
    );
    for (i, (b, s)) in before.iter().zip(now).enumerate() {
        let drops: u64 = s
            .nonzero(name::DROPPED, "reason")
            .iter()
            .map(|(_, v)| v)
            .sum();
        let old = b.peers();
        for p in s.peers() {
            let prev = old.iter().find(|q| q.subnet == p.subnet);
            let rate = |f: fn(&status::PeerRow) -> u64| {
                let d = f(&p).saturating_sub(prev.map_or(0, f));
                d as f64 * 8.0 / dt.max(1e-3) / 1e6
            };
            let _ = writeln!(
                o,
                "      {:<6} {:<16} {:<7} {:>11.0} {:>11.0} {:>10} {:>10} {:>7}",
                format!("node {}", i + 1),
                p.subnet,
                p.via,
                rate(|r| r.tx_bytes),
                rate(|r| r.rx_bytes),
                p.tx_packets,
                p.rx_packets,
                drops
            );
        }
    }
    let _ = writeln!(
        o,
        "      {:.0} s{}",
        elapsed.as_secs_f64(),
        if backend == DemoBackend::HostGw {
            "   host-gw: the kernel routes every packet, so weft's per-peer counters stay at zero"
        } else {
            ""
        }
    );
    o
}

/// Ping RTTs and one TCP stream from node `a` to node `b`'s pods.
fn measure(
    c: &Cluster,
    a: usize,
    b: usize,
    seconds: u64,
    port: u16,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Measured> {
    let to: Ipv4Addr = c.nodes[b].pod_ip().context("no subnet")?;
    let mut rtts = testbed::ping_rtts(&c.nodes[a].ns, to, 100, Duration::from_millis(10))?;
    rtts.sort();
    let pct = |p: usize| {
        rtts.get((rtts.len() * p / 100).min(rtts.len().saturating_sub(1)))
            .copied()
    };
    let gbits = testbed::tcp_stream(
        &c.nodes[a].ns,
        &c.nodes[b].ns,
        to,
        port,
        Duration::from_secs(seconds),
        stop.clone(),
    )
    .context("TCP stream")?;
    Ok(Measured {
        rtt_p50: pct(50),
        rtt_p99: pct(99),
        gbits,
    })
}

/// Two nodes whose `flannel.1` is the kernel's VXLAN, programmed as
/// flanneld programs it, measured the same way.
fn kernel_reference(seconds: u64, stop: &Arc<AtomicBool>) -> anyhow::Result<Measured> {
    let conf = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let c = Cluster::new("demok", 2, conf).context("cannot build the testbed")?;
    let subnets = ["10.244.1.0/24", "10.244.2.0/24"];
    for (i, s) in subnets.iter().enumerate() {
        c.nodes[i]
            .become_kernel_vxlan(&c.registry, s.parse()?)
            .context("this kernel has no VXLAN (no vxlan module?)")?;
    }
    // Each kernel node needs its own VtepMAC; the helper uses one.
    let mac2 = "0e:6b:65:72:6e:02";
    c.nodes[1]
        .ns
        .ip(&["link", "set", "flannel.1", "address", mac2])?;
    c.nodes[0].kernel_add_peer(subnets[1].parse()?, c.nodes[1].underlay, mac2)?;
    c.nodes[1].kernel_add_peer(
        subnets[0].parse()?,
        c.nodes[0].underlay,
        testbed::KERNEL_VTEP_MAC,
    )?;
    for n in &c.nodes {
        n.add_pod_bridge()?;
    }
    let to = c.nodes[1].pod_ip().context("no subnet")?;
    let ok = Cluster::wait_for(Duration::from_secs(5), || {
        testbed::ping_rtts(&c.nodes[0].ns, to, 1, Duration::ZERO).is_ok_and(|r| !r.is_empty())
    });
    if !ok {
        bail!("no ping reply through the kernel's VXLAN");
    }
    measure(&c, 0, 1, seconds, RING_PORT - 1, stop)
}

fn summary(opts: &DemoOptions, ours: &Measured, kernel: Option<&Measured>, ring: f64) {
    let us =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.0} µs", d.as_secs_f64() * 1e6));
    println!(
        "\n{:<30} {:>10} {:>10} {:>11} {:>16}",
        "node 1 → node 2", "ping p50", "ping p99", "TCP Gbit/s", "vs kernel VXLAN"
    );
    let row = |name: &str, m: &Measured| {
        let ratio = kernel
            .filter(|k| k.gbits > 0.0)
            .map_or("-".into(), |k| format!("{:.2}×", m.gbits / k.gbits));
        println!(
            "{name:<30} {:>10} {:>10} {:>11.2} {:>16}",
            us(m.rtt_p50),
            us(m.rtt_p99),
            m.gbits,
            ratio
        );
    };
    if let Some(k) = kernel {
        row("kernel VXLAN (reference)", k);
    }
    let name = match opts.backend {
        DemoBackend::Vxlan => format!(
            "weft vxlan ({})",
            match opts.device {
                DeviceKind::Tap => "tap",
                DeviceKind::Tun => "tun",
            }
        ),
        b => format!("weft {}", b.type_name()),
    };
    row(&name, ours);
    println!(
        "\n{} streams around the ring at once: {ring:.2} Gbit/s in total.",
        opts.nodes
    );
    println!("One TCP stream each, namespaces joined by veth on this host; the ratios are what carries over to real NICs.");
}
