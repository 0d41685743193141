//! The rules in iptables (and ip6tables), written through
//! `iptables-restore --noflush`.

use super::MasqError;
use ipnet::IpNet;
use std::io::Write;
use std::process::{Command, Stdio};

/// The mark kube-proxy puts on packets it already masquerades.
const KUBE_PROXY_MARK: &str = "0x4000/0x4000";
/// The chain the masquerading rules live in (table nat).
pub const POSTRTG: &str = "FLANNEL-POSTRTG";
/// The chain the forwarding rules live in (table filter).
pub const FWD: &str = "FLANNEL-FWD";

/// One rule: `-A <chain> <spec…>` in `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// nat or filter.
    pub table: &'static str,
    /// The chain it is appended to.
    pub chain: &'static str,
    /// Matches and target.
    pub spec: Vec<String>,
}

fn rule(table: &'static str, chain: &'static str, spec: &[&str]) -> Rule {
    Rule {
        table,
        chain,
        spec: spec.iter().map(|s| s.to_string()).collect(),
    }
}

/// flanneld's masquerading rules for `network` (the cluster's) and
/// `subnet` (this node's lease) of one family, in its order (its
/// `masqRules` and `masqIP6Rules`, which differ only in the multicast
/// range). `random_fully` adds `--random-fully` to the MASQUERADE
/// targets.
pub fn masq_rules(network: IpNet, subnet: IpNet, random_fully: bool) -> Vec<Rule> {
    let (net, pod) = (network.to_string(), subnet.to_string());
    let multicast = match network {
        IpNet::V4(_) => "224.0.0.0/4",
        IpNet::V6(_) => "ff00::/8",
    };
    let c = ["-m", "comment", "--comment", "flanneld masq"];
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter()
            .chain(c.iter())
            .chain(tail.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let masq: &[&str] = if random_fully {
        &["-j", "MASQUERADE", "--random-fully"]
    } else {
        &["-j", "MASQUERADE"]
    };
    let r = |spec: Vec<String>| Rule {
        table: "nat",
        chain: POSTRTG,
        spec,
    };
    vec![
        // Jump first, so the node's other rules see already-decided traffic.
        Rule {
            table: "nat",
            chain: "POSTROUTING",
            spec: with(&[], &["-j", POSTRTG]),
        },
        // kube-proxy masquerades what it marked: never twice.
        r(with(
            &["-m", "mark", "--mark", KUBE_PROXY_MARK],
            &["-j", "RETURN"],
        )),
        // Pod to pod stays unmasqueraded, both ways.
        r(with(&["-s", &pod, "-d", &net], &["-j", "RETURN"])),
        r(with(&["-s", &net, "-d", &pod], &["-j", "RETURN"])),
        // Outside traffic arriving for our pods keeps its source.
        r(with(&["!", "-s", &net, "-d", &pod], &["-j", "RETURN"])),
        // Pods to the outside, multicast excepted.
        r(with(&["-s", &net, "!", "-d", multicast], masq)),
        // The host to the overlay.
        r(with(&["!", "-s", &net, "-d", &net], masq)),
    ]
}

/// flanneld's forwarding rules for `network`, of either family.
pub fn forward_rules(network: IpNet) -> Vec<Rule> {
    let net = network.to_string();
    let c = ["-m", "comment", "--comment", "flanneld forward"];
    let mut jump = c.to_vec();
    jump.extend(["-j", FWD]);
    let mut src = vec!["-s", net.as_str()];
    src.extend(c);
    src.extend(["-j", "ACCEPT"]);
    let mut dst = vec!["-d", net.as_str()];
    dst.extend(c);
    dst.extend(["-j", "ACCEPT"]);
    vec![
        rule("filter", "FORWARD", &jump),
        rule("filter", FWD, &src),
        rule("filter", FWD, &dst),
    ]
}

/// The iptables-restore input that writes `rules` in order: each rule
/// that exists already (`existing[i]`) is deleted first, so the set ends
/// up contiguous and ordered. Comments are quoted.
pub fn restore_payload(rules: &[Rule], existing: &[bool]) -> String {
    let mut out = String::new();
    let mut tables: Vec<&str> = Vec::new();
    for r in rules {
        if !tables.contains(&r.table) {
            tables.push(r.table);
        }
    }
    for t in tables {
        out.push_str(&format!("*{t}\n"));
        for (r, &exists) in rules.iter().zip(existing).filter(|(r, _)| r.table == t) {
            let spec = quote(&r.spec);
            if exists {
                out.push_str(&format!("-D {} {spec}\n", r.chain));
            }
            out.push_str(&format!("-A {} {spec}\n", r.chain));
        }
        out.push_str("COMMIT\n");
    }
    out
}

fn quote(spec: &[String]) -> String {
    let mut words = Vec::with_capacity(spec.len());
    for (i, w) in spec.iter().enumerate() {
        if i > 0 && spec[i - 1] == "--comment" {
            words.push(format!("\"{w}\""));
        } else {
            words.push(w.clone());
        }
    }
    words.join(" ")
}

/// The `iptables` and `iptables-restore` programs of this node, or their
/// IPv6 twins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iptables {
    program: &'static str,
    restore: &'static str,
}

impl Iptables {
    /// `iptables`, for IPv4 rules.
    pub const V4: Iptables = Iptables {
        program: "iptables",
        restore: "iptables-restore",
    };
    /// `ip6tables`, for IPv6 rules.
    pub const V6: Iptables = Iptables {
        program: "ip6tables",
        restore: "ip6tables-restore",
    };

    /// The programs for `net`'s family.
    pub fn for_net(net: IpNet) -> Iptables {
        match net {
            IpNet::V4(_) => Iptables::V4,
            IpNet::V6(_) => Iptables::V6,
        }
    }

    fn run(&self, args: &[&str]) -> Result<std::process::Output, MasqError> {
        Command::new(self.program)
            .arg("-w")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| MasqError::Spawn {
                program: self.program,
                error,
            })
    }

    /// True if iptables has `--random-fully` (1.6.2 and later), as
    /// go-iptables' HasRandomFully decides for flanneld.
    pub fn has_random_fully(&self) -> Result<bool, MasqError> {
        let out = self.run(&["--version"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version: Vec<u32> = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('v'))
            .unwrap_or("0")
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        Ok(version >= vec![1, 6, 2])
    }

    fn chain_exists(&self, table: &str, chain: &str) -> Result<bool, MasqError> {
        Ok(self.run(&["-t", table, "-S", chain])?.status.success())
    }

    fn exists(&self, r: &Rule) -> Result<bool, MasqError> {
        let mut args = vec!["-t", r.table, "-C", r.chain];
        args.extend(r.spec.iter().map(String::as_str));
        Ok(self.run(&args)?.status.success())
    }

    /// Makes sure `rules` are in place, in order: if any is missing (or
    /// its chain is), writes them all again. Returns true if it wrote.
    pub fn ensure(&self, rules: &[Rule]) -> Result<bool, MasqError> {
        let mut existing = Vec::with_capacity(rules.len());
        for r in rules {
            for chain in [r.chain, jump_target(r)] {
                if is_ours(chain) && !self.chain_exists(r.table, chain)? {
                    let out = self.run(&["-t", r.table, "-N", chain])?;
                    if !out.status.success() && !self.chain_exists(r.table, chain)? {
                        let what = format!("{} -t {} -N {chain}", self.program, r.table);
                        return Err(failed(&what, &out));
                    }
                }
            }
            existing.push(self.exists(r)?);
        }
        if existing.iter().all(|&e| e) {
            return Ok(false);
        }
        let payload = restore_payload(rules, &existing);
        let mut child = Command::new(self.restore)
            .args(["--noflush", "-w"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| MasqError::Spawn {
                program: self.restore,
                error,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(payload.as_bytes());
        }
        let out = child.wait_with_output().map_err(|error| MasqError::Spawn {
            program: self.restore,
            error,
        })?;
        if !out.status.success() {
            return Err(failed(&format!("{} --noflush", self.restore), &out));
        }
        Ok(true)
    }

    /// Deletes `rules` where they exist, then weft's chains they used
    /// (emptied first). Absent rules and chains are fine.
    pub fn remove(&self, rules: &[Rule]) -> Result<(), MasqError> {
        for r in rules {
            if self.exists(r)? {
                let mut args = vec!["-t", r.table, "-D", r.chain];
                args.extend(r.spec.iter().map(String::as_str));
                let out = self.run(&args)?;
                if !out.status.success() {
                    return Err(failed(
                        &format!("{} -t {} -D {}", self.program, r.table, r.chain),
                        &out,
                    ));
                }
            }
        }
        for r in rules.iter().filter(|r| is_ours(r.chain)) {
            if self.chain_exists(r.table, r.chain)? {
                self.run(&["-t", r.table, "-F", r.chain])?;
                self.run(&["-t", r.table, "-X", r.chain])?;
            }
        }
        Ok(())
    }
}

/// The chain a rule jumps to (`-j X`), or "".
fn jump_target(r: &Rule) -> &'static str {
    match r
        .spec
        .iter()
        .position(|w| w == "-j")
        .and_then(|i| r.spec.get(i + 1))
    {
        Some(t) if t == POSTRTG => POSTRTG,
        Some(t) if t == FWD => FWD,
        _ => "",
    }
}

fn is_ours(chain: &str) -> bool {
    chain == POSTRTG || chain == FWD
}

fn failed(what: &str, out: &std::process::Output) -> MasqError {
    MasqError::Failed {
        what: what.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masq_rules_are_flanneld_s() {
        let rules = masq_rules(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.7.0/24".parse().unwrap(),
            true,
        );
        let payload = restore_payload(&rules, &vec![false; rules.len()]);
        assert_eq!(
            payload,
            "*nat\n\
             -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN\n\
             -A FLANNEL-POSTRTG -s 10.244.7.0/24 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN\n\
             -A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment \"flanneld masq\" -j RETURN\n\
             -A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment \"flanneld masq\" -j RETURN\n\
             -A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
             -A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
             COMMIT\n"
        );
    }

    /// flanneld's `masqIP6Rules`: the IPv4 set, with IPv6 prefixes and
    /// ff00::/8 as the multicast range left alone.
    #[test]
    fn ipv6_masq_rules_are_flanneld_s() {
        let rules = masq_rules(
            "fd00:10:244::/56".parse().unwrap(),
            "fd00:10:244:7::/64".parse().unwrap(),
            false,
        );
        let payload = restore_payload(&rules, &vec![false; rules.len()]);
        assert_eq!(
            payload,
            "*nat\n\
             -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN\n\
             -A FLANNEL-POSTRTG -s fd00:10:244:7::/64 -d fd00:10:244::/56 -m comment --comment \"flanneld masq\" -j RETURN\n\
             -A FLANNEL-POSTRTG -s fd00:10:244::/56 -d fd00:10:244:7::/64 -m comment --comment \"flanneld masq\" -j RETURN\n\
             -A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244:7::/64 -m comment --comment \"flanneld masq\" -j RETURN\n\
             -A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE\n\
             -A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244::/56 -m comment --comment \"flanneld masq\" -j MASQUERADE\n\
             COMMIT\n"
        );
        assert_eq!(Iptables::for_net(rules_net()), Iptables::V6);
    }

    fn rules_net() -> IpNet {
        "fd00::/8".parse().unwrap()
    }

    #[test]
    fn existing_rules_are_deleted_before_they_are_appended_again() {
        let rules = forward_rules("10.244.0.0/16".parse().unwrap());
        let payload = restore_payload(&rules, &[true, false, true]);
        assert_eq!(
            payload,
            "*filter\n\
             -D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -D FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             COMMIT\n"
        );
        let plain = masq_rules(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.7.0/24".parse().unwrap(),
            false,
        );
        assert!(plain
            .iter()
            .all(|r| !r.spec.contains(&"--random-fully".to_string())));
    }
}
