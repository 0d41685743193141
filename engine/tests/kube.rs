//! weft as flanneld's `--kube-subnet-mgr` on a real kube-apiserver (built
//! from the published k8s.io/kubernetes module by `.ci/peers.sh`, started in
//! the hub on the test etcd) beside a real flanneld in the same mode.
//! Nodes are created through the API with their podCIDR; no kubelet. weft
//! runs as user `weft`, which holds exactly flannel's ClusterRole.
//! Needs `--features kube-tests`.

#![cfg(feature = "kube-tests")]

mod common;
use common::*;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use weft_testbed::{grant_flannel_role, kube_admin, node_object, Cluster};

const PREFIX: &str = "flannel.alpha.coreos.com/";

/// Runs `f` with an admin client (once the API server serves), on a
/// runtime of its own, inside the hub (where the API server listens).
fn admin<T: Send + 'static>(
    c: &Cluster,
    f: impl FnOnce(kube::Client) -> futures::future::BoxFuture<'static, T> + Send + 'static,
) -> T {
    let kubeconfig = c.kube.as_ref().unwrap().admin_kubeconfig.clone();
    c.hub
        .enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move { f(kube_admin(&kubeconfig).await.unwrap()).await })
        })
        .unwrap()
}

/// The API server, flannel's ClusterRole bound to user `weft`, and a Node
/// object per host with podCIDR 10.244.<i+1>.0/24.
fn kube_cluster(tag: &str, hosts: usize) -> Cluster {
    let mut c = Cluster::new(tag, hosts, &net_conf("vxlan")).expect("testbed");
    c.start_kube_apiserver(&peer_binary("kube-apiserver", "WEFT_KUBE_APISERVER"))
        .expect("kube-apiserver starts");
    admin(&c, move |client| {
        Box::pin(async move {
            grant_flannel_role(&client).await.unwrap();
            let nodes: Api<Node> = Api::all(client);
            for i in 0..hosts {
                create_node(&nodes, i).await;
            }
        })
    });
    c
}

/// Node `node<i>` with podCIDR 10.244.<i+1>.0/24.
async fn create_node(nodes: &Api<Node>, i: usize) {
    let node = node_object(&format!("node{i}"), &format!("10.244.{}.0/24", i + 1));
    nodes.create(&PostParams::default(), &node).await.unwrap();
}

/// Deletes Node `name` through the API.
fn delete_node(c: &Cluster, name: &str) {
    let name = name.to_string();
    admin(c, move |client| {
        Box::pin(async move {
            Api::<Node>::all(client)
                .delete(&name, &DeleteParams::default())
                .await
                .unwrap();
        })
    });
}

fn node_of(c: &Cluster, i: usize) -> Node {
    admin(c, move |client| {
        Box::pin(async move {
            Api::<Node>::all(client)
                .get(&format!("node{i}"))
                .await
                .unwrap()
        })
    })
}

fn flannel_annotations(n: &Node) -> BTreeMap<String, String> {
    n.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect()
}

/// Two weft nodes (tun, tap) and a real flanneld, all three in
/// `--kube-subnet-mgr` mode: every pair pings and moves a hash-checked
/// 20 MB both ways; weft's annotations have flanneld's keys and shapes;
/// weft marks its node's network available, as flanneld does.
#[test]
fn two_weft_nodes_and_a_real_flanneld_on_the_api_server() {
    let mut c = kube_cluster("kb", 3);
    c.spawn_flanneld(2, &peer_binary("flanneld", "WEFT_FLANNELD"), &[])
        .unwrap();
    c.wait_ready(2).unwrap();
    c.start(0, weft(), &["--device", "tun"]).unwrap();
    c.start(1, weft(), &["--device", "tap"]).unwrap();
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].subnet().unwrap().to_string(),
            format!("10.244.{}.0/24", i + 1),
            "node {i} took its podCIDR"
        );
        c.nodes[i].add_pod_bridge().unwrap();
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        assert!(
            wait_ping(&c.nodes[a].ns, c.nodes[b].pod_ip().unwrap()),
            "{a} -> {b}\n{}\n{}",
            c.nodes[a].log_text(),
            c.nodes[b].log_text()
        );
        assert!(
            ping(&c.nodes[b].ns, c.nodes[a].pod_ip().unwrap(), 3),
            "{b} -> {a}"
        );
    }
    let mut port = 5100;
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        transfer(&c, a, b, 20, port);
        transfer(&c, b, a, 20, port + 1);
        port += 2;
    }
    let shape = |i: usize| -> Vec<(String, String)> {
        flannel_annotations(&node_of(&c, i))
            .into_iter()
            .map(|(k, v)| {
                let kind = match serde_json::from_str::<serde_json::Value>(&v) {
                    Ok(serde_json::Value::Object(o)) => {
                        format!("object {:?}", o.keys().collect::<Vec<_>>())
                    }
                    _ => "text".into(),
                };
                (k, kind)
            })
            .collect()
    };
    assert_eq!(
        shape(0),
        shape(2),
        "weft's annotations differ from flanneld's"
    );
    let a = flannel_annotations(&node_of(&c, 0));
    assert_eq!(a[&format!("{PREFIX}kube-subnet-manager")], "true");
    assert_eq!(a[&format!("{PREFIX}backend-type")], "vxlan");
    assert_eq!(a[&format!("{PREFIX}public-ip")], "192.168.100.1");
    for i in [0, 2] {
        let conds = node_of(&c, i)
            .status
            .unwrap()
            .conditions
            .unwrap_or_default();
        let nu = conds
            .iter()
            .find(|c| c.type_ == "NetworkUnavailable")
            .unwrap_or_else(|| panic!("node{i}: no NetworkUnavailable condition"));
        assert_eq!(
            (nu.status.as_str(), nu.reason.as_deref()),
            ("False", Some("FlannelIsUp"))
        );
    }
    for i in 0..3 {
        assert!(
            c.nodes[i].stop().unwrap().success(),
            "{}",
            c.nodes[i].log_text()
        );
    }
}

/// Dual-stack host-gw on the API server: two weft nodes and a real
/// flanneld, each Node with an IPv4 and an IPv6 podCIDR. Every pair
/// reaches the other in both families both ways; weft writes flanneld's
/// IPv6 annotations (public-ipv6), and flanneld routes weft's IPv6
/// podCIDR via weft's PublicIPv6.
#[test]
fn dual_stack_host_gw_with_a_real_flanneld_on_the_api_server() {
    dual_stack_on_the_api_server("k6", "host-gw");
}

/// The same on vxlan, one weft node on a TUN and one on a TAP: flanneld
/// routes weft's IPv6 podCIDR into its `flannel-v6.1`, weft writes
/// `backend-v6-data` as flanneld does and keeps its IPv6 VtepMAC across a
/// restart.
#[test]
fn dual_stack_vxlan_with_a_real_flanneld_on_the_api_server() {
    dual_stack_on_the_api_server("k6v", "vxlan");
}

fn dual_stack_on_the_api_server(tag: &str, backend: &str) {
    let conf = format!(
        r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{{"Type":"{backend}"}}}}"#
    );
    let mut c = Cluster::new(tag, 3, &conf).expect("testbed");
    c.add_ipv6().expect("IPv6 underlay");
    c.start_kube_apiserver(&peer_binary("kube-apiserver", "WEFT_KUBE_APISERVER"))
        .expect("kube-apiserver starts");
    admin(&c, move |client| {
        Box::pin(async move {
            grant_flannel_role(&client).await.unwrap();
            let nodes: Api<Node> = Api::all(client);
            for i in 0..3 {
                let (v4, v6) = (
                    format!("10.244.{}.0/24", i + 1),
                    format!("fd00:10:244:{}::/64", i + 1),
                );
                let node = weft_testbed::node_object_with(&format!("node{i}"), &[&v4, &v6]);
                nodes.create(&PostParams::default(), &node).await.unwrap();
            }
        })
    });
    c.spawn_flanneld(2, &peer_binary("flanneld", "WEFT_FLANNELD"), &[])
        .unwrap();
    c.wait_ready(2).unwrap();
    c.start(0, weft(), &[]).unwrap();
    c.start(1, weft(), &["--device", "tap"]).unwrap();
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].subnet6().map(|s| s.to_string()),
            Some(format!("fd00:10:244:{}::/64", i + 1)),
            "node {i} took its IPv6 podCIDR"
        );
        c.nodes[i].add_pod_bridge().unwrap();
    }
    flanneld_routes_weft6(&c, backend);
    every_pair_over_ipv6(&c, 5140);
    for (a, b) in PAIRS {
        assert!(
            ping(&c.nodes[a].ns, c.nodes[b].pod_ip().unwrap(), 2),
            "{a} -> {b} (IPv4)"
        );
    }
    let keys = |i: usize| {
        flannel_annotations(&node_of(&c, i))
            .into_keys()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(0),
        keys(2),
        "weft's annotation keys (left) differ from flanneld's"
    );
    let a = flannel_annotations(&node_of(&c, 0));
    assert_eq!(a[&format!("{PREFIX}public-ipv6")], "2001:db8:100::1");
    let v6_data = format!("{PREFIX}backend-v6-data");
    if backend == "vxlan" {
        assert!(a[&v6_data].contains(r#""VtepMAC":"#), "{a:?}");
        // A restart keeps the IPv6 VtepMAC, read back from our Node.
        assert!(c.nodes[0].stop().unwrap().success());
        c.start(0, weft(), &[]).unwrap();
        let after = flannel_annotations(&node_of(&c, 0));
        assert_eq!(a[&v6_data], after[&v6_data], "the IPv6 VtepMAC changed");
    }
    for i in 0..3 {
        assert!(
            c.nodes[i].stop().unwrap().success(),
            "{}",
            c.nodes[i].log_text()
        );
    }
}

/// An IPv6-only cluster (`"EnableIPv4": false`): weft on a TUN and on a
/// TAP (on a host without IPv4) and a real flanneld, every Node with an
/// IPv6 podCIDR alone. No
/// node has an IPv4 device or IPv4 rules; flanneld routes weft's podCIDR
/// into its `flannel-v6.1`; every pair of pods reaches the others (ping6
/// and a hash-checked 20 MB); annotations, subnet.env and ip6tables rules
/// are flanneld's.
#[test]
fn ipv6_only_vxlan_with_a_real_flanneld_on_the_api_server() {
    ipv6_only_on_the_api_server("k6o", "vxlan");
}

/// The same on host-gw: routes via each peer's PublicIPv6 on both sides.
#[test]
fn ipv6_only_host_gw_with_a_real_flanneld_on_the_api_server() {
    ipv6_only_on_the_api_server("k6og", "host-gw");
}

fn ipv6_only_on_the_api_server(tag: &str, backend: &str) {
    let conf = format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{{"Type":"{backend}"}}}}"#
    );
    let mut c = Cluster::new(tag, 3, &conf).expect("testbed");
    c.add_ipv6().expect("IPv6 underlay");
    c.start_kube_apiserver(&peer_binary("kube-apiserver", "WEFT_KUBE_APISERVER"))
        .expect("kube-apiserver starts");
    admin(&c, move |client| {
        Box::pin(async move {
            grant_flannel_role(&client).await.unwrap();
            let nodes: Api<Node> = Api::all(client);
            for i in 0..3 {
                let v6 = format!("fd00:10:244:{}::/64", i + 1);
                let node = weft_testbed::node_object_with(&format!("node{i}"), &[&v6]);
                nodes.create(&PostParams::default(), &node).await.unwrap();
            }
        })
    });
    c.spawn_flanneld(2, &peer_binary("flanneld", "WEFT_FLANNELD"), &["--ip-masq"])
        .unwrap();
    c.wait_ready(2).unwrap();
    // Node 1 is a host without IPv4: weft picks eth0 by the IPv6 default
    // route and reaches the API server over IPv6.
    c.drop_ipv4(1).unwrap();
    let metrics = ["--ip-masq", "--metrics-addr", "127.0.0.1:9153"];
    c.start(0, weft(), &metrics).unwrap();
    c.start(1, weft(), &[&metrics[..], &["--device", "tap"]].concat())
        .unwrap();
    for i in 0..3 {
        let n = &c.nodes[i];
        assert_eq!(
            n.subnet6().map(|s| s.to_string()),
            Some(format!("fd00:10:244:{}::/64", i + 1)),
            "node {i} took its IPv6 podCIDR\n{}",
            n.log_text()
        );
        assert_eq!(n.subnet(), None, "node {i}: no FLANNEL_SUBNET");
        assert!(
            n.ns.ip(&["link", "show", "flannel.1"]).is_err(),
            "node {i} has an IPv4 device"
        );
        n.add_pod_bridge6().unwrap();
    }
    flanneld_routes_weft6(&c, backend);
    for i in 0..2 {
        wait_metric(&c, i, "weft_peers", 2);
    }
    every_pair_over_ipv6(&c, 5160);
    // Annotations: flanneld's keys, and its values where they do not
    // name the node (what it writes for the absent IPv4 half).
    let theirs = flannel_annotations(&node_of(&c, 2));
    for i in 0..2 {
        let ours = flannel_annotations(&node_of(&c, i));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "annotations: weft {ours:?}, flanneld {theirs:?}"
        );
        for k in ["public-ip", "backend-data", "backend-type"] {
            let k = format!("{PREFIX}{k}");
            assert_eq!(ours.get(&k), theirs.get(&k), "{k}");
        }
    }
    // subnet.env: the same lines but the subnet.
    let env = |i: usize| {
        let s6 = c.nodes[i].pod_ip6().unwrap().to_string();
        std::fs::read_to_string(&c.nodes[i].subnet_file)
            .unwrap()
            .replace(&s6, "<gateway>")
    };
    assert_eq!(env(0), env(2), "subnet.env: weft (left), flanneld (right)");
    // Rules: ip6tables as flanneld's, nothing of flannel in iptables.
    assert_eq!(
        flannel_ip6tables(&c, 0),
        flannel_ip6tables(&c, 2),
        "ip6tables: weft (left), flanneld (right)"
    );
    for i in 0..2 {
        let out = c.nodes[i].ns.exec("iptables-save", &[]).unwrap();
        let v4 = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!v4.contains("FLANNEL"), "node {i} wrote IPv4 rules:\n{v4}");
    }
    if backend == "vxlan" {
        hostile_ipv6_only_nodes(&c);
    }
    let status = weft_status(&c.nodes[1].ns);
    assert!(status.contains("subnet6    fd00:10:244:2::/64"), "{status}");
    assert!(status.contains("subnet     none (IPv6-only)"), "{status}");
    assert!(status.contains("peers (2)"), "{status}");
    for i in 0..3 {
        assert!(
            c.nodes[i].stop().unwrap().success(),
            "{}",
            c.nodes[i].log_text()
        );
    }
}

/// Nodes that claim node 1's IPv6 podCIDR, its PublicIPv6 and its IPv6
/// VtepMAC, each created after the peer: weft on node 0
/// refuses each whole, counted by reason, and node 1 stays its peer.
fn hostile_ipv6_only_nodes(c: &Cluster) {
    let peer_mac = {
        let a = flannel_annotations(&node_of(c, 1));
        let d = &a[&format!("{PREFIX}backend-v6-data")];
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        v["VtepMAC"].as_str().unwrap().to_string()
    };
    let claims = [
        (
            "evil-subnet",
            "fd00:10:244:2::/64",
            "2001:db8:100::9",
            "0e:00:00:00:66:09",
        ),
        (
            "evil-ip",
            "fd00:10:244:9::/64",
            "2001:db8:100::2",
            "0e:00:00:00:66:0a",
        ),
        (
            "evil-mac",
            "fd00:10:244:a::/64",
            "2001:db8:100::a",
            peer_mac.as_str(),
        ),
    ];
    for (name, cidr, ip6, mac) in claims {
        create_flannel_node(
            c,
            name,
            cidr,
            serde_json::json!({
                "backend-type": "vxlan",
                "backend-v6-data": format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
                "public-ipv6": ip6,
            }),
        );
    }
    let want = [
        ("overlaps_peer", 1),
        ("duplicate_public_ip", 1),
        ("duplicate_vtep_mac", 1),
    ];
    wait_rejected(c, 0, "weft_leases_rejected_total", &want);

    wait_metric(c, 0, "weft_peers", 2);
    let route = route_of(&c.nodes[0].ns, "fd00:10:244:2::/64");
    assert_eq!(
        route, "fd00:10:244:2::/64 dev flannel-v6.1 proto 87 metric 1024 pref medium",
        "{route}"
    );
    for evil in ["fd00:10:244:9::/64", "fd00:10:244:a::/64"] {
        assert_eq!(route_of(&c.nodes[0].ns, evil), "", "{evil} routed");
    }
    let (from, to) = (c.nodes[0].pod_ip6().unwrap(), c.nodes[1].pod_ip6().unwrap());
    assert_eq!(
        weft_testbed::ping6(&c.nodes[0].ns, Some(from), to, 3).unwrap(),
        3
    );
    let log = c.nodes[0].log_text();
    assert!(log.contains("ignoring lease:"), "{log}");
}

/// Creates Node `name` with podCIDR `cidr`, annotated as a flannel node
/// with `annotations` (keys without flannel's prefix), as another node's
/// flanneld would have annotated it.
fn create_flannel_node(c: &Cluster, name: &str, cidr: &str, annotations: serde_json::Value) {
    let mut ann: BTreeMap<String, serde_json::Value> = annotations
        .as_object()
        .expect("an object")
        .iter()
        .map(|(k, v)| (format!("{PREFIX}{k}"), v.clone()))
        .collect();
    ann.insert(format!("{PREFIX}kube-subnet-manager"), "true".into());
    let (name, cidr) = (name.to_string(), cidr.to_string());
    admin(c, move |client| {
        Box::pin(async move {
            let nodes: Api<Node> = Api::all(client);
            nodes
                .create(&PostParams::default(), &node_object(&name, &cidr))
                .await
                .unwrap();
            let patch = serde_json::json!({"metadata": {"annotations": ann}});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .unwrap();
        })
    });
}

/// Every ordered pair of the three nodes.
const PAIRS: [(usize, usize); 6] = [(0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)];

/// Waits (up to 10 s) for flanneld on node 2 to route weft's (node 0's)
/// IPv6 podCIDR: into `flannel-v6.1` on vxlan, via weft's PublicIPv6 on
/// host-gw.
fn flanneld_routes_weft6(c: &Cluster, backend: &str) {
    let weft_v6 = c.nodes[0].subnet6().unwrap();
    let via = match backend {
        "vxlan" => format!("via {} dev flannel-v6.1", weft_v6.network()),
        _ => "via 2001:db8:100::1 dev eth0".to_string(),
    };
    let routed = Cluster::wait_for(Duration::from_secs(10), || {
        route_of(&c.nodes[2].ns, weft_v6).contains(&via)
    });
    assert!(
        routed,
        "flanneld's route to weft's IPv6 podCIDR: {:?}\n{}",
        route_of(&c.nodes[2].ns, weft_v6),
        c.nodes[2].log_text()
    );
}

/// Between the IPv6 pod addresses of every ordered pair: ping6 (once each
/// node learned of the others, within a watch event) and a hash-checked
/// 20 MB transfer, on ports from `first_port`.
fn every_pair_over_ipv6(c: &Cluster, first_port: u16) {
    for (port, (a, b)) in (first_port..).zip(PAIRS) {
        let (from, to) = (c.nodes[a].pod_ip6().unwrap(), c.nodes[b].pod_ip6().unwrap());
        Cluster::wait_for(Duration::from_secs(5), || {
            weft_testbed::ping6(&c.nodes[a].ns, Some(from), to, 1).unwrap() == 1
        });
        let answered = weft_testbed::ping6(&c.nodes[a].ns, Some(from), to, 3).unwrap();
        assert_eq!(answered, 3, "ping6 {a} -> {b}\n{}", c.nodes[a].log_text());
        transfer_pods6(c, a, b, 20, port);
    }
}

/// Nodes come and go: a new node's route within 1 s of its annotations, a
/// deleted node's route gone within 1 s; a restarted weft keeps its
/// VtepMAC (read back from its node), so peers reprogram nothing.
#[test]
fn nodes_added_and_deleted_and_a_restart() {
    let mut c = kube_cluster("kn", 2);
    c.start(0, weft(), &["--metrics-addr", "127.0.0.1:9153"])
        .unwrap();
    let mac_before = flannel_annotations(&node_of(&c, 0))[&format!("{PREFIX}backend-data")].clone();
    // A new flannel node appears: annotate it as flanneld would.
    let t0 = std::time::Instant::now();
    c.start(1, weft(), &[]).unwrap();
    let route = |c: &Cluster| route_of(&c.nodes[0].ns, "10.244.2.0/24");
    assert!(
        Cluster::wait_for(Duration::from_secs(1) + t0.elapsed(), || !route(&c)
            .is_empty()),
        "no route to the new node\n{}",
        c.nodes[0].log_text()
    );
    assert!(c.nodes[1].stop().unwrap().success());
    delete_node(&c, "node1");
    assert!(
        Cluster::wait_for(Duration::from_secs(1), || route(&c).is_empty()),
        "the deleted node's route stayed: {}",
        route(&c)
    );
    assert!(c.nodes[0].stop().unwrap().success());
    c.start(0, weft(), &[]).unwrap();
    let mac_after = flannel_annotations(&node_of(&c, 0))[&format!("{PREFIX}backend-data")].clone();
    assert_eq!(
        mac_before, mac_after,
        "the VtepMAC changed across a restart"
    );
    assert!(c.nodes[0].stop().unwrap().success());
}

/// The API server away for 20 s: forwarding between existing nodes goes
/// on; a node added meanwhile is routed once it is back.
#[test]
fn the_api_server_away_for_20_s() {
    let mut c = kube_cluster("ko", 2);
    start_all(&mut c, &[]);
    let pod1 = c.nodes[1].pod_ip().unwrap();
    assert!(wait_ping(&c.nodes[0].ns, pod1));
    c.kube.as_mut().unwrap().stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        assert!(
            ping(&c.nodes[0].ns, pod1, 1),
            "forwarding stopped while the API server was away"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    c.restart_kube_apiserver().unwrap();
    // A node that joins as soon as the API server answers again is reached
    // within 3 s of that answer, as flanneld's informer, which relists at
    // once, reaches it: weft's watch retries every second at most through
    // the 403s the API server gives while its RBAC warms up.
    let answered = admin(&c, |client| {
        Box::pin(async move {
            let nodes: Api<Node> = Api::all(client);
            create_node(&nodes, 2).await;
            let answered = std::time::Instant::now();
            let patch = serde_json::json!({"metadata": {"annotations": {
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:33\"}",
                "flannel.alpha.coreos.com/public-ip": "192.168.100.33"
            }}});
            nodes
                .patch_status("node2", &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .unwrap();
            answered
        })
    });
    assert!(
        Cluster::wait_for(Duration::from_secs(30), || {
            !route_of(&c.nodes[0].ns, "10.244.3.0/24").is_empty()
        }),
        "the change made around the outage did not converge\n{}",
        c.nodes[0].log_text()
    );
    let took = answered.elapsed();
    eprintln!(
        "a node that joined as the API server came back was routed {took:?} after it answered"
    );
    assert!(
        took <= Duration::from_secs(3),
        "routed {took:?} after the API server answered\n{}",
        c.nodes[0].log_text()
    );
    assert!(ping(&c.nodes[0].ns, pod1, 1));
    for i in 0..2 {
        assert!(c.nodes[i].stop().unwrap().success());
    }
}

/// Another node's annotations are as untrusted as any lease: garbage
/// backend-data, an invalid public-ip and a podCIDR overlapping ours are
/// refused and counted; weft keeps running.
#[test]
fn hostile_annotations_are_rejected() {
    let mut c = kube_cluster("kh", 1);
    c.start(0, weft(), &["--metrics-addr", "127.0.0.1:9153"])
        .unwrap();
    admin(&c, |client| {
        Box::pin(async move {
            let nodes: Api<Node> = Api::all(client);
            for (name, cidr, data, ip) in [
                ("evil-data", "10.244.20.0/24", "garbage", "192.168.100.20"),
                (
                    "evil-ip",
                    "10.244.21.0/24",
                    "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:21\"}",
                    "not-an-ip",
                ),
                (
                    "evil-overlap",
                    "10.244.1.0/24",
                    "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:22\"}",
                    "192.168.100.22",
                ),
            ] {
                nodes
                    .create(&PostParams::default(), &node_object(name, cidr))
                    .await
                    .unwrap();
                let patch = serde_json::json!({"metadata": {"annotations": {
                    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/backend-data": data,
                    "flannel.alpha.coreos.com/public-ip": ip
                }}});
                nodes
                    .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                    .unwrap();
            }
        })
    });
    let want = [("backend_data", 1), ("public_ip", 1), ("overlaps_own", 1)];
    let counted = Cluster::wait_for(Duration::from_secs(5), || {
        let m = metrics(&c.nodes[0].ns, 9153);
        want.iter().all(|(r, n)| {
            metric(&m, &format!("weft_leases_rejected_total{{reason=\"{r}\"}}")) == Some(*n)
        })
    });
    assert!(counted, "{}", metrics(&c.nodes[0].ns, 9153));
    assert_eq!(
        metric(&metrics(&c.nodes[0].ns, 9153), "weft_peers"),
        Some(0)
    );
    assert!(
        c.nodes[0].stop().unwrap().success(),
        "{}",
        c.nodes[0].log_text()
    );
}

/// flannel's own kube-flannel.yml, from the flannel module the peer is
/// built from: the flanneld container's args and env, given to weft as
/// they are. weft finds its node through POD_NAME/POD_NAMESPACE (a Pod
/// object bound to node0) and runs with `--ip-masq` and the healthz port.
#[test]
fn flannel_s_manifest_args_and_env_run_weft() {
    let _ = peer_binary("flanneld", "WEFT_FLANNELD"); // fetches the module
    let modcache = std::process::Command::new("go")
        .args(["env", "GOMODCACHE"])
        .output()
        .expect("go env");
    let manifest = PathBuf::from(String::from_utf8_lossy(&modcache.stdout).trim())
        .join("github.com/flannel-io/flannel@v0.28.10/Documentation/kube-flannel.yml");
    let yaml = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    // The flanneld container: its args, and its env names and literal values.
    let container: Vec<&str> = yaml
        .lines()
        .skip_while(|l| l.trim() != "- /opt/bin/flanneld")
        .skip(1)
        .take_while(|l| l.trim() != "volumeMounts:")
        .collect();
    let args: Vec<String> = container
        .iter()
        .skip_while(|l| l.trim() != "args:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(str::to_string))
        .collect();
    assert_eq!(
        args,
        ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]
    );
    let mut env: Vec<(String, Option<String>)> = Vec::new();
    for (i, l) in container.iter().enumerate() {
        if let Some(name) = l.trim().strip_prefix("- name: ") {
            let value = container
                .get(i + 1)
                .and_then(|v| v.trim().strip_prefix("value: "))
                .map(|v| v.trim_matches('"').to_string());
            env.push((name.to_string(), value));
        }
    }
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"POD_NAME") && names.contains(&"POD_NAMESPACE"),
        "{names:?}"
    );

    let mut c = kube_cluster("km", 1);
    admin(&c, |client| {
        Box::pin(async move {
            use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
            let ns: Namespace =
                serde_json::from_value(serde_json::json!({"metadata": {"name": "kube-flannel"}}))
                    .unwrap();
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
            // The ServiceAccount admission wants the default account, which
            // a controller manager would create.
            let sa: ServiceAccount =
                serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))
                    .unwrap();
            Api::<ServiceAccount>::namespaced(client.clone(), "kube-flannel")
                .create(&PostParams::default(), &sa)
                .await
                .unwrap();
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "kube-flannel-ds-x7k2p"},
                "spec": {"nodeName": "node0", "automountServiceAccountToken": false,
                         "containers": [{"name": "kube-flannel", "image": "weft:latest"}]}
            }))
            .unwrap();
            Api::<Pod>::namespaced(client, "kube-flannel")
                .create(&PostParams::default(), &pod)
                .await
                .unwrap();
        })
    });
    // As the kubelet fills them in; NODE_NAME is not set by the manifest.
    c.env.push(("NODE_NAME".into(), String::new()));
    for (name, value) in env {
        let value = match name.as_str() {
            "POD_NAME" => "kube-flannel-ds-x7k2p".to_string(),
            "POD_NAMESPACE" => "kube-flannel".to_string(),
            _ => value.unwrap_or_default(),
        };
        c.env.push((name, value));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.start(0, weft(), &args).unwrap();
    assert_eq!(c.nodes[0].subnet().unwrap().to_string(), "10.244.1.0/24");
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");
    let health = c.nodes[0]
        .ns
        .enter(|| std::net::TcpStream::connect(("127.0.0.1", 8081)).is_ok())
        .unwrap();
    assert!(health, "nothing on the healthz port");
    assert!(
        c.nodes[0].stop().unwrap().success(),
        "{}",
        c.nodes[0].log_text()
    );
}

/// A node without a podCIDR yet: weft waits, saying which node and which
/// field, and takes the podCIDR once it is set. An operator's
/// `public-ip-overwrite` annotation wins over the interface's address.
#[test]
fn waits_for_the_pod_cidr_and_honours_public_ip_overwrite() {
    let mut c = kube_cluster("kw", 1);
    admin(&c, |client| {
        Box::pin(async move {
            let nodes: Api<Node> = Api::all(client);
            nodes
                .delete("node0", &DeleteParams::default())
                .await
                .unwrap();
            let bare: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "node0", "annotations": {
                    "node.alpha.kubernetes.io/ttl": "0",
                    "flannel.alpha.coreos.com/public-ip-overwrite": "192.168.100.99"
                }}
            }))
            .unwrap();
            nodes.create(&PostParams::default(), &bare).await.unwrap();
        })
    });
    c.spawn(0, weft(), &[]).unwrap();
    let said = Cluster::wait_for(Duration::from_secs(10), || {
        strip_ansi(&c.nodes[0].log_text()).contains("waiting for node node0 to get a spec.podCIDR")
    });
    assert!(said, "{}", c.nodes[0].log_text());
    assert!(c.nodes[0].subnet().is_none(), "ready without a podCIDR");
    admin(&c, |client| {
        Box::pin(async move {
            let patch = serde_json::json!({"spec": {"podCIDR": "10.244.7.0/24"}});
            Api::<Node>::all(client)
                .patch("node0", &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .unwrap();
        })
    });
    c.wait_ready(0).unwrap();
    assert_eq!(c.nodes[0].subnet().unwrap().to_string(), "10.244.7.0/24");
    let a = flannel_annotations(&node_of(&c, 0));
    assert_eq!(a[&format!("{PREFIX}public-ip")], "192.168.100.99");
    assert!(c.nodes[0].stop().unwrap().success());
}

/// Kubernetes' claims: a Node each, with flannel's annotations, created
/// after the nodes it collides with (its creationTimestamp is the lease's
/// seniority). Two Nodes can hold one podCIDR here.
struct KubeClaims;

impl Claims for KubeClaims {
    fn claim(&self, c: &Cluster, name: &str, cidr: &str, public_ip: &str, mac: &str) {
        create_flannel_node(
            c,
            name,
            cidr,
            serde_json::json!({
                "backend-type": "vxlan",
                "backend-data": format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
                "public-ip": public_ip,
            }),
        );
    }

    fn release(&self, c: &Cluster, i: usize) {
        delete_node(c, &format!("node{i}"));
    }

    fn become_holder(&self, c: &mut Cluster, name: &str) {
        c.env.push(("NODE_NAME".into(), name.into()));
    }
}

/// The collision scenario (`common::colliders_never_displace_a_live_peer`)
/// on the API server: Nodes that claim a live node's public-ip, its
/// podCIDR and its VtepMAC, on a TAP and a TUN.
#[test]
fn colliding_nodes_never_displace_a_live_peer() {
    for device in ["tap", "tun"] {
        let mut c = kube_cluster(&format!("kc{}", &device[..2]), 2);
        colliders_never_displace_a_live_peer(&mut c, &KubeClaims, device);
    }
}

/// Our own Node deleted under a running weft: it waits for the Node to
/// come back, and a SIGTERM meanwhile still stops it cleanly (routes and
/// device removed), rather than leaving it blocked in the lease code.
#[test]
fn sigterm_stops_weft_while_its_node_is_gone() {
    let mut c = kube_cluster("kd", 2);
    start_all(&mut c, &[]);
    assert!(wait_ping(&c.nodes[0].ns, c.nodes[1].pod_ip().unwrap()));
    delete_node(&c, "node0");
    std::thread::sleep(Duration::from_secs(2));
    let t0 = std::time::Instant::now();
    let status = c.nodes[0].stop();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "{status:?}\n{}",
        c.nodes[0].log_text()
    );
    eprintln!("stopped {:?} after SIGTERM", t0.elapsed());
    assert!(route_of(&c.nodes[0].ns, "10.244.2.0/24").is_empty());
    let link = c.nodes[0].ns.ip(&["link", "show", "flannel.1"]);
    assert!(link.is_err(), "the device is still there: {link:?}");
    assert!(c.nodes[1].stop().unwrap().success());
}
