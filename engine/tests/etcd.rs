//! weft on a real etcd with flannel's key layout: several nodes, a
//! kernel-VXLAN flannel node whose lease is put by hand with etcdctl, key
//! deletion, etcd outages and compaction. Needs `--features etcd` and the
//! etcd and etcdctl binaries (Debian: etcd-server, etcd-client).

#![cfg(feature = "etcd")]

mod common;
use common::*;
use std::time::Duration;
use weft_testbed::{ping6, Cluster, ETCD_PREFIX};

fn etcd_cluster(tag: &str, nodes: usize) -> Cluster {
    let mut c = Cluster::new(tag, nodes, &net_conf("vxlan")).expect("testbed");
    c.start_etcd().expect("etcd starts");
    c
}

fn route_gone(c: &Cluster, i: usize, subnet: &str) -> bool {
    c.nodes[i]
        .ns
        .ip(&["route", "show", subnet])
        .map(|o| o.stdout.is_empty())
        .unwrap_or(false)
}

/// Does `etcdctl get KEY -w json` show an etcd lease on the key?
fn has_lease(c: &Cluster, key: &str) -> bool {
    let out = c.etcdctl(&["get", key, "-w", "json"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("\"lease\":") && !text.contains("\"lease\":0")
}

#[test]
fn three_nodes_on_etcd_with_flannels_keys() {
    let mut c = etcd_cluster("e3", 2);
    for i in 0..2 {
        c.start(i, weft(), &["--metrics-addr", "127.0.0.1:9153"])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    assert!(
        wait_ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap()),
        "{}",
        c.nodes[0].log_text()
    );
    let n2 = c.add_node("e3").unwrap();
    c.start(n2, weft(), &[]).unwrap();
    c.nodes[n2].add_pod_bridge().unwrap();
    assert!(wait_ping(&c.nodes[0].ns, c.nodes[n2].pod_ip().unwrap()));
    assert!(wait_ping(&c.nodes[n2].ns, c.nodes[1].pod_ip().unwrap()));
    transfer(&c, 0, 2, 5, 5001);
    // Every lease is flannel's JSON at flannel's key, on a 24 h etcd lease.
    for i in 0..3 {
        let key = c.etcd_key(i).unwrap();
        let v = c.etcdctl(&["get", &key, "--print-value-only"]).unwrap();
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(
            text.starts_with(r#"{"PublicIP":"192.168.100."#),
            "{key}: {text}"
        );
        assert!(text.contains(r#""BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":""#));
        assert!(has_lease(&c, &key), "{key} has no etcd lease");
    }
    for i in 0..3 {
        assert!(
            c.nodes[i].stop().unwrap().success(),
            "{}",
            c.nodes[i].log_text()
        );
    }
}

#[test]
fn kernel_flannel_node_lease_put_with_etcdctl() {
    let mut c = etcd_cluster("ek", 2);
    let ksub: ipnet::Ipv4Net = "10.244.200.0/24".parse().unwrap();
    // The kernel node as flanneld would set it up, its lease written with
    // etcdctl on a granted lease, exactly as flanneld writes it.
    let file = c.nodes[1].become_kernel_vxlan(&c.registry, ksub).unwrap();
    c.nodes[1].add_pod_bridge().unwrap();
    let value = std::fs::read_to_string(file).unwrap();
    let grant = c.etcdctl(&["lease", "grant", "86400"]).unwrap();
    let id = String::from_utf8_lossy(&grant.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    c.etcdctl(&[
        "put",
        &format!("--lease={id}"),
        &format!("{ETCD_PREFIX}/subnets/10.244.200.0-24"),
        &value,
    ])
    .unwrap();
    c.start(0, weft(), &["--device", "tap"]).unwrap();
    c.nodes[0].add_pod_bridge().unwrap();
    let key = c.etcd_key(0).unwrap();
    let v = c.etcdctl(&["get", &key, "--print-value-only"]).unwrap();
    let attrs = weft_routes::LeaseAttrs::from_json(&v.stdout).unwrap();
    let mac = attrs.vxlan_data().unwrap().vtep_mac.to_string();
    c.nodes[1]
        .kernel_add_peer(c.nodes[0].subnet().unwrap(), attrs.public_ip.unwrap(), &mac)
        .unwrap();
    assert!(
        wait_ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap()),
        "{}",
        c.nodes[0].log_text()
    );
    assert!(ping(&c.nodes[1].ns, c.nodes[0].pod_ip().unwrap(), 3));
    transfer(&c, 0, 1, 5, 5001);
    transfer(&c, 1, 0, 5, 5002);
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn deleting_a_key_withdraws_its_route() {
    let mut c = etcd_cluster("ed", 2);
    for i in 0..2 {
        c.start(i, weft(), &[]).unwrap();
    }
    let sub1 = c.nodes[1].subnet().unwrap().to_string();
    assert!(Cluster::wait_for(Duration::from_secs(2), || !route_gone(
        &c, 0, &sub1
    )));
    c.nodes[1].kill();
    c.etcdctl(&["del", &c.etcd_key(1).unwrap()]).unwrap();
    assert!(
        Cluster::wait_for(Duration::from_millis(1500), || route_gone(&c, 0, &sub1)),
        "route to {sub1} survived the key's deletion\n{}",
        c.nodes[0].log_text()
    );
    // Our own key deleted under us while the subnet is free: taken back.
    let own = c.etcd_key(0).unwrap();
    c.etcdctl(&["del", &own]).unwrap();
    assert!(
        Cluster::wait_for(Duration::from_secs(3), || c
            .etcdctl(&["get", &own, "--print-value-only"])
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)),
        "node 0 did not take its lease back\n{}",
        c.nodes[0].log_text()
    );
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn etcd_down_for_20_s_loses_no_forwarding_and_compaction_is_survived() {
    let mut c = etcd_cluster("eo", 2);
    for i in 0..2 {
        c.start(i, weft(), &["--metrics-addr", "127.0.0.1:9153"])
            .unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let pod1 = c.nodes[1].pod_ip().unwrap();
    assert!(wait_ping(&c.nodes[0].ns, pod1));
    // 25 s of pings at 50 ms while etcd goes away for 20 s.
    let ns = c.nodes[0].ns.handle();
    let flow = std::thread::spawn(move || {
        weft_testbed::ping_rtts(&ns, pod1, 500, Duration::from_millis(50))
            .map(|r| r.len())
            .unwrap_or(0)
    });
    std::thread::sleep(Duration::from_secs(2));
    c.stop_etcd();
    std::thread::sleep(Duration::from_secs(18));
    // Behind the nodes' backs (etcd on the hub's loopback only): a peer
    // appears, another comes and goes, and the history is compacted past
    // where their watches stopped, so they must re-list rather than replay.
    c.start_etcd_hidden().unwrap();
    // Two subnets neither node holds (the nodes' leases are random).
    let held: Vec<u8> = (0..2)
        .map(|i| c.nodes[i].subnet().unwrap().addr().octets()[2])
        .collect();
    let mut free = (90..100u8).rev().filter(|o| !held.contains(o));
    let (added, deleted) = (free.next().unwrap(), free.next().unwrap());
    let added_net = format!("10.244.{added}.0/24");
    let deleted_net = format!("10.244.{deleted}.0/24");
    let fake = r#"{"PublicIP":"192.168.100.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"}}"#;
    c.etcdctl(&[
        "put",
        &format!("{ETCD_PREFIX}/subnets/10.244.{added}.0-24"),
        fake,
    ])
    .unwrap();
    let gone = format!("{ETCD_PREFIX}/subnets/10.244.{deleted}.0-24");
    c.etcdctl(&["put", &gone, &fake.replace(":99", ":98")])
        .unwrap();
    c.etcdctl(&["del", &gone]).unwrap();
    let status = c.etcdctl(&["endpoint", "status", "-w", "json"]).unwrap();
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    let rev = text
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
        .unwrap()
        .to_string();
    c.etcdctl(&["compact", &rev]).unwrap();
    c.stop_etcd();
    c.start_etcd().unwrap();
    let replies = flow.join().unwrap();
    assert_eq!(replies, 500, "forwarding was lost while etcd was down");
    for i in 0..2 {
        assert!(
            Cluster::wait_for(Duration::from_secs(40), || !route_gone(&c, i, &added_net)),
            "node {i} never saw the lease added during the outage\n{}",
            c.nodes[i].log_text()
        );
    }
    for i in 0..2 {
        let log = c.nodes[i].log_text();
        assert!(
            log.contains("compacted under the watch; re-listing"),
            "node {i} did not re-list:\n{log}"
        );
        assert!(
            route_gone(&c, i, &deleted_net),
            "node {i} kept the lease deleted before compaction"
        );
    }
    for i in 0..2 {
        assert!(c.nodes[i].stop().unwrap().success());
    }
}

#[test]
fn nodes_started_together_never_share_a_subnet() {
    // Room for exactly four subnets, four nodes racing for them.
    let mut c = Cluster::new("es", 4, r#"{"Network":"10.5.0.0/24","SubnetLen":27,"SubnetMin":"10.5.0.32","SubnetMax":"10.5.0.128","Backend":{"Type":"vxlan"}}"#).unwrap();
    c.start_etcd().unwrap();
    for i in 0..4 {
        c.spawn(i, weft(), &[]).unwrap();
    }
    for i in 0..4 {
        c.wait_ready(i).unwrap();
    }
    let subnets: std::collections::BTreeSet<_> =
        (0..4).map(|i| c.nodes[i].subnet().unwrap()).collect();
    assert_eq!(subnets.len(), 4, "{subnets:?}");
}

#[test]
fn reservations_are_honoured_and_a_stolen_subnet_is_fatal() {
    let mut c = etcd_cluster("er", 2);
    // A reservation (no etcd lease) for node 0's PublicIP, and one for a
    // machine that is not running.
    let mine = format!("{ETCD_PREFIX}/subnets/10.244.42.0-24");
    c.etcdctl(&["put", &mine, r#"{"PublicIP":"192.168.100.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:42"}}"#]).unwrap();
    let other = format!("{ETCD_PREFIX}/subnets/10.244.43.0-24");
    c.etcdctl(&["put", &other, r#"{"PublicIP":"192.168.100.43","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:43"}}"#]).unwrap();
    c.start(0, weft(), &[]).unwrap();
    c.start(1, weft(), &[]).unwrap();
    assert_eq!(c.nodes[0].subnet().unwrap().to_string(), "10.244.42.0/24");
    assert!(!has_lease(&c, &mine), "the reservation got an etcd lease");
    assert_ne!(c.nodes[1].subnet().unwrap().to_string(), "10.244.43.0/24");
    // The reserved node's VtepMAC was kept, so peers need not change.
    let v = c.etcdctl(&["get", &mine, "--print-value-only"]).unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("0e:00:00:00:00:42"));

    // Another node takes node 1's subnet: node 1 must stop, and say why.
    let key1 = c.etcd_key(1).unwrap();
    c.etcdctl(&["put", &key1, r#"{"PublicIP":"192.168.100.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:77"}}"#]).unwrap();
    let exited = Cluster::wait_for(Duration::from_secs(3), || {
        c.nodes[1]
            .daemon
            .as_mut()
            .and_then(|d| d.try_wait().ok().flatten())
            .is_some()
    });
    assert!(exited, "node 1 kept running on a stolen subnet");
    let status = c.nodes[1].daemon.take().unwrap().wait().unwrap();
    assert!(!status.success());
    assert!(
        c.nodes[1]
            .log_text()
            .contains("another node took our subnet"),
        "{}",
        c.nodes[1].log_text()
    );
}

#[test]
fn etcd_authentication() {
    let mut c = etcd_cluster("ea", 2);
    c.etcdctl(&["user", "add", "root:s3cret"]).unwrap();
    c.etcdctl(&["user", "grant-role", "root", "root"]).unwrap();
    c.etcdctl(&["auth", "enable"]).unwrap();
    // Without credentials weft says what is wrong and exits non-zero.
    c.spawn(1, weft(), &[]).unwrap();
    let exited = Cluster::wait_for(Duration::from_secs(10), || {
        c.nodes[1]
            .daemon
            .as_mut()
            .and_then(|d| d.try_wait().ok().flatten())
            .is_some()
    });
    assert!(
        exited,
        "weft without credentials kept running\n{}",
        c.nodes[1].log_text()
    );
    let status = c.nodes[1].daemon.take().unwrap().wait().unwrap();
    assert!(!status.success());
    assert!(
        c.nodes[1]
            .log_text()
            .contains("cannot read the network config"),
        "{}",
        c.nodes[1].log_text()
    );
    // With them it joins.
    c.start(
        0,
        weft(),
        &["--etcd-username", "root", "--etcd-password", "s3cret"],
    )
    .unwrap();
    assert!(c.nodes[0].stop().unwrap().success());
    // The password kept off the command line: from a file (a mounted
    // secret), then restarted with it from the environment.
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "s3cret\n").unwrap();
    let file = secret.path().to_str().unwrap().to_string();
    c.start(
        1,
        weft(),
        &["--etcd-username", "root", "--etcd-password-file", &file],
    )
    .unwrap();
    assert!(c.nodes[1].stop().unwrap().success());
    c.env
        .push(("FLANNELD_ETCD_PASSWORD".into(), "s3cret".into()));
    c.start(0, weft(), &["--etcd-username", "root"]).unwrap();
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    let mut c = Cluster::new("et", 2, &net_conf("vxlan")).unwrap();
    c.enable_etcd_tls().unwrap();
    c.start_etcd().unwrap();
    assert!(c.etcd_url().starts_with("https://"));
    for i in 0..2 {
        c.start(i, weft(), &[]).unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
    assert!(
        wait_ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap()),
        "{}",
        c.nodes[0].log_text()
    );
    for i in 0..2 {
        assert!(c.nodes[i].stop().unwrap().success());
    }
}

/// The file registry's hostile-lease scenario (`hostile_leases.rs`), with
/// every lease put into etcd with etcdctl.
#[test]
fn hostile_leases_in_etcd_are_rejected() {
    let c = etcd_cluster("eh", 1);
    let put = |key: &str, value: &str| {
        c.etcdctl(&["put", &format!("{ETCD_PREFIX}/subnets/{key}"), value])
            .unwrap();
    };
    put(HOSTILE_OWN.0, &vxlan_lease("192.168.100.1", HOSTILE_OWN.1));
    for (key, json, _) in hostile_leases() {
        put(key, &json);
    }
    hostile_lease_routes(&c);
    let mut c = c;
    c.start(
        0,
        weft(),
        &["--device", "tap", "--metrics-addr", "127.0.0.1:9153"],
    )
    .unwrap();
    check_hostile_leases(&c);
    assert!(c.nodes[0].stop().unwrap().success());
}

/// The real flanneld (`.ci/peers.sh flanneld`: flannel's published module
/// at a pinned release).
fn flanneld() -> std::path::PathBuf {
    peer_binary("flanneld", "WEFT_FLANNELD")
}

/// weft (node 0, `weft_args`) and a real flanneld (node 1) on one etcd, with
/// `net_conf`: both see each other's lease, and ping plus a hash-checked
/// 20 MB transfer work both ways. flanneld's veth keeps its defaults.
fn with_real_flanneld(tag: &str, net_conf: &str, weft_args: &[&str]) -> Cluster {
    let mut c = Cluster::new(tag, 2, net_conf).expect("testbed");
    c.start_etcd().expect("etcd starts");
    c.spawn_flanneld(1, &flanneld(), &[]).unwrap();
    c.wait_ready(1).unwrap();
    c.start(0, weft(), weft_args).unwrap();
    for i in 0..2 {
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let (w, f) = (c.nodes[0].pod_ip().unwrap(), c.nodes[1].pod_ip().unwrap());
    assert!(
        wait_ping(&c.nodes[0].ns, f),
        "weft -> flanneld ping failed\nweft:\n{}\nflanneld:\n{}",
        c.nodes[0].log_text(),
        c.nodes[1].log_text()
    );
    assert!(ping(&c.nodes[1].ns, w, 3), "flanneld -> weft ping failed");
    transfer(&c, 0, 1, 20, 5001);
    transfer(&c, 1, 0, 20, 5002);
    c
}

/// flanneld's lease and weft's are the same JSON shape.
fn same_lease_shape(c: &Cluster) {
    let keys = |i: usize| {
        let key = c.etcd_key(i).unwrap();
        let v = c.etcdctl(&["get", &key, "--print-value-only"]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
        let mut shape = vec![];
        for (k, val) in v.as_object().unwrap() {
            shape.push(format!("{k}:{}", kind(val)));
            if let Some(o) = val.as_object() {
                shape.extend(o.iter().map(|(k2, v2)| format!("{k}.{k2}:{}", kind(v2))));
            }
        }
        shape
    };
    fn kind(v: &serde_json::Value) -> &'static str {
        match v {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "bool",
            serde_json::Value::Number(_) => "number",
            serde_json::Value::String(_) => "string",
            serde_json::Value::Array(_) => "array",
            serde_json::Value::Object(_) => "object",
        }
    }
    assert_eq!(
        keys(0),
        keys(1),
        "weft's lease and flanneld's differ in shape"
    );
}

#[test]
fn real_flanneld_vxlan_and_weft_tun() {
    let mut c = with_real_flanneld(
        "fv",
        &net_conf("vxlan"),
        &["--device", "tun", "--metrics-addr", "127.0.0.1:9153"],
    );
    same_lease_shape(&c);
    // flanneld's kernel VXLAN across a veth at its defaults leaves inner
    // checksums partial: weft completed them, and dropped none.
    let m = metrics(&c.nodes[0].ns, 9153);
    assert!(
        metric(&m, "weft_checksums_completed_total").unwrap_or(0) > 0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"weft_dropped_packets_total{reason="l4_checksum"}"#),
        Some(0),
        "{m}"
    );
    for i in 0..2 {
        assert!(
            c.nodes[i].stop().unwrap().success(),
            "{}",
            c.nodes[i].log_text()
        );
    }
}

#[test]
fn real_flanneld_vxlan_and_weft_tap() {
    let mut c = with_real_flanneld("ft", &net_conf("vxlan"), &["--device", "tap"]);
    for i in 0..2 {
        assert!(
            c.nodes[i].stop().unwrap().success(),
            "{}",
            c.nodes[i].log_text()
        );
    }
}

/// flannel's own udp proxy (its C loop) against weft's udp backend.
#[test]
fn real_flanneld_udp_proxy_and_weft() {
    let mut c = with_real_flanneld("fu", &net_conf("udp"), &[]);
    same_lease_shape(&c);
    for i in 0..2 {
        assert!(
            c.nodes[i].stop().unwrap().success(),
            "{}",
            c.nodes[i].log_text()
        );
    }
}

/// weft (node 0) and a real flanneld (node 1), both with `--ip-masq` and
/// `conf`: `list` (a command run in each node) prints the same ruleset on
/// both, once each node's own subnet is written as `<subnet>` and `tidy`
/// has dropped what legitimately differs. `complete` says when a node's
/// listing holds all its rules (flanneld writes them after subnet.env).
fn same_ruleset_as_flanneld(
    tag: &str,
    conf: &str,
    list: &[&str],
    complete: fn(&str) -> bool,
    tidy: fn(&str) -> Option<String>,
) -> String {
    let mut c = Cluster::new(tag, 2, conf).expect("testbed");
    c.start_etcd().expect("etcd starts");
    c.spawn_flanneld(1, &flanneld(), &["--ip-masq"]).unwrap();
    c.wait_ready(1).unwrap();
    c.start(0, weft(), &["--ip-masq"]).unwrap();
    let dump = |i: usize| {
        let subnet = c.nodes[i].subnet().unwrap().to_string();
        let mut text = String::new();
        Cluster::wait_for(Duration::from_secs(10), || {
            let out = c.nodes[i].ns.exec(list[0], &list[1..]).unwrap();
            text = String::from_utf8_lossy(&out.stdout).to_string();
            complete(&text)
        });
        text.lines()
            .filter_map(tidy)
            .map(|l| l.replace(&subnet, "<subnet>"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (weft_rules, flanneld_rules) = (dump(0), dump(1));
    assert_eq!(
        weft_rules, flanneld_rules,
        "weft's ruleset (left) differs from flanneld's (right)"
    );
    for i in 0..2 {
        assert!(
            c.nodes[i].stop().unwrap().success(),
            "{}",
            c.nodes[i].log_text()
        );
    }
    weft_rules
}

/// `--ip-masq` and the default forwarding rules: weft's iptables ruleset
/// equals a real flanneld's for the same config, line for line, once each
/// node's own subnet is written as `<subnet>`.
#[test]
fn masquerading_rules_equal_flanneld_s() {
    let rules = same_ruleset_as_flanneld(
        "fm",
        &net_conf("vxlan"),
        &["iptables-save"],
        |text| {
            let count = |what: &str| text.lines().filter(|l| l.contains(what)).count();
            count("\"flanneld masq\"") == 7 && count("\"flanneld forward\"") == 3
        },
        // Comments and chain counters differ with time and traffic.
        |l| match l.split_once(" [") {
            _ if l.starts_with('#') => None,
            Some((head, _)) if l.starts_with(':') => Some(head.to_string()),
            _ => Some(l.to_string()),
        },
    );
    assert!(rules.contains("MASQUERADE"), "{rules}");
}

/// The same with `EnableNFTables`: `nft list ruleset` on a weft node equals
/// a real flanneld node's.
#[test]
fn nftables_rules_equal_flanneld_s() {
    let conf = r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
    let rules = same_ruleset_as_flanneld(
        "fn",
        conf,
        &["nft", "list", "ruleset"],
        |text| text.contains("masquerade") && text.contains("accept"),
        |l| Some(l.to_string()),
    );
    assert!(rules.contains("masquerade"), "{rules}");
}

/// Dual-stack host-gw beside a real flanneld on etcd (both with
/// `--ip-masq`): each programs the other's IPv6 subnet via its PublicIPv6,
/// pods reach each other in both families both ways (ping6, 20 MB
/// hash-checked TCP), and the leases, subnet.env keys and ip6tables rules
/// are flanneld's.
#[test]
fn real_flanneld_dual_stack_host_gw() {
    real_flanneld_dual_stack("f6", "host-gw", &[]);
}

/// The same on vxlan, weft on a TUN and on a TAP: each node routes the
/// other's IPv6 subnet into its `flannel-v6.1` (flanneld with its onlink
/// route via the peer's `<subnet>::`), and the kernel's VXLAN and weft's
/// carry IPv6 pods between them over the IPv6 underlay.
#[test]
fn real_flanneld_dual_stack_vxlan() {
    for device in ["tun", "tap"] {
        real_flanneld_dual_stack(
            &format!("f6{}", &device[..2]),
            "vxlan",
            &["--device", device],
        );
    }
}

fn real_flanneld_dual_stack(tag: &str, backend: &str, weft_args: &[&str]) {
    let conf = format!(
        r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{{"Type":"{backend}"}}}}"#
    );
    let mut c = Cluster::new(tag, 2, &conf).expect("testbed");
    c.add_ipv6().expect("IPv6 underlay");
    c.start_etcd().expect("etcd starts");
    c.spawn_flanneld(1, &flanneld(), &["--ip-masq"]).unwrap();
    c.wait_ready(1).unwrap();
    c.start(0, weft(), &[&["--ip-masq"][..], weft_args].concat())
        .unwrap();
    for i in 0..2 {
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let (w6, f6) = (c.nodes[0].subnet6().unwrap(), c.nodes[1].subnet6().unwrap());
    let routed = |i: usize, dst: ipnet::Ipv6Net, via: &str| {
        Cluster::wait_for(Duration::from_secs(10), || {
            route_of(&c.nodes[i].ns, dst).contains(via)
        })
    };
    let (to_weft, to_flanneld) = match backend {
        "vxlan" => (
            format!("via {} dev flannel-v6.1", w6.network()),
            "dev flannel-v6.1".to_string(),
        ),
        _ => (
            "via 2001:db8:100::1 dev eth0".to_string(),
            "via 2001:db8:100::2 dev eth0".to_string(),
        ),
    };
    assert!(
        routed(1, w6, &to_weft),
        "flanneld did not route weft's IPv6 subnet: {:?}\n{}",
        route_of(&c.nodes[1].ns, w6),
        c.nodes[1].log_text()
    );
    assert!(
        routed(0, f6, &to_flanneld),
        "weft did not route flanneld's IPv6 subnet: {:?}\n{}",
        route_of(&c.nodes[0].ns, f6),
        c.nodes[0].log_text()
    );
    if backend == "vxlan" {
        // flanneld's device and weft's: the same MTU.
        let mtu = |i: usize| {
            let out = c.nodes[i].ns.ip(&["link", "show", "flannel-v6.1"]).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split_whitespace()
                .skip_while(|w| *w != "mtu")
                .nth(1)
                .map(str::to_string)
        };
        assert_eq!(
            mtu(0),
            mtu(1),
            "flannel-v6.1's MTU: weft (left), flanneld (right)"
        );
        assert_eq!(mtu(0).as_deref(), Some("1430"));
    }
    for (a, b) in [(0, 1), (1, 0)] {
        let (from, to) = (c.nodes[a].pod_ip6().unwrap(), c.nodes[b].pod_ip6().unwrap());
        let answered = Cluster::wait_for(Duration::from_secs(5), || {
            ping6(&c.nodes[a].ns, Some(from), to, 1).unwrap_or(0) == 1
        });
        assert!(answered, "ping6 {a}->{b}\n{}", c.nodes[0].log_text());
        transfer_pods6(&c, a, b, 20, 5061 + a as u16);
        transfer_pods(&c, a, b, 20, 5071 + a as u16);
    }
    let keys = c
        .etcdctl(&["get", "--prefix", ETCD_PREFIX, "--keys-only"])
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    for i in 0..2 {
        let key = c.etcd_key(i).unwrap();
        assert!(
            keys.lines().any(|k| k == key),
            "node {i}: {key} not in\n{keys}"
        );
    }
    same_lease_shape(&c);
    let lease = c
        .etcdctl(&["get", &c.etcd_key(0).unwrap(), "--print-value-only"])
        .unwrap();
    let lease = String::from_utf8_lossy(&lease.stdout);
    assert!(
        lease.contains(r#""PublicIPv6":"2001:db8:100::1""#),
        "{lease}"
    );
    // subnet.env: the same keys in the same order.
    let env_keys = |i: usize| {
        std::fs::read_to_string(&c.nodes[i].subnet_file)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        env_keys(0),
        env_keys(1),
        "subnet.env keys: weft (left), flanneld (right)"
    );
    // ip6tables: the same rules, once each node's IPv6 subnet is
    // `<subnet>` (chain counters and comments left out).
    let (weft_rules, flanneld_rules) = (flannel_ip6tables(&c, 0), flannel_ip6tables(&c, 1));
    assert_eq!(
        weft_rules, flanneld_rules,
        "ip6tables: weft (left), flanneld (right)"
    );
    assert!(weft_rules.contains("! -d ff00::/8"), "{weft_rules}");
}

/// etcd's claims: a key each, put with etcdctl (the create revision is
/// the lease's seniority).
struct EtcdClaims;

impl Claims for EtcdClaims {
    fn claim(&self, c: &Cluster, _name: &str, cidr: &str, public_ip: &str, mac: &str) {
        let key = format!("{ETCD_PREFIX}/subnets/{}", claim_key(c, cidr));
        let out = c
            .etcdctl(&["put", &key, &vxlan_lease(public_ip, mac)])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    fn release(&self, c: &Cluster, i: usize) {
        let out = c.etcdctl(&["del", &c.etcd_key(i).unwrap()]).unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

/// The collision scenario (`common::colliders_never_displace_a_live_peer`)
/// on etcd, on a TAP (neighbour entries) and a TUN.
#[test]
fn colliding_leases_in_etcd_never_displace_a_live_peer() {
    for device in ["tap", "tun"] {
        let mut c = etcd_cluster(&format!("ec{}", &device[..2]), 2);
        colliders_never_displace_a_live_peer(&mut c, &EtcdClaims, device);
    }
}
