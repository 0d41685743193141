//! Dual-stack (`EnableIPv6`) on vxlan: IPv6 pods get a second device,
//! `flannel-v6.1`, with its own VtepMAC, carried over the IPv6 underlay
//! (2001:db8:100::/64) on port 8472 as flanneld's vxlan backend carries
//! them; IPv4 pods keep `flannel.1` over IPv4.

mod common;
use common::*;
use weft_testbed::{ping6, Cluster};

const DUAL_VXLAN: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// `ip <args>` in node `i`, as text.
fn ip(c: &Cluster, i: usize, args: &[&str]) -> String {
    let out = c.nodes[i].ns.ip(args).expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two weft nodes, one on a TUN and one on a TAP: each family reaches the
/// other node both ways, hash-checked, through each family's own device,
/// lease data and kernel state, as flanneld programs `flannel-v6.1`; and
/// a clean stop removes both devices.
#[test]
fn ipv6_pods_cross_weft_vxlan_between_tun_and_tap() {
    let mut c = Cluster::new("dsvx", 2, DUAL_VXLAN).expect("testbed");
    c.add_ipv6().expect("IPv6 underlay");
    let metrics_addr = ["--metrics-addr", "127.0.0.1:9153"];
    c.start(0, weft(), &metrics_addr).unwrap();
    c.start(
        1,
        weft(),
        &[&metrics_addr[..], &["--device", "tap"]].concat(),
    )
    .unwrap();
    for i in 0..2 {
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let (s0, s1) = (c.nodes[0].subnet6().unwrap(), c.nodes[1].subnet6().unwrap());

    for i in 0..2 {
        let s = c.nodes[i].subnet6().unwrap();
        // flanneld's device: `<subnet>::/128`, the underlay's MTU − 70.
        let link = ip(&c, i, &["link", "show", "flannel-v6.1"]);
        assert!(link.contains("mtu 1430 "), "node {i}: {link}");
        let addr = ip(&c, i, &["-6", "addr", "show", "dev", "flannel-v6.1"]);
        assert!(
            addr.contains(&format!("inet6 {}/128", s.network())),
            "node {i}: {addr}"
        );
        // The lease has BackendV6Data, with a VtepMAC of its own.
        let lease = std::fs::read_to_string(c.lease_path(i).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&lease).unwrap();
        let mac = |data: &str| v[data]["VtepMAC"].as_str().unwrap_or_default().to_string();
        assert_eq!(v["BackendV6Data"]["VNI"], 1, "node {i}: {lease}");
        assert!(!mac("BackendV6Data").is_empty(), "node {i}: {lease}");
        assert_ne!(
            mac("BackendData"),
            mac("BackendV6Data"),
            "node {i}: {lease}"
        );
        let flannel1 = ip(&c, i, &["link", "show", "flannel.1"]);
        assert!(flannel1.contains("mtu 1450 "), "node {i}: {flannel1}");
    }
    // On the TUN, a device route; on the TAP, flanneld's onlink route via
    // the peer's `<subnet>::` and a permanent neighbour with its VtepMAC.
    let mac6 = |i: usize| {
        let lease = std::fs::read_to_string(c.lease_path(i).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&lease).unwrap();
        v["BackendV6Data"]["VtepMAC"].as_str().unwrap().to_string()
    };
    let ok = Cluster::wait_for(std::time::Duration::from_secs(3), || {
        route_of(&c.nodes[0].ns, s1).contains("dev flannel-v6.1 proto 87")
            && route_of(&c.nodes[1].ns, s0)
                .contains(&format!("via {} dev flannel-v6.1 proto 87", s0.network()))
            && route_of(&c.nodes[1].ns, s0).contains(" onlink")
    });
    assert!(
        ok,
        "routes: {:?} / {:?}\n{}\n{}",
        route_of(&c.nodes[0].ns, s1),
        route_of(&c.nodes[1].ns, s0),
        c.nodes[0].log_text(),
        c.nodes[1].log_text()
    );
    let neigh = ip(&c, 1, &["-6", "neigh", "show", "dev", "flannel-v6.1"]);
    assert!(
        neigh.contains(&format!("{} lladdr {} PERMANENT", s0.network(), mac6(0))),
        "{neigh}"
    );

    for (a, b) in [(0, 1), (1, 0)] {
        let (from, to) = (c.nodes[a].pod_ip6().unwrap(), c.nodes[b].pod_ip6().unwrap());
        let answered = ping6(&c.nodes[a].ns, Some(from), to, 3).unwrap();
        assert_eq!(
            answered,
            3,
            "ping6 {from} -> {to}\n{}\n{}",
            c.nodes[a].log_text(),
            c.nodes[b].log_text()
        );
        transfer_pods6(&c, a, b, 20, 5401 + a as u16);
    }
    transfer_pods(&c, 0, 1, 8, 5403);
    wait_metric(&c, 0, "weft_peers", 1);

    for i in 0..2 {
        let status = c.nodes[i].stop().unwrap();
        assert!(
            status.success(),
            "node {i}: {status:?}\n{}",
            c.nodes[i].log_text()
        );
        let links = ip(&c, i, &["link", "show"]);
        assert!(!links.contains("flannel"), "node {i}: {links}");
    }
}
