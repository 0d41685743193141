//! `/run/flannel/subnet.env`: what the flannel CNI plugin and
//! mk-docker-opts.sh read. Written atomically (temp file + rename) so a
//! reader never sees half a file.

use ipnet::{Ipv4Net, Ipv6Net};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The values subnet.env carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The IPv4 overlay network and this node's subnet; none in an
    /// IPv6-only cluster, whose file has no FLANNEL_NETWORK or
    /// FLANNEL_SUBNET (as flanneld's).
    pub ipv4: Option<(Ipv4Net, Ipv4Net)>,
    /// The MTU pods should use.
    pub mtu: u32,
    /// Whether flannel masquerades (weft never does).
    pub ipmasq: bool,
    /// With `EnableIPv6`: the IPv6 overlay network and this node's IPv6
    /// subnet.
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
}

impl SubnetEnv {
    /// The file's text, in flanneld's key order (`WriteSubnetFile`).
    /// FLANNEL_SUBNET is the pod bridge gateway: the subnet's `.1` with the
    /// subnet's prefix; FLANNEL_IPV6_SUBNET likewise (`::1`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some((network, subnet)) = self.ipv4 {
            let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
            s += &format!(
                "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={gw}/{}\n",
                subnet.prefix_len()
            );
        }
        if let Some((network, subnet)) = self.ipv6 {
            let gw = Ipv6Addr::from(u128::from(subnet.network()) + 1);
            s += &format!(
                "FLANNEL_IPV6_NETWORK={network}\nFLANNEL_IPV6_SUBNET={gw}/{}\n",
                subnet.prefix_len()
            );
        }
        s + &format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq)
    }

    /// Writes the file atomically, creating its directory if needed.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, self.render().as_bytes())
    }
}

/// The subnet a previous run wrote into `path`, if any: FLANNEL_SUBNET's
/// network (flanneld reuses it when it is still free).
pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
    previous::<Ipv4Net>(path, "FLANNEL_SUBNET").map(|n| n.trunc())
}

/// The IPv6 subnet a previous run wrote into `path` (FLANNEL_IPV6_SUBNET's
/// network), if any.
pub fn previous_ipv6_subnet(path: &Path) -> Option<Ipv6Net> {
    previous::<Ipv6Net>(path, "FLANNEL_IPV6_SUBNET").map(|n| n.trunc())
}

/// The network a previous run wrote into `path` (FLANNEL_NETWORK), if any.
pub fn previous_network(path: &Path) -> Option<Ipv4Net> {
    previous::<Ipv4Net>(path, "FLANNEL_NETWORK").map(|n| n.trunc())
}

/// The IPv6 network a previous run wrote into `path`
/// (FLANNEL_IPV6_NETWORK), if any.
pub fn previous_ipv6_network(path: &Path) -> Option<Ipv6Net> {
    previous::<Ipv6Net>(path, "FLANNEL_IPV6_NETWORK").map(|n| n.trunc())
}

/// The value of `key` in the subnet.env at `path`, if it is there and
/// parses.
fn previous<T: std::str::FromStr>(path: &Path, key: &str) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim().parse().ok())
}

/// Writes `data` to `path` through a temp file in the same directory and a
/// rename, so readers see either the old or the new file. The temp file's
/// name is random and it is created exclusively (`O_EXCL`, which also
/// refuses a symlink planted there): whoever can write into the directory
/// cannot make weft write through a link it guessed the name of.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_format_and_reads_it_back() {
        let env = SubnetEnv {
            ipv4: Some((
                "10.244.0.0/16".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap(),
            )),
            mtu: 1450,
            ipmasq: false,
            ipv6: None,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        env.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), env.render());
        assert_eq!(previous_subnet(&path), env.ipv4.map(|(_, s)| s));
        assert_eq!(previous_subnet(&dir.path().join("absent")), None);
        // No temp file is left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    /// Dual-stack, as flanneld's documentation shows it.
    #[test]
    fn the_ipv6_lines_come_between_the_ipv4_ones_and_the_mtu() {
        let env = SubnetEnv {
            ipv4: Some((
                "10.42.0.0/16".parse().unwrap(),
                "10.42.0.0/24".parse().unwrap(),
            )),
            mtu: 1450,
            ipmasq: true,
            ipv6: Some((
                "2001:cafe:42::/56".parse().unwrap(),
                "2001:cafe:42::/64".parse().unwrap(),
            )),
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\n\
             FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        env.write(&path).unwrap();
        assert_eq!(previous_ipv6_subnet(&path), Some(env.ipv6.unwrap().1));
        assert_eq!(previous_subnet(&path), env.ipv4.map(|(_, s)| s));
    }

    /// IPv6-only (`"EnableIPv4": false`): no IPv4 lines, as flanneld's
    /// `WriteSubnetFile` writes them only with `EnableIPv4`.
    #[test]
    fn an_ipv6_only_file_has_no_ipv4_lines() {
        let env = SubnetEnv {
            ipv4: None,
            mtu: 1450,
            ipmasq: false,
            ipv6: Some((
                "fd00:10:244::/56".parse().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap(),
            )),
        };
        assert_eq!(
            env.render(),
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        env.write(&path).unwrap();
        assert_eq!(previous_subnet(&path), None);
        assert_eq!(previous_ipv6_subnet(&path), Some(env.ipv6.unwrap().1));
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let path = dir.path().join("subnet.env");
        // The names the old code used: `.subnet.env.<pid>.tmp`.
        for pid in [std::process::id(), 1, 2] {
            let link = dir.path().join(format!(".subnet.env.{pid}.tmp"));
            std::os::unix::fs::symlink(&victim, link).unwrap();
        }
        write_atomic(&path, b"FLANNEL_MTU=1450\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "FLANNEL_MTU=1450\n"
        );
    }
}
