//! Plain routing without encapsulation: the host-gw backend, and vxlan's
//! DirectRouting. The test hosts sit on two layer-2 segments joined by a
//! router (the hub): 192.168.100.0/24 and 192.168.101.0/24.

mod common;
use common::*;
use std::time::{Duration, Instant};
use weft_testbed::{Carried, Cluster, Hop, WireTap};

const DIRECT_VXLAN: &str =
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const POD_NETWORK: &str = "10.244.0.0/16";
const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// Two hosts on the first segment and one behind the router, each running
/// weft with `extra` flags and a metrics server on 127.0.0.1:9153.
fn routed_cluster(tag: &str, conf: &str, extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(tag, 2, conf).expect("testbed");
    c.add_router().expect("router");
    c.add_node_on(tag, 1).expect("host behind the router");
    let mut args = vec!["--metrics-addr", "127.0.0.1:9153"];
    args.extend_from_slice(extra);
    for i in 0..3 {
        c.start(i, weft(), &args).unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    c
}

fn counter(c: &Cluster, i: usize, name: &str) -> u64 {
    metric(&metrics(&c.nodes[i].ns, 9153), name).unwrap_or_else(|| panic!("no {name} on node {i}"))
}

/// Waits (up to `secs`) until node `i`'s route to node `j`'s subnet
/// contains `want`; panics with the route and the log if it never does.
fn wait_route(c: &Cluster, i: usize, j: usize, want: &str, secs: u64) {
    let sub = c.nodes[j].subnet().unwrap();
    let ok = Cluster::wait_for(Duration::from_secs(secs), || {
        route_of(&c.nodes[i].ns, sub).contains(want)
    });
    assert!(
        ok,
        "node {i}: route to {sub} is {:?}, want {want:?}\n{}",
        route_of(&c.nodes[i].ns, sub),
        c.nodes[i].log_text()
    );
}

#[test]
fn direct_routing_on_the_segment_vxlan_across_the_router() {
    for device in ["tun", "tap"] {
        let c = routed_cluster(&format!("dr{device}"), DIRECT_VXLAN, &["--device", device]);
        let wire = WireTap::start(&c, POD_NETWORK.parse().unwrap()).unwrap();
        // Adjacent peers get a plain route via their PublicIP; the peer
        // behind the router gets the tunnel.
        wait_route(&c, 0, 1, "via 192.168.100.2 dev eth0", 3);
        wait_route(&c, 1, 0, "via 192.168.100.1 dev eth0", 3);
        wait_route(&c, 0, 2, "flannel.1", 3);
        wait_route(&c, 2, 0, "flannel.1", 3);
        let m = metrics(&c.nodes[0].ns, 9153);
        assert_eq!(metric(&m, "weft_peers"), Some(2), "{m}");
        assert_eq!(metric(&m, "weft_peers_direct"), Some(1), "{m}");

        // Pod to pod on the segment: nothing goes through weft, and no
        // VXLAN crosses the wire; the packets cross it plain.
        let tx = [0, 1].map(|i| counter(&c, i, "weft_tx_packets_total"));
        transfer_pods(&c, 0, 1, 8, 5201);
        transfer_pods(&c, 1, 0, 8, 5202);
        assert_eq!(
            [0, 1].map(|i| counter(&c, i, "weft_tx_packets_total")),
            tx,
            "weft encapsulated traffic between adjacent peers"
        );
        // Per peer, too: node 0 never encapsulated a packet for node 1.
        let peer1 = format!(
            "weft_peer_tx_packets_total{{subnet=\"{}\",public_ip=\"192.168.100.2\"}}",
            c.nodes[1].subnet().unwrap()
        );
        assert_eq!(counter(&c, 0, &peer1), 0, "{peer1}");
        assert!(metrics(&c.nodes[0].ns, 9153).contains("via=\"direct\"}"));
        assert_eq!(
            wire.frames(Hop::Bridged, Carried::Vxlan),
            0,
            "VXLAN on the wire between adjacent peers"
        );
        assert!(
            wire.bytes(Hop::Bridged, Carried::Plain) > 16 << 20,
            "plain bytes: {}",
            wire.bytes(Hop::Bridged, Carried::Plain)
        );
        assert_eq!(wire.frames(Hop::Routed, Carried::Vxlan), 0);

        // Across the router: VXLAN, through weft.
        transfer_pods(&c, 0, 2, 4, 5203);
        transfer_pods(&c, 2, 1, 4, 5204);
        assert!(counter(&c, 0, "weft_tx_packets_total") > tx[0] + 2000);
        let peer2 = format!(
            "weft_peer_tx_packets_total{{subnet=\"{}\",public_ip=\"{}\"}}",
            c.nodes[2].subnet().unwrap(),
            c.nodes[2].underlay
        );
        assert!(counter(&c, 0, &peer2) > 2000, "{peer2}");
        assert_eq!(counter(&c, 0, &peer1), 0, "{peer1}");
        assert!(counter(&c, 2, "weft_tx_packets_total") > 2500);
        assert!(
            wire.bytes(Hop::Routed, Carried::Vxlan) > 8 << 20,
            "{}",
            wire.bytes(Hop::Routed, Carried::Vxlan)
        );
        assert_eq!(wire.frames(Hop::Bridged, Carried::Vxlan), 0);
        assert_eq!(wire.frames(Hop::Routed, Carried::Plain), 0);
    }
}

#[test]
fn direct_routing_follows_underlay_route_changes_and_can_be_one_sided() {
    let c = routed_cluster("drc", DIRECT_VXLAN, &[]);
    let wire = WireTap::start(&c, POD_NETWORK.parse().unwrap()).unwrap();
    wait_route(&c, 0, 1, "via 192.168.100.2 dev eth0", 3);

    // Node 0 learns to reach node 1 through the router: node 1 is no longer
    // directly connected for it, so node 0 switches to VXLAN at once (on the
    // route event, not the 10 s recheck). Node 1 keeps routing directly.
    let t = Instant::now();
    c.nodes[0]
        .ns
        .ip(&["route", "add", "192.168.100.2/32", "via", "192.168.100.254"])
        .unwrap();
    wait_route(&c, 0, 1, "flannel.1", 3);
    assert!(t.elapsed() < Duration::from_secs(3));
    wait_route(&c, 1, 0, "via 192.168.100.1 dev eth0", 1);
    wait_log(&c, 0, "now reached over the tunnel");

    // One-sided: 0 -> 1 is encapsulated through the router, 1 -> 0 is plain.
    // Both directions carry a hash-checked stream, so each node accepts
    // what the other chose.
    let rx1 = counter(&c, 1, "weft_rx_packets_total");
    let tx1 = counter(&c, 1, "weft_tx_packets_total");
    transfer_pods(&c, 0, 1, 8, 5201);
    transfer_pods(&c, 1, 0, 8, 5202);
    assert!(counter(&c, 1, "weft_rx_packets_total") > rx1 + 5000);
    assert_eq!(counter(&c, 1, "weft_tx_packets_total"), tx1);
    assert!(
        wire.bytes(Hop::Routed, Carried::Vxlan) > 8 << 20,
        "{}",
        wire.bytes(Hop::Routed, Carried::Vxlan)
    );
    assert!(
        wire.bytes(Hop::Bridged, Carried::Plain) > 8 << 20,
        "{}",
        wire.bytes(Hop::Bridged, Carried::Plain)
    );

    // The route goes away: back to direct.
    c.nodes[0]
        .ns
        .ip(&["route", "del", "192.168.100.2/32"])
        .unwrap();
    wait_route(&c, 0, 1, "via 192.168.100.2 dev eth0", 3);
    transfer_pods(&c, 0, 1, 2, 5203);
}

#[test]
fn host_gw_routes_adjacent_peers_and_refuses_the_one_behind_the_router() {
    let mut c = routed_cluster("hg", HOST_GW, &[]);
    // No device, no tunnel; the lease is flannel's host-gw lease and the
    // MTU is the underlay's.
    let links = c.nodes[0].ns.ip(&["-o", "link", "show"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("flannel"),
        "host-gw made a device"
    );
    let lease = std::fs::read_to_string(c.lease_path(0).unwrap()).unwrap();
    assert_eq!(
        lease,
        r#"{"PublicIP":"192.168.100.1","PublicIPv6":null,"BackendType":"host-gw"}"#
    );
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_MTU=1500\n"), "{env}");

    wait_route(&c, 0, 1, "via 192.168.100.2 dev eth0", 3);
    wait_route(&c, 1, 0, "via 192.168.100.1 dev eth0", 3);
    let wire = WireTap::start(&c, POD_NETWORK.parse().unwrap()).unwrap();
    transfer_pods(&c, 0, 1, 8, 5201);
    transfer_pods(&c, 1, 0, 8, 5202);
    assert!(
        wire.bytes(Hop::Bridged, Carried::Plain) > 16 << 20,
        "{}",
        wire.bytes(Hop::Bridged, Carried::Plain)
    );
    assert_eq!(wire.frames(Hop::Bridged, Carried::Vxlan), 0);

    // The node behind the router cannot be a host-gw gateway: a clear
    // warning, a gauge, and an unreachable route so pods fail fast instead
    // of leaking to the default route.
    wait_route(&c, 0, 2, "unreachable", 3);
    wait_log(&c, 0, "behind a router");
    let log = c.nodes[0].log_text();
    assert_eq!(
        log.matches("behind a router").count(),
        1,
        "warned more than once\n{log}"
    );
    wait_metric(&c, 0, "weft_peers_unreachable", 1);
    wait_metric(&c, 0, "weft_peers_direct", 1);
    let pod2 = c.nodes[2].pod_ip().unwrap();
    let t = Instant::now();
    let r = c.nodes[0]
        .ns
        .enter(move || {
            std::net::TcpStream::connect_timeout(&(pod2, 80).into(), Duration::from_secs(5))
        })
        .unwrap();
    let e = r.expect_err("connected across the router in host-gw");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "{e} after {:?}",
        t.elapsed()
    );
    assert_eq!(e.raw_os_error(), Some(libc::EHOSTUNREACH), "{e}");

    // A deleted route is put back within the 10 s check, and counted.
    let sub1 = c.nodes[1].subnet().unwrap();
    c.nodes[0]
        .ns
        .ip(&["route", "del", &sub1.to_string()])
        .unwrap();
    wait_route(&c, 0, 1, "via 192.168.100.2 dev eth0", 12);
    wait_metric(&c, 0, "weft_routes_recovered_total", 1);
    wait_log(&c, 0, "route recovered");
    // The unreachable peer was retried by that check, without a new warning.
    assert_eq!(c.nodes[0].log_text().matches("behind a router").count(), 1);
    assert_eq!(
        route_of(&c.nodes[0].ns, c.nodes[2].subnet().unwrap())
            .split_whitespace()
            .next(),
        Some("unreachable")
    );
    transfer_pods(&c, 0, 1, 2, 5203);

    // A clean stop takes our routes away.
    assert!(c.nodes[0].stop().unwrap().success());
    let sub2 = c.nodes[2].subnet().unwrap();
    assert_eq!(route_of(&c.nodes[0].ns, sub1), "");
    assert_eq!(route_of(&c.nodes[0].ns, sub2), "");
}

#[test]
fn host_gw_ignores_vxlan_leases_with_a_warning() {
    let mut c = Cluster::new("hgm", 1, HOST_GW).unwrap();
    std::fs::write(
        c.registry.join("subnets/10.244.77.0-24"),
        r#"{"PublicIP":"192.168.100.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
    )
    .unwrap();
    c.start(0, weft(), &["--metrics-addr", "127.0.0.1:9153"])
        .unwrap();
    let logged = Cluster::wait_for(Duration::from_secs(3), || {
        c.nodes[0]
            .log_text()
            .contains(r#"its BackendType is "vxlan", this cluster runs "host-gw""#)
    });
    assert!(logged, "{}", c.nodes[0].log_text());
    assert_eq!(counter(&c, 0, "weft_peers"), 0);
    assert_eq!(route_of(&c.nodes[0].ns, "10.244.77.0/24"), "");
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn host_gw_refuses_nat() {
    let mut c = Cluster::new("hgn", 1, HOST_GW).unwrap();
    c.spawn(0, weft(), &["--public-ip", "203.0.113.9"]).unwrap();
    let e = c.wait_ready(0).expect_err("host-gw started behind NAT");
    let text = e.to_string();
    assert!(text.contains("host-gw cannot work behind NAT"), "{text}");
    assert!(text.contains("203.0.113.9"), "{text}");
    assert!(std::fs::read_dir(c.registry.join("subnets"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn direct_routing_warns_about_strict_rp_filter() {
    let mut c = Cluster::new("drr", 1, DIRECT_VXLAN).unwrap();
    c.nodes[0]
        .ns
        .exec("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=1"])
        .unwrap();
    c.start(0, weft(), &[]).unwrap();
    let warned = Cluster::wait_for(Duration::from_secs(2), || {
        c.nodes[0].log_text().contains("rp_filter=1")
    });
    assert!(warned, "{}", c.nodes[0].log_text());
    assert!(c.nodes[0].stop().unwrap().success());
    // Loose filtering is fine: no warning.
    c.nodes[0]
        .ns
        .exec("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=2"])
        .unwrap();
    c.start(0, weft(), &[]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!c.nodes[0].log_text().contains("rp_filter"));
    assert!(c.nodes[0].stop().unwrap().success());
}
