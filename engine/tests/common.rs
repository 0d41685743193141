//! Helpers shared by the integration tests (each test file includes this).

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;
use weft::testbed::{tcp_transfer, Cluster, Netns};

/// The weft binary under test.
pub fn weft() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft"))
}

/// net-conf.json for a backend.
pub fn net_conf(backend: &str) -> String {
    match backend {
        "udp" => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#.into(),
        _ => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#.into(),
    }
}

/// `count` ICMP echoes from `ns` to `ip`, 50 ms apart; true if every one
/// was answered.
pub fn ping(ns: &Netns, ip: std::net::Ipv4Addr, count: u16) -> bool {
    weft::testbed::ping_rtts(ns, ip, count, Duration::from_millis(50))
        .map(|r| r.len() == usize::from(count))
        .unwrap_or(false)
}

/// Waits until `ns` can ping `ip` (routes appear within a poll interval).
pub fn wait_ping(ns: &Netns, ip: std::net::Ipv4Addr) -> bool {
    Cluster::wait_for(Duration::from_secs(5), || ping(ns, ip, 1))
}

/// A hash-checked TCP transfer of `mb` MB from node `a` to node `b`'s pod IP.
pub fn transfer(c: &Cluster, a: usize, b: usize, mb: usize, port: u16) {
    let to = c.nodes[b].pod_ip().expect("node b has a subnet");
    let r = tcp_transfer(&c.nodes[a].ns, &c.nodes[b].ns, to, port, mb << 20).unwrap_or_else(|e| {
        panic!(
            "transfer {a}->{b} failed: {e}\n--- a:\n{}\n--- b:\n{}",
            c.nodes[a].log_text(),
            c.nodes[b].log_text()
        )
    });
    assert_eq!(r.sent, r.received, "bytes or hash differ {a}->{b}");
    eprintln!(
        "transfer {a}->{b}: {} MB in {:?} ({:.2} Gbit/s)",
        mb,
        r.elapsed,
        r.gbits()
    );
}

/// Reads `/metrics` from weft's metrics server inside `ns`.
pub fn metrics(ns: &Netns, port: u16) -> String {
    ns.enter(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })
    .and_then(|r| r)
    .unwrap_or_default()
}

/// The value of one metric line (exact name with labels).
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A hash-checked TCP transfer of `mb` MB from node `a`'s pod IP to node
/// `b`'s: pod to pod, as the CNI bridge's pods would talk.
pub fn transfer_pods(c: &Cluster, a: usize, b: usize, mb: usize, port: u16) {
    let from = c.nodes[a].pod_ip().expect("node a has a subnet");
    let to = c.nodes[b].pod_ip().expect("node b has a subnet");
    let r = weft::testbed::tcp_transfer_from(
        &c.nodes[a].ns,
        Some(from),
        &c.nodes[b].ns,
        to,
        port,
        mb << 20,
    )
    .unwrap_or_else(|e| {
        panic!(
            "transfer {a}->{b} ({from} -> {to}) failed: {e}\n--- a:\n{}\n--- b:\n{}",
            c.nodes[a].log_text(),
            c.nodes[b].log_text()
        )
    });
    assert_eq!(r.sent, r.received, "bytes or hash differ {a}->{b}");
}

/// `ip route show <dst>` in `ns`, as text.
pub fn route_of(ns: &Netns, dst: impl std::fmt::Display) -> String {
    ns.ip(&["route", "show", &dst.to_string()])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Starts weft on every node of `c` with `extra` flags and puts each
/// node's pod bridge up.
pub fn start_all(c: &mut Cluster, extra: &[&str]) {
    for i in 0..c.nodes.len() {
        c.start(i, weft(), extra).unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
}
