//! net-conf.json (also etcd's `<prefix>/config`): the overlay network and the
//! backend every node must agree on.

use crate::json;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft_encap::Vni;

/// Why a net-conf.json was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Not JSON, or not a JSON object.
    #[error("net-conf.json is not a JSON object: {0}")]
    Syntax(String),
    /// A key has the wrong type or an unparsable value.
    #[error("net-conf.json key {key}: {why}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The numbers do not fit together.
    #[error("net-conf.json: {0}")]
    Inconsistent(String),
}

/// The backend a cluster runs, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// flannel's original raw-IPv4-in-UDP encapsulation.
    Udp {
        /// UDP port, the same on every node (default 8285).
        port: u16,
    },
    /// VXLAN, byte-compatible with the kernel's.
    Vxlan {
        /// VNI (default 1).
        vni: Vni,
        /// UDP port (0 in the config means the kernel default, 8472).
        port: u16,
        /// Use direct routes to peers on the same segment.
        direct_routing: bool,
        /// The underlay MTU the device MTU is derived from (minus 50), as
        /// flanneld reads it; by default the underlay interface's.
        mtu: Option<u32>,
    },
    /// Plain routes via each peer's PublicIP.
    HostGw,
}

impl Backend {
    /// The `BackendType` string leases carry.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Udp { .. } => "udp",
            Backend::Vxlan { .. } => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

/// A parsed and validated network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// The IPv4 overlay (`Network`, `SubnetLen`, `SubnetMin`,
    /// `SubnetMax`); `None` with `"EnableIPv4": false`, an IPv6-only
    /// cluster, which only the Kubernetes registry serves.
    pub ipv4: Option<Ipv4Conf>,
    /// The backend.
    pub backend: Backend,
    /// True when the config had no `Backend` key (flanneld then runs udp).
    pub backend_defaulted: bool,
    /// `EnableNFTables`: masquerading and forwarding rules in nftables
    /// instead of iptables.
    pub enable_nftables: bool,
    /// The IPv6 overlay, with `EnableIPv6`.
    pub ipv6: Option<Ipv6Conf>,
}

/// The IPv4 half of a config (`Network`, `SubnetLen`, `SubnetMin`,
/// `SubnetMax`), with flanneld's defaults and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Conf {
    /// The overlay network, e.g. 10.244.0.0/16.
    pub network: Ipv4Net,
    /// Prefix length of each node's subnet.
    pub subnet_len: u8,
    /// First subnet that may be handed out.
    pub subnet_min: Ipv4Addr,
    /// Last subnet that may be handed out.
    pub subnet_max: Ipv4Addr,
}

/// The IPv6 half of a dual-stack config (`EnableIPv6`, `IPv6Network`,
/// `IPv6SubnetLen`, `IPv6SubnetMin`, `IPv6SubnetMax`), with flanneld's
/// defaults and checks (`pkg/subnet/config.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Conf {
    /// The IPv6 overlay network, e.g. fd00:10:244::/56.
    pub network: Ipv6Net,
    /// Prefix length of each node's IPv6 subnet.
    pub subnet_len: u8,
    /// First IPv6 subnet that may be handed out.
    pub subnet_min: Ipv6Addr,
    /// Last IPv6 subnet that may be handed out.
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Conf {
    fn parse(obj: &Map<String, Value>) -> Result<Ipv6Conf, ConfigError> {
        let network: Ipv6Net = parse_str(obj, "IPv6Network")?.ok_or(ConfigError::Value {
            key: "IPv6Network",
            why: "missing (EnableIPv6 needs it)".into(),
        })?;
        let network = network.trunc();
        let prefix = network.prefix_len();
        // As in flanneld, 0 (or no key) asks for the default.
        let asked = match json::get(obj, "IPv6SubnetLen") {
            None | Some(Value::Null) => 0,
            Some(v) => number::<u8>(v, "IPv6SubnetLen")?,
        };
        let subnet_len = match (asked, prefix) {
            (0, p) if p > 124 => {
                return Err(ConfigError::Inconsistent(format!(
                    "IPv6Network /{p} is too small: the shortest useful prefix is /124"
                )))
            }
            (0, p) if p <= 62 => 64,
            (0, p) => p + 2,
            (l, _) => l,
        };
        if subnet_len > 126 {
            return Err(ConfigError::Inconsistent(format!(
                "IPv6SubnetLen /{subnet_len} is longer than /126"
            )));
        }
        if u32::from(subnet_len) < u32::from(prefix) + 2 {
            return Err(ConfigError::Inconsistent(format!(
                "IPv6SubnetLen /{subnet_len} leaves IPv6Network /{prefix} fewer than four subnets"
            )));
        }
        let (min, max) = subnet_bounds(
            obj,
            ["IPv6SubnetMin", "IPv6SubnetMax", "IPv6Network"],
            IpNet::V6(network),
            subnet_len,
        )?;
        let (subnet_min, subnet_max) = (Ipv6Addr::from(min), Ipv6Addr::from(max));
        Ok(Ipv6Conf {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
        })
    }

    /// Number of subnets between IPv6SubnetMin and IPv6SubnetMax inclusive
    /// (at most 2⁶⁴ for a /0 network of /64s, so it fits a `u128`).
    pub fn subnet_count(&self) -> u128 {
        ladder_len(
            self.subnet_min.into(),
            self.subnet_max.into(),
            128 - self.subnet_len,
        )
    }

    /// The `i`th subnet from IPv6SubnetMin.
    pub fn nth_subnet(&self, i: u128) -> Option<Ipv6Net> {
        let a = ladder_rung(
            self.subnet_min.into(),
            self.subnet_max.into(),
            128 - self.subnet_len,
            i,
        )?;
        Ipv6Net::new(Ipv6Addr::from(a), self.subnet_len).ok()
    }

    /// True when `subnet` is one this config could hand out: inside
    /// IPv6Network, of IPv6SubnetLen, between IPv6SubnetMin and
    /// IPv6SubnetMax.
    pub fn fits(&self, subnet: &Ipv6Net) -> bool {
        let a = u128::from(subnet.network());
        subnet.prefix_len() == self.subnet_len
            && subnet.addr() == subnet.network()
            && self.network.contains(subnet)
            && a >= u128::from(self.subnet_min)
            && a <= u128::from(self.subnet_max)
    }
}

impl NetConf {
    /// Parses net-conf.json text with flannel's defaults and checks.
    pub fn parse(text: &str) -> Result<NetConf, ConfigError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ConfigError::Syntax("top level is not an object".into()))?;
        let ipv4 = match flag(obj, "EnableIPv4")? {
            Some(false) => None,
            None | Some(true) => Some(Ipv4Conf::parse(obj)?),
        };
        let ipv6 = match flag(obj, "EnableIPv6")? {
            Some(true) => Some(Ipv6Conf::parse(obj)?),
            None | Some(false) => None,
        };
        if ipv4.is_none() && ipv6.is_none() {
            return Err(ConfigError::Inconsistent(
                "EnableIPv4 is false and EnableIPv6 is not true: no family is left".into(),
            ));
        }
        let (backend, backend_defaulted) = match json::get(obj, "Backend") {
            None | Some(Value::Null) => (
                Backend::Udp {
                    port: weft_encap::udp::DEFAULT_PORT,
                },
                true,
            ),
            Some(Value::Object(b)) => (parse_backend(b)?, false),
            Some(_) => {
                return Err(ConfigError::Value {
                    key: "Backend",
                    why: "must be an object".into(),
                })
            }
        };
        Ok(NetConf {
            ipv4,
            backend,
            backend_defaulted,
            enable_nftables: matches!(json::get(obj, "EnableNFTables"), Some(Value::Bool(true))),
            ipv6,
        })
    }
}

/// A boolean key, `None` when absent or null.
fn flag(obj: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ConfigError> {
    match json::get(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ConfigError::Value {
            key,
            why: "must be true or false".into(),
        }),
    }
}

impl Ipv4Conf {
    fn parse(obj: &Map<String, Value>) -> Result<Ipv4Conf, ConfigError> {
        let network: Ipv4Net = parse_str(obj, "Network")?.ok_or(ConfigError::Value {
            key: "Network",
            why: "missing".into(),
        })?;
        let network = network.trunc();
        let subnet_len = match json::get(obj, "SubnetLen") {
            None | Some(Value::Null) => {
                if network.prefix_len() <= 22 {
                    24
                } else {
                    network.prefix_len() + 2
                }
            }
            Some(v) => number(v, "SubnetLen")?,
        };
        if subnet_len > 28 {
            return Err(ConfigError::Inconsistent(format!(
                "SubnetLen /{subnet_len} is longer than /28"
            )));
        }
        if subnet_len <= network.prefix_len() {
            return Err(ConfigError::Inconsistent(format!(
                "SubnetLen /{subnet_len} must be longer than Network's /{}",
                network.prefix_len()
            )));
        }
        let (min, max) = subnet_bounds(
            obj,
            ["SubnetMin", "SubnetMax", "Network"],
            IpNet::V4(network),
            subnet_len,
        )?;
        // Both came from IPv4 addresses.
        let (subnet_min, subnet_max) = (Ipv4Addr::from(min as u32), Ipv4Addr::from(max as u32));
        Ok(Ipv4Conf {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
        })
    }
}

impl Ipv4Conf {
    /// Number of subnets between SubnetMin and SubnetMax inclusive.
    pub fn subnet_count(&self) -> u32 {
        let n = ladder_len(
            u32::from(self.subnet_min).into(),
            u32::from(self.subnet_max).into(),
            32 - self.subnet_len,
        );
        // At most 2³² subnets of /32 in 0.0.0.0/0, less the first.
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The `i`th subnet from SubnetMin.
    pub fn nth_subnet(&self, i: u32) -> Option<Ipv4Net> {
        let a = ladder_rung(
            u32::from(self.subnet_min).into(),
            u32::from(self.subnet_max).into(),
            32 - self.subnet_len,
            i.into(),
        )?;
        Ipv4Net::new(Ipv4Addr::from(a as u32), self.subnet_len).ok()
    }

    /// True when `subnet` is one this config could hand out: inside Network,
    /// of SubnetLen, between SubnetMin and SubnetMax.
    pub fn fits(&self, subnet: &Ipv4Net) -> bool {
        let a = u32::from(subnet.network());
        subnet.prefix_len() == self.subnet_len
            && subnet.addr() == subnet.network()
            && self.network.contains(subnet)
            && a >= u32::from(self.subnet_min)
            && a <= u32::from(self.subnet_max)
    }
}

/// SubnetMin and SubnetMax (`keys`: their names and the network's, for
/// either family), by default the second subnet and the last, checked as
/// flanneld checks them: inside `network`, on a `/len` boundary, in order.
/// The addresses as integers.
fn subnet_bounds(
    obj: &Map<String, Value>,
    keys: [&'static str; 3],
    network: IpNet,
    len: u8,
) -> Result<(u128, u128), ConfigError> {
    let int = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let (addr, bits): (fn(u128) -> IpAddr, u8) = match network {
        IpNet::V4(_) => (|a| IpAddr::V4(Ipv4Addr::from(a as u32)), 32),
        IpNet::V6(_) => (|a| IpAddr::V6(Ipv6Addr::from(a)), 128),
    };
    let step = 1u128 << (bits - len);
    let first = int(network.network());
    let last = int(network.broadcast()) & !(step - 1);
    let given = |key: &'static str| -> Result<Option<IpAddr>, ConfigError> {
        let a: Option<IpAddr> = parse_str(obj, key)?;
        match (a, network) {
            (Some(IpAddr::V4(_)), IpNet::V6(_)) | (Some(IpAddr::V6(_)), IpNet::V4(_)) => {
                Err(ConfigError::Value {
                    key,
                    why: format!(
                        "{} is not of the family of {network}",
                        a.unwrap_or(network.addr())
                    ),
                })
            }
            _ => Ok(a),
        }
    };
    let [min_key, max_key, net_key] = keys;
    let min = given(min_key)?.unwrap_or(addr(first + step));
    let max = given(max_key)?.unwrap_or(addr(last));
    for (key, a) in [(min_key, min), (max_key, max)] {
        if !network.contains(&a) {
            return Err(ConfigError::Inconsistent(format!(
                "{key} {a} is outside {net_key} {network}"
            )));
        }
        if int(a) & (step - 1) != 0 {
            return Err(ConfigError::Inconsistent(format!(
                "{key} {a} is not on a /{len} boundary"
            )));
        }
    }
    if int(min) > int(max) {
        return Err(ConfigError::Inconsistent(format!(
            "{min_key} {min} is above {max_key} {max}"
        )));
    }
    Ok((int(min), int(max)))
}

/// How many subnets of `host_bits` host bits lie from `min` to `max`
/// (both subnet addresses, `min <= max`), either family.
fn ladder_len(min: u128, max: u128, host_bits: u8) -> u128 {
    (max - min) / (1u128 << host_bits) + 1
}

/// The address of the `i`th of those subnets, if there are that many.
fn ladder_rung(min: u128, max: u128, host_bits: u8, i: u128) -> Option<u128> {
    (i < ladder_len(min, max, host_bits)).then(|| min + i * (1u128 << host_bits))
}

fn parse_backend(b: &Map<String, Value>) -> Result<Backend, ConfigError> {
    let ty = match json::get(b, "Type") {
        None | Some(Value::Null) => "udp".to_string(),
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(_) => {
            return Err(ConfigError::Value {
                key: "Backend.Type",
                why: "must be a string".into(),
            })
        }
    };
    let port = |default: u16| -> Result<u16, ConfigError> {
        match json::get(b, "Port") {
            None | Some(Value::Null) => Ok(default),
            Some(v) => match number::<u16>(v, "Backend.Port")? {
                0 => Ok(default),
                p => Ok(p),
            },
        }
    };
    let flag = |key: &'static str| -> Result<bool, ConfigError> {
        match json::get(b, key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(x)) => Ok(*x),
            Some(_) => Err(ConfigError::Value {
                key,
                why: "must be true or false".into(),
            }),
        }
    };
    match ty.as_str() {
        "udp" => Ok(Backend::Udp {
            port: port(weft_encap::udp::DEFAULT_PORT)?,
        }),
        "vxlan" => {
            let vni = match json::get(b, "VNI") {
                None | Some(Value::Null) => Vni::DEFAULT,
                Some(v) => Vni::new(number(v, "Backend.VNI")?).ok_or(ConfigError::Value {
                    key: "Backend.VNI",
                    why: "must fit 24 bits".into(),
                })?,
            };
            if flag("GBP")? {
                return Err(ConfigError::Inconsistent(
                    "Backend.GBP (group-based policy) is not supported by weft".into(),
                ));
            }
            let mtu = match json::get(b, "MTU") {
                None | Some(Value::Null) => None,
                Some(v) => match number::<u32>(v, "Backend.MTU")? {
                    0 => None,
                    m => Some(m),
                },
            };
            Ok(Backend::Vxlan {
                vni,
                port: port(weft_encap::vxlan::DEFAULT_PORT)?,
                direct_routing: flag("DirectRouting")?,
                mtu,
            })
        }
        "host-gw" => Ok(Backend::HostGw),
        other => Err(ConfigError::Value {
            key: "Backend.Type",
            why: format!("unsupported backend {other:?} (weft runs udp, vxlan, host-gw)"),
        }),
    }
}

fn parse_str<T: std::str::FromStr>(
    obj: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match json::get(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|e: T::Err| ConfigError::Value {
            key,
            why: format!("{s:?}: {e}"),
        }),
        Some(_) => Err(ConfigError::Value {
            key,
            why: "must be a string".into(),
        }),
    }
}

fn number<T: TryFrom<u64>>(v: &Value, key: &'static str) -> Result<T, ConfigError> {
    v.as_u64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| ConfigError::Value {
            key,
            why: format!("{v} is not a valid number here"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_defaults() {
        let c =
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let c4 = c.ipv4.clone().unwrap();
        assert_eq!(c4.subnet_len, 24);
        assert_eq!(c4.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c4.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(c4.subnet_count(), 255);
        assert_eq!(
            c.backend,
            Backend::Vxlan {
                vni: Vni::DEFAULT,
                port: 8472,
                direct_routing: false,
                mtu: None
            }
        );
        assert!(!c.backend_defaulted);
    }

    #[test]
    fn keys_match_case_insensitively_like_go() {
        let c = NetConf::parse(
            r#"{"network":"10.5.0.0/24","subnetlen":26,"backend":{"type":"VXLAN","vni":7,"port":4789}}"#,
        )
        .unwrap();
        let c4 = c.ipv4.clone().unwrap();
        assert_eq!(c4.subnet_len, 26);
        assert_eq!(
            c.backend,
            Backend::Vxlan {
                vni: Vni::new(7).unwrap(),
                port: 4789,
                direct_routing: false,
                mtu: None
            }
        );
    }

    #[test]
    fn narrow_networks_default_to_prefix_plus_two() {
        let c4 = NetConf::parse(r#"{"Network":"10.5.0.0/24"}"#)
            .unwrap()
            .ipv4
            .unwrap();
        assert_eq!(c4.subnet_len, 26);
        assert_eq!(c4.subnet_min, Ipv4Addr::new(10, 5, 0, 64));
        assert_eq!(c4.subnet_max, Ipv4Addr::new(10, 5, 0, 192));
    }

    #[test]
    fn missing_backend_runs_udp_as_flanneld_does() {
        let c = NetConf::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(c.backend, Backend::Udp { port: 8285 });
        assert!(c.backend_defaulted);
    }

    #[test]
    fn vxlan_port_zero_is_the_kernel_default() {
        let c =
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":0}}"#)
                .unwrap();
        assert!(matches!(c.backend, Backend::Vxlan { port: 8472, .. }));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        for (text, needle) in [
            ("[]", "not a JSON object"),
            ("{", "not a JSON object"),
            (r#"{}"#, "Network"),
            (r#"{"Network":"10.244.0.0/33"}"#, "Network"),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":30}"#,
                "longer than /28",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":16}"#,
                "must be longer",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#,
                "outside",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.0.7"}"#,
                "boundary",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.2.0"}"#,
                "above",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}"#,
                "unsupported",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
                "24 bits",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#,
                "GBP",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv4":false}"#,
                "no family is left",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv4":"no","EnableIPv6":true,"IPv6Network":"fd00::/56"}"#,
                "EnableIPv4: must be true or false",
            ),
            (
                r#"{"Network":"10.244.0.0/16","enableipv6":true}"#,
                "IPv6Network: missing",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":"yes","IPv6Network":"fd00::/56"}"#,
                "EnableIPv6: must be true or false",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"10.1.0.0/16"}"#,
                "IPv6Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}"#,
                "shortest useful prefix is /124",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":127}"#,
                "longer than /126",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":57}"#,
                "fewer than four subnets",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::"}"#,
                "outside IPv6Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMax":"fd00:0:0:7::1"}"#,
                "boundary",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:2::"}"#,
                "above",
            ),
        ] {
            let e = NetConf::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    /// flanneld's IPv6 defaults: /64 subnets when the network is /62 or
    /// shorter, else the prefix + 2; the first subnet skipped, the last
    /// one used; 0 for IPv6SubnetLen means the default.
    #[test]
    fn ipv6_defaults_are_flanneld_s() {
        let v6 = |extra: &str| {
            let text = format!(r#"{{"Network":"10.244.0.0/16","EnableIPv6":true{extra}}}"#);
            NetConf::parse(&text).unwrap().ipv6.unwrap()
        };
        let c = v6(r#","IPv6Network":"fd00:10:244::/56""#);
        assert_eq!(c.subnet_len, 64);
        assert_eq!(c.subnet_min, "fd00:10:244:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            c.subnet_max,
            "fd00:10:244:ff::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(c.subnet_count(), 255);
        assert_eq!(c.nth_subnet(0), Some("fd00:10:244:1::/64".parse().unwrap()));
        assert_eq!(
            c.nth_subnet(254),
            Some("fd00:10:244:ff::/64".parse().unwrap())
        );
        assert_eq!(c.nth_subnet(255), None);
        assert!(c.fits(&"fd00:10:244:7::/64".parse().unwrap()));
        assert!(!c.fits(&"fd00:10:244::/64".parse().unwrap()));
        assert!(!c.fits(&"fd00:10:244:7::/80".parse().unwrap()));
        assert!(!c.fits(&"fd00:10:245:7::/64".parse().unwrap()));
        assert!(!c.fits(&"fd00:10:244:7::1/64".parse().unwrap()));
        // A host address in IPv6Network is truncated to the network.
        assert_eq!(v6(r#","IPv6Network":"fd00:10:244::5/56""#), c);
        assert_eq!(
            v6(r#","IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":0"#),
            c
        );
        let small = v6(r#","IPv6Network":"fd00::/120""#);
        assert_eq!(small.subnet_len, 122);
        assert_eq!(small.subnet_count(), 3);
        assert_eq!(v6(r#","IPv6Network":"fd00::/62""#).subnet_len, 64);
        assert_eq!(v6(r#","IPv6Network":"fd00::/63""#).subnet_len, 65);
        let wide = v6(r#","IPv6Network":"fd00::/8""#);
        assert_eq!(wide.subnet_count(), (1u128 << 56) - 1);
        let off = NetConf::parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":false}"#).unwrap();
        assert_eq!(off.ipv6, None);
    }

    /// `"EnableIPv4": false` with `EnableIPv6`: no IPv4 half, and no
    /// Network needed (flanneld checks it only with EnableIPv4).
    #[test]
    fn ipv6_only_has_no_ipv4_half() {
        let c = NetConf::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(c.ipv4, None);
        assert_eq!(c.ipv6.as_ref().unwrap().subnet_len, 64);
        // A Network given anyway is not read.
        let c = NetConf::parse(
            r#"{"Network":"bogus","EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}"#,
        )
        .unwrap();
        assert_eq!(c.ipv4, None);
    }

    #[test]
    fn fits_checks_length_range_and_alignment() {
        let c4 = NetConf::parse(r#"{"Network":"10.244.0.0/16"}"#)
            .unwrap()
            .ipv4
            .unwrap();
        assert!(c4.fits(&"10.244.3.0/24".parse().unwrap()));
        assert!(!c4.fits(&"10.244.0.0/24".parse().unwrap()));
        assert!(!c4.fits(&"10.244.3.0/25".parse().unwrap()));
        assert!(!c4.fits(&"10.245.3.0/24".parse().unwrap()));
        assert_eq!(c4.nth_subnet(0), Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(c4.nth_subnet(255), None);
    }
}
