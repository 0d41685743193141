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
use weft_encap::ipv4;
use weft_routes::LeaseAttrs;
use weft_testbed::{Cluster, Netns};

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

/// Three hosts: node 0 runs weft with `--allow-nat-peers`, node 1 runs
/// weft, node 2 holds no lease. Returns node 0's pod address and an
/// address in node 1's subnet.
fn nat_cluster(tag: &str, backend: &str) -> (Cluster, Ipv4Addr, Ipv4Addr) {
    let mut c = Cluster::new(tag, 3, &net_conf(backend)).unwrap();
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
    (c, pod0, in_sub1)
}

#[test]
fn allow_nat_peers_relaxes_only_the_outer_source() {
    let (c, pod0, in_sub1) = nat_cluster("sn", "vxlan");
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

/// The inner destination must be a unicast address of ours: our subnet's
/// broadcast address and multicast are dropped as `not_for_us`; our `.0`
/// (the device's own address, which replies to this host's traffic to
/// remote pods are sent to) is delivered. IPv6 inner packets are dropped
/// as `ipv6_unsupported`: there is no IPv6 overlay to authenticate them.
#[test]
fn only_unicast_ipv4_destinations_of_ours_are_delivered() {
    let mut c = Cluster::new("sd", 2, &net_conf("vxlan")).unwrap();
    for i in 0..2 {
        c.start(i, weft(), &["--metrics-addr", "127.0.0.1:9153"])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let sub0 = c.nodes[0].subnet().unwrap();
    let sub1 = c.nodes[1].subnet().unwrap();
    let in_sub1 = Ipv4Addr::from(u32::from(sub1.network()) + 7);
    assert!(wait_ping(&c.nodes[1].ns, c.nodes[0].pod_ip().unwrap()));
    let mac = LeaseAttrs::from_json(&std::fs::read(c.lease_path(0).unwrap()).unwrap())
        .unwrap()
        .vxlan_data()
        .unwrap()
        .vtep_mac
        .octets();
    let to: SocketAddr = (c.nodes[0].underlay, 8472).into();
    let dot0 = Listener::start(&c.nodes[0].ns, sub0.network());
    let base = dropped(&c, "not_for_us");
    let mut v6 = vxlan(mac, vec![0; 0]);
    v6[20..22].copy_from_slice(&[0x86, 0xdd]);
    // An IPv6 header: version 6, payload 8 bytes of UDP, hop limit 64.
    let mut ip6 = vec![0u8; 48];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&8u16.to_be_bytes());
    ip6[6] = 17;
    ip6[7] = 64;
    v6.extend_from_slice(&ip6);
    flood(
        &c.nodes[1].ns,
        to,
        vec![
            vxlan(mac, inner(in_sub1, sub0.broadcast())),
            vxlan(mac, inner(in_sub1, Ipv4Addr::new(224, 0, 0, 251))),
            v6,
            vxlan(mac, inner(in_sub1, sub0.network())),
        ],
        5,
    );
    assert!(
        Cluster::wait_for(Duration::from_secs(2), || dot0.got() == 5),
        "datagrams to our .0 were not delivered"
    );
    assert!(
        Cluster::wait_for(Duration::from_secs(2), || dropped(&c, "not_for_us")
            == base + 10
            && dropped(&c, "ipv6_unsupported") == 5),
        "{}",
        metrics(&c.nodes[0].ns, 9153)
    );
}

/// A socket in `ns` that sends `datagram` `n` times to `to` as fast as it
/// can, then counts what comes back within a second.
fn send_and_count_replies(ns: &Netns, to: SocketAddr, datagram: Vec<u8>, n: usize) -> usize {
    ns.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..n {
            s.send_to(&datagram, to).unwrap();
        }
        s.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut buf = [0u8; 256];
        let mut got = 0;
        while s.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    })
    .unwrap()
}

/// With `--allow-nat-peers` an outer source that holds no lease may still
/// deliver, but it is never answered: a TTL-expired packet from it gets no
/// ICMP. A lease holder's are answered, at most `BURST` at once and then
/// at the refill rate; what the limit holds back is counted.
#[test]
fn icmp_goes_only_to_lease_holders_and_is_rate_limited() {
    let (c, pod0, in_sub1) = nat_cluster("si", "udp");
    assert!(Cluster::wait_for(Duration::from_secs(3), || {
        metric(&metrics(&c.nodes[0].ns, 9153), "weft_peers") == Some(1)
    }));
    let to: SocketAddr = (c.nodes[0].underlay, 8285).into();
    let mut ttl1 = inner(in_sub1, pod0);
    ttl1[8] = 1;
    ipv4::Packet::new_unchecked(&mut ttl1[..]).fill_checksum();

    // From node 2, which holds no lease (a NAT'd node 1, as far as weft can
    // tell): no ICMP at all.
    let replies = send_and_count_replies(&c.nodes[2].ns, to, ttl1.clone(), 20);
    assert_eq!(replies, 0, "ICMP sent to a source that holds no lease");
    assert!(Cluster::wait_for(Duration::from_secs(2), || dropped(
        &c,
        "ttl_expired"
    ) == 20));

    // From node 1's address: answered, within the rate limit.
    let replies = send_and_count_replies(&c.nodes[1].ns, to, ttl1, 400);
    let m = metrics(&c.nodes[0].ns, 9153);
    let suppressed = metric(&m, "weft_icmp_suppressed_total").unwrap_or(0) as usize;
    assert!(
        replies >= 1,
        "no ICMP time exceeded for a lease holder\n{m}"
    );
    assert!(
        replies < 200,
        "{replies} ICMP errors for 400 packets sent at once\n{m}"
    );
    assert_eq!(replies + suppressed, 400, "{m}");
}
