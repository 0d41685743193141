//! Subnet acquisition, in flanneld's order: reuse the lease that holds our
//! PublicIP; else the subnet a previous run wrote to subnet.env, if free;
//! else one picked at random among the first 100 free subnets from SubnetMin
//! to SubnetMax (with `EnableIPv6`, each paired with an IPv6 subnet, both
//! in one key). Creation is exclusive and retried on conflict: a subnet
//! lost in a race is never picked again, even when the registry's listing
//! (a watch cache, or one that skips a malformed entry) does not show it
//! taken yet.

use crate::config::NetConf;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::registry::{Registry, RegistryError};
use ipnet::{Ipv4Net, Ipv6Net};
use rand::seq::IndexedRandom;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// How many free subnets the random pick chooses among (flanneld's 100).
const CANDIDATES: usize = 100;
/// Why no subnet could be acquired.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Every subnet from SubnetMin to SubnetMax is taken.
    #[error("no free subnet left in {network} between {min} and {max}")]
    Exhausted {
        /// The network.
        network: Ipv4Net,
        /// SubnetMin.
        min: Ipv4Addr,
        /// SubnetMax.
        max: Ipv4Addr,
    },
    /// The config has no IPv4 half (`"EnableIPv4": false`): this
    /// allocator, flanneld's for etcd and files, hands out IPv4 subnets.
    #[error("an IPv6-only config (EnableIPv4=false) needs the Kubernetes registry")]
    Ipv6Only,
    /// Every IPv6 subnet from IPv6SubnetMin to IPv6SubnetMax is taken.
    #[error("no free IPv6 subnet left in {network}")]
    Ipv6Exhausted {
        /// IPv6Network.
        network: Ipv6Net,
    },
}

/// The current lease whose PublicIP is `ip`, if any. Anyone who can write
/// a lease can name our PublicIP in one, so when several do, the one on
/// `previous` (the subnet our last subnet.env names) is ours, else the
/// oldest by its registry's record (`Origin`), the one peers keep.
pub fn lease_of(leases: &[Lease], ip: Ipv4Addr, previous: Option<Ipv4Net>) -> Option<&Lease> {
    leases
        .iter()
        .filter(|l| l.attrs.public_ip == Some(ip))
        .min_by_key(|l| (l.subnet() != previous, &l.origin, l.key))
}

/// Acquires a subnet (and with `EnableIPv6` an IPv6 subnet) for a node
/// with `attrs`. `previous` is what an earlier subnet.env names.
pub async fn acquire(
    reg: &dyn Registry,
    conf: &NetConf,
    attrs: &LeaseAttrs,
    previous: Option<SubnetKey>,
) -> Result<Lease, AllocError> {
    let c4 = conf.ipv4.as_ref().ok_or(AllocError::Ipv6Only)?;
    let leases = reg.leases().await?;
    let own = attrs
        .public_ip
        .and_then(|ip| lease_of(&leases, ip, previous.and_then(|p| p.v4)));
    if let Some(own) = own {
        if fits(conf, &own.key) {
            tracing::info!(subnet = %own.key, "reusing the lease that holds our PublicIP");
            return Ok(reg.renew(&own.key, attrs).await?);
        }
        tracing::warn!(subnet = %own.key, "our old lease does not fit the config; deleting it");
        reg.delete(&own.key).await?;
    }
    if let Some(prev) = previous.filter(|p| fits(conf, p)) {
        let held = |l: &Lease| l.subnet() == prev.v4 || (prev.v6.is_some() && l.key.v6 == prev.v6);
        if !leases.iter().any(held) {
            if let Some(l) = reg.create(&prev, attrs).await? {
                tracing::info!(subnet = %prev, "reusing the subnet from the previous subnet.env");
                return Ok(l);
            }
        }
    }
    // Every lost race takes its subnets out of the candidates for good, so
    // the loop ends: with a subnet won, or with none left.
    let mut lost: HashSet<Ipv4Net> = HashSet::new();
    let mut lost6: HashSet<Ipv6Net> = HashSet::new();
    let mut leases = leases;
    loop {
        let taken: HashSet<Ipv4Net> = leases.iter().filter_map(|l| l.subnet()).collect();
        let taken6: Vec<Ipv6Net> = leases.iter().filter_map(|l| l.key.v6).collect();
        let v4_free = |i: u32| {
            c4.nth_subnet(i)
                .filter(|s| !taken.contains(s) && !lost.contains(s))
        };
        // With `EnableIPv6`, the i-th IPv4 subnet pairs with the i-th IPv6
        // subnet. The key holds both halves, so the registry's exclusive
        // create settles a race for either: two nodes that pick one IPv4
        // subnet pick one key, and one of them loses. (flanneld picks the
        // halves independently, so two of its nodes can get one IPv4
        // subnet under two keys.)
        let v6_free = |i: u32| -> Option<Option<Ipv6Net>> {
            let Some(c) = &conf.ipv6 else {
                return Some(None);
            };
            let s = c.nth_subnet(u128::from(i))?;
            let overlaps = taken6
                .iter()
                .any(|t| t.contains(&s.network()) || s.contains(&t.network()));
            (!overlaps && !lost6.contains(&s)).then_some(Some(s))
        };
        let free: Vec<SubnetKey> = (0..c4.subnet_count())
            .filter_map(|i| {
                Some(SubnetKey {
                    v4: Some(v4_free(i)?),
                    v6: v6_free(i)?,
                })
            })
            .take(CANDIDATES)
            .collect();
        let Some(key) = free.choose(&mut rand::rng()).copied() else {
            return Err(
                match (
                    &conf.ipv6,
                    (0..c4.subnet_count()).any(|i| v4_free(i).is_some()),
                ) {
                    (Some(c), true) => AllocError::Ipv6Exhausted { network: c.network },
                    _ => AllocError::Exhausted {
                        network: c4.network,
                        min: c4.subnet_min,
                        max: c4.subnet_max,
                    },
                },
            );
        };
        if let Some(l) = reg.create(&key, attrs).await? {
            return Ok(l);
        }
        tracing::debug!(subnet = %key, "another node took the subnet first");
        lost.extend(key.v4);
        lost6.extend(key.v6);
        leases = reg.leases().await?;
    }
}

/// True when `key` is one this config could hand out, both halves: an
/// IPv6 half exactly when the config has `EnableIPv6` (flanneld's
/// `isSubnetConfigCompat` and `isIPv6SubnetConfigCompat`).
fn fits(conf: &NetConf, key: &SubnetKey) -> bool {
    let v4 = match (&conf.ipv4, key.v4) {
        (Some(c), Some(v4)) => c.fits(&v4),
        (None, v4) => v4.is_none(),
        (Some(_), None) => false,
    };
    v4 && match (&conf.ipv6, key.v6) {
        (None, v6) => v6.is_none(),
        (Some(c), Some(v6)) => c.fits(&v6),
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::FileRegistry;
    use futures::executor::block_on;

    fn setup(conf: &str) -> (tempfile::TempDir, FileRegistry, NetConf) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config"), conf).unwrap();
        let r = FileRegistry::open(d.path()).unwrap();
        let c = block_on(r.config()).unwrap();
        (d, r, c)
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, n)
    }

    /// A lease planted with our PublicIP and a lower key, before we start
    /// again, does not take us off our own subnet (which peers keep
    /// routing to us): ours is the one subnet.env names, else the oldest.
    #[test]
    fn a_planted_lease_with_our_public_ip_is_not_taken_for_ours() {
        let (d, r, c) = setup(r#"{"Network":"10.244.0.0/16"}"#);
        let ours: Ipv4Net = "10.244.50.0/24".parse().unwrap();
        let mine = LeaseAttrs::udp(ip(1));
        let a = block_on(acquire(&r, &c, &mine, Some(SubnetKey::v4(ours)))).unwrap();
        assert_eq!(a.subnet(), Some(ours));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.path().join("subnets/10.244.10.0-24"), mine.to_json()).unwrap();
        for previous in [Some(SubnetKey::v4(ours)), None] {
            let again = block_on(acquire(&r, &c, &mine, previous)).unwrap();
            assert_eq!(again.subnet(), Some(ours), "{previous:?}");
        }
    }

    /// Files born in one clock tick tie on their birth time: the lower
    /// subnet key (by address, not by its spelling) breaks the tie.
    #[test]
    fn a_tie_in_age_goes_to_the_lower_subnet() {
        let lease = |key: &str| Lease {
            key: key.parse().unwrap(),
            attrs: LeaseAttrs::udp(ip(1)),
            expiration: None,
            origin: crate::lease::Origin::keyed(7),
        };
        let leases = [lease("10.244.16.0-24"), lease("10.244.2.0-24")];
        let ours = lease_of(&leases, ip(1), None).unwrap();
        assert_eq!(ours.key.to_string(), "10.244.2.0-24");
        let prev = "10.244.16.0/24".parse().ok();
        assert_eq!(
            lease_of(&leases, ip(1), prev).unwrap().key.to_string(),
            "10.244.16.0-24"
        );
    }

    #[test]
    fn reuses_own_lease_then_previous_then_random() {
        let (_d, r, c) = setup(r#"{"Network":"10.244.0.0/16"}"#);
        let a = block_on(acquire(&r, &c, &LeaseAttrs::udp(ip(1)), None)).unwrap();
        assert!(c.ipv4.as_ref().unwrap().fits(&a.subnet().unwrap()));
        let again = block_on(acquire(&r, &c, &LeaseAttrs::udp(ip(1)), None)).unwrap();
        assert_eq!(again.subnet(), a.subnet());
        let prev: Ipv4Net = "10.244.200.0/24".parse().unwrap();
        let b = block_on(acquire(
            &r,
            &c,
            &LeaseAttrs::udp(ip(2)),
            Some(SubnetKey::v4(prev)),
        ))
        .unwrap();
        assert_eq!(b.subnet(), Some(prev));
        // A taken previous subnet is not stolen.
        let c3 = block_on(acquire(
            &r,
            &c,
            &LeaseAttrs::udp(ip(3)),
            Some(SubnetKey::v4(prev)),
        ))
        .unwrap();
        assert_ne!(c3.subnet(), Some(prev));
        assert_eq!(block_on(r.leases()).unwrap().len(), 3);
    }

    #[test]
    fn own_lease_that_no_longer_fits_is_replaced() {
        let (d, r, c) = setup(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        std::fs::write(
            d.path().join("subnets/10.244.9.0-24"),
            r#"{"PublicIP":"192.0.2.1"}"#,
        )
        .unwrap();
        let l = block_on(acquire(&r, &c, &LeaseAttrs::udp(ip(1)), None)).unwrap();
        assert_eq!(l.subnet().unwrap().prefix_len(), 25);
        assert_eq!(block_on(r.leases()).unwrap().len(), 1);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let (_d, r, c) = setup(r#"{"Network":"10.5.0.0/24","SubnetLen":26}"#);
        for n in 1..=3 {
            block_on(acquire(&r, &c, &LeaseAttrs::udp(ip(n)), None)).unwrap();
        }
        let e = block_on(acquire(&r, &c, &LeaseAttrs::udp(ip(9)), None)).unwrap_err();
        assert!(e.to_string().contains("no free subnet"), "{e}");
    }

    /// 15 IPv4 subnets, 7 IPv6 ones.
    const DUAL: &str = r#"{"Network":"10.5.0.0/24","SubnetLen":28,"EnableIPv6":true,"IPv6Network":"fd00:5::/120","IPv6SubnetLen":123}"#;

    /// With `EnableIPv6` every node gets an IPv6 subnet as well, picked
    /// independently, in one key; nodes started together share neither.
    #[test]
    fn dual_stack_nodes_get_distinct_subnets_of_both_families() {
        let (_d, r, c) = setup(DUAL);
        let v6 = c.ipv6.clone().unwrap();
        let r = std::sync::Arc::new(r);
        let keys: Vec<SubnetKey> = (1..=7)
            .map(|n| {
                let (r, c) = (r.clone(), c.clone());
                std::thread::spawn(move || {
                    block_on(acquire(&*r, &c, &LeaseAttrs::udp(ip(n)), None))
                        .unwrap()
                        .key
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let v4: HashSet<_> = keys.iter().map(|k| k.v4).collect();
        let v6s: HashSet<_> = keys.iter().map(|k| k.v6.unwrap()).collect();
        assert_eq!((v4.len(), v6s.len()), (7, 7), "{keys:?}");
        assert!(keys
            .iter()
            .all(|k| c.ipv4.as_ref().unwrap().fits(&k.v4.unwrap()) && v6.fits(&k.v6.unwrap())));
        // The registry holds them under flanneld's dual-stack key.
        let listed = block_on(r.leases()).unwrap();
        assert_eq!(listed.len(), 7);
        assert!(listed.iter().all(|l| l.key.v6.is_some()));
        // The eighth finds IPv4 subnets but no IPv6 subnet left (/120 in
        // /123s: 7 after the first, which is skipped).
        let e = block_on(acquire(&*r, &c, &LeaseAttrs::udp(ip(8)), None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("no free IPv6 subnet left in fd00:5::/120"),
            "{e}"
        );
    }

    /// Our lease from before `EnableIPv6` has no IPv6 half: like flanneld,
    /// weft deletes it and takes a dual-stack one. A previous subnet.env's
    /// pair is taken again when neither half is held; one whose IPv6 half
    /// is held, or that has none, is not.
    #[test]
    fn a_lease_without_its_ipv6_half_is_replaced_and_a_previous_pair_reused() {
        let (d, r, c) = setup(DUAL);
        std::fs::write(
            d.path().join("subnets/10.5.0.64-28"),
            r#"{"PublicIP":"192.0.2.1"}"#,
        )
        .unwrap();
        let prev: SubnetKey = "10.5.0.96-28&fd00:5::c0-123".parse().unwrap();
        let b = block_on(acquire(&r, &c, &LeaseAttrs::udp(ip(2)), Some(prev))).unwrap();
        assert_eq!(b.key, prev);
        let l = block_on(acquire(&r, &c, &LeaseAttrs::udp(ip(1)), None)).unwrap();
        assert!(l.key.v6.is_some(), "{}", l.key);
        assert_ne!((l.key.v4, l.key.v6), (b.key.v4, b.key.v6));
        assert_ne!(l.key.v6, b.key.v6);
        assert_eq!(block_on(r.leases()).unwrap().len(), 2);
        let v6_held: SubnetKey = "10.5.0.128-28&fd00:5::c0-123".parse().unwrap();
        let d4 = block_on(acquire(&r, &c, &LeaseAttrs::udp(ip(4)), Some(v6_held))).unwrap();
        assert_ne!(d4.key.v6, b.key.v6);
        // A previous pair without its IPv6 half does not fit: a new pair.
        let c3 = block_on(acquire(
            &r,
            &c,
            &LeaseAttrs::udp(ip(3)),
            Some(SubnetKey::v4("10.5.0.144/28".parse().unwrap())),
        ))
        .unwrap();
        assert!(c3.key.v6.is_some());
        assert_ne!(c3.key.v6, b.key.v6);
    }

    /// A registry whose listing lags behind its writes, as etcd's watch
    /// cache does while nodes start together.
    struct Lagging {
        inner: FileRegistry,
        listing: Vec<Lease>,
    }

    #[async_trait::async_trait]
    impl Registry for Lagging {
        async fn config(&self) -> Result<NetConf, RegistryError> {
            self.inner.config().await
        }
        async fn leases(&self) -> Result<Vec<Lease>, RegistryError> {
            Ok(self.listing.clone())
        }
        async fn create(
            &self,
            key: &SubnetKey,
            attrs: &LeaseAttrs,
        ) -> Result<Option<Lease>, RegistryError> {
            self.inner.create(key, attrs).await
        }
        async fn renew(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<Lease, RegistryError> {
            self.inner.renew(key, attrs).await
        }
        async fn delete(&self, key: &SubnetKey) -> Result<(), RegistryError> {
            self.inner.delete(key).await
        }
    }

    /// Every subnet the random pick chooses among is taken, and the
    /// listing does not show it: each lost race rules its subnet out, so
    /// the node gets a free subnet instead of giving up.
    #[test]
    fn a_lagging_listing_does_not_make_a_node_give_up() {
        let (_d, r, c) = setup(r#"{"Network":"10.5.0.0/16"}"#);
        let mut taken = HashSet::new();
        for i in 0..CANDIDATES as u32 {
            let s = c.ipv4.as_ref().unwrap().nth_subnet(i).unwrap();
            let created = block_on(r.create(&SubnetKey::v4(s), &LeaseAttrs::udp(ip(2))));
            assert!(created.unwrap().is_some());
            taken.insert(s);
        }
        let lagging = Lagging {
            inner: r,
            listing: Vec::new(),
        };
        let won = block_on(acquire(&lagging, &c, &LeaseAttrs::udp(ip(1)), None)).unwrap();
        assert!(!taken.contains(&won.subnet().unwrap()), "{}", won.key);
        assert_eq!(
            block_on(lagging.inner.leases()).unwrap().len(),
            CANDIDATES + 1
        );
    }

    #[test]
    fn parallel_nodes_get_distinct_subnets() {
        let (_d, r, c) = setup(r#"{"Network":"10.5.0.0/24","SubnetLen":27}"#);
        let r = std::sync::Arc::new(r);
        let subnets: Vec<Ipv4Net> = (1..=7)
            .map(|n| {
                let (r, c) = (r.clone(), c.clone());
                std::thread::spawn(move || {
                    block_on(acquire(&*r, &c, &LeaseAttrs::udp(ip(n)), None))
                        .unwrap()
                        .subnet()
                        .unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let distinct: HashSet<_> = subnets.iter().collect();
        assert_eq!(distinct.len(), 7, "{subnets:?}");
    }
}
