//! Peer leases are claims, not facts. Anyone who can write one lease (a
//! buggy node, a stolen etcd client certificate, a typo in the file
//! registry, another node's annotations) would otherwise steer this node's
//! routes. `LeasePolicy::admit` decides which leases become peers before
//! anything touches the kernel, and says why each other one is refused.
//!
//! Overlaps between leases are settled deterministically: a lease already
//! accepted keeps its place (a newcomer can never displace an established
//! peer), and among leases new in the same round the lower subnet key wins.

use crate::config::Backend;
use crate::lease::{Lease, SubnetKey, VxlanData};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use weft_encap::MacAddr;

/// Why a lease was refused. Each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// Its BackendType is not this cluster's backend.
    BackendType,
    /// Its subnet does not lie inside `Network`.
    OutsideNetwork,
    /// Its subnet's prefix length is not `SubnetLen`.
    SubnetLength,
    /// Its subnet overlaps ours.
    OverlapsOwn,
    /// Its subnet overlaps another accepted lease's.
    OverlapsPeer,
    /// Its subnet overlaps the underlay's own network.
    CoversUnderlay,
    /// Its PublicIP is unspecified, loopback, multicast, broadcast,
    /// link-local, or ours.
    PublicIp,
    /// Its BackendData does not parse (vxlan: VNI and VtepMAC).
    BackendData,
    /// Its VNI is not ours.
    VniMismatch,
    /// Its VtepMAC is zero, broadcast, multicast, or ours.
    VtepMac,
    /// Its VtepMAC is already held by another accepted lease.
    DuplicateVtepMac,
}

impl Rejection {
    /// Every reason, in label order.
    pub const ALL: [Rejection; 11] = [
        Rejection::BackendType,
        Rejection::OutsideNetwork,
        Rejection::SubnetLength,
        Rejection::OverlapsOwn,
        Rejection::OverlapsPeer,
        Rejection::CoversUnderlay,
        Rejection::PublicIp,
        Rejection::BackendData,
        Rejection::VniMismatch,
        Rejection::VtepMac,
        Rejection::DuplicateVtepMac,
    ];

    /// Index into a counter array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::BackendType => "backend_type",
            Rejection::OutsideNetwork => "outside_network",
            Rejection::SubnetLength => "subnet_length",
            Rejection::OverlapsOwn => "overlaps_own",
            Rejection::OverlapsPeer => "overlaps_peer",
            Rejection::CoversUnderlay => "covers_underlay",
            Rejection::PublicIp => "public_ip",
            Rejection::BackendData => "backend_data",
            Rejection::VniMismatch => "vni_mismatch",
            Rejection::VtepMac => "vtep_mac",
            Rejection::DuplicateVtepMac => "duplicate_vtep_mac",
        }
    }

    /// What an operator reads in the log and in `weft status`.
    pub fn explain(self) -> &'static str {
        match self {
            Rejection::BackendType => "its BackendType is not this cluster's backend; mixed-backend clusters do not work",
            Rejection::OutsideNetwork => "its subnet lies outside the cluster's Network",
            Rejection::SubnetLength => "its subnet is not of the cluster's SubnetLen",
            Rejection::OverlapsOwn => "its subnet overlaps this node's own subnet",
            Rejection::OverlapsPeer => "its subnet overlaps the subnet of a peer accepted before it",
            Rejection::CoversUnderlay => "its subnet overlaps the underlay network this node sends through",
            Rejection::PublicIp => "its PublicIP is unspecified, loopback, multicast, broadcast, link-local or this node's own",
            Rejection::BackendData => "its BackendData has no valid VNI and VtepMAC",
            Rejection::VniMismatch => "its VNI is not this cluster's",
            Rejection::VtepMac => "its VtepMAC is zero, broadcast, multicast or this node's own",
            Rejection::DuplicateVtepMac => "its VtepMAC is held by a peer accepted before it",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What this node knows that a peer lease must agree with.
#[derive(Debug, Clone)]
pub struct LeasePolicy {
    /// The cluster's backend (type, VNI).
    pub backend: Backend,
    /// net-conf.json's `Network`.
    pub network: Ipv4Net,
    /// net-conf.json's `SubnetLen`.
    pub subnet_len: u8,
    /// Our own lease's key.
    pub own: SubnetKey,
    /// Our PublicIP.
    pub own_public_ip: Ipv4Addr,
    /// Our VtepMAC (vxlan).
    pub own_mac: Option<MacAddr>,
    /// The networks of the underlay interface's addresses.
    pub underlay: Vec<Ipv4Net>,
}

/// A lease that passed: its key and, for vxlan, its VtepMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The lease's key.
    pub key: SubnetKey,
    /// Its VtepMAC (vxlan only).
    pub vtep_mac: Option<MacAddr>,
}

impl LeasePolicy {
    /// Splits `leases` into peers and refusals. Our own lease (our key
    /// and our PublicIP) is neither; another node's claim to our subnet is
    /// refused as `overlaps_own`.
    /// `incumbent` says which keys were accepted before: they are settled
    /// first, so an overlapping newcomer loses to them.
    pub fn admit(
        &self,
        leases: &[Lease],
        incumbent: impl Fn(&SubnetKey) -> bool,
    ) -> (Vec<Admitted>, Vec<(SubnetKey, Rejection)>) {
        let mut refused = Vec::new();
        let mut candidates = Vec::new();
        let ours = |l: &Lease| l.key == self.own && l.attrs.public_ip == self.own_public_ip;
        for l in leases.iter().filter(|l| !ours(l)) {
            match self.check(l) {
                Ok(mac) => candidates.push(Admitted {
                    key: l.key,
                    vtep_mac: mac,
                }),
                Err(r) => refused.push((l.key, r)),
            }
        }
        candidates.sort_by_key(|a| (!incumbent(&a.key), a.key));
        let mut accepted: Vec<Admitted> = Vec::with_capacity(candidates.len());
        for a in candidates {
            let overlap = accepted.iter().any(|b| overlaps(a.key.v4, b.key.v4));
            let same_mac =
                a.vtep_mac.is_some() && accepted.iter().any(|b| b.vtep_mac == a.vtep_mac);
            if overlap {
                refused.push((a.key, Rejection::OverlapsPeer));
            } else if same_mac {
                refused.push((a.key, Rejection::DuplicateVtepMac));
            } else {
                accepted.push(a);
            }
        }
        accepted.sort_by_key(|a| a.key);
        refused.sort();
        (accepted, refused)
    }

    /// The checks that need no other lease. Returns the VtepMAC (vxlan).
    pub fn check(&self, l: &Lease) -> Result<Option<MacAddr>, Rejection> {
        let a = &l.attrs;
        if a.backend_type() != self.backend.type_name() {
            return Err(Rejection::BackendType);
        }
        let net = l.key.v4;
        if !self.network.contains(&net) {
            return Err(Rejection::OutsideNetwork);
        }
        if net.prefix_len() != self.subnet_len {
            return Err(Rejection::SubnetLength);
        }
        if overlaps(net, self.own.v4) {
            return Err(Rejection::OverlapsOwn);
        }
        if self.underlay.iter().any(|u| overlaps(net, *u)) {
            return Err(Rejection::CoversUnderlay);
        }
        let ip = a.public_ip;
        if ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.is_link_local()
            || ip == self.own_public_ip
        {
            return Err(Rejection::PublicIp);
        }
        match self.backend {
            Backend::Vxlan { vni, .. } => {
                let VxlanData {
                    vni: theirs,
                    vtep_mac,
                } = a.vxlan_data().ok_or(Rejection::BackendData)?;
                if theirs != vni {
                    return Err(Rejection::VniMismatch);
                }
                let bad = vtep_mac.octets() == [0; 6]
                    || vtep_mac.is_multicast() // broadcast included
                    || Some(vtep_mac) == self.own_mac;
                if bad {
                    return Err(Rejection::VtepMac);
                }
                Ok(Some(vtep_mac))
            }
            _ => Ok(None),
        }
    }
}

/// True when two prefixes share an address (one contains the other).
fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use weft_encap::Vni;

    const OWN_MAC: MacAddr = MacAddr([0x0e, 0, 0, 0, 0, 1]);

    fn policy() -> LeasePolicy {
        LeasePolicy {
            backend: Backend::Vxlan {
                vni: Vni::DEFAULT,
                port: 8472,
                direct_routing: false,
                mtu: None,
            },
            network: "10.0.0.0/8".parse().unwrap(),
            subnet_len: 24,
            own: "10.244.1.0-24".parse().unwrap(),
            own_public_ip: Ipv4Addr::new(192, 168, 100, 1),
            own_mac: Some(OWN_MAC),
            underlay: vec!["10.9.0.0/24".parse().unwrap()],
        }
    }

    fn lease(key: &str, ip: [u8; 4], mac: &str) -> Lease {
        let json = format!(
            r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
            Ipv4Addr::from(ip)
        );
        Lease {
            key: key.parse().unwrap(),
            attrs: LeaseAttrs::from_json(json.as_bytes()).unwrap(),
            expiration: None,
        }
    }

    fn reason(l: Lease) -> Option<Rejection> {
        let (_, refused) = policy().admit(&[l], |_| false);
        refused.first().map(|(_, r)| *r)
    }

    const IP: [u8; 4] = [192, 168, 100, 2];
    const MAC: &str = "0e:00:00:00:00:02";

    #[test]
    fn a_good_lease_passes() {
        let (ok, refused) = policy().admit(&[lease("10.244.2.0-24", IP, MAC)], |_| false);
        assert_eq!(ok.len(), 1);
        assert!(refused.is_empty());
        assert_eq!(ok[0].vtep_mac, Some(MAC.parse().unwrap()));
    }

    #[test]
    fn each_bad_lease_has_its_reason() {
        use Rejection::*;
        let cases = [
            (lease("192.168.7.0-24", IP, MAC), OutsideNetwork),
            (lease("0.0.0.0-0", IP, MAC), OutsideNetwork),
            (lease("10.244.0.0-16", IP, MAC), SubnetLength),
            (lease("10.244.2.0-25", IP, MAC), SubnetLength),
            (lease("10.244.1.0-24&fd00::-64", IP, MAC), OverlapsOwn),
            (lease("10.9.0.0-24", IP, MAC), CoversUnderlay),
            (lease("10.244.2.0-24", [0, 0, 0, 0], MAC), PublicIp),
            (lease("10.244.2.0-24", [127, 0, 0, 1], MAC), PublicIp),
            (lease("10.244.2.0-24", [224, 0, 0, 1], MAC), PublicIp),
            (lease("10.244.2.0-24", [255, 255, 255, 255], MAC), PublicIp),
            (lease("10.244.2.0-24", [169, 254, 1, 1], MAC), PublicIp),
            (lease("10.244.2.0-24", [192, 168, 100, 1], MAC), PublicIp),
            (lease("10.244.2.0-24", IP, "00:00:00:00:00:00"), VtepMac),
            (lease("10.244.2.0-24", IP, "ff:ff:ff:ff:ff:ff"), VtepMac),
            (lease("10.244.2.0-24", IP, "01:00:5e:00:00:01"), VtepMac),
            (lease("10.244.2.0-24", IP, "0e:00:00:00:00:01"), VtepMac),
            (lease("10.244.2.0-24", IP, "not a mac"), BackendData),
        ];
        for (l, want) in cases {
            let key = l.key;
            assert_eq!(reason(l), Some(want), "{key}");
        }
        let mut other_vni = lease("10.244.2.0-24", IP, MAC);
        other_vni.attrs.backend_data = Some(serde_json::json!({"VNI": 7, "VtepMAC": MAC}));
        assert_eq!(reason(other_vni), Some(VniMismatch));
        let mut udp = lease("10.244.2.0-24", IP, MAC);
        udp.attrs.backend_type = None;
        assert_eq!(reason(udp), Some(BackendType));
        let mut garbage = lease("10.244.2.0-24", IP, MAC);
        garbage.attrs.backend_data = Some(serde_json::json!("garbage"));
        assert_eq!(reason(garbage), Some(BackendData));
    }

    #[test]
    fn our_own_lease_is_neither_peer_nor_refused_but_a_claim_to_our_subnet_is() {
        let (ok, refused) = policy()
            .admit(&[lease("10.244.1.0-24", [192, 168, 100, 1], MAC)], |_| {
                false
            });
        assert!(ok.is_empty() && refused.is_empty());
        // Another node (Kubernetes: another Node object) with our podCIDR.
        let (ok, refused) = policy().admit(&[lease("10.244.1.0-24", IP, MAC)], |_| false);
        assert!(ok.is_empty());
        assert_eq!(
            refused,
            vec![("10.244.1.0-24".parse().unwrap(), Rejection::OverlapsOwn)]
        );
    }

    #[test]
    fn overlaps_and_duplicate_macs_go_to_the_incumbent_then_the_lower_key() {
        let p = policy();
        let a = lease("10.244.2.0-24", IP, MAC);
        let b = lease("10.244.3.0-24", [192, 168, 100, 3], MAC);
        let (ok, refused) = p.admit(&[b.clone(), a.clone()], |_| false);
        assert_eq!(ok.iter().map(|x| x.key).collect::<Vec<_>>(), vec![a.key]);
        assert_eq!(refused, vec![(b.key, Rejection::DuplicateVtepMac)]);
        // The incumbent wins even with the higher key.
        let (ok, refused) = p.admit(&[a.clone(), b.clone()], |k| *k == b.key);
        assert_eq!(ok.iter().map(|x| x.key).collect::<Vec<_>>(), vec![b.key]);
        assert_eq!(refused, vec![(a.key, Rejection::DuplicateVtepMac)]);
        // Overlapping subnets that pass the length rule: a dual-stack key
        // that repeats a peer's IPv4 subnet.
        let twin = lease(
            "10.244.2.0-24&fd00:1::-64",
            [192, 168, 100, 4],
            "0e:00:00:00:00:04",
        );
        let (ok, refused) = p.admit(&[twin.clone(), a.clone()], |_| false);
        assert_eq!(ok.iter().map(|x| x.key).collect::<Vec<_>>(), vec![a.key]);
        assert_eq!(refused, vec![(twin.key, Rejection::OverlapsPeer)]);
    }

    #[test]
    fn labels_are_unique_and_in_index_order() {
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut l: Vec<_> = Rejection::ALL.iter().map(|r| r.label()).collect();
        l.sort_unstable();
        l.dedup();
        assert_eq!(l.len(), Rejection::ALL.len());
    }
}
