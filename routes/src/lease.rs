//! Subnet leases in flannel's exact JSON, and the registry keys that name
//! them (`10.244.1.0-24`, or `10.244.1.0-24&fd00:10:244:1::-64` dual-stack).

use crate::json;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;
use weft_encap::{MacAddr, Vni};

/// Why a lease or key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    /// The key is not `<ip>-<len>[&<ip6>-<len6>]`.
    #[error("subnet key {0:?} is not <ip>-<prefix>")]
    Key(String),
    /// The value is not flannel's lease JSON.
    #[error("lease JSON: {0}")]
    Json(String),
}

/// A registry key: the lease's IPv4 subnet and its IPv6 subnet, either of
/// which may be absent (never both): etcd and file keys always have the
/// IPv4 half, a Node of an IPv6-only cluster has only the IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet; `None` in an IPv6-only cluster.
    pub v4: Option<Ipv4Net>,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    pub v6: Option<Ipv6Net>,
}

impl SubnetKey {
    /// An IPv4-only key.
    pub fn v4(net: Ipv4Net) -> SubnetKey {
        SubnetKey {
            v4: Some(net),
            v6: None,
        }
    }

    /// An IPv6-only key (Kubernetes with `"EnableIPv4": false`).
    pub fn v6(net: Ipv6Net) -> SubnetKey {
        SubnetKey {
            v4: None,
            v6: Some(net),
        }
    }
}

impl std::str::FromStr for SubnetKey {
    type Err = LeaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LeaseError::Key(s.to_string());
        let (v4, v6) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let (ip, len) = v4.split_once('-').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len = prefix_len(len).ok_or_else(bad)?;
        let v4 = Ipv4Net::new(ip, len).map_err(|_| bad())?;
        if v4.trunc() != v4 {
            return Err(bad());
        }
        let v6 = match v6 {
            None => None,
            Some(t) => {
                let (ip, len) = t.rsplit_once('-').ok_or_else(bad)?;
                let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
                let len = prefix_len(len).ok_or_else(bad)?;
                let net = Ipv6Net::new(ip, len).map_err(|_| bad())?;
                if net.trunc() != net {
                    return Err(bad());
                }
                Some(net)
            }
        };
        Ok(SubnetKey { v4: Some(v4), v6 })
    }
}

/// A prefix length exactly as flannel writes it: decimal digits without a
/// sign or a leading zero (`24`, never `+24` or `024`), so one subnet has
/// one key and two spellings cannot name it twice.
fn prefix_len(s: &str) -> Option<u8> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

impl std::fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.v4, self.v6) {
            (Some(v4), v6) => {
                write!(f, "{}-{}", v4.network(), v4.prefix_len())?;
                if let Some(v6) = v6 {
                    write!(f, "&{}-{}", v6.network(), v6.prefix_len())?;
                }
                Ok(())
            }
            (None, Some(v6)) => write!(f, "{}-{}", v6.network(), v6.prefix_len()),
            (None, None) => f.write_str("-"),
        }
    }
}

/// A lease's value, field for field as flannel writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseAttrs {
    /// The node's underlay address: where peers send encapsulated traffic.
    /// `None` only for a Node of an IPv6-only cluster (etcd and file
    /// leases always have one).
    #[serde(rename = "PublicIP")]
    pub public_ip: Option<Ipv4Addr>,
    /// The node's IPv6 underlay address (always written, `null` when unset).
    #[serde(rename = "PublicIPv6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// The backend that wrote the lease; omitted by the udp backend.
    #[serde(rename = "BackendType", skip_serializing_if = "Option::is_none")]
    pub backend_type: Option<String>,
    /// Backend-specific data (vxlan: VNI and VtepMAC).
    #[serde(rename = "BackendData", skip_serializing_if = "Option::is_none")]
    pub backend_data: Option<Value>,
    /// Backend-specific data for the IPv6 side.
    #[serde(rename = "BackendV6Data", skip_serializing_if = "Option::is_none")]
    pub backend_v6_data: Option<Value>,
}

/// What a vxlan lease's BackendData says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanData {
    /// The VNI the node was configured with.
    pub vni: Vni,
    /// The node's VtepMAC.
    pub vtep_mac: MacAddr,
}

impl VxlanData {
    /// The JSON flannel writes for it: `{"VNI":1,"VtepMAC":"…"}`.
    pub fn to_value(self) -> Value {
        let mut bd = serde_json::Map::new();
        bd.insert("VNI".into(), Value::from(self.vni.get()));
        bd.insert("VtepMAC".into(), Value::from(self.vtep_mac.to_string()));
        Value::Object(bd)
    }
}

impl LeaseAttrs {
    /// Attributes of a udp-backend lease: PublicIP only, as flannel writes.
    pub fn udp(public_ip: Ipv4Addr) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Some(public_ip),
            public_ipv6: None,
            backend_type: None,
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Attributes of a host-gw lease: PublicIP and the type, no BackendData.
    pub fn host_gw(public_ip: Ipv4Addr) -> LeaseAttrs {
        LeaseAttrs {
            backend_type: Some("host-gw".into()),
            ..LeaseAttrs::udp(public_ip)
        }
    }

    /// Attributes of a vxlan lease.
    pub fn vxlan(public_ip: Ipv4Addr, data: VxlanData) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Some(public_ip),
            public_ipv6: None,
            backend_type: Some("vxlan".into()),
            backend_data: Some(data.to_value()),
            backend_v6_data: None,
        }
    }

    /// Parses flannel's lease JSON (keys case-insensitive, as Go reads them).
    pub fn from_json(text: &[u8]) -> Result<LeaseAttrs, LeaseError> {
        let v: Value = serde_json::from_slice(text).map_err(|e| LeaseError::Json(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| LeaseError::Json("not an object".into()))?;
        let ip_str = |key: &str| match json::get(obj, key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(LeaseError::Json(format!("{key} is not a string"))),
        };
        let public_ip = ip_str("PublicIP")?
            .ok_or_else(|| LeaseError::Json("PublicIP missing".into()))?
            .parse()
            .map_err(|e| LeaseError::Json(format!("PublicIP: {e}")))
            .map(Some)?;
        let public_ipv6 = match ip_str("PublicIPv6")? {
            None => None,
            Some(s) => Some(
                s.parse()
                    .map_err(|e| LeaseError::Json(format!("PublicIPv6: {e}")))?,
            ),
        };
        let backend_type = match json::get(obj, "BackendType") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(LeaseError::Json("BackendType is not a string".into())),
        };
        let data = |key: &str| match json::get(obj, key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.clone()),
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: data("BackendData"),
            backend_v6_data: data("BackendV6Data"),
        })
    }

    /// The JSON flannel writes for these attributes.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, addresses and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The backend type, `udp` when the lease names none (flannel's udp
    /// backend writes no BackendType).
    pub fn backend_type(&self) -> &str {
        self.backend_type.as_deref().unwrap_or("udp")
    }

    /// VNI and VtepMAC of a vxlan lease, if it is one and they parse.
    pub fn vxlan_data(&self) -> Option<VxlanData> {
        self.vxlan_data_of(self.backend_data.as_ref())
    }

    /// VNI and VtepMAC of a vxlan lease's IPv6 side (`BackendV6Data`,
    /// the `flannel-v6.<VNI>` device's), if it is one and they parse.
    pub fn vxlan_v6_data(&self) -> Option<VxlanData> {
        self.vxlan_data_of(self.backend_v6_data.as_ref())
    }

    fn vxlan_data_of(&self, data: Option<&Value>) -> Option<VxlanData> {
        if self.backend_type() != "vxlan" {
            return None;
        }
        let bd = data?.as_object()?;
        let vni = match json::get(bd, "VNI") {
            None | Some(Value::Null) => Vni::DEFAULT,
            Some(v) => Vni::new(u32::try_from(v.as_u64()?).ok()?)?,
        };
        let vtep_mac = json::get(bd, "VtepMAC")?.as_str()?.parse().ok()?;
        Some(VxlanData { vni, vtep_mac })
    }
}

/// A lease: a subnet, its owner's attributes, when it expires (`None` for
/// a reservation, which never does), and where it stands among the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The subnet key.
    pub key: SubnetKey,
    /// The owner's attributes.
    pub attrs: LeaseAttrs,
    /// Expiry time; `None` for a reservation.
    pub expiration: Option<SystemTime>,
    /// Who holds it and since when, as its registry says.
    pub origin: Origin,
}

/// Who holds a lease and since when, as its registry records it: the
/// identity of a peer and its seniority. When two leases collide (one
/// subnet, PublicIP or VtepMAC claimed twice), the one that orders first
/// wins, so every node decides alike whatever order it learns things in.
/// The order is the registry's own, which no lease holder can rewrite:
/// etcd's create revision of the key, the Node's `creationTimestamp`, the
/// lease file's birth time. Ties (a file system's timestamps are coarse,
/// a Node's are in seconds) go to the lower `holder`, then to the lower
/// subnet key: `admit` and `alloc::lease_of` order by `(origin, key)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// When the registry first had it, in its own units (a revision, or
    /// nanoseconds since the epoch).
    pub since: i64,
    /// The holder: the Node's uid in Kubernetes; empty where the subnet
    /// key names the holder (files, etcd).
    pub holder: String,
    /// What an operator knows the holder by: the Node's name in
    /// Kubernetes, else empty.
    pub name: String,
}

impl Origin {
    /// A lease's origin in a registry whose leases are keys (files, etcd):
    /// the key tells holders apart, so only the time is recorded.
    pub fn keyed(since: i64) -> Origin {
        Origin {
            since,
            ..Origin::default()
        }
    }
}

impl Lease {
    /// The lease's IPv4 subnet; `None` in an IPv6-only cluster.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.key.v4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VXLAN: &str = r#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn vxlan_lease_round_trips_byte_for_byte() {
        let a = LeaseAttrs::from_json(VXLAN.as_bytes()).unwrap();
        assert_eq!(a.public_ip, Some(Ipv4Addr::new(192, 0, 2, 2)));
        let d = a.vxlan_data().unwrap();
        assert_eq!(d.vni, Vni::DEFAULT);
        assert_eq!(d.vtep_mac.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(a.to_json(), VXLAN);
        assert_eq!(LeaseAttrs::vxlan(a.public_ip.unwrap(), d).to_json(), VXLAN);
    }

    #[test]
    fn udp_lease_has_public_ip_only() {
        let a = LeaseAttrs::udp(Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(a.to_json(), r#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#);
        assert_eq!(a.backend_type(), "udp");
        assert!(a.vxlan_data().is_none());
        let b = LeaseAttrs::from_json(br#"{"PublicIP":"192.0.2.9"}"#).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn host_gw_lease_has_type_and_no_backend_data() {
        let a = LeaseAttrs::host_gw(Ipv4Addr::new(192, 0, 2, 9));
        let text = r#"{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"host-gw"}"#;
        assert_eq!(a.to_json(), text);
        assert_eq!(a.backend_type(), "host-gw");
        assert!(a.vxlan_data().is_none());
        assert_eq!(LeaseAttrs::from_json(text.as_bytes()).unwrap(), a);
    }

    #[test]
    fn keys_are_case_insensitive() {
        let a = LeaseAttrs::from_json(
            br#"{"publicip":"192.0.2.2","backendtype":"vxlan","backenddata":{"vni":1,"vtepmac":"c6:d2:32:6f:8f:44"}}"#,
        )
        .unwrap();
        assert!(a.vxlan_data().is_some());
    }

    #[test]
    fn bad_leases_are_refused() {
        for text in [
            "",
            "[]",
            r#"{}"#,
            r#"{"PublicIP":7}"#,
            r#"{"PublicIP":"300.1.1.1"}"#,
            r#"{"PublicIP":"1.1.1.1","PublicIPv6":"zz"}"#,
        ] {
            assert!(LeaseAttrs::from_json(text.as_bytes()).is_err(), "{text}");
        }
        let bad_mac = LeaseAttrs::from_json(
            br#"{"PublicIP":"1.1.1.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"nope"}}"#,
        )
        .unwrap();
        assert!(bad_mac.vxlan_data().is_none());
    }

    #[test]
    fn subnet_keys() {
        let k: SubnetKey = "10.244.1.0-24".parse().unwrap();
        assert_eq!(k.v4, "10.244.1.0/24".parse().ok());
        assert_eq!(k.to_string(), "10.244.1.0-24");
        let d: SubnetKey = "10.244.1.0-24&fd00:10:244:1::-64".parse().unwrap();
        assert_eq!(d.v6, Some("fd00:10:244:1::/64".parse().unwrap()));
        assert_eq!(d.to_string(), "10.244.1.0-24&fd00:10:244:1::-64");
        let all: SubnetKey = "0.0.0.0-0".parse().unwrap();
        assert_eq!(all.v4.unwrap().prefix_len(), 0);
        for bad in [
            "10.244.1.0",
            "10.244.1.0-33",
            "10.244.1.1-24",
            "x-24",
            "10.244.1.0-24&zz-64",
            "10.244.1.0-24&fd00:1402:4:1::-28",
            ".tmp-1",
            // One subnet, one spelling: flannel writes `-24`, nothing else.
            "10.244.2.0-024",
            "10.244.2.0-+24",
            "10.244.2.0- 24",
            "10.244.2.0-",
            "10.244.1.0-24&fd00:10:244:1::-064",
            "10.244.1.0-24&fd00:10:244:1::-+64",
        ] {
            assert!(bad.parse::<SubnetKey>().is_err(), "{bad}");
        }
    }
}
