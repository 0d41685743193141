//! Daemon behaviour around the data path: config defaults, foreign leases,
//! restarts, multi-queue workers.

mod common;
use common::*;
use std::time::Duration;
use weft_routes::LeaseAttrs;
use weft_testbed::Cluster;

#[test]
fn config_without_backend_runs_udp_with_a_warning() {
    let mut c = Cluster::new("nb", 1, r#"{"Network":"10.244.0.0/16"}"#).unwrap();
    c.start(0, weft(), &[]).unwrap();
    assert!(
        c.nodes[0].ns.ip(&["link", "show", "flannel0"]).is_ok(),
        "no flannel0"
    );
    assert!(
        c.nodes[0].log_text().contains("no Backend: running udp"),
        "{}",
        c.nodes[0].log_text()
    );
    let lease = std::fs::read_to_string(c.lease_path(0).unwrap()).unwrap();
    assert_eq!(lease, r#"{"PublicIP":"192.168.100.1","PublicIPv6":null}"#);
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_MTU=1472\n"), "{env}");
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn foreign_backend_leases_are_ignored_with_a_warning() {
    let mut c = Cluster::new("fb", 1, &net_conf("vxlan")).unwrap();
    std::fs::write(
        c.registry.join("subnets/10.244.77.0-24"),
        r#"{"PublicIP":"192.168.100.77","BackendType":"host-gw"}"#,
    )
    .unwrap();
    c.start(0, weft(), &["--metrics-addr", "127.0.0.1:9153"])
        .unwrap();
    let logged = Cluster::wait_for(Duration::from_secs(3), || {
        c.nodes[0].log_text().contains("ignoring lease")
    });
    assert!(logged, "{}", c.nodes[0].log_text());
    assert_eq!(
        metric(&metrics(&c.nodes[0].ns, 9153), "weft_peers"),
        Some(0)
    );
    let routes = c.nodes[0]
        .ns
        .ip(&["route", "show", "10.244.77.0/24"])
        .unwrap();
    assert!(routes.stdout.is_empty());
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn restart_keeps_subnet_and_vtep_mac() {
    let mut c = Cluster::new("rs", 1, &net_conf("vxlan")).unwrap();
    c.start(0, weft(), &["--device", "tap"]).unwrap();
    let path = c.lease_path(0).unwrap();
    let first = LeaseAttrs::from_json(&std::fs::read(&path).unwrap()).unwrap();
    let subnet = c.nodes[0].subnet().unwrap();
    assert!(c.nodes[0].stop().unwrap().success());
    // The lease outlives the process, as flanneld's does.
    assert!(path.exists());
    c.start(0, weft(), &["--device", "tap"]).unwrap();
    assert_eq!(c.nodes[0].subnet().unwrap(), subnet);
    let again = LeaseAttrs::from_json(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(again.vxlan_data(), first.vxlan_data());
    // The TAP device carries the VtepMAC.
    let link = c.nodes[0].ns.ip(&["link", "show", "flannel.1"]).unwrap();
    let mac = first.vxlan_data().unwrap().vtep_mac.to_string();
    assert!(String::from_utf8_lossy(&link.stdout).contains(&mac));
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn two_worker_threads() {
    let mut c = Cluster::new("mq", 2, &net_conf("vxlan")).unwrap();
    for i in 0..2 {
        c.start(i, weft(), &["--device", "tun", "--threads", "2"])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    assert!(wait_ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap()));
    transfer(&c, 0, 1, 20, 5001);
    transfer(&c, 1, 0, 20, 5002);
    for i in 0..2 {
        assert!(c.nodes[i].stop().unwrap().success());
    }
}

/// A peer killed with SIGKILL (no cleanup: its lease and the others' routes
/// stay) and restarted: it gets the same subnet and VtepMAC, and traffic
/// to it resumes within 2 s of it being ready.
#[test]
fn sigkilled_peer_restarts_on_its_subnet_and_traffic_resumes() {
    let mut c = Cluster::new("kr", 2, &net_conf("vxlan")).unwrap();
    for i in 0..2 {
        c.start(i, weft(), &[]).unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let pod1 = c.nodes[1].pod_ip().unwrap();
    assert!(wait_ping(&c.nodes[0].ns, pod1));
    let subnet = c.nodes[1].subnet().unwrap();
    let lease = std::fs::read(c.lease_path(1).unwrap()).unwrap();
    c.nodes[1].kill();
    // The device died with the process; the pods' bridge stays.
    assert!(!ping(&c.nodes[0].ns, pod1, 1));
    c.start(1, weft(), &[]).unwrap();
    let ready = std::time::Instant::now();
    assert_eq!(c.nodes[1].subnet(), Some(subnet));
    assert_eq!(std::fs::read(c.lease_path(1).unwrap()).unwrap(), lease);
    assert!(
        Cluster::wait_for(Duration::from_secs(2), || ping(&c.nodes[0].ns, pod1, 1)),
        "no traffic within 2 s of the restart\n{}",
        c.nodes[1].log_text()
    );
    eprintln!("traffic resumed {:?} after ready", ready.elapsed());
    transfer(&c, 0, 1, 4, 5001);
}

/// Deletes node 0's device by hand while traffic flows, on one backend and
/// device kind: weft notices within a poll, recreates the device, restores
/// its address and every peer's route, and traffic resumes.
fn device_deleted_by_hand(tag: &str, backend: &str, device: &str) {
    let dev = if backend == "udp" {
        "flannel0"
    } else {
        "flannel.1"
    };
    let mut c = Cluster::new(tag, 2, &net_conf(backend)).unwrap();
    start_all(
        &mut c,
        &["--device", device, "--metrics-addr", "127.0.0.1:9153"],
    );
    let pod1 = c.nodes[1].pod_ip().unwrap();
    let subnet1 = c.nodes[1].subnet().unwrap().to_string();
    assert!(wait_ping(&c.nodes[0].ns, pod1));
    c.nodes[0].ns.ip(&["link", "del", dev]).unwrap();
    let back = Cluster::wait_for(Duration::from_secs(5), || ping(&c.nodes[0].ns, pod1, 1));
    assert!(
        back,
        "no traffic after the device was deleted\n{}",
        c.nodes[0].log_text()
    );
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(metric(&m, "weft_device_recreations_total"), Some(1), "{m}");
    let log = c.nodes[0].log_text();
    assert!(
        log.contains("the device was deleted; recreating it"),
        "{log}"
    );
    assert!(log.contains("device recreated"), "{log}");
    // The address and the peer's route are back on the new device.
    let addr = c.nodes[0].ns.ip(&["-4", "addr", "show", dev]).unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout).into_owned();
    let own = c.nodes[0].subnet().unwrap().network().to_string();
    assert!(addr.contains(&format!("inet {own}/32")), "{addr}");
    let route = c.nodes[0]
        .ns
        .ip(&["route", "get", &pod1.to_string()])
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    assert!(route.contains(&format!("dev {dev}")), "{route}");
    transfer(&c, 0, 1, 8, 5001);
    transfer(&c, 1, 0, 8, 5002);
    // Per-peer counters saw the traffic both ways.
    let m = metrics(&c.nodes[0].ns, 9153);
    let public1 = "192.168.100.2";
    for name in ["weft_peer_tx_packets_total", "weft_peer_rx_packets_total"] {
        let line = format!("{name}{{subnet=\"{subnet1}\",public_ip=\"{public1}\"}}");
        assert!(
            metric(&m, &line).is_some_and(|n| n > 1000),
            "{line} in\n{m}"
        );
    }
    assert!(m.contains(&format!(
        "weft_peer_info{{subnet=\"{subnet1}\",public_ip=\"{public1}\""
    )));
    for i in 0..2 {
        assert!(c.nodes[i].stop().unwrap().success());
    }
    // A clean stop removes the recreated device too.
    assert!(c.nodes[0].ns.ip(&["link", "show", dev]).is_err());
}

#[test]
fn deleted_vxlan_tun_device_is_recreated() {
    device_deleted_by_hand("dt", "vxlan", "tun");
}

#[test]
fn deleted_vxlan_tap_device_is_recreated() {
    device_deleted_by_hand("dp", "vxlan", "tap");
}

#[test]
fn deleted_udp_device_is_recreated() {
    device_deleted_by_hand("du", "udp", "tun");
}

/// While another link holds the device's name, recreation fails and is
/// retried with backoff (1 s, 2 s, …); once the name is free the device
/// comes back.
#[test]
fn device_recreation_retries_with_backoff() {
    let mut c = Cluster::new("db", 2, &net_conf("vxlan")).unwrap();
    start_all(&mut c, &["--metrics-addr", "127.0.0.1:9153"]);
    let pod1 = c.nodes[1].pod_ip().unwrap();
    assert!(wait_ping(&c.nodes[0].ns, pod1));
    // Delete the device and take its name in one go, before weft looks.
    let batch = c.registry.join("squat.batch");
    std::fs::write(
        &batch,
        "link del flannel.1\nlink add flannel.1 type bridge\n",
    )
    .unwrap();
    let out = c.nodes[0]
        .ns
        .ip(&["-batch", batch.to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let refused = Cluster::wait_for(Duration::from_secs(5), || {
        c.nodes[0]
            .log_text()
            .matches("cannot recreate the device")
            .count()
            >= 2
    });
    assert!(refused, "{}", c.nodes[0].log_text());
    assert!(!ping(&c.nodes[0].ns, pod1, 1));
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(
        metric(&m, "weft_ready"),
        Some(0),
        "not ready without a device"
    );
    c.nodes[0].ns.ip(&["link", "del", "flannel.1"]).unwrap();
    // The next try is at most 4 s away at this point (1 s, 2 s, then 4 s).
    let back = Cluster::wait_for(Duration::from_secs(8), || ping(&c.nodes[0].ns, pod1, 1));
    assert!(back, "{}", c.nodes[0].log_text());
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(metric(&m, "weft_device_recreations_total"), Some(1), "{m}");
    assert_eq!(metric(&m, "weft_ready"), Some(1), "{m}");
    for i in 0..2 {
        assert!(c.nodes[i].stop().unwrap().success());
    }
}

/// `Backend.MTU` is the underlay MTU, as flanneld reads it (`vxlan.go`
/// derives the device's as MTU − 50): the same net-conf.json gives the
/// same device MTU and FLANNEL_MTU as on a flanneld node.
#[test]
fn backend_mtu_is_the_underlay_mtu() {
    let conf = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#;
    for device in ["tun", "tap"] {
        let mut c = Cluster::new("mt", 1, conf).unwrap();
        c.start(0, weft(), &["--device", device]).unwrap();
        let link = c.nodes[0].ns.ip(&["link", "show", "flannel.1"]).unwrap();
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains("mtu 1350 "), "{device}: {link}");
        let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
        assert!(env.contains("FLANNEL_MTU=1350\n"), "{device}: {env}");
        assert!(c.nodes[0].stop().unwrap().success());
    }
}

/// Routes of weft's own (proto 87) inside `Network` that no peer wants,
/// as a crashed run of host-gw leaves them, go at start; other routes,
/// and weft's own outside `Network`, stay.
#[test]
fn stale_routes_of_ours_are_swept_at_start() {
    let c = Cluster::new("sw", 1, &net_conf("vxlan")).unwrap();
    let ns = &c.nodes[0].ns;
    for (dst, proto) in [
        ("10.244.77.0/24", "87"),
        ("10.244.78.0/24", "static"),
        ("172.31.9.0/24", "87"),
    ] {
        let out = ns
            .ip(&[
                "route",
                "add",
                dst,
                "via",
                "192.168.100.9",
                "dev",
                "eth0",
                "proto",
                proto,
            ])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let mut c = c;
    c.start(0, weft(), &[]).unwrap();
    let ns = &c.nodes[0].ns;
    assert!(
        route_of(ns, "10.244.77.0/24").is_empty(),
        "{}",
        c.nodes[0].log_text()
    );
    assert!(!route_of(ns, "10.244.78.0/24").is_empty());
    assert!(!route_of(ns, "172.31.9.0/24").is_empty());
    assert!(c.nodes[0]
        .log_text()
        .contains("removed a stale route of ours"));
    assert!(c.nodes[0].stop().unwrap().success());
}

/// The udp backend routes the whole Network into flannel0; when the kernel
/// routes that prefix already with a route weft did not install, weft
/// refuses to start and says which, instead of replacing it.
#[test]
fn udp_refuses_a_network_the_kernel_routes_already() {
    let c = Cluster::new("un", 1, &net_conf("udp")).unwrap();
    let out = c.nodes[0]
        .ns
        .ip(&[
            "route",
            "add",
            "10.244.0.0/16",
            "via",
            "192.168.100.254",
            "dev",
            "eth0",
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut c = c;
    c.spawn(0, weft(), &[]).unwrap();
    let refused = Cluster::wait_for(Duration::from_secs(5), || {
        c.nodes[0]
            .log_text()
            .contains("refusing to route the Network 10.244.0.0/16 into flannel0")
    });
    assert!(refused, "{}", c.nodes[0].log_text());
    assert!(!c.nodes[0].stop().unwrap().success());
    assert_eq!(
        route_of(&c.nodes[0].ns, "10.244.0.0/16").trim(),
        "10.244.0.0/16 via 192.168.100.254 dev eth0"
    );
}
