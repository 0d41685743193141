//! The end-to-end benchmark: how weft's speed is judged.
//!
//! `cargo run --release -p weft-benches --bin e2e` (as root; needs iperf3)
//! builds the release `weft`, then for each configuration builds two hosts
//! in network namespaces joined by veth, measures, and tears them down. The
//! configurations run interleaved (A B C … A B C …) for `--rounds` rounds:
//!
//! - plain veth routing (no tunnel: the ceiling),
//! - the kernel's VXLAN configured as flanneld does (the reference),
//! - weft vxlan on TUN and TAP, weft udp, each with offloads on and off,
//! - weft vxlan/tun with 4 workers (for RSS).
//!
//! Per configuration: iperf3 TCP with 1 and 4 streams, iperf3 UDP with
//! 64-byte datagrams at full speed (received packets/s), ping RTT p50/p99,
//! CPU seconds per Gbit (whole machine, during the 1-stream test), and
//! weft's RSS. Prints a table with ratios against the kernel's VXLAN and
//! writes `target/e2e/results.json` and `target/e2e/chart.png`.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_testbed::{self as testbed, Cluster, Netns};

#[derive(Clone, Copy)]
enum Setup {
    Veth,
    Kernel,
    Weft {
        backend: &'static str,
        device: &'static str,
        offload: bool,
        threads: usize,
        /// `WEFT_DISABLE`: techniques turned off for this configuration.
        disable: &'static str,
    },
}

struct Config {
    name: &'static str,
    /// Pods talk IPv6 over an IPv6 underlay (dual-stack, `flannel-v6.1`);
    /// compared with the kernel's IPv6 VXLAN.
    ipv6: bool,
    setup: Setup,
}

const CONFIGS: &[Config] = &[
    Config {
        name: "veth (no tunnel)",
        ipv6: false,
        setup: Setup::Veth,
    },
    Config {
        name: "kernel VXLAN",
        ipv6: false,
        setup: Setup::Kernel,
    },
    Config {
        name: "weft vxlan/tun",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tun",
            offload: true,
            threads: 1,
            disable: "",
        },
    },
    Config {
        name: "weft vxlan/tun no-offload",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tun",
            offload: false,
            threads: 1,
            disable: "",
        },
    },
    Config {
        name: "weft vxlan/tap",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tap",
            offload: true,
            threads: 1,
            disable: "",
        },
    },
    Config {
        name: "weft vxlan/tap no-offload",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tap",
            offload: false,
            threads: 1,
            disable: "",
        },
    },
    Config {
        name: "weft udp",
        ipv6: false,
        setup: Setup::Weft {
            backend: "udp",
            device: "tun",
            offload: true,
            threads: 1,
            disable: "",
        },
    },
    Config {
        name: "weft udp no-offload",
        ipv6: false,
        setup: Setup::Weft {
            backend: "udp",
            device: "tun",
            offload: false,
            threads: 1,
            disable: "",
        },
    },
    Config {
        name: "weft vxlan/tun −gso",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tun",
            offload: true,
            threads: 1,
            disable: "gso",
        },
    },
    Config {
        name: "weft vxlan/tun −gro",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tun",
            offload: true,
            threads: 1,
            disable: "gro",
        },
    },
    Config {
        name: "weft vxlan/tun −mmsg",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tun",
            offload: true,
            threads: 1,
            disable: "mmsg",
        },
    },
    Config {
        name: "weft vxlan/tun −flowports",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tun",
            offload: true,
            threads: 1,
            disable: "flowports",
        },
    },
    Config {
        name: "weft vxlan/tun −sockbuf",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tun",
            offload: true,
            threads: 1,
            disable: "sockbuf",
        },
    },
    Config {
        name: "weft vxlan/tun 4 workers",
        ipv6: false,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tun",
            offload: true,
            threads: 4,
            disable: "",
        },
    },
    Config {
        name: "kernel VXLAN IPv6",
        ipv6: true,
        setup: Setup::Kernel,
    },
    Config {
        name: "weft vxlan/tun IPv6",
        ipv6: true,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tun",
            offload: true,
            threads: 1,
            disable: "",
        },
    },
    Config {
        name: "weft vxlan/tap IPv6",
        ipv6: true,
        setup: Setup::Weft {
            backend: "vxlan",
            device: "tap",
            offload: true,
            threads: 1,
            disable: "",
        },
    },
];

/// One configuration's measurements in one round.
#[derive(Default, Clone)]
struct Sample {
    tcp1: f64,
    tcp1_retr: f64,
    tcp4: f64,
    udp64_pps: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    cpu_s_per_gbit: f64,
    rss_mib: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let mut seconds = 5u64;
    let mut rounds = 2usize;
    let mut only: Option<String> = None;
    let mut skip_kernel = false;
    let mut soak: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().context("--seconds N")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            "--only" => only = Some(args.next().context("--only NAME,…")?),
            "--skip-kernel" => skip_kernel = true,
            "--soak" => soak = Some(args.next().context("--soak SECONDS")?.parse()?),
            "-h" | "--help" => {
                println!("e2e [--seconds N (5)] [--rounds N (2)] [--only NAME,NAME… (these configurations, plus the kernel's)] [--skip-kernel (for profiling)]\n\
                          e2e --soak SECONDS   (one iperf3 stream through weft vxlan/tun for SECONDS, RSS sampled every second)");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if Command::new("iperf3").arg("--version").output().is_err() {
        bail!("iperf3 is missing: apt-get install iperf3");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let weft = build_weft(&root)?;
    if let Some(secs) = soak {
        return soak_test(&weft, secs);
    }
    let named = |c: &Config| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n.trim() == c.name))
    };
    // The kernel's VXLAN of each family that a chosen configuration uses.
    let configs: Vec<&Config> = CONFIGS
        .iter()
        .filter(|c| {
            named(c)
                || (matches!(c.setup, Setup::Kernel)
                    && !skip_kernel
                    && CONFIGS.iter().any(|o| o.ipv6 == c.ipv6 && named(o)))
        })
        .collect();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
    // Ctrl-C finishes the configuration in progress (so its namespaces are
    // removed) and stops.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    for round in 0..rounds {
        for (i, c) in configs.iter().enumerate() {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                bail!("interrupted; everything it made has been removed");
            }
            eprint!("round {}/{rounds}: {:<28} ", round + 1, c.name);
            let s = measure(&weft, c, seconds).with_context(|| format!("measuring {}", c.name))?;
            eprintln!(
                "tcp1 {:.2}  tcp4 {:.2} Gbit/s  udp64 {:.0} kpps  rtt p50 {:.0} µs",
                s.tcp1,
                s.tcp4,
                s.udp64_pps / 1e3,
                s.rtt_p50_us
            );
            samples[i].push(s);
        }
    }
    let means: Vec<Sample> = samples.iter().map(|s| mean(s)).collect();
    // Each configuration against the kernel's VXLAN of its family.
    let kernel_of = |ipv6: bool| {
        configs
            .iter()
            .position(|c| matches!(c.setup, Setup::Kernel) && c.ipv6 == ipv6)
            .map(|i| means[i].clone())
            .unwrap_or_default()
    };
    let kernels: Vec<Sample> = configs.iter().map(|c| kernel_of(c.ipv6)).collect();
    print_table(&configs, &means, &kernels, seconds, rounds);
    let out = root.join("target/e2e");
    std::fs::create_dir_all(&out)?;
    let json = json!({
        "seconds": seconds,
        "rounds": rounds,
        "kernel": env_line("uname", &["-r"]),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "results": configs.iter().zip(&means).zip(&samples).zip(&kernels).map(|(((c, m), all), kernel)| json!({
            "name": c.name,
            "ipv6": c.ipv6,
            "mean": sample_json(m, kernel),
            "rounds": all.iter().map(|s| sample_json(s, kernel)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    match chart(&out.join("chart.png"), &configs, &means) {
        Ok(()) => eprintln!("wrote {0}/results.json and {0}/chart.png", out.display()),
        Err(e) => eprintln!("wrote {}/results.json; no chart: {e:#}", out.display()),
    }
    Ok(())
}

/// The soak: weft vxlan/tun between two hosts, one iperf3 stream for
/// `secs`, both weft processes' RSS sampled every second. Reports the growth
/// from the first minute's peak to the last minute's peak (target < 5 %).
fn soak_test(weft: &Path, secs: u64) -> anyhow::Result<()> {
    let mut c = Cluster::new(
        "soak",
        2,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )?;
    for i in 0..2 {
        c.start(i, weft, &["--metrics-addr", "127.0.0.1:9153"])?;
        c.nodes[i].add_pod_bridge()?;
    }
    let (src, dst) = (pod_ip(&c, 0)?, pod_ip(&c, 1)?);
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .filter_map(|n| n.daemon.as_ref().map(|d| d.id()))
        .collect();
    let (from, to) = (c.nodes[0].ns.handle(), c.nodes[1].ns.handle());
    let run =
        std::thread::spawn(move || iperf(&from, &to, src.into(), dst.into(), secs, &["-P", "1"]));
    let mut samples: Vec<f64> = Vec::new();
    for s in 0..secs {
        std::thread::sleep(Duration::from_secs(1));
        let rss: f64 = pids.iter().filter_map(|p| rss_mib(*p)).sum();
        samples.push(rss);
        if s % 60 == 0 {
            eprintln!("{s:>5} s: RSS of both weft processes {rss:.1} MiB");
        }
    }
    let r = run
        .join()
        .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))??;
    let gbit = r["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    let minute = samples.len().min(60);
    let first = samples[..minute].iter().cloned().fold(0.0, f64::max);
    let last = samples[samples.len() - minute..]
        .iter()
        .cloned()
        .fold(0.0, f64::max);
    let growth = (last - first) / first * 100.0;
    println!(
        "soak: {secs} s of one TCP stream through weft vxlan/tun at {gbit:.2} Gbit/s (retransmits {})\n\
         RSS (both processes): first-minute peak {first:.1} MiB, last-minute peak {last:.1} MiB, growth {growth:+.1} % (target < 5 %)",
        r["end"]["sum_sent"]["retransmits"]
    );
    for n in c.nodes.iter_mut() {
        let status = n.stop()?;
        if !status.success() {
            bail!("weft exited with {status}:\n{}", n.log_text());
        }
    }
    Ok(())
}

fn build_weft(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "weft", "--bin", "weft"])
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building weft failed");
    }
    Ok(root.join("target/release/weft"))
}

fn env_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

const SUBNETS: [&str; 2] = ["10.244.1.0/24", "10.244.2.0/24"];
const SUBNETS6: [&str; 2] = ["fd00:10:244:1::/64", "fd00:10:244:2::/64"];
/// The VtepMAC of the second kernel node's `flannel-v6.1`.
const KERNEL_VTEP_MAC6_B: &str = "0e:6b:65:72:6e:07";

fn measure(weft: &Path, config: &Config, seconds: u64) -> anyhow::Result<Sample> {
    let (setup, ipv6) = (config.setup, config.ipv6);
    let backend = match setup {
        Setup::Weft { backend, .. } => backend,
        _ => "vxlan",
    };
    let v6 = match ipv6 {
        true => r#","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56""#,
        false => "",
    };
    let conf = format!(r#"{{"Network":"10.244.0.0/16"{v6},"Backend":{{"Type":"{backend}"}}}}"#);
    let mut c = Cluster::new("e2e", 2, &conf).context("testbed")?;
    if ipv6 {
        c.add_ipv6()?;
    }
    match setup {
        Setup::Veth => {
            for (i, s) in SUBNETS.iter().enumerate() {
                testbed::pod_bridge(&c.nodes[i].ns, s.parse()?)?;
                let peer = c.nodes[1 - i].underlay.to_string();
                c.nodes[i]
                    .ns
                    .ip(&["route", "add", SUBNETS[1 - i], "via", &peer])?;
            }
        }
        Setup::Kernel if ipv6 => {
            for (i, (s, s6)) in SUBNETS.iter().zip(SUBNETS6).enumerate() {
                c.nodes[i].become_kernel_vxlan_dual(&c.registry, s.parse()?, s6.parse()?)?;
            }
            #[rustfmt::skip]
            c.nodes[1].ns.ip(&["link", "set", "flannel-v6.1", "address", KERNEL_VTEP_MAC6_B])?;
            let under6 = |i: usize| c.nodes[i].underlay6.context("no IPv6 underlay");
            c.nodes[0].kernel_add_peer6(SUBNETS6[1].parse()?, under6(1)?, KERNEL_VTEP_MAC6_B)?;
            c.nodes[1].kernel_add_peer6(
                SUBNETS6[0].parse()?,
                under6(0)?,
                testbed::KERNEL_VTEP_MAC6,
            )?;
            for n in &c.nodes {
                n.add_pod_bridge()?;
            }
        }
        Setup::Kernel => {
            for (i, s) in SUBNETS.iter().enumerate() {
                c.nodes[i].become_kernel_vxlan(&c.registry, s.parse()?)?;
            }
            c.nodes[1]
                .ns
                .ip(&["link", "set", "flannel.1", "address", "0e:6b:65:72:6e:02"])?;
            c.nodes[0].kernel_add_peer(
                SUBNETS[1].parse()?,
                c.nodes[1].underlay,
                "0e:6b:65:72:6e:02",
            )?;
            c.nodes[1].kernel_add_peer(
                SUBNETS[0].parse()?,
                c.nodes[0].underlay,
                testbed::KERNEL_VTEP_MAC,
            )?;
            for (i, s) in SUBNETS.iter().enumerate() {
                testbed::pod_bridge(&c.nodes[i].ns, s.parse()?)?;
            }
        }
        Setup::Weft {
            device,
            offload,
            threads,
            disable,
            ..
        } => {
            let threads = threads.to_string();
            if !disable.is_empty() {
                c.env.push(("WEFT_DISABLE".into(), disable.into()));
            }
            for i in 0..2 {
                c.start(
                    i,
                    weft,
                    &[
                        "--device",
                        device,
                        "--offload",
                        if offload { "on" } else { "off" },
                        "--threads",
                        &threads,
                    ],
                )?;
                c.nodes[i].add_pod_bridge()?;
            }
        }
    }
    let (src, dst) = match ipv6 {
        true => (pod_ip6(&c, 0)?.into(), pod_ip6(&c, 1)?.into()),
        false => (pod_ip(&c, 0)?.into(), pod_ip(&c, 1)?.into()),
    };
    let ok = Cluster::wait_for(Duration::from_secs(5), || match dst {
        std::net::IpAddr::V4(dst) => {
            testbed::ping_rtts(&c.nodes[0].ns, dst, 1, Duration::ZERO).is_ok_and(|r| !r.is_empty())
        }
        std::net::IpAddr::V6(dst) => {
            testbed::ping6(&c.nodes[0].ns, None, dst, 1).is_ok_and(|n| n == 1)
        }
    });
    if !ok {
        bail!("no ping through the tunnel\n{}", c.nodes[0].log_text());
    }
    let mut s = Sample::default();
    let mut rtts = match dst {
        std::net::IpAddr::V4(dst) => {
            testbed::ping_rtts(&c.nodes[0].ns, dst, 200, Duration::from_millis(2))?
        }
        std::net::IpAddr::V6(dst) => {
            testbed::ping6_rtts(&c.nodes[0].ns, None, dst, 200, Duration::from_millis(2))?
        }
    };
    rtts.sort();
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    s.rtt_p50_us = pct(0.50);
    s.rtt_p99_us = pct(0.99);

    let cpu0 = busy_jiffies()?;
    let r = iperf(
        &c.nodes[0].ns,
        &c.nodes[1].ns,
        src,
        dst,
        seconds,
        &["-P", "1"],
    )?;
    let busy = (busy_jiffies()? - cpu0) as f64 / clock_ticks();
    s.tcp1 = r["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    s.tcp1_retr = r["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
    let gbit = s.tcp1 * seconds as f64;
    s.cpu_s_per_gbit = if gbit > 0.0 { busy / gbit } else { 0.0 };
    let r = iperf(
        &c.nodes[0].ns,
        &c.nodes[1].ns,
        src,
        dst,
        seconds,
        &["-P", "4"],
    )?;
    s.tcp4 = r["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    let r = iperf(
        &c.nodes[0].ns,
        &c.nodes[1].ns,
        src,
        dst,
        seconds,
        &["-u", "-l", "64", "-b", "0"],
    )?;
    let sum = &r["end"]["sum_received"];
    let got = sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
    s.udp64_pps = got / sum["seconds"].as_f64().unwrap_or(seconds as f64).max(0.001);
    if matches!(setup, Setup::Weft { .. }) {
        s.rss_mib = c
            .nodes
            .iter()
            .filter_map(|n| n.daemon.as_ref().map(|d| d.id()))
            .filter_map(rss_mib)
            .reduce(f64::max);
        for n in c.nodes.iter_mut() {
            let status = n.stop()?;
            if !status.success() {
                bail!("weft exited with {status}:\n{}", n.log_text());
            }
        }
    }
    Ok(s)
}

/// Node `i`'s IPv6 pod address (`<subnet6>::1`).
fn pod_ip6(c: &Cluster, i: usize) -> anyhow::Result<std::net::Ipv6Addr> {
    c.nodes[i].pod_ip6().context("no IPv6 subnet")
}

fn pod_ip(c: &Cluster, i: usize) -> anyhow::Result<std::net::Ipv4Addr> {
    if let Some(ip) = c.nodes[i].pod_ip() {
        return Ok(ip);
    }
    let s: ipnet::Ipv4Net = SUBNETS[i].parse()?;
    Ok(std::net::Ipv4Addr::from(u32::from(s.network()) + 1))
}

/// Runs iperf3 from `from` (bound to `src`) to a one-shot server at `dst`
/// in `to`; returns its JSON.
fn iperf(
    from: &Netns,
    to: &Netns,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<Value> {
    let mut server = to
        .command("iperf3")
        .args(["-s", "-1", "-B", &dst.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    let mut out = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(40));
        let o = from
            .command("iperf3")
            .args(["-c", &dst.to_string(), "-B", &src.to_string(), "-J", "-t"])
            .arg(seconds.to_string())
            .args(extra)
            .output()?;
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if v["error"].as_str().is_some_and(|e| e.contains("connect")) {
            continue; // the server is not listening yet
        }
        out = Some(v);
        break;
    }
    let _ = server.wait();
    let v = out.context("iperf3 never connected")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

/// Non-idle jiffies of the whole machine (user+nice+system+irq+softirq+steal).
fn busy_jiffies() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    Ok(f[0] + f[1] + f[2] + f[5] + f[6] + f.get(7).copied().unwrap_or(0))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn mean(s: &[Sample]) -> Sample {
    let n = s.len().max(1) as f64;
    let avg = |f: fn(&Sample) -> f64| s.iter().map(f).sum::<f64>() / n;
    Sample {
        tcp1: avg(|x| x.tcp1),
        tcp1_retr: avg(|x| x.tcp1_retr),
        tcp4: avg(|x| x.tcp4),
        udp64_pps: avg(|x| x.udp64_pps),
        rtt_p50_us: avg(|x| x.rtt_p50_us),
        rtt_p99_us: avg(|x| x.rtt_p99_us),
        cpu_s_per_gbit: avg(|x| x.cpu_s_per_gbit),
        rss_mib: s.iter().filter_map(|x| x.rss_mib).reduce(f64::max),
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn sample_json(s: &Sample, k: &Sample) -> Value {
    json!({
        "tcp1_gbit": s.tcp1, "tcp1_vs_kernel": ratio(s.tcp1, k.tcp1),
        "tcp1_retransmits": s.tcp1_retr,
        "tcp4_gbit": s.tcp4, "tcp4_vs_kernel": ratio(s.tcp4, k.tcp4),
        "udp64_pps": s.udp64_pps, "udp64_vs_kernel": ratio(s.udp64_pps, k.udp64_pps),
        "rtt_p50_us": s.rtt_p50_us, "rtt_p50_vs_kernel": ratio(s.rtt_p50_us, k.rtt_p50_us),
        "rtt_p99_us": s.rtt_p99_us,
        "cpu_s_per_gbit": s.cpu_s_per_gbit,
        "rss_mib": s.rss_mib,
    })
}

fn print_table(
    configs: &[&Config],
    means: &[Sample],
    kernels: &[Sample],
    seconds: u64,
    rounds: usize,
) {
    println!(
        "\n{:<27} {:>13} {:>7} {:>13} {:>14} {:>15} {:>8} {:>9} {:>7}",
        "configuration",
        "TCP×1 Gbit/s",
        "retr",
        "TCP×4 Gbit/s",
        "UDP-64 kpps",
        "RTT p50/p99 µs",
        "CPU s/Gb",
        "RSS MiB",
        ""
    );
    for ((c, m), k) in configs.iter().zip(means).zip(kernels) {
        println!(
            "{:<27} {:>6.2} {:>5.2}× {:>7.0} {:>6.2} {:>5.2}× {:>7.0} {:>5.2}× {:>6.0}/{:<5.0}{:>4.1}× {:>8.2} {:>9}",
            c.name,
            m.tcp1,
            ratio(m.tcp1, k.tcp1),
            m.tcp1_retr,
            m.tcp4,
            ratio(m.tcp4, k.tcp4),
            m.udp64_pps / 1e3,
            ratio(m.udp64_pps, k.udp64_pps),
            m.rtt_p50_us,
            m.rtt_p99_us,
            ratio(m.rtt_p50_us, k.rtt_p50_us),
            m.cpu_s_per_gbit,
            m.rss_mib.map_or("-".into(), |r| format!("{r:.1}")),
        );
    }
    println!(
        "\nMeans of {rounds} interleaved round(s) of {seconds} s per test; ratios against the kernel's VXLAN of the same family (IPv4 or IPv6) in the same run.\n\
         Two namespaces joined by veth on this machine: veth never segments GSO packets, so offload gains are upper bounds for real NICs."
    );
}

fn chart(path: &Path, configs: &[&Config], means: &[Sample]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no DejaVuSans.ttf (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("bad font"))?;
    let width = (110 * configs.len() as u32 + 200).max(800);
    let root = BitMapBackend::new(path, (width, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = configs.len();
    let top = means.iter().map(|m| m.tcp1.max(m.tcp4)).fold(1.0, f64::max) * 1.15;
    let mut ch = ChartBuilder::on(&root)
        .caption(
            "TCP throughput through each data plane (Gbit/s)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(70)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..n as f64, 0.0..top)?;
    ch.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("Gbit/s")
        .draw()?;
    // Names under the bars, in up to three short lines each.
    for (i, c) in configs.iter().enumerate() {
        let (px, py) = ch.plotting_area().map_coordinate(&(i as f64 + 0.5, 0.0));
        let mut words = c.name.split_whitespace();
        let mut lines = vec![words.next().unwrap_or("").to_string()];
        if let Some(w) = words.next() {
            lines.push(w.to_string());
        }
        let rest: Vec<&str> = words.collect();
        if !rest.is_empty() {
            lines.push(rest.join(" "));
        }
        for (k, l) in lines.iter().enumerate() {
            let style = ("sans-serif", 13).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ),
            );
            root.draw(&Text::new(l.clone(), (px, py + 6 + 16 * k as i32), style))?;
        }
    }
    let c1 = RGBColor(66, 133, 244);
    let c4 = RGBColor(251, 140, 0);
    ch.draw_series(means.iter().enumerate().map(|(i, m)| {
        let x = i as f64;
        Rectangle::new([(x + 0.12, 0.0), (x + 0.48, m.tcp1)], c1.filled())
    }))?
    .label("1 stream")
    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c1.filled()));
    ch.draw_series(means.iter().enumerate().map(|(i, m)| {
        let x = i as f64;
        Rectangle::new([(x + 0.52, 0.0), (x + 0.88, m.tcp4)], c4.filled())
    }))?
    .label("4 streams")
    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c4.filled()));
    ch.draw_series(means.iter().enumerate().map(|(i, m)| {
        Text::new(
            format!("{:.1}", m.tcp1),
            (i as f64 + 0.14, m.tcp1 + top * 0.02),
            ("sans-serif", 12),
        )
    }))?;
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
