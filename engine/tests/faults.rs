//! Faults that need nftables (the `fault-tests` feature; `.ci/run` installs
//! nftables and runs them): 20 % of the tunnel's datagrams dropped at
//! random, both ways, during hash-checked transfers.
//!
//! The loss is per datagram, as on a wire. A UDP GSO send crosses a veth as
//! one unsegmented skb, so a drop there would take out a whole 64 KiB train
//! at once; the nodes here therefore send without GSO (`WEFT_DISABLE=gso`).
//! TUN offloads and UDP GRO stay on.

mod common;
use common::*;
use weft_testbed::{Cluster, Netns};

/// Drops `percent` % of UDP datagrams to or from `port` in `ns`, at random.
fn lose(ns: &Netns, port: u16, percent: u32) {
    let rules = format!(
        "table inet weft_loss {{
  chain out {{ type filter hook output priority 0; udp dport {port} numgen random mod 100 < {percent} counter drop; }}
  chain in {{ type filter hook input priority 0; udp dport {port} numgen random mod 100 < {percent} counter drop; }}
}}"
    );
    let path = std::env::temp_dir().join(format!("{}.nft", weft_testbed::unique("loss")));
    std::fs::write(&path, rules).unwrap();
    let r = ns.exec("nft", &["-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    r.expect("nft (nftables) installs the loss rules");
}

fn lossy(tag: &str, backend: &str, port: u16) {
    let mut c = Cluster::new(tag, 2, &net_conf(backend)).unwrap();
    c.env.push(("WEFT_DISABLE".into(), "gso".into()));
    for i in 0..2 {
        c.start(i, weft(), &["--metrics-addr", "127.0.0.1:9153"])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    assert!(wait_ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap()));
    lose(&c.nodes[0].ns, port, 20);
    let t = std::time::Instant::now();
    transfer(&c, 0, 1, 4, 5001);
    transfer(&c, 1, 0, 4, 5002);
    eprintln!("{backend}: 2 × 4 MB through 20 % loss in {:?}", t.elapsed());
    for i in 0..2 {
        let m = metrics(&c.nodes[i].ns, 9153);
        for l in m
            .lines()
            .filter(|l| l.starts_with("weft_") && !l.ends_with(" 0"))
        {
            eprintln!("node {i}: {l}");
        }
    }
    // The rules did drop: nft's own counters.
    let out = c.nodes[0]
        .ns
        .exec("nft", &["list", "table", "inet", "weft_loss"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let dropped: u64 = text
        .split("packets ")
        .skip(1)
        .filter_map(|t| t.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 500, "loss rules dropped only {dropped}\n{text}");
    // Datagrams the local loss rule dropped on output came back to weft as
    // EPERM from sendmmsg: counted by errno, not fatal.
    let m = metrics(&c.nodes[0].ns, 9153);
    assert!(
        metric(&m, r#"weft_os_errors_total{errno="EPERM"}"#).unwrap_or(0) > 0,
        "{m}"
    );
    // weft saw nothing malformed and stayed up.
    for i in 0..2 {
        let m = metrics(&c.nodes[i].ns, 9153);
        assert_eq!(metric(&m, "weft_ready"), Some(1), "{m}");
        assert!(c.nodes[i].stop().unwrap().success());
    }
}

#[test]
fn vxlan_carries_tcp_through_20_percent_loss() {
    lossy("lx", "vxlan", 8472);
}

#[test]
fn udp_carries_tcp_through_20_percent_loss() {
    lossy("lu", "udp", 8285);
}
