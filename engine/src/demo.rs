//! `weft demo`: two nodes in network namespaces on this host, per backend,
//! with ping and a TCP throughput measurement through the tunnel, next to
//! the kernel's own VXLAN as the reference. Everything it makes is removed
//! at the end, also on Ctrl-C.

use crate::testbed::{self, Cluster};
use anyhow::{bail, Context};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One row of the result table.
struct Row {
    name: &'static str,
    rtt_p50: Option<Duration>,
    gbits: Option<f64>,
    note: String,
}

#[derive(Clone, Copy)]
enum Scenario {
    Kernel,
    Weft(&'static str, &'static str),
}

const SCENARIOS: [(&str, Scenario); 4] = [
    ("kernel VXLAN (reference)", Scenario::Kernel),
    ("weft vxlan, tap", Scenario::Weft("vxlan", "tap")),
    ("weft vxlan, tun", Scenario::Weft("vxlan", "tun")),
    ("weft udp", Scenario::Weft("udp", "tun")),
];

/// Runs the demo; `seconds` of TCP per backend.
pub fn run(seconds: u64) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("weft demo needs root: it creates network namespaces and devices");
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())
            .context("cannot install a signal handler")?;
    }
    let weft = std::env::current_exe().context("cannot find the weft binary")?;
    println!("weft demo: two nodes in network namespaces per backend, file registry, {seconds} s of TCP each\n");
    let mut rows = Vec::new();
    for (name, sc) in SCENARIOS {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        print!("  {name:<26} setting up… ");
        let _ = std::io::stdout().flush();
        let row = match scenario(&weft, sc, seconds, &interrupted) {
            Ok((rtt, gbits)) => Row {
                name,
                rtt_p50: rtt,
                gbits: Some(gbits),
                note: String::new(),
            },
            Err(e) => Row {
                name,
                rtt_p50: None,
                gbits: None,
                note: format!("{e:#}"),
            },
        };
        match (&row.gbits, &row.note) {
            (Some(g), _) => println!("{g:.2} Gbit/s"),
            (None, _) if interrupted.load(Ordering::Relaxed) => println!("interrupted"),
            (None, n) => println!("failed: {n}"),
        }
        rows.push(row);
    }
    if interrupted.load(Ordering::Relaxed) {
        println!("\ninterrupted; everything the demo made has been removed");
        return Ok(());
    }
    print_table(&rows);
    if rows.iter().any(|r| r.gbits.is_none()) {
        bail!("some backends failed");
    }
    Ok(())
}

fn scenario(
    weft: &Path,
    sc: Scenario,
    seconds: u64,
    interrupted: &AtomicBool,
) -> anyhow::Result<(Option<Duration>, f64)> {
    let backend = match sc {
        Scenario::Weft(b, _) => b,
        Scenario::Kernel => "vxlan",
    };
    let conf = format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}"}}}}"#);
    let mut c = Cluster::new("demo", 2, &conf).context("cannot build the testbed")?;
    match sc {
        Scenario::Weft(_, device) => {
            for i in 0..2 {
                c.start(i, weft, &["--device", device])?;
            }
        }
        Scenario::Kernel => {
            let subnets = ["10.244.1.0/24", "10.244.2.0/24"];
            for (i, s) in subnets.iter().enumerate() {
                c.nodes[i].become_kernel_vxlan(&c.registry, s.parse()?)?;
            }
            // Each kernel node needs its own VtepMAC; the helper uses one.
            c.nodes[1]
                .ns
                .ip(&["link", "set", "flannel.1", "address", "0e:6b:65:72:6e:02"])?;
            c.nodes[0].kernel_add_peer(
                subnets[1].parse()?,
                c.nodes[1].underlay,
                "0e:6b:65:72:6e:02",
            )?;
            c.nodes[1].kernel_add_peer(
                subnets[0].parse()?,
                c.nodes[0].underlay,
                testbed::KERNEL_VTEP_MAC,
            )?;
        }
    }
    for n in &c.nodes {
        n.add_pod_bridge()?;
    }
    let target = c.nodes[1].pod_ip().context("no subnet")?;
    let reachable = Cluster::wait_for(Duration::from_secs(5), || {
        testbed::ping_rtts(&c.nodes[0].ns, target, 1, Duration::ZERO)
            .map(|r| !r.is_empty())
            .unwrap_or(false)
    });
    if !reachable {
        bail!(
            "no ping reply through the tunnel\n{}",
            c.nodes[0].log_text()
        );
    }
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    let mut rtts = testbed::ping_rtts(&c.nodes[0].ns, target, 20, Duration::from_millis(10))?;
    rtts.sort();
    let p50 = rtts.get(rtts.len() / 2).copied();
    let gbits = testbed::tcp_stream(
        &c.nodes[0].ns,
        &c.nodes[1].ns,
        target,
        5201,
        Duration::from_secs(seconds),
    )
    .context("TCP stream")?;
    for n in c.nodes.iter_mut().filter(|n| n.daemon.is_some()) {
        let status = n.stop()?;
        if !status.success() {
            bail!("weft exited with {status} on shutdown:\n{}", n.log_text());
        }
    }
    Ok((p50, gbits))
}

fn print_table(rows: &[Row]) {
    let kernel = rows.first().and_then(|r| r.gbits);
    println!(
        "\n{:<26} {:>12} {:>12} {:>16}",
        "backend", "ping p50", "TCP Gbit/s", "vs kernel VXLAN"
    );
    for r in rows {
        let rtt = r
            .rtt_p50
            .map_or("-".into(), |d| format!("{:.0} µs", d.as_secs_f64() * 1e6));
        let g = r.gbits.map_or("-".into(), |g| format!("{g:.2}"));
        let ratio = match (r.gbits, kernel) {
            (Some(g), Some(k)) if k > 0.0 => format!("{:.2}×", g / k),
            _ => "-".into(),
        };
        println!("{:<26} {:>12} {:>12} {:>16}", r.name, rtt, g, ratio);
    }
    println!("\nOne TCP stream, namespaces joined by veth on this host; ratios are what transfers to real NICs.");
}
