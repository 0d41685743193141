//! Source authentication, on by default: encapsulated traffic is accepted
//! only from the PublicIPs of current leases, with the inner source in the
//! sender's subnet and the inner destination in ours. Crafted datagrams
//! are sent to a running weft from a node with a lease and from one
//! without, while a listener on the pod address counts what gets through
//! and a real peer keeps a hash-checked transfer going.

mod common;
use common::*;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft::testbed::{Cluster, Netns};
use weft_encap::ipv4;
use weft_routes::LeaseAttrs;

const POD_PORT: u16 = 7777;

/// An IPv4/UDP packet `src` -> `dst`:POD_PORT with a short payload.
fn inner(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 4];
    ipv4::Repr {
        src,
        dst,
        protocol: ipv4::protocol::UDP,
        payload_len: 12,
        ttl: 64,
    }
    .emit(&mut p);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&POD_PORT.to_be_bytes());
    p[24..26].copy_from_slice(&12u16.to_be_bytes());
    p[28..].copy_from_slice(b"evil");
    p
}

/// `inner` as a VXLAN datagram (VNI 1) for the VTEP with MAC `to_mac`.
fn vxlan(to_mac: [u8; 6], ip: Vec<u8>) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    d.extend_from_slice(&to_mac);
    d.extend_from_slice(&[0x02, 0xee, 0, 0, 0, 1, 0x08, 0x00]);
    d.extend_from_slice(&ip);
    d
}

/// Sends `datagrams`, `times` over, from namespace `ns` to `to`.
fn flood(ns: &Netns, to: SocketAddr, datagrams: Vec<Vec<u8>>, times: usize) {
    ns.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..times {
            for d in &datagrams {
                s.send_to(d, to).unwrap();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .unwrap();
}

/// Counts datagrams arriving at `ip`:POD_PORT in `ns` until dropped.
struct Listener {
    count: Arc<AtomicU64>,
}

impl Listener {
    fn start(ns: &Netns, ip: Ipv4Addr) -> Listener {
        let sock = ns
            .enter(move || UdpSocket::bind((ip, POD_PORT)))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            // Ends with the test process; the socket closes with it.
            loop {
                if sock.recv(&mut buf).is_ok() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Listener { count }
    }

    fn got(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

fn dropped(c: &Cluster, reason: &str) -> u64 {
    let name = format!("weft_dropped_packets_total{{reason=\"{reason}\"}}");
    metric(&metrics(&c.nodes[0].ns, 9153), &name).unwrap_or(0)
}

#[test]
fn vxlan_accepts_only_lease_holders_speaking_for_their_own_subnet() {
    // Node 0 and 1 run weft; node 2 holds no lease.
    let mut c = Cluster::new("sa", 3, &net_conf("vxlan")).unwrap();
    for i in 0..2 {
        c.start(i, weft(), &["--metrics-addr", "127.0.0.1:9153"])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let pod0 = c.nodes[0].pod_ip().unwrap();
    let sub1 = c.nodes[1].subnet().unwrap();
    let in_sub1 = Ipv4Addr::from(u32::from(sub1.network()) + 7);
    assert!(wait_ping(&c.nodes[1].ns, pod0));
    let mac = LeaseAttrs::from_json(&std::fs::read(c.lease_path(0).unwrap()).unwrap())
        .unwrap()
        .vxlan_data()
        .unwrap()
        .vtep_mac
        .octets();
    let to: SocketAddr = (c.nodes[0].underlay, 8472).into();
    let listener = Listener::start(&c.nodes[0].ns, pod0);

    // The control: a lease holder speaking for its own subnet to ours.
    flood(
        &c.nodes[1].ns,
        to,
        vec![vxlan(mac, inner(in_sub1, pod0))],
        1,
    );
    assert!(
        Cluster::wait_for(Duration::from_secs(2), || listener.got() == 1),
        "the legitimate datagram did not arrive"
    );

    // Counts so far: a first ping can race node 0 learning node 1's lease
    // (it is then an unknown sender, as it should be).
    let base: Vec<u64> = ["unknown_sender", "spoofed_source", "not_for_us"]
        .iter()
        .map(|r| dropped(&c, r))
        .collect();
    // The attacks, 500 rounds each, during a transfer between 1 and 0.
    let unknown = vxlan(mac, inner(in_sub1, pod0));
    let spoofed = vxlan(mac, inner(Ipv4Addr::new(10, 244, 250, 9), pod0));
    let elsewhere = vxlan(mac, inner(in_sub1, Ipv4Addr::new(10, 244, 250, 1)));
    let outside = vxlan(mac, inner(in_sub1, Ipv4Addr::new(8, 8, 8, 8)));
    let n2 = c.nodes[2].ns.handle();
    let n1 = c.nodes[1].ns.handle();
    let a = std::thread::spawn(move || flood(&n2, to, vec![unknown], 500));
    let b = std::thread::spawn(move || flood(&n1, to, vec![spoofed, elsewhere, outside], 500));
    transfer(&c, 1, 0, 16, 5001);
    a.join().unwrap();
    b.join().unwrap();

    for ((reason, n), b) in [
        ("unknown_sender", 500),
        ("spoofed_source", 500),
        ("not_for_us", 1000),
    ]
    .into_iter()
    .zip(base)
    {
        assert!(
            Cluster::wait_for(Duration::from_secs(3), || dropped(&c, reason) == b + n),
            "{reason}: {} != {b} + {n}\n{}",
            dropped(&c, reason),
            metrics(&c.nodes[0].ns, 9153)
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        listener.got(),
        1,
        "a crafted datagram reached the pod address"
    );
}

#[test]
fn udp_backend_authenticates_too_and_never_reflects_icmp() {
    let mut c = Cluster::new("su", 3, &net_conf("udp")).unwrap();
    for i in 0..2 {
        c.start(i, weft(), &["--metrics-addr", "127.0.0.1:9153"])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let pod0 = c.nodes[0].pod_ip().unwrap();
    let sub1 = c.nodes[1].subnet().unwrap();
    let in_sub1 = Ipv4Addr::from(u32::from(sub1.network()) + 7);
    assert!(wait_ping(&c.nodes[1].ns, pod0));
    let to: SocketAddr = (c.nodes[0].underlay, 8285).into();
    let listener = Listener::start(&c.nodes[0].ns, pod0);
    // From the node without a lease: dropped, and a TTL-expired one is
    // not answered (no ICMP reflection towards a spoofed address).
    let mut ttl1 = inner(in_sub1, pod0);
    ttl1[8] = 1;
    ipv4::Packet::new_unchecked(&mut ttl1[..]).fill_checksum();
    let base = dropped(&c, "unknown_sender");
    flood(&c.nodes[2].ns, to, vec![inner(in_sub1, pod0), ttl1], 100);
    flood(&c.nodes[1].ns, to, vec![inner(in_sub1, pod0)], 1);
    assert!(Cluster::wait_for(Duration::from_secs(2), || listener.got() == 1));
    assert!(
        Cluster::wait_for(Duration::from_secs(3), || dropped(&c, "unknown_sender")
            == base + 200),
        "{}",
        metrics(&c.nodes[0].ns, 9153)
    );
    assert_eq!(
        dropped(&c, "ttl_expired"),
        0,
        "answered a sender without a lease"
    );
    assert_eq!(listener.got(), 1);
}

#[test]
fn allow_nat_peers_relaxes_only_the_outer_source() {
    let mut c = Cluster::new("sn", 3, &net_conf("vxlan")).unwrap();
    c.start(
        0,
        weft(),
        &["--metrics-addr", "127.0.0.1:9153", "--allow-nat-peers"],
    )
    .unwrap();
    c.start(1, weft(), &[]).unwrap();
    c.nodes[0].add_pod_bridge().unwrap();
    let pod0 = c.nodes[0].pod_ip().unwrap();
    let sub1 = c.nodes[1].subnet().unwrap();
    let in_sub1 = Ipv4Addr::from(u32::from(sub1.network()) + 7);
    let mac = LeaseAttrs::from_json(&std::fs::read(c.lease_path(0).unwrap()).unwrap())
        .unwrap()
        .vxlan_data()
        .unwrap()
        .vtep_mac
        .octets();
    let to: SocketAddr = (c.nodes[0].underlay, 8472).into();
    let listener = Listener::start(&c.nodes[0].ns, pod0);
    assert!(Cluster::wait_for(Duration::from_secs(3), || {
        metric(&metrics(&c.nodes[0].ns, 9153), "weft_peers") == Some(1)
    }));
    // Node 2 holds no lease: as a NAT'd node 1 would look. Its inner source
    // is node 1's: accepted. Its inner source is nobody's: dropped.
    flood(
        &c.nodes[2].ns,
        to,
        vec![
            vxlan(mac, inner(in_sub1, pod0)),
            vxlan(mac, inner(Ipv4Addr::new(10, 244, 250, 9), pod0)),
        ],
        10,
    );
    assert!(Cluster::wait_for(Duration::from_secs(2), || listener.got() == 10));
    assert!(Cluster::wait_for(Duration::from_secs(2), || dropped(
        &c,
        "spoofed_source"
    ) == 10));
    assert_eq!(dropped(&c, "unknown_sender"), 0);
}
