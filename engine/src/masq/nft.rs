//! The same rules in nftables, as flanneld writes them with `EnableNFTables`
//! (flannel's `pkg/trafficmngr/nftables/nftables.go`, through knftables):
//! tables `ip flannel-ipv4` and `ip6 flannel-ipv6` (both created, as
//! flanneld does, whichever families are enabled), each with chain
//! `postrtg` (nat, postrouting, srcnat) and chain `forward` (filter,
//! forward, filter) for its family, flushed and written in one `nft -f -`
//! transaction.

use super::MasqError;
use ipnet::IpNet;
use std::io::Write;
use std::process::{Command, Stdio};

/// flanneld's IPv4 table.
pub const TABLE: &str = "flannel-ipv4";
/// flanneld's IPv6 table.
pub const TABLE6: &str = "flannel-ipv6";

/// What to write: masquerading for (network, our subnet, fully-random)
/// and forwarding for the network, in each family enabled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// `--ip-masq`: one entry per family.
    pub masq: Vec<(IpNet, IpNet, bool)>,
    /// `--iptables-forward-rules`: one network per family.
    pub forward: Vec<IpNet>,
}

/// nft's family keyword, flanneld's table and the address keyword
/// (`ip saddr`, `ip6 saddr`) of `net`'s family.
fn family_of(net: IpNet) -> (&'static str, &'static str) {
    match net {
        IpNet::V4(_) => ("ip", TABLE),
        IpNet::V6(_) => ("ip6", TABLE6),
    }
}

impl Rules {
    /// The chains this writes (family, table, chain), with how many rules
    /// each holds.
    fn chains(&self) -> Vec<((&'static str, &'static str, &'static str), usize)> {
        let mut v = Vec::new();
        for (net, ..) in &self.masq {
            let (f, t) = family_of(*net);
            v.push(((f, t, "postrtg"), 6));
        }
        for net in &self.forward {
            let (f, t) = family_of(*net);
            v.push(((f, t, "forward"), 2));
        }
        v
    }

    /// The `nft -f` script: tables, chains (flushed), rules.
    pub fn script(&self) -> String {
        let mut s = String::new();
        for (family, table) in [("ip", TABLE), ("ip6", TABLE6)] {
            s.push_str(&format!(
                "add table {family} {table} {{ comment \"rules for {table}\" ; }}\n"
            ));
        }
        for &(net, pod, random_fully) in &self.masq {
            let (f, t) = family_of(net);
            let multicast = match net {
                IpNet::V4(_) => "224.0.0.0/4",
                IpNet::V6(_) => "ff00::/8",
            };
            let masquerade = if random_fully {
                "masquerade fully-random"
            } else {
                "masquerade"
            };
            s.push_str(&format!(
                "add chain {f} {t} postrtg {{ type nat hook postrouting priority srcnat ; comment \"chain to manage traffic masquerading by flannel\" ; }}\n\
                 flush chain {f} {t} postrtg\n\
                 add rule {f} {t} postrtg meta mark 0x4000 return\n\
                 add rule {f} {t} postrtg {f} saddr {pod} {f} daddr {net} return\n\
                 add rule {f} {t} postrtg {f} saddr {net} {f} daddr {pod} return\n\
                 add rule {f} {t} postrtg {f} saddr != {pod} {f} daddr {net} return\n\
                 add rule {f} {t} postrtg {f} saddr {net} {f} daddr != {multicast} {masquerade}\n\
                 add rule {f} {t} postrtg {f} saddr != {net} {f} daddr {net} {masquerade}\n"
            ));
        }
        for &net in &self.forward {
            let (f, t) = family_of(net);
            s.push_str(&format!(
                "add chain {f} {t} forward {{ type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }}\n\
                 flush chain {f} {t} forward\n\
                 add rule {f} {t} forward {f} saddr {net} accept\n\
                 add rule {f} {t} forward {f} daddr {net} accept\n"
            ));
        }
        s
    }

    /// Writes the rules if a chain is missing or holds another number of
    /// rules than it should. Returns true if it wrote.
    pub fn ensure(&self) -> Result<bool, MasqError> {
        let mut intact = true;
        for ((family, table, chain), want) in self.chains() {
            let out = nft(&["list", "chain", family, table, chain], None)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let rules = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("ip ") || l.starts_with("ip6 ") || l.starts_with("meta "))
                .count();
            intact &= out.status.success() && rules == want;
        }
        if intact {
            return Ok(false);
        }
        let out = nft(&["-f", "-"], Some(&self.script()))?;
        if !out.status.success() {
            return Err(MasqError::Failed {
                what: "nft -f -".into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(true)
    }

    /// Deletes flanneld's tables, as flanneld's clean-up does.
    pub fn remove(&self) -> Result<(), MasqError> {
        for (family, table) in [("ip", TABLE), ("ip6", TABLE6)] {
            nft(&["delete", "table", family, table], None)?;
        }
        Ok(())
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<std::process::Output, MasqError> {
    let spawn = |error| MasqError::Spawn {
        program: "nft",
        error,
    };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    child.wait_with_output().map_err(spawn)
}
