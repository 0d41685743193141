//! Daemon behaviour around the data path: config defaults, foreign leases,
//! restarts, multi-queue workers.

mod common;
use common::*;
use std::time::Duration;
use weft::testbed::Cluster;
use weft_routes::LeaseAttrs;

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
