//! Fuzz harnesses for the parsers of untrusted registry data, shared by the
//! cargo-fuzz targets and a corpus-replay unit test.

use crate::config::NetConf;
use crate::lease::{LeaseAttrs, SubnetKey};

/// Lease JSON: never panics; what parses re-serializes to JSON that parses
/// to the same attributes.
pub fn lease_json(data: &[u8]) {
    let Ok(a) = LeaseAttrs::from_json(data) else {
        return;
    };
    let again = LeaseAttrs::from_json(a.to_json().as_bytes()).expect("our own JSON parses");
    assert_eq!(again, a);
    let _ = a.vxlan_data();
}

/// net-conf.json: never panics; an accepted config is self-consistent.
pub fn net_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(conf) = NetConf::parse(text) else {
        return;
    };
    assert!(conf.ipv4.is_some() || conf.ipv6.is_some());
    if let Some(c) = &conf.ipv4 {
        assert!(c.subnet_len > c.network.prefix_len() && c.subnet_len <= 28);
        assert!(u32::from(c.subnet_min) <= u32::from(c.subnet_max));
        let first = c.nth_subnet(0).expect("at least one subnet");
        assert!(c.fits(&first));
        let last = c.nth_subnet(c.subnet_count() - 1).expect("the last subnet");
        assert!(c.fits(&last) && last.network() == c.subnet_max);
    }
    if let Some(v6) = &conf.ipv6 {
        assert!(v6.subnet_len >= v6.network.prefix_len() + 2 && v6.subnet_len <= 126);
        assert!(u128::from(v6.subnet_min) <= u128::from(v6.subnet_max));
        let first = v6.nth_subnet(0).expect("at least one IPv6 subnet");
        assert!(v6.fits(&first));
        let last = v6
            .nth_subnet(v6.subnet_count() - 1)
            .expect("the last IPv6 subnet");
        assert!(v6.fits(&last) && last.network() == v6.subnet_max);
        assert_eq!(v6.nth_subnet(v6.subnet_count()), None);
    }
}

/// Subnet keys: never panics; what parses prints back to a key that parses
/// to the same value.
pub fn subnet_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(k) = text.parse::<SubnetKey>() else {
        return;
    };
    assert_eq!(
        k.to_string()
            .parse::<SubnetKey>()
            .expect("printed key parses"),
        k
    );
}

#[cfg(test)]
mod tests {
    fn replay(target: &str, f: fn(&[u8])) {
        weft_encap::harness::replay_committed(env!("CARGO_MANIFEST_DIR"), target, f);
    }

    #[test]
    fn lease_corpus() {
        replay("lease_json", super::lease_json);
    }

    #[test]
    fn net_conf_corpus() {
        replay("net_conf", super::net_conf);
    }

    #[test]
    fn subnet_key_corpus() {
        replay("subnet_key", super::subnet_key);
    }
}
