//! Masquerading and forwarding rules (`--ip-masq`,
//! `--iptables-forward-rules`), as flanneld installs them: pods reach the
//! outside with the node's address, pod-to-pod traffic across nodes keeps
//! the pod address, the rules come back when removed by hand, and they go
//! when weft exits. Their equality with a real flanneld's is in `etcd.rs`.

mod common;
use common::*;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;
use weft_testbed::{Cluster, Netns};

/// What `ns` sees as the source of one datagram sent from `from` (an
/// address of `sender`) to `to`:7000.
fn source_seen(sender: &Netns, from: Ipv4Addr, ns: &Netns, to: Ipv4Addr) -> Option<Ipv4Addr> {
    let listener = ns
        .enter(move || UdpSocket::bind((to, 7000)).unwrap())
        .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    sender
        .enter(move || {
            let s = UdpSocket::bind((from, 0)).unwrap();
            s.send_to(b"who am I", (to, 7000)).unwrap();
        })
        .unwrap();
    let mut buf = [0u8; 16];
    match listener.recv_from(&mut buf).ok()?.1 {
        std::net::SocketAddr::V4(a) => Some(*a.ip()),
        _ => None,
    }
}

fn iptables_save(ns: &Netns) -> String {
    let out = ns.exec("iptables-save", &[]).unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn pods_are_masqueraded_to_the_outside_only() {
    let mut c = Cluster::new("mq", 2, &net_conf("vxlan")).unwrap();
    start_all(
        &mut c,
        &[
            "--ip-masq",
            "--iptables-resync",
            "1",
            "--metrics-addr",
            "127.0.0.1:9153",
        ],
    );
    let (pod0, pod1) = (c.nodes[0].pod_ip().unwrap(), c.nodes[1].pod_ip().unwrap());
    assert!(wait_ping(&c.nodes[0].ns, pod1));
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");

    // An address outside the cluster network, on the hub.
    let outside = Ipv4Addr::new(192, 168, 100, 254);
    c.hub
        .ip(&["addr", "add", "192.168.100.254/24", "dev", "br0"])
        .unwrap();
    let seen = source_seen(&c.nodes[0].ns, pod0, &c.hub, outside);
    assert_eq!(
        seen,
        Some(c.nodes[0].underlay),
        "a pod's packet to the outside was not masqueraded"
    );
    // Pod to pod across nodes keeps the pod's address (the receiving weft
    // would drop a node address as a spoofed inner source anyway).
    let seen = source_seen(&c.nodes[0].ns, pod0, &c.nodes[1].ns, pod1);
    assert_eq!(seen, Some(pod0), "pod-to-pod traffic was masqueraded");

    // A rule removed by hand is back within the resync period, in order.
    let before = iptables_save(&c.nodes[0].ns);
    let last = before
        .lines()
        .rfind(|l| l.starts_with("-A FLANNEL-POSTRTG"))
        .unwrap()
        .to_string();
    let mut del: Vec<String> = vec!["-t".into(), "nat".into()];
    del.extend(shell_words(&last.replacen("-A", "-D", 1)));
    let del: Vec<&str> = del.iter().map(String::as_str).collect();
    c.nodes[0].ns.exec("iptables", &del).unwrap();
    assert_ne!(iptables_save(&c.nodes[0].ns), before);
    let back = Cluster::wait_for(Duration::from_secs(4), || {
        rules_of(&iptables_save(&c.nodes[0].ns)) == rules_of(&before)
    });
    assert!(
        back,
        "the rule was not put back:\n{}",
        iptables_save(&c.nodes[0].ns)
    );

    // On exit: every rule and chain of weft's is gone.
    assert!(c.nodes[0].stop().unwrap().success());
    let after = iptables_save(&c.nodes[0].ns);
    assert!(!after.contains("FLANNEL-"), "{after}");
    assert!(!after.contains("flanneld"), "{after}");
}

/// The `-A` lines of an `iptables-save` dump.
fn rules_of(dump: &str) -> Vec<String> {
    dump.lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

/// Splits an iptables-save rule into words, keeping quoted ones whole.
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn forwarding_rules_by_default_and_not_when_turned_off() {
    let mut c = Cluster::new("mf", 2, &net_conf("vxlan")).unwrap();
    c.start(0, weft(), &[]).unwrap();
    c.start(1, weft(), &["--iptables-forward-rules=false"])
        .unwrap();
    let dump = iptables_save(&c.nodes[0].ns);
    for line in [
        "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
        "-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
        "-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
    ] {
        assert!(dump.contains(line), "{line} missing:\n{dump}");
    }
    assert!(
        !dump.contains("FLANNEL-POSTRTG"),
        "masquerading without --ip-masq:\n{dump}"
    );
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=false\n"), "{env}");
    let off = iptables_save(&c.nodes[1].ns);
    assert!(!off.contains("FLANNEL-"), "{off}");
    for i in 0..2 {
        assert!(c.nodes[i].stop().unwrap().success());
    }
    assert!(!iptables_save(&c.nodes[0].ns).contains("FLANNEL-"));
}

/// `EnableNFTables`: the same masquerading and forwarding in nftables
/// (table `ip flannel-ipv4`), the same behaviour on the wire, and the
/// tables gone after exit.
#[test]
fn nftables_masquerading_and_forwarding() {
    let conf = r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
    let mut c = Cluster::new("mn", 2, conf).unwrap();
    start_all(&mut c, &["--ip-masq", "--iptables-resync", "1"]);
    let (pod0, pod1) = (c.nodes[0].pod_ip().unwrap(), c.nodes[1].pod_ip().unwrap());
    assert!(wait_ping(&c.nodes[0].ns, pod1));
    let list = |ns: &Netns| {
        let o = ns.exec("nft", &["list", "ruleset"]).unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let rules = list(&c.nodes[0].ns);
    let sub = c.nodes[0].subnet().unwrap().to_string();
    for line in [
        "table ip flannel-ipv4 {".to_string(),
        "chain postrtg {".into(),
        format!("ip saddr {sub} ip daddr 10.244.0.0/16 return"),
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random".into(),
        "chain forward {".into(),
        "ip saddr 10.244.0.0/16 accept".into(),
    ] {
        assert!(rules.contains(&line), "{line} missing:\n{rules}");
    }
    assert!(!c.nodes[0]
        .ns
        .exec("iptables-save", &[])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("FLANNEL-"))
        .unwrap_or(false));
    let outside = Ipv4Addr::new(192, 168, 100, 254);
    c.hub
        .ip(&["addr", "add", "192.168.100.254/24", "dev", "br0"])
        .unwrap();
    assert_eq!(
        source_seen(&c.nodes[0].ns, pod0, &c.hub, outside),
        Some(c.nodes[0].underlay)
    );
    assert_eq!(
        source_seen(&c.nodes[0].ns, pod0, &c.nodes[1].ns, pod1),
        Some(pod0)
    );
    // A flushed chain is written again within the resync period.
    c.nodes[0]
        .ns
        .exec("nft", &["flush", "chain", "ip", "flannel-ipv4", "postrtg"])
        .unwrap();
    assert!(Cluster::wait_for(Duration::from_secs(4), || list(
        &c.nodes[0].ns
    ) == rules));
    assert!(c.nodes[0].stop().unwrap().success());
    assert!(
        !list(&c.nodes[0].ns).contains("flannel"),
        "{}",
        list(&c.nodes[0].ns)
    );
}

/// A weft killed with its masquerading rules in place, restarted on
/// another subnet: the old subnet's rules go, the new one's come.
#[test]
fn rules_of_a_previous_subnet_are_removed() {
    let mut c = Cluster::new("mp", 1, &net_conf("vxlan")).unwrap();
    c.start(0, weft(), &["--ip-masq"]).unwrap();
    let old = c.nodes[0].subnet().unwrap().to_string();
    c.nodes[0].kill();
    assert!(
        iptables_save(&c.nodes[0].ns).contains(&old),
        "no rules to leave behind"
    );
    // Another node takes the old subnet, so the restart gets a new one.
    let lease = c.lease_path(0).unwrap();
    std::fs::write(&lease, r#"{"PublicIP":"192.168.100.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:77"}}"#).unwrap();
    // The testbed removes a node's subnet.env before it starts weft; a
    // real restart finds the old one, which names the previous subnet.
    let env = c.dir.path().join("kept-subnet.env");
    std::fs::copy(&c.nodes[0].subnet_file, &env).unwrap();
    let env_arg = env.to_str().unwrap().to_string();
    c.spawn(0, weft(), &["--ip-masq", "--subnet-file", &env_arg])
        .unwrap();
    let restarted = Cluster::wait_for(Duration::from_secs(10), || {
        weft_routes::subnet_env::previous_subnet(&env).is_some_and(|s| s.to_string() != old)
    });
    assert!(restarted, "{}", c.nodes[0].log_text());
    let new = weft_routes::subnet_env::previous_subnet(&env)
        .unwrap()
        .to_string();
    let rules = iptables_save(&c.nodes[0].ns);
    assert!(
        !rules.contains(&old),
        "the old subnet's rules stayed:\n{rules}"
    );
    assert_eq!(rules.matches(&new).count(), 3, "{rules}");
    assert!(c.nodes[0].stop().unwrap().success());
}
