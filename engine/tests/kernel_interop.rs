//! weft (vxlan, both device kinds) against the Linux kernel's own VXLAN,
//! configured exactly as flanneld configures it: ping and hash-checked
//! 20 MB transfers in both directions, and no kernel vxlan device on the
//! weft node.
//!
//! The kernel node's veth keeps its defaults (TX checksum offload on), so
//! its inner TCP segments arrive with the checksum still partial, as
//! between VMs or containers on one host; weft completes them. One case
//! turns the offload off, so the veth behaves like a wire.

mod common;
use common::*;
use weft_routes::LeaseAttrs;
use weft_testbed::Cluster;

fn against_kernel(tag: &str, device: &str, offload: &str, wire_like: bool) {
    let mut c = Cluster::new(tag, 2, &net_conf("vxlan")).expect("testbed");
    let ksub = "10.244.200.0/24".parse().unwrap();
    c.nodes[1]
        .become_kernel_vxlan(&c.registry, ksub)
        .expect("kernel vxlan node");
    if wire_like {
        c.nodes[1].emulate_wire_checksums().expect("ethtool");
    }
    c.nodes[1].add_pod_bridge().expect("kernel pod bridge");
    c.start(
        0,
        weft(),
        &[
            "--device",
            device,
            "--offload",
            offload,
            "--metrics-addr",
            "127.0.0.1:9153",
        ],
    )
    .expect("weft starts");
    c.nodes[0].add_pod_bridge().expect("weft pod bridge");

    // Play flanneld on the kernel node: program weft's lease.
    let lease = std::fs::read(c.lease_path(0).unwrap()).unwrap();
    let attrs = LeaseAttrs::from_json(&lease).unwrap();
    let data = attrs.vxlan_data().expect("weft wrote a vxlan lease");
    c.nodes[1]
        .kernel_add_peer(
            c.nodes[0].subnet().unwrap(),
            attrs.public_ip.unwrap(),
            &data.vtep_mac.to_string(),
        )
        .unwrap();

    let (w, k) = (&c.nodes[0], &c.nodes[1]);
    assert!(
        wait_ping(&w.ns, k.pod_ip().unwrap()),
        "weft -> kernel ping failed\n{}",
        w.log_text()
    );
    assert!(
        ping(&k.ns, w.pod_ip().unwrap(), 3),
        "kernel -> weft ping failed"
    );
    transfer(&c, 0, 1, 20, 5001);
    transfer(&c, 1, 0, 20, 5002);
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(
        metric(&m, r#"weft_dropped_packets_total{reason="l4_checksum"}"#),
        Some(0),
        "{m}"
    );
    assert!(
        metric(&m, "weft_tx_packets_total").unwrap_or(0) > 14_000,
        "{m}"
    );
    // A kernel peer across a veth hands over unsegmented super-packets,
    // each delivered as one: count the bytes.
    assert!(
        metric(&m, "weft_rx_bytes_total").unwrap_or(0) > 20_000_000,
        "{m}"
    );
    let completed = metric(&m, "weft_checksums_completed_total").unwrap_or(0);
    if wire_like {
        assert_eq!(completed, 0, "a wire delivers complete checksums\n{m}");
    } else {
        assert!(
            completed > 0,
            "the kernel peer's partial checksums were not seen\n{m}"
        );
    }

    let vx = c.nodes[0]
        .ns
        .ip(&["-d", "link", "show", "type", "vxlan"])
        .expect("ip link");
    assert!(
        vx.stdout.is_empty(),
        "a kernel vxlan device exists on the weft node:\n{}",
        String::from_utf8_lossy(&vx.stdout)
    );
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn kernel_vxlan_and_weft_tap() {
    against_kernel("ka", "tap", "on", false);
}

#[test]
fn kernel_vxlan_and_weft_tun() {
    against_kernel("ku", "tun", "on", false);
}

#[test]
fn kernel_vxlan_and_weft_tap_without_offloads() {
    against_kernel("kao", "tap", "off", false);
}

#[test]
fn kernel_vxlan_and_weft_tun_without_offloads() {
    against_kernel("kuo", "tun", "off", false);
}

/// The kernel node's veth finishes checksums, like a wire.
#[test]
fn kernel_vxlan_on_a_wire_like_underlay_and_weft_tun() {
    against_kernel("kw", "tun", "on", true);
}
