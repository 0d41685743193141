//! Per-packet cost of weft's wire formats: VXLAN encapsulation (TUN and TAP
//! paths) and decapsulation, flannel-udp forwarding, and the forwarding
//! table lookup. Run: `cargo bench -p weft-benches`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use weft_benches::ipv4_packet;
use weft_encap::vxlan::{Endpoint, ENCAP_LEN};
use weft_encap::{udp, MacAddr, Vni, HEADROOM};
use weft_routes::{ForwardingTable, Peer};

const SIZES: [usize; 4] = [64, 512, 1400, 9000];

fn endpoint(last: u8) -> Endpoint {
    Endpoint {
        vni: Vni::DEFAULT,
        mac: MacAddr([0x0e, 0, 0, 0, 0, last]),
    }
}

fn vxlan(c: &mut Criterion) {
    let (a, b) = (endpoint(1), endpoint(2));
    let mut g = c.benchmark_group("vxlan");
    for size in SIZES {
        g.throughput(Throughput::Elements(1));
        let pkt = ipv4_packet(size);
        let mut buf = vec![0u8; HEADROOM + size];
        buf[HEADROOM..].copy_from_slice(&pkt);
        g.bench_with_input(BenchmarkId::new("encapsulate_ip", size), &size, |bn, _| {
            bn.iter(|| {
                a.encapsulate_ip(black_box(&mut buf), HEADROOM..HEADROOM + size, b.mac)
                    .unwrap()
            })
        });
        g.bench_with_input(
            BenchmarkId::new("encapsulate_frame", size),
            &size,
            |bn, _| {
                bn.iter(|| {
                    a.encapsulate_frame(black_box(&mut buf), HEADROOM - 14..HEADROOM + size)
                        .unwrap()
                })
            },
        );
        let datagram = buf[HEADROOM - ENCAP_LEN..].to_vec();
        g.bench_with_input(BenchmarkId::new("decapsulate", size), &size, |bn, _| {
            bn.iter(|| b.decapsulate(black_box(&datagram)).unwrap())
        });
        // Both ends of the tunnel for one packet: the issue's ≤ 30 ns target.
        g.bench_with_input(BenchmarkId::new("round_trip", size), &size, |bn, _| {
            bn.iter(|| {
                let out = a
                    .encapsulate_ip(black_box(&mut buf), HEADROOM..HEADROOM + size, b.mac)
                    .unwrap();
                b.decapsulate(black_box(&buf[out])).unwrap()
            })
        });
    }
    g.finish();
}

fn flannel_udp(c: &mut Criterion) {
    let mut g = c.benchmark_group("udp");
    for size in SIZES {
        g.throughput(Throughput::Elements(1));
        let pkt = ipv4_packet(size);
        g.bench_with_input(BenchmarkId::new("decapsulate", size), &size, |bn, _| {
            bn.iter_batched_ref(
                || pkt.clone(),
                |p| udp::decapsulate(black_box(p)).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("table");
    for peers in [10usize, 1_000, 10_000] {
        let table = ForwardingTable::new(
            (0..peers as u32)
                .map(|i| Peer {
                    subnet: ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24)
                        .unwrap(),
                    endpoint: SocketAddrV4::new(Ipv4Addr::from(0xc000_0200 + i), 8472),
                    vtep_mac: Some(MacAddr([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8])),
                })
                .collect(),
        );
        let dsts: Vec<Ipv4Addr> = (0..1024u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + ((i * 7919 % peers as u32) << 8) + 5))
            .collect();
        g.throughput(Throughput::Elements(dsts.len() as u64));
        g.bench_with_input(BenchmarkId::new("lookup_ip", peers), &peers, |bn, _| {
            bn.iter(|| {
                for d in &dsts {
                    black_box(table.lookup(*d));
                }
            })
        });
    }
    g.finish();
}

/// The receive-side coalescer per packet: parse and checksum-verify a TCP
/// segment and append it to a run (44 segments of 1448 bytes: one 64 KiB
/// super-packet).
fn tcp_gro(c: &mut Criterion) {
    use weft_encap::gro;
    let mut g = c.benchmark_group("gro");
    let segs: Vec<Vec<u8>> = (0..44u32)
        .map(|i| weft_benches::tcp_segment(1000 + i * 1448, 1448))
        .collect();
    g.throughput(Throughput::Elements(segs.len() as u64));
    g.bench_function("segment_and_push_1448", |bn| {
        bn.iter(|| {
            let mut run = gro::Run::new(gro::segment(black_box(&segs[0])).unwrap());
            for w in segs.windows(2) {
                let s = gro::segment(black_box(&w[1])).unwrap();
                assert!(run.push(&w[0], s, &w[1]));
            }
            let mut hdr = [0u8; gro::SUPER_HEADER_MAX];
            black_box(run.super_header(&segs[0], &mut hdr))
        })
    });
    g.finish();
}

/// The Internet checksum over a packet's worth of bytes.
fn checksum(c: &mut Criterion) {
    use weft_encap::checksum;
    let mut g = c.benchmark_group("checksum");
    for size in [64usize, 512, 1448, 9000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("sum_{size}"), |bn| {
            bn.iter(|| checksum::fold(checksum::sum(black_box(&data), 0)))
        });
    }
    g.finish();
}

/// The IPv6 data path's per-packet work, beside IPv4 packets of the same
/// size: VXLAN around a TCP/IPv6 segment (EtherType 0x86DD) and back, and
/// the inner TCP checksum over IPv6 verified and completed.
fn vxlan6(c: &mut Criterion) {
    use weft_encap::l4;
    let (a, b) = (endpoint(1), endpoint(2));
    let mut g = c.benchmark_group("vxlan6");
    for payload in [0usize, 448, 1338] {
        let pkt = weft_benches::tcp_segment6(1000, payload);
        let size = pkt.len();
        g.throughput(Throughput::Elements(1));
        let mut buf = vec![0u8; HEADROOM + size];
        buf[HEADROOM..].copy_from_slice(&pkt);
        g.bench_with_input(BenchmarkId::new("round_trip", size), &size, |bn, _| {
            bn.iter(|| {
                let out = a
                    .encapsulate_ip(black_box(&mut buf), HEADROOM..HEADROOM + size, b.mac)
                    .unwrap();
                b.decapsulate(black_box(&buf[out])).unwrap()
            })
        });
        // IPv4 of the same size, for the ratio: 20 bytes more payload.
        let pkt4 = weft_benches::tcp_segment(1000, payload + 20);
        let mut buf4 = vec![0u8; HEADROOM + size];
        buf4[HEADROOM..].copy_from_slice(&pkt4);
        g.bench_with_input(BenchmarkId::new("round_trip_ipv4", size), &size, |bn, _| {
            bn.iter(|| {
                let out = a
                    .encapsulate_ip(black_box(&mut buf4), HEADROOM..HEADROOM + size, b.mac)
                    .unwrap();
                b.decapsulate(black_box(&buf4[out])).unwrap()
            })
        });
        let mut seg4 = pkt4.clone();
        g.bench_with_input(BenchmarkId::new("l4_verify_ipv4", size), &size, |bn, _| {
            bn.iter(|| l4::verify_or_complete(black_box(&mut seg4)).unwrap())
        });
        bench_l4(&mut g, ("l4_verify", "l4_complete"), size, &pkt);
    }
    g.finish();
}

/// `l4::verify_or_complete` on `seg`, a TCP segment in IPv4 or IPv6, as
/// `names.0` (its checksum complete, verified) and `names.1` (the partial
/// checksum a kernel peer leaves, completed: the pseudo-header sum alone,
/// put back before each run).
fn bench_l4(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    names: (&str, &str),
    size: usize,
    seg: &[u8],
) {
    use weft_encap::{checksum, ipv4, ipv6, l4, tcp};
    let (at, pseudo) = match seg[0] >> 4 {
        4 => {
            let p = ipv4::Packet::new_checked(seg).unwrap();
            let at = p.header_len();
            let len = (seg.len() - at) as u16;
            let (src, dst) = (p.src().octets(), p.dst().octets());
            (at, l4::pseudo_header_sum(src, dst, 6, len))
        }
        _ => {
            let p = ipv6::Packet::new_checked(seg).unwrap();
            (40, p.pseudo_header_sum(6, (seg.len() - 40) as u32))
        }
    };
    let partial = checksum::fold(pseudo);
    let mut buf = seg.to_vec();
    g.bench_with_input(BenchmarkId::new(names.0, size), &size, |bn, _| {
        bn.iter(|| l4::verify_or_complete(black_box(&mut buf)).unwrap())
    });
    g.bench_with_input(BenchmarkId::new(names.1, size), &size, |bn, _| {
        bn.iter(|| {
            tcp::Segment::new_unchecked(&mut buf[at..]).set_checksum(partial);
            l4::verify_or_complete(black_box(&mut buf)).unwrap()
        })
    });
}

/// The receive path's inner checksum check (`l4::verify_or_complete`) on
/// one TCP segment: verifying a complete checksum, and completing the
/// partial one a kernel peer on a veth or virtio link leaves.
fn l4_checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("l4");
    for size in [64usize, 512, 1400, 9000] {
        let full = weft_benches::tcp_segment(1000, size);
        g.throughput(Throughput::Bytes(full.len() as u64));
        bench_l4(&mut g, ("verify", "complete"), size, &full);
    }
    g.finish();
}

criterion_group!(
    benches,
    vxlan,
    flannel_udp,
    lookup,
    tcp_gro,
    checksum,
    l4_checksum,
    vxlan6
);
criterion_main!(benches);
