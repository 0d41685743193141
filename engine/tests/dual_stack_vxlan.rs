//! Dual-stack (`EnableIPv6`) on vxlan: IPv6 pods get a second device,
//! `flannel-v6.1`, with its own VtepMAC, carried over the IPv6 underlay
//! (2001:db8:100::/64) on port 8472 as flanneld's vxlan backend carries
//! them; IPv4 pods keep `flannel.1` over IPv4.

mod common;
use common::*;
use weft_routes::LeaseAttrs;
use weft_testbed::{ping6, Cluster, UdpCapture};

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

    // weft status shows both halves: ours, and a row per family for the
    // peer, each with its own VtepMAC and traffic.
    let text = weft_status(&c.nodes[0].ns);
    let mac = |i: usize, data: &str| {
        let lease = std::fs::read_to_string(c.lease_path(i).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&lease).unwrap();
        v[data]["VtepMAC"].as_str().unwrap().to_string()
    };
    for want in [
        format!("subnet6    {s0}"),
        "device6    flannel-v6.1 (MTU 1430)".to_string(),
        format!("{s1} "),
        mac(1, "BackendV6Data"),
        mac(1, "BackendData"),
        "peers (2)".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} missing from\n{text}");
    }

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

/// weft (dual-stack vxlan on `device`, offloads `offload`) against the
/// kernel's VXLAN set up as flanneld sets up `flannel.1` and
/// `flannel-v6.1`: ping6 and hash-checked 20 MB transfers both ways over
/// IPv6, 8 MB over IPv4, and the IPv6 wire checked byte by byte: outer
/// IPv6 between the PublicIPv6s, port 8472, VNI 1, and a UDP checksum
/// (IPv6 forbids a zero one).
fn against_kernel6(tag: &str, device: &str, offload: &str) {
    let mut c = Cluster::new(tag, 2, DUAL_VXLAN).expect("testbed");
    c.add_ipv6().expect("IPv6 underlay");
    let (ksub, ksub6) = (
        "10.244.200.0/24".parse().unwrap(),
        "fd00:10:244:c8::/64".parse().unwrap(),
    );
    c.nodes[1]
        .become_kernel_vxlan_dual(&c.registry, ksub, ksub6)
        .expect("kernel vxlan node");
    c.nodes[1].add_pod_bridge().expect("kernel pod bridge");
    #[rustfmt::skip]
    let args = ["--device", device, "--offload", offload, "--metrics-addr", "127.0.0.1:9153"];
    c.start(0, weft(), &args).expect("weft starts");
    c.nodes[0].add_pod_bridge().expect("weft pod bridge");

    // Play flanneld on the kernel node: program both halves of weft's lease.
    let lease = std::fs::read(c.lease_path(0).unwrap()).unwrap();
    let attrs = LeaseAttrs::from_json(&lease).unwrap();
    let (v4, v6) = (attrs.vxlan_data().unwrap(), attrs.vxlan_v6_data().unwrap());
    let k = &c.nodes[1];
    k.kernel_add_peer(
        c.nodes[0].subnet().unwrap(),
        attrs.public_ip.unwrap(),
        &v4.vtep_mac.to_string(),
    )
    .unwrap();
    k.kernel_add_peer6(
        c.nodes[0].subnet6().unwrap(),
        attrs.public_ipv6.unwrap(),
        &v6.vtep_mac.to_string(),
    )
    .unwrap();

    let cap = UdpCapture::start6(&c, 8472, 400).unwrap();
    let (w6, k6) = (c.nodes[0].pod_ip6().unwrap(), c.nodes[1].pod_ip6().unwrap());
    let reached = Cluster::wait_for(std::time::Duration::from_secs(5), || {
        ping6(&c.nodes[0].ns, Some(w6), k6, 1).unwrap_or(0) == 1
    });
    assert!(
        reached,
        "weft -> kernel ping6 failed\n{}",
        c.nodes[0].log_text()
    );
    assert_eq!(
        ping6(&c.nodes[1].ns, Some(k6), w6, 3).unwrap(),
        3,
        "kernel -> weft ping6"
    );
    transfer_pods6(&c, 0, 1, 20, 5411);
    transfer_pods6(&c, 1, 0, 20, 5412);
    transfer_pods(&c, 0, 1, 8, 5413);
    let frames = cap.finish();

    let (w, kn) = (c.nodes[0].underlay6.unwrap(), c.nodes[1].underlay6.unwrap());
    let mut from = [0usize; 2];
    for f in &frames {
        let (ip, udp) = (&f[14..54], &f[54..]);
        let src = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        let dst = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        assert!(
            (src, dst) == (w, kn) || (src, dst) == (kn, w),
            "{src} -> {dst}"
        );
        from[usize::from(src == kn)] += 1;
        assert_ne!(udp[6..8], [0, 0], "a zero UDP checksum over IPv6");
        assert_eq!(udp[8], 0x08, "VXLAN flags: the VNI is valid");
        assert_eq!(udp[12..15], [0, 0, 1], "VNI 1");
        assert_eq!(udp[8 + 8 + 12..8 + 8 + 14], [0x86, 0xdd], "inner IPv6");
    }
    assert!(
        from[0] > 0 && from[1] > 0,
        "frames from weft and kernel: {from:?}"
    );
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(
        metric(&m, r#"weft_dropped_packets_total{reason="l4_checksum"}"#),
        Some(0),
        "{m}"
    );
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn kernel_vxlan6_and_weft_tun() {
    against_kernel6("k6u", "tun", "on");
}

#[test]
fn kernel_vxlan6_and_weft_tap() {
    against_kernel6("k6a", "tap", "on");
}

#[test]
fn kernel_vxlan6_and_weft_tun_without_offloads() {
    against_kernel6("k6uo", "tun", "off");
}

/// A dual-stack vxlan lease's JSON with both VtepMACs.
fn dual_vxlan_lease(ip: &str, ip6: &str, mac: &str, mac6: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
    )
}

/// The VtepMAC a node announces for one family's device.
fn vtep_mac_of(c: &Cluster, i: usize, data: &str) -> String {
    let lease = std::fs::read_to_string(c.lease_path(i).unwrap()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&lease).unwrap();
    v[data]["VtepMAC"].as_str().unwrap().to_string()
}

/// From the attacker's side: an IPv6 half whose VtepMAC is not a unicast
/// MAC, is ours, or is the live peer's loses that half only, counted by
/// reason; its IPv4 half is routed, and the live peer keeps its IPv6
/// neighbour and carries traffic.
#[test]
fn hostile_ipv6_vtep_macs_lose_only_their_ipv6_half() {
    let mut c = Cluster::new("dsvh", 2, DUAL_VXLAN).expect("testbed");
    c.add_ipv6().expect("IPv6 underlay");
    for i in 0..2 {
        c.start(
            i,
            weft(),
            &["--metrics-addr", "127.0.0.1:9153", "--device", "tap"],
        )
        .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let (ours, peer) = (
        vtep_mac_of(&c, 0, "BackendV6Data"),
        vtep_mac_of(&c, 1, "BackendV6Data"),
    );
    let victim = c.nodes[1].subnet6().unwrap();
    let hostile = [
        ("01:00:5e:00:00:01", "vtep_mac"),
        (ours.as_str(), "vtep_mac"),
        (peer.as_str(), "duplicate_vtep_mac"),
    ];
    let dir = c.registry.join("subnets");
    for (n, (mac6, _)) in hostile.iter().enumerate() {
        let key = format!("10.244.{}.0-24&fd00:10:244:{:x}::-64", 210 + n, 210 + n);
        let (ip, ip6) = (
            format!("192.168.100.{}", 70 + n),
            format!("2001:db8:100::{}", 70 + n),
        );
        let mac = format!("0e:00:00:00:00:{:02x}", 70 + n);
        std::fs::write(dir.join(key), dual_vxlan_lease(&ip, &ip6, &mac, mac6)).unwrap();
    }
    let want = [("vtep_mac", 2), ("duplicate_vtep_mac", 1)];
    wait_rejected(&c, 0, "weft_lease_ipv6_halves_rejected_total", &want);
    wait_metric(&c, 0, "weft_peers", 1 + hostile.len() as u64);
    for n in 0..hostile.len() {
        // Counted as a peer when admitted; routed a moment later (under
        // qemu-user, well after).
        let v4 = format!("10.244.{}.0/24", 210 + n);
        let routed = Cluster::wait_for(std::time::Duration::from_secs(3), || {
            route_of(&c.nodes[0].ns, &v4).contains("dev flannel.1")
        });
        assert!(routed, "{v4}: {}", route_of(&c.nodes[0].ns, &v4));
        let v6 = format!("fd00:10:244:{:x}::/64", 210 + n);
        assert_eq!(route_of(&c.nodes[0].ns, &v6), "", "{v6} was routed");
    }
    let neigh = String::from_utf8_lossy(
        &c.nodes[0]
            .ns
            .ip(&["-6", "neigh", "show", "dev", "flannel-v6.1"])
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        neigh.contains(&format!("{} lladdr {peer} PERMANENT", victim.network())),
        "the live peer's neighbour: {neigh}"
    );
    assert_eq!(neigh.lines().count(), 1, "{neigh}");
    let (from, to) = (c.nodes[0].pod_ip6().unwrap(), c.nodes[1].pod_ip6().unwrap());
    assert_eq!(ping6(&c.nodes[0].ns, Some(from), to, 3).unwrap(), 3);
}

/// DirectRouting in both families: the adjacent peer's IPv6 subnet is
/// routed via its PublicIPv6 as flanneld does, the peer behind the router
/// through `flannel-v6.1`; pods reach each other both ways either way.
#[test]
fn direct_routing_in_both_families() {
    let conf = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let mut c = Cluster::new("dsdr", 2, conf).expect("testbed");
    c.add_router().expect("router");
    c.add_node_on("dsdr", 1).expect("host behind the router");
    c.add_ipv6().expect("IPv6 underlay");
    for i in 0..3 {
        c.start(i, weft(), &["--metrics-addr", "127.0.0.1:9153"])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let s6 = |i: usize| c.nodes[i].subnet6().unwrap();
    let routed = |i: usize, dst: ipnet::Ipv6Net, want: &str| {
        Cluster::wait_for(std::time::Duration::from_secs(3), || {
            route_of(&c.nodes[i].ns, dst).contains(want)
        })
    };
    for (i, j, want) in [
        (0, 1, "via 2001:db8:100::2 dev eth0".to_string()),
        (1, 0, "via 2001:db8:100::1 dev eth0".to_string()),
        (0, 2, "dev flannel-v6.1".to_string()),
        (2, 0, "dev flannel-v6.1".to_string()),
    ] {
        assert!(
            routed(i, s6(j), &want),
            "node {i} to {}: {:?}, want {want}\n{}",
            s6(j),
            route_of(&c.nodes[i].ns, s6(j)),
            c.nodes[i].log_text()
        );
    }
    wait_metric(&c, 0, "weft_peers_direct", 2);
    for (port, (a, b)) in (5421..).zip([(0, 1), (1, 0), (0, 2), (2, 0)]) {
        let (from, to) = (c.nodes[a].pod_ip6().unwrap(), c.nodes[b].pod_ip6().unwrap());
        let answered = Cluster::wait_for(std::time::Duration::from_secs(5), || {
            ping6(&c.nodes[a].ns, Some(from), to, 1).unwrap_or(0) == 1
        });
        assert!(answered, "ping6 {a} -> {b}");
        transfer_pods6(&c, a, b, 8, port);
    }
}

/// A deleted `flannel-v6.1` is recreated from the plan, its peers'
/// routes put back, and IPv6 pods reach the peer again; IPv4 never stops.
#[test]
fn a_deleted_ipv6_device_is_recreated() {
    let mut c = Cluster::new("dsrc", 2, DUAL_VXLAN).expect("testbed");
    c.add_ipv6().expect("IPv6 underlay");
    for i in 0..2 {
        c.start(i, weft(), &["--metrics-addr", "127.0.0.1:9153"])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let s1 = c.nodes[1].subnet6().unwrap();
    let (from, to) = (c.nodes[0].pod_ip6().unwrap(), c.nodes[1].pod_ip6().unwrap());
    let reaches = || {
        Cluster::wait_for(std::time::Duration::from_secs(10), || {
            ping6(&c.nodes[0].ns, Some(from), to, 1).unwrap_or(0) == 1
        })
    };
    assert!(reaches());
    c.nodes[0].ns.ip(&["link", "del", "flannel-v6.1"]).unwrap();
    wait_log(&c, 0, "device recreated");
    assert!(reaches(), "{}", c.nodes[0].log_text());
    assert!(route_of(&c.nodes[0].ns, s1).contains("dev flannel-v6.1"));
    wait_metric(&c, 0, "weft_device_recreations_total", 1);
    assert!(ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap(), 2));
}

/// flannel gives pods the IPv4 MTU (FLANNEL_MTU, 1450) while
/// `flannel-v6.1` has the underlay's less 70 (1430), so an IPv6 pod's
/// packets of 1431–1450 bytes cross only after an ICMPv6 packet too big
/// from its own node: nothing fragments IPv6 on the way. Pods at 1450 on
/// a TUN node and a TAP node (as the CNI plugin attaches them) learn the
/// path MTU and carry 20 MB each way, hash-checked, at the MSS their links
/// allow (1390) until they learn it; the IPv4 pods' packets fit as they
/// are.
#[test]
fn ipv6_pods_at_flannel_mtu_learn_the_path_mtu() {
    let mut c = Cluster::new("dspm", 2, DUAL_VXLAN).expect("testbed");
    c.add_ipv6().expect("IPv6 underlay");
    c.start(0, weft(), &[]).unwrap();
    c.start(1, weft(), &["--device", "tap"]).unwrap();
    // Two pods a node, a sender and a receiver: a receiver that had learnt
    // the path MTU would advertise an MSS that fits it.
    let pods: Vec<_> = (0..2)
        .map(|i| {
            c.nodes[i].add_pod_bridge().unwrap();
            let sender = c.nodes[i].add_pod(10, 1450).unwrap();
            (sender, c.nodes[i].add_pod(11, 1450).unwrap())
        })
        .collect();
    let ip6 = |p: &weft_testbed::Pod| p.ip6.expect("an IPv6 pod address");
    let reached = Cluster::wait_for(std::time::Duration::from_secs(3), || {
        ping6(&pods[0].0.ns, None, ip6(&pods[1].1), 1).is_ok_and(|n| n == 1)
    });
    assert!(
        reached,
        "{}\n{}",
        c.nodes[0].log_text(),
        c.nodes[1].log_text()
    );
    for (a, b) in [(0, 1), (1, 0)] {
        let (from, to) = (&pods[a].0, &pods[b].1);
        let r = weft_testbed::tcp_transfer_ip(
            &from.ns,
            None,
            &to.ns,
            ip6(to).into(),
            5501 + a as u16,
            20 << 20,
        )
        .unwrap_or_else(|e| {
            panic!(
                "pod {a} -> pod {b} over IPv6: {e}\n{}\n{}",
                c.nodes[0].log_text(),
                c.nodes[1].log_text()
            )
        });
        assert_eq!(r.sent, r.received, "bytes or hash differ {a}->{b}");
        // The sender's kernel learnt 1430 from its node's packet too big.
        let route = from
            .ns
            .ip(&["-6", "route", "get", &ip6(to).to_string()])
            .unwrap();
        let route = String::from_utf8_lossy(&route.stdout).to_string();
        assert!(route.contains("mtu 1430"), "pod {a}: {route}");
        // IPv4 pods: 1450 fits flannel.1 as it is.
        let r = weft_testbed::tcp_transfer_ip(
            &from.ns,
            None,
            &to.ns,
            to.ip.into(),
            5503 + a as u16,
            4 << 20,
        )
        .unwrap();
        assert_eq!(r.sent, r.received, "bytes or hash differ {a}->{b} (IPv4)");
    }
    for i in 0..2 {
        let m = metrics(&c.nodes[i].ns, 9474);
        for reason in ["ipv6_malformed", "spoofed_source", "unknown_sender"] {
            assert!(
                m.contains(&format!("reason=\"{reason}\"}} 0")),
                "node {i}: {reason}\n{m}"
            );
        }
    }
}
