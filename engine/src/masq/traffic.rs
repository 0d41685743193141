//! The rule sets a node keeps in place (flanneld's `--ip-masq` and
//! `--iptables-forward-rules`): installed at start, put back once per
//! resync period when someone removed them, removed at stop.

use super::{forward_rules, masq_rules, nft, Iptables, MasqError, Rule};
use anyhow::Context;
use ipnet::IpNet;
use std::time::Duration;

/// flanneld's `--ip-masq`, `--iptables-forward-rules` and friends.
#[derive(Debug, Clone, Copy)]
pub struct TrafficOptions {
    /// Install the masquerading rules.
    pub ip_masq: bool,
    /// `--random-fully` on MASQUERADE (where iptables has it).
    pub random_fully: bool,
    /// Install the forwarding rules.
    pub forward_rules: bool,
    /// Keep a blackhole route for our subnet (`--ip-blackhole-route`).
    pub blackhole_route: bool,
    /// How often the rules are checked and put back.
    pub resync: Duration,
}

impl Default for TrafficOptions {
    /// No rules at all (for tools that start weft themselves).
    fn default() -> Self {
        TrafficOptions {
            ip_masq: false,
            random_fully: true,
            forward_rules: false,
            blackhole_route: false,
            resync: Duration::from_secs(5),
        }
    }
}

/// The rule sets weft keeps in place, and when it last checked them.
pub(crate) struct Traffic {
    rules: RuleSets,
    resync: Duration,
    last: tokio::time::Instant,
}

/// Where the rules live.
enum RuleSets {
    /// iptables or ip6tables: (what, which programs, rules) per set.
    Iptables(Vec<(&'static str, Iptables, Vec<Rule>)>),
    /// nftables (`EnableNFTables`): flanneld's tables, written whole.
    Nftables(nft::Rules),
}

/// One family's half of the overlay, as the rules see it: the network,
/// our subnet in it, and what the last run's subnet.env said of them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FamilyNets {
    /// `Network` or `IPv6Network`.
    pub network: IpNet,
    /// Our subnet in it.
    pub subnet: IpNet,
    /// The last run's network and subnet, when subnet.env named them.
    pub previous: Option<(IpNet, IpNet)>,
}

impl Traffic {
    /// Installs the rules `t` asks for in each family of `nets` (IPv4
    /// first, IPv6 with `EnableIPv6`), first removing masquerading rules a
    /// previous run left for another network or subnet. Masquerading that
    /// cannot be installed is fatal (pods would lose the outside
    /// silently); forwarding rules are warned about, as flanneld does.
    pub fn start(
        t: TrafficOptions,
        enable_nftables: bool,
        nets: &[FamilyNets],
    ) -> anyhow::Result<Option<Traffic>> {
        if enable_nftables {
            if !t.ip_masq && !t.forward_rules {
                return Ok(None);
            }
            let rules = nft::Rules {
                masq: match t.ip_masq {
                    true => nets
                        .iter()
                        .map(|n| (n.network, n.subnet, t.random_fully))
                        .collect(),
                    false => Vec::new(),
                },
                forward: match t.forward_rules {
                    true => nets.iter().map(|n| n.network).collect(),
                    false => Vec::new(),
                },
            };
            // The tables are rewritten whole (chains flushed), so rules of a
            // previous network or subnet cannot survive.
            match rules.ensure() {
                Ok(_) => {
                    for n in nets {
                        tracing::info!(network = %n.network, subnet = %n.subnet, ip_masq = t.ip_masq, forward = t.forward_rules, "nftables rules in place (tables ip flannel-ipv4, ip6 flannel-ipv6)")
                    }
                }
                Err(e) if t.ip_masq => {
                    return Err(e).context("cannot install the masquerading rules in nftables")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the forwarding rules in nftables; FORWARD is left as it is");
                    return Ok(None);
                }
            }
            return Ok(Some(Traffic {
                rules: RuleSets::Nftables(rules),
                resync: t.resync,
                last: tokio::time::Instant::now(),
            }));
        }
        let mut sets = Vec::new();
        if t.ip_masq {
            for n in nets {
                let ipt = Iptables::for_net(n.network);
                let rf = t.random_fully && ipt.has_random_fully().context("--ip-masq")?;
                if let Some((net, sub)) = n.previous {
                    if (net, sub) != (n.network, n.subnet) {
                        tracing::info!(previous_network = %net, previous_subnet = %sub, "network or subnet changed since the last run: removing its masquerading rules");
                        if let Err(e) = ipt.remove(&masq_rules(net, sub, rf)) {
                            tracing::warn!(error = %e, "cannot remove the previous masquerading rules");
                        }
                    }
                }
                let rules = masq_rules(n.network, n.subnet, rf);
                ipt.ensure(&rules)
                    .context("cannot install the masquerading rules")?;
                tracing::info!(network = %n.network, subnet = %n.subnet, random_fully = rf, "masquerading rules in place (nat FLANNEL-POSTRTG)");
                sets.push(("masquerading", ipt, rules));
            }
        }
        if t.forward_rules {
            for n in nets {
                let rules = forward_rules(n.network);
                let ipt = Iptables::for_net(n.network);
                match ipt.ensure(&rules) {
                    Ok(_) => {
                        tracing::info!(network = %n.network, "forwarding rules in place (filter FLANNEL-FWD)");
                        sets.push(("forwarding", ipt, rules));
                    }
                    Err(e) => {
                        tracing::warn!(network = %n.network, error = %e, "cannot install the forwarding rules; FORWARD is left as it is")
                    }
                }
            }
        }
        Ok((!sets.is_empty()).then(|| Traffic {
            rules: RuleSets::Iptables(sets),
            resync: t.resync,
            last: tokio::time::Instant::now(),
        }))
    }

    /// Puts back what someone removed, once per resync period.
    pub fn resync(&mut self) {
        if self.last.elapsed() < self.resync {
            return;
        }
        self.last = tokio::time::Instant::now();
        let report = |what: &str, r: Result<bool, MasqError>| match r {
            Ok(true) => tracing::warn!("some {what} rules were missing; wrote them all again"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the {what} rules"),
        };
        match &self.rules {
            RuleSets::Nftables(n) => report("nftables", n.ensure()),
            RuleSets::Iptables(sets) => {
                for (what, ipt, rules) in sets {
                    report(what, ipt.ensure(rules));
                }
            }
        }
    }

    /// Removes every rule and chain weft installed.
    pub fn remove(&self) {
        let report = |what: &str, r: Result<(), MasqError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot remove the {what} rules");
            }
        };
        match &self.rules {
            RuleSets::Nftables(n) => report("nftables", n.remove()),
            RuleSets::Iptables(sets) => {
                for (what, ipt, rules) in sets {
                    report(what, ipt.remove(rules));
                }
            }
        }
    }
}
