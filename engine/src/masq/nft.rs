//! The same rules in nftables, as flanneld writes them with `EnableNFTables`
//! (flannel's `pkg/trafficmngr/nftables/nftables.go`, through knftables):
//! table `ip flannel-ipv4` (and an empty `ip6 flannel-ipv6`, which flanneld
//! creates as well), chain `postrtg` (nat, postrouting, srcnat) and chain
//! `forward` (filter, forward, filter), each flushed and written in one
//! `nft -f -` transaction.

use super::MasqError;
use ipnet::Ipv4Net;
use std::io::Write;
use std::process::{Command, Stdio};

/// flanneld's IPv4 table.
pub const TABLE: &str = "flannel-ipv4";
/// flanneld's IPv6 table (created empty: weft has no IPv6 overlay).
pub const TABLE6: &str = "flannel-ipv6";

/// What to write: masquerading for (network, our subnet, fully-random),
/// forwarding for the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `--ip-masq`.
    pub masq: Option<(Ipv4Net, Ipv4Net, bool)>,
    /// `--iptables-forward-rules`.
    pub forward: Option<Ipv4Net>,
}

impl Rules {
    /// The chains this writes, with how many rules each holds.
    fn chains(&self) -> Vec<(&'static str, usize)> {
        let mut v = Vec::new();
        if self.masq.is_some() {
            v.push(("postrtg", 6));
        }
        if self.forward.is_some() {
            v.push(("forward", 2));
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
        if let Some((net, pod, random_fully)) = self.masq {
            let masquerade = if random_fully {
                "masquerade fully-random"
            } else {
                "masquerade"
            };
            s.push_str(&format!(
                "add chain ip {TABLE} postrtg {{ type nat hook postrouting priority srcnat ; comment \"chain to manage traffic masquerading by flannel\" ; }}\n\
                 flush chain ip {TABLE} postrtg\n\
                 add rule ip {TABLE} postrtg meta mark 0x4000 return\n\
                 add rule ip {TABLE} postrtg ip saddr {pod} ip daddr {net} return\n\
                 add rule ip {TABLE} postrtg ip saddr {net} ip daddr {pod} return\n\
                 add rule ip {TABLE} postrtg ip saddr != {pod} ip daddr {net} return\n\
                 add rule ip {TABLE} postrtg ip saddr {net} ip daddr != 224.0.0.0/4 {masquerade}\n\
                 add rule ip {TABLE} postrtg ip saddr != {net} ip daddr {net} {masquerade}\n"
            ));
        }
        if let Some(net) = self.forward {
            s.push_str(&format!(
                "add chain ip {TABLE} forward {{ type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }}\n\
                 flush chain ip {TABLE} forward\n\
                 add rule ip {TABLE} forward ip saddr {net} accept\n\
                 add rule ip {TABLE} forward ip daddr {net} accept\n"
            ));
        }
        s
    }

    /// Writes the rules if a chain is missing or holds another number of
    /// rules than it should. Returns true if it wrote.
    pub fn ensure(&self) -> Result<bool, MasqError> {
        let mut intact = true;
        for (chain, want) in self.chains() {
            let out = nft(&["list", "chain", "ip", TABLE, chain], None)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let rules = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("ip ") || l.starts_with("meta "))
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
