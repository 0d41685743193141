//! Dual-stack (`EnableIPv6`) on host-gw: each lease carries an IPv6 half
//! (its IPv6 subnet and PublicIPv6) beside the IPv4 one, and each half is
//! routed, checked and refused on its own, as flanneld's host-gw programs
//! `<IPv6 subnet> via <PublicIPv6>`. The hosts share 2001:db8:100::/64
//! beside 192.168.100.0/24.

mod common;
use common::*;
use std::time::Duration;
use weft_testbed::{ping6, Cluster};

const DUAL_HOST_GW: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}"#;

/// A dual-stack cluster of `n` hosts, weft started on each with `extra`
/// flags and its pod bridge up in both families.
fn dual_cluster(tag: &str, n: usize, extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(tag, n, DUAL_HOST_GW).expect("testbed");
    c.add_ipv6().expect("IPv6 underlay");
    let mut args = vec!["--metrics-addr", "127.0.0.1:9153"];
    args.extend_from_slice(extra);
    start_all(&mut c, &args);
    c
}

/// Waits (up to 3 s) until `ns`'s route to `dst` contains `want`.
fn wait_route(c: &Cluster, i: usize, dst: impl std::fmt::Display, want: &str) {
    let dst = dst.to_string();
    let ok = Cluster::wait_for(Duration::from_secs(3), || {
        route_of(&c.nodes[i].ns, &dst).contains(want)
    });
    assert!(
        ok,
        "node {i}: route to {dst} is {:?}, want {want:?}\n{}",
        route_of(&c.nodes[i].ns, &dst),
        c.nodes[i].log_text()
    );
}

fn ip6tables_save(c: &Cluster, i: usize, table: &str) -> String {
    let out = c.nodes[i]
        .ns
        .exec("ip6tables-save", &["-t", table])
        .expect("ip6tables-save");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dual_stack_host_gw_carries_both_families_pod_to_pod() {
    let mut c = dual_cluster("ds", 2, &["--ip-masq"]);
    let (s0, s1) = (c.nodes[0].subnet6().unwrap(), c.nodes[1].subnet6().unwrap());
    assert_ne!(s0, s1);
    assert_eq!(
        s0.prefix_len(),
        64,
        "IPv6SubnetLen defaults to /64 under a /56"
    );

    // subnet.env has flanneld's IPv6 lines.
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(
        env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"),
        "{env}"
    );
    assert!(
        env.contains(&format!(
            "FLANNEL_IPV6_SUBNET={}/64\n",
            c.nodes[0].pod_ip6().unwrap()
        )),
        "{env}"
    );
    // The lease names both halves: flanneld's key and PublicIPv6.
    let leases: Vec<String> = std::fs::read_dir(c.registry.join("subnets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let key0 = format!(
        "{}&{}-64",
        c.nodes[0].subnet().unwrap().to_string().replace('/', "-"),
        s0.network()
    );
    assert!(leases.contains(&key0), "{key0} not in {leases:?}");
    let lease0 = std::fs::read_to_string(c.registry.join("subnets").join(&key0)).unwrap();
    assert!(
        lease0.contains(r#""PublicIPv6":"2001:db8:100::1""#),
        "{lease0}"
    );

    // Each half is routed via its own PublicIP, in weft's protocol.
    wait_route(&c, 0, s1, "via 2001:db8:100::2 dev eth0 proto 87");
    wait_route(&c, 1, s0, "via 2001:db8:100::1 dev eth0 proto 87");
    wait_route(
        &c,
        0,
        c.nodes[1].subnet().unwrap(),
        "via 192.168.100.2 dev eth0 proto 87",
    );
    wait_metric(&c, 0, "weft_peers", 1);
    // Both halves.
    wait_metric(&c, 0, "weft_peers_direct", 2);
    let m = metrics(&c.nodes[0].ns, 9153);
    assert!(
        m.contains(&format!("weft_peer_info{{subnet=\"{s1}\",public_ip=\"2001:db8:100::2\",vtep_mac=\"\",via=\"direct\"}} 1")),
        "{m}"
    );

    // Pod to pod in both families, both ways.
    for (a, b) in [(0, 1), (1, 0)] {
        let (from, to) = (c.nodes[a].pod_ip6().unwrap(), c.nodes[b].pod_ip6().unwrap());
        let answered = ping6(&c.nodes[a].ns, Some(from), to, 3).unwrap();
        let dbg = |i: usize| {
            let ns = &c.nodes[i].ns;
            [&["-6", "addr"][..], &["-6", "route"], &["-6", "neigh"]]
                .iter()
                .map(|a| String::from_utf8_lossy(&ns.ip(a).unwrap().stdout).into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            answered,
            3,
            "ping6 {from} -> {to}\n{}\n----\n{}",
            dbg(a),
            dbg(b)
        );
        transfer_pods6(&c, a, b, 20, 5301 + a as u16);
        transfer_pods(&c, a, b, 8, 5311 + a as u16);
    }

    // flanneld's IPv6 masquerading and forwarding rules, in ip6tables.
    let nat = ip6tables_save(&c, 0, "nat");
    for rule in [
        "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG".to_string(),
        format!("-A FLANNEL-POSTRTG -s {s0} -d fd00:10:244::/56 -m comment --comment \"flanneld masq\" -j RETURN"),
        "-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully".to_string(),
    ] {
        assert!(nat.contains(&rule), "{rule} not in\n{nat}");
    }
    let filter = ip6tables_save(&c, 0, "filter");
    assert!(
        filter.contains("-A FLANNEL-FWD -s fd00:10:244::/56 -m comment --comment \"flanneld forward\" -j ACCEPT"),
        "{filter}"
    );

    // A clean stop takes both families' routes and rules away.
    c.nodes[0].stop().unwrap();
    assert_eq!(route_of(&c.nodes[0].ns, s1), "");
    assert_eq!(route_of(&c.nodes[0].ns, c.nodes[1].subnet().unwrap()), "");
    assert!(!ip6tables_save(&c, 0, "nat").contains("FLANNEL-POSTRTG"));
}

/// A host-gw lease's JSON with an IPv6 half.
fn dual_lease(public_ip: &str, public_ipv6: &str) -> String {
    format!(r#"{{"PublicIP":"{public_ip}","PublicIPv6":"{public_ipv6}","BackendType":"host-gw"}}"#)
}

/// From the attacker's side: leases whose IPv6 half is bad, or collides
/// with a live peer's, lose that half only. The IPv4 half is routed on its
/// own merits, and the live peer keeps its IPv6 route.
#[test]
fn hostile_ipv6_halves_lose_only_their_ipv6_half() {
    let c = dual_cluster("dh", 2, &[]);
    let victim = c.nodes[1].subnet6().unwrap();
    wait_route(&c, 0, victim, "via 2001:db8:100::2 dev eth0");
    let dir = c.registry.join("subnets");
    let lease = |key: &str, ip: &str, ip6: &str, why: &'static str| {
        (key.to_string(), dual_lease(ip, ip6), why)
    };
    let hostile = [
        // A link-local PublicIPv6 names no single host.
        lease(
            "10.244.200.0-24&fd00:10:244:c8::-64",
            "192.168.100.60",
            "fe80::60",
            "public_ip",
        ),
        // Outside IPv6Network.
        lease(
            "10.244.201.0-24&fd00:99:0:c9::-64",
            "192.168.100.61",
            "2001:db8:100::61",
            "outside_network",
        ),
        // The live peer's IPv6 subnet, claimed after it.
        lease(
            &format!("10.244.202.0-24&{}-64", victim.network()),
            "192.168.100.62",
            "2001:db8:100::62",
            "overlaps_peer",
        ),
        // Our own PublicIPv6.
        lease(
            "10.244.203.0-24&fd00:10:244:cb::-64",
            "192.168.100.63",
            "2001:db8:100::1",
            "public_ip",
        ),
        // The live peer's PublicIPv6.
        lease(
            "10.244.204.0-24&fd00:10:244:cc::-64",
            "192.168.100.64",
            "2001:db8:100::2",
            "duplicate_public_ip",
        ),
    ];
    for (key, json, _) in &hostile {
        std::fs::write(dir.join(key), json).unwrap();
    }
    let want = |reason: &str| hostile.iter().filter(|h| h.2 == reason).count() as u64;
    let reasons = [
        "public_ip",
        "outside_network",
        "overlaps_peer",
        "duplicate_public_ip",
    ];
    let want: Vec<(&str, u64)> = reasons.iter().map(|r| (*r, want(r))).collect();
    wait_rejected(&c, 0, "weft_lease_ipv6_halves_rejected_total", &want);
    // Refusals are counted before the other halves are routed.
    wait_metric(&c, 0, "weft_peers", 1 + hostile.len() as u64);
    let m = metrics(&c.nodes[0].ns, 9153);
    // Whole leases are not refused: their IPv4 halves are peers.
    assert!(
        m.lines()
            .filter(|l| l.starts_with("weft_leases_rejected_total"))
            .all(|l| l.ends_with(" 0")),
        "{m}"
    );
    for (n, (key, _, _)) in hostile.iter().enumerate() {
        let v4 = format!("10.244.{}.0/24", 200 + n);
        wait_route(&c, 0, &v4, &format!("via 192.168.100.{} dev eth0", 60 + n));
        let v6 = key.split('&').nth(1).unwrap().replace("-64", "/64");
        if v6.parse::<ipnet::Ipv6Net>().unwrap() != victim {
            assert_eq!(
                route_of(&c.nodes[0].ns, &v6),
                "",
                "{key}'s IPv6 half was routed"
            );
        }
        assert!(
            m.contains(&format!("weft_lease_rejected{{key=\"{key}\""))
                && m.contains("family=\"ipv6\"} 1"),
            "{key}: {m}"
        );
    }
    // The live peer keeps its IPv6 route, and it carries traffic.
    assert!(route_of(&c.nodes[0].ns, victim).contains("via 2001:db8:100::2 dev eth0"));
    let (from, to) = (c.nodes[0].pod_ip6().unwrap(), c.nodes[1].pod_ip6().unwrap());
    assert_eq!(ping6(&c.nodes[0].ns, Some(from), to, 3).unwrap(), 3);

    // weft status says which half was refused.
    let text = weft_status(&c.nodes[0].ns);
    assert!(text.contains("its IPv6 half only"), "{text}");
}

/// flannel's udp backend is IPv4-only, and so is weft's: EnableIPv6 with
/// it is refused at start, saying so, rather than leaving IPv6 pods cut
/// off in silence.
#[test]
fn enable_ipv6_with_udp_is_refused() {
    let conf = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"udp"}}"#;
    refused_at_start("drud", conf, "carries IPv4 only, and so does weft's");
}

/// An IPv6-only config (`"EnableIPv4": false`) is for the Kubernetes
/// subnet manager, as in flanneld: with the file registry (and etcd, the
/// same check) weft refuses it at start, saying why, and writes nothing.
#[test]
fn ipv6_only_outside_kubernetes_is_refused() {
    let conf = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;
    refused_at_start(
        "dr6o",
        conf,
        "works with the Kubernetes subnet manager (--kube-subnet-mgr) only",
    );
}

/// weft on a dual-stack host with net-conf.json `conf` stops at start,
/// logging `why`, and leaves no subnet.env and no lease behind.
fn refused_at_start(tag: &str, conf: &str, why: &str) {
    let mut c = Cluster::new(tag, 1, conf).unwrap();
    c.add_ipv6().unwrap();
    c.spawn(0, weft(), &[]).unwrap();
    let exited = wait_exit(&mut c, 0);
    let log = c.nodes[0].log_text();
    assert!(exited, "weft kept running\n{log}");
    assert!(log.contains(why), "{log}");
    assert!(!c.nodes[0].subnet_file.exists(), "subnet.env written");
    let leases = std::fs::read_dir(c.registry.join("subnets")).map_or(0, |d| d.count());
    assert_eq!(leases, 0, "a lease was written");
}

/// A host with no global IPv6 address cannot announce a PublicIPv6: weft
/// says so and how to fix it, instead of announcing a link-local one its
/// peers would refuse.
#[test]
fn no_global_ipv6_address_is_a_clear_error() {
    let mut c = Cluster::new("dn", 1, DUAL_HOST_GW).unwrap();
    c.spawn(0, weft(), &[]).unwrap();
    let exited = wait_exit(&mut c, 0);
    let log = c.nodes[0].log_text();
    assert!(exited, "{log}");
    assert!(
        log.contains("no usable global IPv6 address") && log.contains("--public-ipv6"),
        "{log}"
    );
}

/// host-gw needs one layer-2 segment in IPv6 too: a peer behind a router
/// gets `unreachable <IPv6 subnet>` and one warning, in each family, and
/// the adjacent peer is routed as before; whether the host routes the
/// gateway via another (node 2, whose default route is the router) or not
/// at all (node 0, without an IPv6 default route).
#[test]
fn an_ipv6_peer_behind_a_router_is_marked_unreachable() {
    let mut c = Cluster::new("du", 2, DUAL_HOST_GW).expect("testbed");
    c.add_router().unwrap();
    c.add_node_on("du", 1).unwrap();
    c.add_ipv6().unwrap();
    c.nodes[0]
        .ns
        .ip(&["-6", "route", "del", "default"])
        .unwrap();
    start_all(&mut c, &["--metrics-addr", "127.0.0.1:9153"]);
    wait_route(&c, 2, c.nodes[0].subnet6().unwrap(), "unreachable");
    wait_log(&c, 2, "the kernel refuses 2001:db8:100::1 as a gateway");
    let far = c.nodes[2].subnet6().unwrap();
    wait_route(&c, 0, far, "unreachable");
    wait_route(&c, 0, c.nodes[2].subnet().unwrap(), "unreachable");
    wait_route(
        &c,
        0,
        c.nodes[1].subnet6().unwrap(),
        "via 2001:db8:100::2 dev eth0",
    );
    wait_log(&c, 0, "the kernel refuses 2001:db8:101::3 as a gateway");
    wait_metric(&c, 0, "weft_peers_unreachable", 2);
    let (from, to) = (c.nodes[0].pod_ip6().unwrap(), c.nodes[1].pod_ip6().unwrap());
    assert_eq!(ping6(&c.nodes[0].ns, Some(from), to, 2).unwrap(), 2);
}

/// weft's IPv6 routes are kept as its IPv4 ones: a stale route of ours
/// inside `IPv6Network` that a crashed run left is swept at start (one
/// outside it, and one of another protocol, stay), and a peer's route
/// deleted by hand is put back within the 10 s check, counted.
#[test]
fn ipv6_routes_are_swept_and_put_back() {
    let mut c = Cluster::new("dk", 2, DUAL_HOST_GW).expect("testbed");
    c.add_ipv6().unwrap();
    let ns = c.nodes[0].ns.handle();
    for (dst, proto) in [
        ("fd00:10:244:f0::/64", "87"),
        ("fd00:99::/64", "87"),
        ("fd00:10:244:f1::/64", "static"),
    ] {
        ns.ip(&[
            "-6",
            "route",
            "add",
            dst,
            "via",
            "2001:db8:100::9",
            "dev",
            "eth0",
            "proto",
            proto,
        ])
        .unwrap();
    }
    start_all(&mut c, &["--metrics-addr", "127.0.0.1:9153"]);
    wait_route(&c, 0, c.nodes[1].subnet6().unwrap(), "via 2001:db8:100::2");
    assert_eq!(
        route_of(&ns, "fd00:10:244:f0::/64"),
        "",
        "stale route of ours kept"
    );
    assert!(
        route_of(&ns, "fd00:99::/64").contains("proto 87"),
        "a route outside IPv6Network went"
    );
    assert!(
        route_of(&ns, "fd00:10:244:f1::/64").contains("proto static"),
        "a static route went"
    );

    let peer = c.nodes[1].subnet6().unwrap().to_string();
    ns.ip(&["-6", "route", "del", &peer]).unwrap();
    let back = Cluster::wait_for(Duration::from_secs(12), || {
        route_of(&ns, &peer).contains("via 2001:db8:100::2 dev eth0")
    });
    assert!(back, "{}", c.nodes[0].log_text());
    wait_metric(&c, 0, "weft_routes_recovered_total", 1);
}
