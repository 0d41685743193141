//! net-conf.json (also etcd's `<prefix>/config`): the overlay network and the
//! backend every node must agree on.

use crate::json;
use ipnet::Ipv4Net;
use serde_json::{Map, Value};
use std::net::Ipv4Addr;
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
    /// The overlay network, e.g. 10.244.0.0/16.
    pub network: Ipv4Net,
    /// Prefix length of each node's subnet.
    pub subnet_len: u8,
    /// First subnet that may be handed out.
    pub subnet_min: Ipv4Addr,
    /// Last subnet that may be handed out.
    pub subnet_max: Ipv4Addr,
    /// The backend.
    pub backend: Backend,
    /// True when the config had no `Backend` key (flanneld then runs udp).
    pub backend_defaulted: bool,
    /// `EnableNFTables`: masquerading and forwarding rules in nftables
    /// instead of iptables.
    pub enable_nftables: bool,
}

impl NetConf {
    /// Parses net-conf.json text with flannel's defaults and checks.
    pub fn parse(text: &str) -> Result<NetConf, ConfigError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ConfigError::Syntax("top level is not an object".into()))?;
        if let Some(Value::Bool(false)) = json::get(obj, "EnableIPv4") {
            return Err(ConfigError::Inconsistent(
                "EnableIPv4=false (IPv6-only overlays) is not supported yet".into(),
            ));
        }
        if let Some(Value::Bool(true)) = json::get(obj, "EnableIPv6") {
            // Refused rather than ignored: a dual-stack cluster would
            // believe its IPv6 pod traffic is carried, and weft would drop
            // it (it cannot authenticate IPv6 inner packets yet).
            return Err(ConfigError::Inconsistent(
                "EnableIPv6=true: weft has no IPv6 overlay yet; remove EnableIPv6 (and IPv6Network) \
                 from net-conf.json, or keep flanneld on dual-stack nodes"
                    .into(),
            ));
        }
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
        let step = 1u32 << (32 - subnet_len);
        let first = u32::from(network.network());
        let last = u32::from(network.broadcast()) & !(step - 1);
        let subnet_min = parse_str(obj, "SubnetMin")?.unwrap_or(Ipv4Addr::from(first + step));
        let subnet_max = parse_str(obj, "SubnetMax")?.unwrap_or(Ipv4Addr::from(last));
        for (key, a) in [("SubnetMin", subnet_min), ("SubnetMax", subnet_max)] {
            if !network.contains(&a) {
                return Err(ConfigError::Inconsistent(format!(
                    "{key} {a} is outside Network {network}"
                )));
            }
            if u32::from(a) & (step - 1) != 0 {
                return Err(ConfigError::Inconsistent(format!(
                    "{key} {a} is not on a /{subnet_len} boundary"
                )));
            }
        }
        if u32::from(subnet_min) > u32::from(subnet_max) {
            return Err(ConfigError::Inconsistent(format!(
                "SubnetMin {subnet_min} is above SubnetMax {subnet_max}"
            )));
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
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
            backend_defaulted,
            enable_nftables: matches!(json::get(obj, "EnableNFTables"), Some(Value::Bool(true))),
        })
    }

    /// Number of subnets between SubnetMin and SubnetMax inclusive.
    pub fn subnet_count(&self) -> u32 {
        let step = 1u32 << (32 - self.subnet_len);
        (u32::from(self.subnet_max) - u32::from(self.subnet_min)) / step + 1
    }

    /// The `i`th subnet from SubnetMin.
    pub fn nth_subnet(&self, i: u32) -> Option<Ipv4Net> {
        if i >= self.subnet_count() {
            return None;
        }
        let step = 1u32 << (32 - self.subnet_len);
        Ipv4Net::new(
            Ipv4Addr::from(u32::from(self.subnet_min) + i * step),
            self.subnet_len,
        )
        .ok()
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
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(c.subnet_count(), 255);
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
        assert_eq!(c.subnet_len, 26);
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
        let c = NetConf::parse(r#"{"Network":"10.5.0.0/24"}"#).unwrap();
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 5, 0, 64));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 5, 0, 192));
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
                "IPv6-only",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56"}"#,
                "no IPv6 overlay",
            ),
            (
                r#"{"Network":"10.244.0.0/16","enableipv6":true}"#,
                "no IPv6 overlay",
            ),
        ] {
            let e = NetConf::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn fits_checks_length_range_and_alignment() {
        let c = NetConf::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert!(c.fits(&"10.244.3.0/24".parse().unwrap()));
        assert!(!c.fits(&"10.244.0.0/24".parse().unwrap()));
        assert!(!c.fits(&"10.244.3.0/25".parse().unwrap()));
        assert!(!c.fits(&"10.245.3.0/24".parse().unwrap()));
        assert_eq!(c.nth_subnet(0), Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(c.nth_subnet(255), None);
    }
}
