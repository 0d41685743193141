//! `weft status` against running nodes: it reads the default metrics
//! address and shows the lease, each peer and how it is reached, and the
//! counters.

mod common;
use common::*;
use weft_testbed::Cluster;

fn status_of(c: &Cluster, i: usize, extra: &[&str]) -> String {
    let out = c.nodes[i]
        .ns
        .command(weft())
        .arg("status")
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "weft status failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn status_shows_lease_peers_and_counters() {
    for (backend, device, via) in [("vxlan", "tun", "tunnel"), ("udp", "tun", "tunnel")] {
        let mut c = Cluster::new("st", 2, &net_conf(backend)).unwrap();
        // No --metrics-addr: status finds the default.
        start_all(&mut c, &["--device", device]);
        assert!(wait_ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap()));
        transfer(&c, 0, 1, 4, 5001);
        let text = status_of(&c, 0, &[]);
        let own = c.nodes[0].subnet().unwrap().to_string();
        let peer = c.nodes[1].subnet().unwrap().to_string();
        for want in [
            format!("subnet     {own}"),
            "PublicIP   192.168.100.1".to_string(),
            format!("backend    {backend}"),
            "ready      yes".to_string(),
            "expires in 23h".to_string(),
            "peers (1)".to_string(),
        ] {
            assert!(text.contains(&want), "{want:?} missing:\n{text}");
        }
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(&peer))
            .unwrap_or_else(|| panic!("no row for {peer}:\n{text}"));
        assert!(row.contains("192.168.100.2") && row.contains(via), "{row}");
        // The transfer's packets were counted against the peer.
        // The row ends "TX PKTS, TX BYTES" with the bytes as "4.4 MB".
        let tx_packets: u64 = row
            .split_whitespace()
            .rev()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(tx_packets > 1000, "{row}\n{text}");
        if backend == "vxlan" {
            assert!(row.contains(':'), "VtepMAC shown: {row}");
        }
        for i in 0..2 {
            assert!(c.nodes[i].stop().unwrap().success());
        }
    }
}

#[test]
fn status_without_a_node_says_what_is_wrong() {
    let c = Cluster::new("sn", 1, &net_conf("vxlan")).unwrap();
    let out = c.nodes[0]
        .ns
        .command(weft())
        .args(["status", "--metrics-addr", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `weft run` running here"), "{err}");
}
