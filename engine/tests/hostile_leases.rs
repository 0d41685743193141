//! Leases are claims, not facts: every peer lease is validated before it
//! touches the kernel (see `weft_routes::validate`), and weft never takes
//! over a prefix the kernel already routes some other way. The file
//! registry here; the same scenario on etcd is in `etcd.rs`.

mod common;
use common::*;
use std::time::Duration;
use weft_testbed::Cluster;

#[test]
fn hostile_leases_in_the_file_registry_are_rejected() {
    let mut c = Cluster::new("hl", 1, &net_conf("vxlan")).unwrap();
    let dir = c.registry.join("subnets");
    std::fs::write(
        dir.join(HOSTILE_OWN.0),
        vxlan_lease("192.168.100.1", HOSTILE_OWN.1),
    )
    .unwrap();
    // Older than the lease below that names our PublicIP too (a file's
    // birth time is as coarse as the kernel's clock tick).
    std::thread::sleep(Duration::from_millis(20));
    for (key, json, _) in hostile_leases() {
        std::fs::write(dir.join(key), json).unwrap();
    }
    hostile_lease_routes(&c);
    c.start(
        0,
        weft(),
        &["--device", "tap", "--metrics-addr", "127.0.0.1:9153"],
    )
    .unwrap();
    check_hostile_leases(&c);

    // A change of a refused lease is warned about and counted again.
    std::fs::write(
        dir.join("10.244.11.0-24"),
        vxlan_lease("127.0.0.2", "0e:00:00:00:00:11"),
    )
    .unwrap();
    let counted = Cluster::wait_for(Duration::from_secs(3), || {
        metric(
            &metrics(&c.nodes[0].ns, 9153),
            r#"weft_leases_rejected_total{reason="public_ip"}"#,
        ) == Some(7)
    });
    assert!(counted, "{}", metrics(&c.nodes[0].ns, 9153));

    // weft status lists the refused leases.
    let text = weft_status(&c.nodes[0].ns);
    assert!(text.contains("rejected leases (19)"), "{text}");
    assert!(
        text.contains("10.244.9.0-25") && text.contains("subnet_length"),
        "{text}"
    );

    // On exit weft removes its routes and leaves everyone else's.
    assert!(c.nodes[0].stop().unwrap().success());
    let routes = c.nodes[0].ns.ip(&["route", "show"]).unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("10.244.40.0/24 via 192.168.100.254 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("10.244.2.0/24 dev cni0"), "{routes}");
    assert!(routes.contains("default via 192.168.100.254"), "{routes}");
}

#[test]
fn a_lease_over_the_underlay_network_is_rejected() {
    let conf = r#"{"Network":"192.168.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let mut c = Cluster::new("hu", 1, conf).unwrap();
    let dir = c.registry.join("subnets");
    std::fs::write(
        dir.join("192.168.7.0-24"),
        vxlan_lease("192.168.100.1", HOSTILE_OWN.1),
    )
    .unwrap();
    std::fs::write(
        dir.join("192.168.100.0-24"),
        vxlan_lease("192.168.100.60", "0e:00:00:00:00:60"),
    )
    .unwrap();
    c.start(0, weft(), &["--metrics-addr", "127.0.0.1:9153"])
        .unwrap();
    let rejected = Cluster::wait_for(Duration::from_secs(3), || {
        metric(
            &metrics(&c.nodes[0].ns, 9153),
            r#"weft_leases_rejected_total{reason="covers_underlay"}"#,
        ) == Some(1)
    });
    assert!(rejected, "{}", c.nodes[0].log_text());
    let r = c.nodes[0]
        .ns
        .ip(&["route", "show", "192.168.100.0/24"])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "192.168.100.0/24 dev eth0 proto kernel scope link src 192.168.100.1"
    );
    // The underlay still carries weft's own traffic: it is alive and ready.
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(metric(&m, "weft_ready"), Some(1), "{m}");
    assert!(c.nodes[0].stop().unwrap().success());
}
