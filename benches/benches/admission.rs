//! Lease admission (`LeasePolicy::admit`), which the control plane runs on
//! every registry poll (500 ms): leases of a cluster of N nodes, all new
//! (a node's first poll) and all incumbent (every poll after), with one
//! newcomer that collides with a live peer's PublicIP.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use weft_encap::{MacAddr, Vni};
use weft_routes::lease::{Origin, VxlanData};
use weft_routes::validate::V4Policy;
use weft_routes::{Backend, Claim, Lease, LeaseAttrs, LeasePolicy, SubnetKey};

fn policy() -> LeasePolicy {
    LeasePolicy {
        backend: Backend::Vxlan {
            vni: Vni::DEFAULT,
            port: 8472,
            direct_routing: false,
            mtu: None,
        },
        ipv4: Some(V4Policy {
            network: "10.0.0.0/8".parse().expect("a literal"),
            subnet_len: Some(24),
            own: "10.0.1.0/24".parse().expect("a literal"),
            own_public_ip: Ipv4Addr::new(172, 31, 255, 254),
            own_mac: Some(MacAddr([0x0e, 0xff, 0, 0, 0, 1])),
            underlay: vec!["172.16.0.0/12".parse().expect("a literal")],
            network_routed: false,
        }),
        ipv6: None,
    }
}

/// `n` leases of distinct subnets, PublicIPs and VtepMACs, then one that
/// claims the first one's PublicIP.
fn leases(n: u32) -> Vec<Lease> {
    let lease = |i: u32, ip: Ipv4Addr| {
        let key = SubnetKey::v4(
            Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + ((i + 2) << 8)), 24).expect("a /24"),
        );
        let [_, _, a, b] = i.to_be_bytes();
        let data = VxlanData {
            vni: Vni::DEFAULT,
            vtep_mac: MacAddr([0x0e, 0, 0, 1, a, b]),
        };
        Lease {
            key,
            attrs: LeaseAttrs::vxlan(ip, data),
            expiration: None,
            origin: Origin::keyed(i64::from(i)),
        }
    };
    let ip = |i: u32| Ipv4Addr::from(0xac10_0000 + i + 1);
    let mut v: Vec<Lease> = (0..n).map(|i| lease(i, ip(i))).collect();
    v.push(lease(n, ip(0)));
    v
}

fn admission(c: &mut Criterion) {
    let p = policy();
    let mut g = c.benchmark_group("admission");
    for n in [500u32, 5000] {
        let all = leases(n);
        g.throughput(Throughput::Elements(all.len() as u64));
        g.bench_with_input(BenchmarkId::new("new", n), &all, |b, all| {
            b.iter(|| p.admit(black_box(all), |_, _| false))
        });
        // Every poll after the first: the peers are incumbents, looked up
        // as the control plane does (`Peers::is_peer`: holder, PublicIP,
        // VtepMAC by key).
        let (peers, refused) = p.admit(&all, |_, _| false);
        assert_eq!((peers.len(), refused.len()), (n as usize, 1));
        let held: BTreeMap<SubnetKey, _> = peers
            .iter()
            .map(|a| {
                let l = a.lease;
                (l.key, (l.origin.clone(), a.v4))
            })
            .collect();
        // IPv4-only leases: every claim is an IPv4 one.
        let is_peer = |l: &Lease, claim: Claim<'_>| {
            let Claim::V4(h) = claim else {
                return false;
            };
            held.get(&l.key)
                .is_some_and(|(o, v4)| *o == l.origin && *v4 == Some(*h))
        };
        g.bench_with_input(BenchmarkId::new("incumbent", n), &all, |b, all| {
            b.iter(|| p.admit(black_box(all), is_peer))
        });
        // A poll whose leases are the last poll's: `Peers::sync` compares
        // and stops there.
        let last = all.clone();
        g.bench_with_input(BenchmarkId::new("unchanged", n), &all, |b, all| {
            b.iter(|| black_box(all) == black_box(&last))
        });
    }
    g.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
