//! Crafted datagrams sent to a running weft: every malformed case of
//! the Security table (docs/security.md) is dropped, counted under its
//! own reason, and never reaches the device. The captured vectors' inner addresses are
//! 10.244.1.0 -> 10.244.2.0, so the leases are pinned to match: node 0
//! (weft) holds 10.244.2.0/24, node 1 (the sender) 10.244.1.0/24, and the
//! datagrams pass source authentication unless a case says otherwise.

mod common;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use weft_encap::vectors::KERNEL_REQUEST;
use weft_routes::LeaseAttrs;
use weft_testbed::Cluster;

fn send_all(c: &Cluster, to: SocketAddr, datagrams: Vec<Vec<u8>>) {
    c.nodes[1]
        .ns
        .enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for d in datagrams {
                s.send_to(&d, to).unwrap();
            }
        })
        .unwrap();
}

/// Pins node 0 (weft) to 10.244.2.0/24 and node 1 (the sender of the
/// crafted datagrams, running no weft) to 10.244.1.0/24.
fn pin_leases(c: &Cluster, vxlan: bool) {
    let attrs = |ip: &str, mac: &str| {
        if vxlan {
            format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
            )
        } else {
            format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#)
        }
    };
    let dir = c.registry.join("subnets");
    std::fs::write(
        dir.join("10.244.2.0-24"),
        attrs("192.168.100.1", "0e:11:22:33:44:55"),
    )
    .unwrap();
    std::fs::write(
        dir.join("10.244.1.0-24"),
        attrs("192.168.100.2", "c6:d2:32:6f:8f:44"),
    )
    .unwrap();
}

fn wait_metric(c: &Cluster, name: &str, want: u64) -> bool {
    Cluster::wait_for(Duration::from_secs(3), || {
        metric(&metrics(&c.nodes[0].ns, 9153), name) == Some(want)
    })
}

#[test]
fn vxlan_drops_each_malformed_case_by_reason() {
    let mut c = Cluster::new("mv", 2, &net_conf("vxlan")).unwrap();
    pin_leases(&c, true);
    c.start(
        0,
        weft(),
        &["--device", "tun", "--metrics-addr", "127.0.0.1:9153"],
    )
    .unwrap();
    let lease = std::fs::read(c.lease_path(0).unwrap()).unwrap();
    let mac = LeaseAttrs::from_json(&lease)
        .unwrap()
        .vxlan_data()
        .unwrap()
        .vtep_mac;
    // A valid datagram addressed to weft, and mutations of it.
    let mut good = KERNEL_REQUEST.to_vec();
    good[8..14].copy_from_slice(&mac.octets());
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("short_header", good[..7].to_vec()),
        ("flags_invalid", with(&|v| v[0] = 0)),
        ("reserved_bits", with(&|v| v[1] = 1)),
        ("reserved_bits", with(&|v| v[7] = 1)),
        ("vni_mismatch", with(&|v| v[6] = 2)),
        ("inner_truncated", good[..20].to_vec()),
        ("looped_frame", with(&|v| v.copy_within(8..14, 14))),
        ("other_host", with(&|v| v[13] ^= 1)),
        (
            "ethertype",
            with(&|v| v[20..22].copy_from_slice(&[0x81, 0x00])),
        ),
        (
            "ethertype",
            with(&|v| v[20..22].copy_from_slice(&[0x08, 0x06])),
        ),
        ("ipv4_malformed", with(&|v| v[22] = 0x44)),
        ("ipv4_malformed", with(&|v| v[25] = 0xff)),
        ("ipv4_checksum", with(&|v| v[33] ^= 1)),
        (
            "ipv6_malformed",
            with(&|v| {
                v[20..22].copy_from_slice(&[0x86, 0xdd]);
                v[22] = 0x60;
            }),
        ),
        ("oversize", {
            let mut v = good.clone();
            v.resize(3000, 0);
            v
        }),
    ];
    let to: SocketAddr = (c.nodes[0].underlay, 8472).into();
    let mut want = std::collections::BTreeMap::<&str, u64>::new();
    for (reason, _) in &cases {
        *want.entry(reason).or_default() += 1;
    }
    send_all(&c, to, cases.into_iter().map(|(_, d)| d).collect());
    for (reason, n) in &want {
        let name = format!("weft_dropped_packets_total{{reason=\"{reason}\"}}");
        assert!(
            wait_metric(&c, &name, *n),
            "{name} != {n}\n{}",
            metrics(&c.nodes[0].ns, 9153)
        );
    }
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(metric(&m, "weft_rx_packets_total"), Some(0), "{m}");

    // The same valid datagram with a wrong outer UDP checksum never reaches
    // weft: the kernel's UDP layer drops it.
    send_with_bad_udp_checksum(&c, to, &good);
    // The unmutated datagram is accepted: the cases above failed for their
    // mutation alone.
    send_all(&c, to, vec![good]);
    assert!(wait_metric(&c, "weft_rx_packets_total", 1));
    std::thread::sleep(Duration::from_millis(200));
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(metric(&m, "weft_rx_packets_total"), Some(1), "{m}");
}

/// Sends `payload` from node 1 to `to` over a raw socket, as UDP whose
/// checksum is set but off by one.
fn send_with_bad_udp_checksum(c: &Cluster, to: SocketAddr, payload: &[u8]) {
    use weft_encap::checksum;
    let (src, SocketAddr::V4(dst)) = (c.nodes[1].underlay, to) else {
        panic!("IPv4 only")
    };
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(len.into());
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = weft_encap::l4::pseudo_header_sum(src.octets(), dst.ip().octets(), 17, len);
    let good = !checksum::fold(checksum::sum(&udp, pseudo));
    let bad = if good == 0xfffe {
        0x1234
    } else {
        good.wrapping_add(1)
    };
    udp[6..8].copy_from_slice(&bad.to_be_bytes());
    c.nodes[1]
        .ns
        .enter(move || {
            use socket2::{Domain, Protocol, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap();
            s.send_to(&udp, &SocketAddr::V4(dst).into()).unwrap();
        })
        .unwrap();
}

#[test]
fn udp_backend_drops_malformed_and_answers_expired_ttl() {
    let mut c = Cluster::new("mu", 2, &net_conf("udp")).unwrap();
    pin_leases(&c, false);
    c.start(0, weft(), &["--metrics-addr", "127.0.0.1:9153"])
        .unwrap();
    let good = KERNEL_REQUEST[22..].to_vec();
    let mut bad_csum = good.clone();
    bad_csum[11] ^= 1;
    let mut ttl1 = good.clone();
    ttl1[8] = 1;
    weft_encap::ipv4::Packet::new_unchecked(&mut ttl1[..]).fill_checksum();
    let mut big = good.clone();
    big.resize(1600, 0);
    let to: SocketAddr = (c.nodes[0].underlay, 8285).into();
    // The sender listens for weft's ICMP time exceeded on its own socket.
    let icmp = c.nodes[1]
        .ns
        .enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            for d in [good[..19].to_vec(), bad_csum, big, ttl1] {
                s.send_to(&d, to).unwrap();
            }
            let mut buf = [0u8; 256];
            s.recv(&mut buf).map(|n| buf[..n].to_vec())
        })
        .unwrap()
        .expect("an ICMP time exceeded comes back");
    assert_eq!(icmp[9], 1, "protocol ICMP");
    assert_eq!((icmp[20], icmp[21]), (11, 0), "time exceeded");
    for (reason, n) in [
        ("ipv4_malformed", 1),
        ("ipv4_checksum", 1),
        ("oversize", 1),
        ("ttl_expired", 1),
    ] {
        let name = format!("weft_dropped_packets_total{{reason=\"{reason}\"}}");
        assert!(
            wait_metric(&c, &name, n),
            "{name}\n{}",
            metrics(&c.nodes[0].ns, 9153)
        );
    }
    assert_eq!(
        metric(&metrics(&c.nodes[0].ns, 9153), "weft_rx_packets_total"),
        Some(0)
    );
}
