//! Helpers shared by the integration tests (each test file includes this).

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;
use weft_testbed::{tcp_transfer, Cluster, Netns};

/// The weft binary under test: this build's, or the one `WEFT_BINARY`
/// names (CI runs these tests with an aarch64 build behind a qemu-user
/// wrapper, see `.ci/emulated.sh`).
pub fn weft() -> &'static Path {
    static BINARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| match std::env::var_os("WEFT_BINARY") {
        Some(p) if !p.is_empty() => p.into(),
        _ => env!("CARGO_BIN_EXE_weft").into(),
    })
}

/// net-conf.json for a backend.
pub fn net_conf(backend: &str) -> String {
    match backend {
        "udp" => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#.into(),
        _ => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#.into(),
    }
}

/// `count` ICMP echoes from `ns` to `ip`, 50 ms apart; true if every one
/// was answered.
pub fn ping(ns: &Netns, ip: std::net::Ipv4Addr, count: u16) -> bool {
    weft_testbed::ping_rtts(ns, ip, count, Duration::from_millis(50))
        .map(|r| r.len() == usize::from(count))
        .unwrap_or(false)
}

/// Waits until `ns` can ping `ip` (routes appear within a poll interval).
pub fn wait_ping(ns: &Netns, ip: std::net::Ipv4Addr) -> bool {
    Cluster::wait_for(Duration::from_secs(5), || ping(ns, ip, 1))
}

/// A hash-checked TCP transfer of `mb` MB from node `a` to node `b`'s pod IP.
pub fn transfer(c: &Cluster, a: usize, b: usize, mb: usize, port: u16) {
    let to = c.nodes[b].pod_ip().expect("node b has a subnet");
    let r = tcp_transfer(&c.nodes[a].ns, &c.nodes[b].ns, to, port, mb << 20).unwrap_or_else(|e| {
        panic!(
            "transfer {a}->{b} failed: {e}\n--- a:\n{}\n--- b:\n{}",
            c.nodes[a].log_text(),
            c.nodes[b].log_text()
        )
    });
    assert_eq!(r.sent, r.received, "bytes or hash differ {a}->{b}");
    eprintln!(
        "transfer {a}->{b}: {} MB in {:?} ({:.2} Gbit/s)",
        mb,
        r.elapsed,
        r.gbits()
    );
}

/// Reads `/metrics` from weft's metrics server inside `ns`.
pub fn metrics(ns: &Netns, port: u16) -> String {
    ns.enter(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })
    .and_then(|r| r)
    .unwrap_or_default()
}

/// The value of one metric line (exact name with labels).
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A hash-checked TCP transfer of `mb` MB from node `a`'s pod IP to node
/// `b`'s: pod to pod, as the CNI bridge's pods would talk.
pub fn transfer_pods(c: &Cluster, a: usize, b: usize, mb: usize, port: u16) {
    let from = c.nodes[a].pod_ip().expect("node a has a subnet");
    let to = c.nodes[b].pod_ip().expect("node b has a subnet");
    transfer_between(c, (a, from.into()), (b, to.into()), mb, port);
}

/// The same between the nodes' IPv6 pod addresses.
pub fn transfer_pods6(c: &Cluster, a: usize, b: usize, mb: usize, port: u16) {
    let from = c.nodes[a].pod_ip6().expect("node a has an IPv6 subnet");
    let to = c.nodes[b].pod_ip6().expect("node b has an IPv6 subnet");
    transfer_between(c, (a, from.into()), (b, to.into()), mb, port);
}

/// A hash-checked TCP transfer of `mb` MB from `from` in node `a` to `to`
/// in node `b`.
pub fn transfer_between(
    c: &Cluster,
    (a, from): (usize, std::net::IpAddr),
    (b, to): (usize, std::net::IpAddr),
    mb: usize,
    port: u16,
) {
    let r = weft_testbed::tcp_transfer_ip(
        &c.nodes[a].ns,
        Some(from),
        &c.nodes[b].ns,
        to,
        port,
        mb << 20,
    )
    .unwrap_or_else(|e| {
        panic!(
            "transfer {a}->{b} ({from} -> {to}) failed: {e}\n--- a:\n{}\n--- b:\n{}",
            c.nodes[a].log_text(),
            c.nodes[b].log_text()
        )
    });
    assert_eq!(r.sent, r.received, "bytes or hash differ {a}->{b}");
}

/// Waits (up to 3 s) until node `i` has logged `what`: weft logs a change
/// right after the kernel has it, and under emulation (the arm64 weft in
/// qemu-user) that can be well after a route is visible.
pub fn wait_log(c: &Cluster, i: usize, what: &str) {
    let logged = Cluster::wait_for(Duration::from_secs(3), || {
        c.nodes[i].log_text().contains(what)
    });
    assert!(
        logged,
        "node {i} never logged {what:?}:\n{}",
        c.nodes[i].log_text()
    );
}

/// Waits (up to 3 s) until node `i`'s metric `name` (metrics server on
/// 127.0.0.1:9153) is `want`: the control plane publishes its gauges and
/// counters after the routes they count.
pub fn wait_metric(c: &Cluster, i: usize, name: &str, want: u64) {
    let get = || metric(&metrics(&c.nodes[i].ns, 9153), name);
    let reached = Cluster::wait_for(Duration::from_secs(3), || get() == Some(want));
    assert!(reached, "node {i}: {name} is {:?}, want {want}", get());
}

/// Waits (up to 5 s) until node `i`'s counter `name{reason="<r>"}` is `n`
/// for each `(r, n)` of `want` (metrics server on 127.0.0.1:9153); fails
/// with the metrics and the log if it never is.
pub fn wait_rejected(c: &Cluster, i: usize, name: &str, want: &[(&str, u64)]) {
    let ns = &c.nodes[i].ns;
    let all = |m: &str| {
        want.iter()
            .all(|(r, n)| metric(m, &format!("{name}{{reason=\"{r}\"}}")) == Some(*n))
    };
    let settled = Cluster::wait_for(Duration::from_secs(5), || all(&metrics(ns, 9153)));
    assert!(settled, "{}\n{}", metrics(ns, 9153), c.nodes[i].log_text());
}

/// Node `i`'s ip6tables rules once flanneld's set is in (7 masquerading
/// and 3 forwarding rules, waited for up to 10 s), its IPv6 subnet
/// written `<subnet>`, without chain counters and comments: what two
/// nodes, weft and flanneld, can be compared by.
pub fn flannel_ip6tables(c: &Cluster, i: usize) -> String {
    let s6 = c.nodes[i].subnet6().expect("an IPv6 subnet").to_string();
    let mut text = String::new();
    Cluster::wait_for(Duration::from_secs(10), || {
        let out = c.nodes[i].ns.exec("ip6tables-save", &[]).unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        let count = |what: &str| text.lines().filter(|l| l.contains(what)).count();
        count("\"flanneld masq\"") == 7 && count("\"flanneld forward\"") == 3
    });
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.split_once(" [") {
            Some((head, _)) if l.starts_with(':') => head.to_string(),
            _ => l.to_string(),
        })
        .map(|l| l.replace(&s6, "<subnet>"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `weft status` prints in `ns` against the metrics server on
/// 127.0.0.1:9153, colours stripped.
pub fn weft_status(ns: &Netns) -> String {
    let out = ns
        .command(weft())
        .args(["status", "--metrics-addr", "127.0.0.1:9153"])
        .output()
        .unwrap();
    strip_ansi(&String::from_utf8_lossy(&out.stdout))
}

/// Waits (up to 10 s) for node `i`'s daemon to exit; true if it did.
pub fn wait_exit(c: &mut Cluster, i: usize) -> bool {
    Cluster::wait_for(Duration::from_secs(10), || {
        c.nodes[i]
            .daemon
            .as_mut()
            .is_some_and(|d| d.try_wait().ok().flatten().is_some())
    })
}

/// `ip route show <dst>` in `ns`, as text (`ip -6` for an IPv6 prefix:
/// plain `ip route` lists IPv4 routes only).
pub fn route_of(ns: &Netns, dst: impl std::fmt::Display) -> String {
    let dst = dst.to_string();
    let family = if dst.contains(':') { "-6" } else { "-4" };
    ns.ip(&[family, "route", "show", &dst])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Starts weft on every node of `c` with `extra` flags and puts each
/// node's pod bridge up.
pub fn start_all(c: &mut Cluster, extra: &[&str]) {
    for i in 0..c.nodes.len() {
        c.start(i, weft(), extra).unwrap();
        c.nodes[i].add_pod_bridge().unwrap();
    }
}

/// A vxlan lease's JSON.
pub fn vxlan_lease(public_ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// The subnet node 0 holds in the hostile-lease scenario, and its VtepMAC.
pub const HOSTILE_OWN: (&str, &str) = ("10.244.2.0-24", "0e:11:22:33:44:55");

/// Leases in the order they are written (key, JSON, reason): each one with
/// a reason must be refused; two pass: 10.244.30.0/24 (whose VtepMAC and
/// IPv4 subnet two younger leases repeat: written after it, they lose) and
/// 10.244.40.0/24 (which the node already routes statically).
pub fn hostile_leases() -> Vec<(&'static str, String, &'static str)> {
    let good_ip = "192.168.100.50";
    let good_mac = "0e:00:00:00:00:30";
    let l = vxlan_lease;
    vec![
        (
            "10.245.0.0-24",
            l(good_ip, "0e:00:00:00:00:01"),
            "outside_network",
        ),
        (
            "0.0.0.0-0",
            l(good_ip, "0e:00:00:00:00:02"),
            "outside_network",
        ),
        (
            "10.244.0.0-16",
            l(good_ip, "0e:00:00:00:00:03"),
            "subnet_length",
        ),
        (
            "10.244.9.0-25",
            l(good_ip, "0e:00:00:00:00:04"),
            "subnet_length",
        ),
        (
            "10.244.2.0-24&fd00::-64",
            l(good_ip, "0e:00:00:00:00:05"),
            "overlaps_own",
        ),
        (
            "10.244.11.0-24",
            l("0.0.0.0", "0e:00:00:00:00:11"),
            "public_ip",
        ),
        (
            "10.244.12.0-24",
            l("127.0.0.1", "0e:00:00:00:00:12"),
            "public_ip",
        ),
        (
            "10.244.13.0-24",
            l("224.0.0.1", "0e:00:00:00:00:13"),
            "public_ip",
        ),
        (
            "10.244.14.0-24",
            l("255.255.255.255", "0e:00:00:00:00:14"),
            "public_ip",
        ),
        (
            "10.244.15.0-24",
            l("169.254.1.1", "0e:00:00:00:00:15"),
            "public_ip",
        ),
        (
            "10.244.16.0-24",
            l("192.168.100.1", "0e:00:00:00:00:16"),
            "public_ip",
        ),
        (
            "10.244.21.0-24",
            l(good_ip, "00:00:00:00:00:00"),
            "vtep_mac",
        ),
        (
            "10.244.22.0-24",
            l(good_ip, "ff:ff:ff:ff:ff:ff"),
            "vtep_mac",
        ),
        (
            "10.244.23.0-24",
            l(good_ip, "01:00:5e:00:00:01"),
            "vtep_mac",
        ),
        ("10.244.24.0-24", l(good_ip, HOSTILE_OWN.1), "vtep_mac"),
        (
            "10.244.25.0-24",
            format!(r#"{{"PublicIP":"{good_ip}","BackendType":"vxlan","BackendData":"garbage"}}"#),
            "backend_data",
        ),
        ("10.244.30.0-24", l(good_ip, good_mac), ""),
        (
            "10.244.31.0-24",
            l("192.168.100.51", good_mac),
            "duplicate_vtep_mac",
        ),
        (
            "10.244.30.0-24&fd00:1::-64",
            l("192.168.100.52", "0e:00:00:00:00:32"),
            "overlaps_peer",
        ),
        (
            "10.244.32.0-24",
            l(good_ip, "0e:00:00:00:00:33"),
            "duplicate_public_ip",
        ),
        (
            "10.244.40.0-24",
            l("192.168.100.53", "0e:00:00:00:00:40"),
            "",
        ),
    ]
}

/// Prepares node 0 for the hostile-lease scenario: its pod bridge (the
/// CNI's route to our subnet), a default route, and a static route to
/// 10.244.40.0/24 that a lease will later claim.
pub fn hostile_lease_routes(c: &Cluster) {
    let ns = &c.nodes[0].ns;
    pod_bridge_for(ns, HOSTILE_OWN.0);
    ns.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "192.168.100.254",
        "dev",
        "eth0",
    ])
    .unwrap();
    ns.ip(&[
        "route",
        "add",
        "10.244.40.0/24",
        "via",
        "192.168.100.254",
        "dev",
        "eth0",
    ])
    .unwrap();
}

/// `bridge fdb show dev flannel.1` in `ns`.
pub fn fdb_of(ns: &Netns) -> String {
    let out = ns
        .command("bridge")
        .args(["fdb", "show", "dev", "flannel.1"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `text` without terminal colour codes (ESC [ … m).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn pod_bridge_for(ns: &Netns, key: &str) {
    let net: ipnet::Ipv4Net = key.replace('-', "/").parse().unwrap();
    weft_testbed::pod_bridge(ns, net).unwrap();
}

/// Checks what node 0 (weft on tap, metrics on 9153) made of
/// `hostile_leases`: each refused with its reason, counted once, no
/// route, neighbor or FDB entry for any of them, the CNI bridge's, the
/// underlay's, the default and the static route intact.
pub fn check_hostile_leases(c: &Cluster) {
    let leases = hostile_leases();
    let ns = &c.nodes[0].ns;
    let mut want = std::collections::BTreeMap::<&str, u64>::new();
    for (_, _, reason) in &leases {
        if !reason.is_empty() {
            *want.entry(reason).or_default() += 1;
        }
    }
    let settled = Cluster::wait_for(Duration::from_secs(5), || {
        let m = metrics(ns, 9153);
        want.iter().all(|(r, n)| {
            metric(&m, &format!("weft_leases_rejected_total{{reason=\"{r}\"}}")) == Some(*n)
        }) && metric(&m, "weft_routes_refused_total") == Some(1)
    });
    let m = metrics(ns, 9153);
    assert!(settled, "{m}\n{}", c.nodes[0].log_text());
    // Several polls later: still counted once, warned once.
    std::thread::sleep(Duration::from_millis(1500));
    let m2 = metrics(ns, 9153);
    for (r, n) in &want {
        let name = format!("weft_leases_rejected_total{{reason=\"{r}\"}}");
        assert_eq!(
            metric(&m2, &name),
            Some(*n),
            "{name} grew while nothing changed"
        );
    }
    let log = strip_ansi(&c.nodes[0].log_text());
    for (key, _, reason) in &leases {
        if reason.is_empty() {
            continue;
        }
        let lines = log
            .lines()
            .filter(|l| l.contains("ignoring lease") && l.contains(&format!("lease={key} ")))
            .count();
        assert_eq!(lines, 1, "{key}: warned {lines} times\n{log}");
        let gauge = format!("weft_lease_rejected{{key=\"{key}\"");
        assert!(m2.contains(&gauge), "{gauge} missing\n{m2}");
    }
    assert_eq!(metric(&m2, "weft_peers"), Some(2), "{m2}");
    // Routes: only the accepted, unconflicted peer's is weft's.
    let routes = String::from_utf8_lossy(&ns.ip(&["route", "show"]).unwrap().stdout).to_string();
    assert!(
        routes.contains("default via 192.168.100.254 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.2.0/24 dev cni0 proto kernel"),
        "{routes}"
    );
    assert!(
        routes.contains("192.168.100.0/24 dev eth0 proto kernel"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.40.0/24 via 192.168.100.254 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.30.0/24 via 10.244.30.0 dev flannel.1 proto 87 onlink"),
        "{routes}"
    );
    let weft_routes = routes.lines().filter(|l| l.contains("proto 87")).count();
    assert_eq!(weft_routes, 1, "{routes}");
    let neigh = String::from_utf8_lossy(
        &ns.ip(&["neigh", "show", "dev", "flannel.1"])
            .unwrap()
            .stdout,
    )
    .to_string();
    assert_eq!(
        neigh.trim(),
        "10.244.30.0 lladdr 0e:00:00:00:00:30 PERMANENT",
        "{neigh}"
    );
    let fdb = fdb_of(ns);
    for (_, json, reason) in &leases {
        if let (false, Some(mac)) = (reason.is_empty(), json.split("VtepMAC\":\"").nth(1)) {
            let mac = &mac[..17];
            // The kernel itself lists multicast groups the device joined.
            let multicast = u8::from_str_radix(&mac[..2], 16).is_ok_and(|b| b & 1 == 1);
            if !multicast && mac != "0e:00:00:00:00:30" {
                assert!(!fdb.contains(mac), "{mac} in\n{fdb}");
            }
        }
    }
}

/// A real peer program: `$env` if set, else built and cached by
/// `.ci/peers.sh <name>` (flanneld, kube-apiserver) on first use.
pub fn peer_binary(name: &str, env: &str) -> std::path::PathBuf {
    if let Ok(p) = std::env::var(env) {
        return p.into();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/peers.sh");
    let out = std::process::Command::new("bash")
        .args([script, name])
        .output()
        .expect("run .ci/peers.sh");
    assert!(
        out.status.success(),
        "cannot build {name} with {script}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().into()
}

/// How a collision test writes leases into one registry.
pub trait Claims {
    /// A new holder, `name`, claims `cidr` with `public_ip` and `mac`. A
    /// registry that names a lease by its subnet alone (files, etcd) claims
    /// an existing peer's subnet with a dual-stack key that repeats it.
    fn claim(&self, c: &Cluster, name: &str, cidr: &str, public_ip: &str, mac: &str);
    /// Node `i`'s own lease goes away (node `i` is stopped already).
    fn release(&self, c: &Cluster, i: usize);
    /// What node `i` is started with to be the holder `name` (Kubernetes:
    /// that Node's name); by default it finds its lease by its PublicIP.
    fn become_holder(&self, _c: &mut Cluster, _name: &str) {}
}

/// The VtepMAC of the peer with `subnet`, as node `i` (metrics on 9153)
/// lists it.
pub fn peer_mac(c: &Cluster, i: usize, subnet: ipnet::Ipv4Net) -> String {
    let m = metrics(&c.nodes[i].ns, 9153);
    let line = m
        .lines()
        .find(|l| l.starts_with("weft_peer_info{") && l.contains(&format!("subnet=\"{subnet}\"")))
        .unwrap_or_else(|| panic!("no peer {subnet} in\n{m}"));
    line.split("vtep_mac=\"").nth(1).unwrap()[..17].to_string()
}

/// The collision scenario, on any registry. Nodes 0 and 1 run weft on
/// `device` (node 0's metrics on 9153) and reach each other; then three
/// newcomers claim node 1's PublicIP, its subnet and its VtepMAC. Node 0
/// refuses each with its reason, programs nothing of them, lists them in
/// `weft status`, and node 0 and node 1 keep reaching each other both ways.
/// Once node 1 and its lease are gone, node 1's host comes back as the
/// holder of the lease that claimed its PublicIP, and node 0 reaches it.
pub fn colliders_never_displace_a_live_peer(c: &mut Cluster, claims: &dyn Claims, device: &str) {
    c.start(
        0,
        weft(),
        &["--device", device, "--metrics-addr", "127.0.0.1:9153"],
    )
    .unwrap();
    c.start(
        1,
        weft(),
        &["--device", device, "--metrics-addr", "127.0.0.1:9153"],
    )
    .unwrap();
    for i in 0..2 {
        c.nodes[i].add_pod_bridge().unwrap();
    }
    let (a, b) = (c.nodes[0].pod_ip().unwrap(), c.nodes[1].pod_ip().unwrap());
    assert!(wait_ping(&c.nodes[0].ns, b), "{}", c.nodes[0].log_text());
    assert!(wait_ping(&c.nodes[1].ns, a), "{}", c.nodes[1].log_text());
    let b_subnet = c.nodes[1].subnet().unwrap();
    let b_ip = c.nodes[1].underlay.to_string();
    let b_mac = peer_mac(c, 0, b_subnet);
    let colliders = [
        (
            "evil-ip",
            "10.244.250.0/24".to_string(),
            b_ip.clone(),
            "0e:00:00:00:00:fa".to_string(),
            "duplicate_public_ip",
        ),
        (
            "evil-twin",
            b_subnet.to_string(),
            "192.168.100.77".into(),
            "0e:00:00:00:00:fb".into(),
            "overlaps_peer",
        ),
        (
            "evil-mac",
            "10.244.251.0/24".into(),
            "192.168.100.78".into(),
            b_mac.clone(),
            "duplicate_vtep_mac",
        ),
    ];
    for (name, cidr, ip, mac, _) in &colliders {
        claims.claim(c, name, cidr, ip, mac);
    }
    let want: Vec<(&str, u64)> = colliders.iter().map(|(.., r)| (*r, 1)).collect();
    wait_rejected(c, 0, "weft_leases_rejected_total", &want);
    let ns0 = &c.nodes[0].ns;
    // The incumbent keeps working both ways, poll after poll.
    for _ in 0..6 {
        assert!(
            ping(&c.nodes[0].ns, b, 2),
            "0 -> 1 cut off\n{}",
            c.nodes[0].log_text()
        );
        assert!(
            ping(&c.nodes[1].ns, a, 2),
            "1 -> 0 cut off\n{}",
            c.nodes[1].log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    transfer_pods(c, 0, 1, 5, 5300);
    transfer_pods(c, 1, 0, 5, 5301);
    let m = metrics(ns0, 9153);
    assert_eq!(metric(&m, "weft_peers"), Some(1), "{m}");
    assert_eq!(
        metric(&m, r#"weft_dropped_packets_total{reason="unknown_sender"}"#),
        Some(0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"weft_dropped_packets_total{reason="spoofed_source"}"#),
        Some(0),
        "{m}"
    );
    // Nothing of the newcomers is programmed: one route of ours (node 1's),
    // node 1's neighbour only, no FDB entry with their MACs.
    let ours = String::from_utf8_lossy(&ns0.ip(&["route", "show", "proto", "87"]).unwrap().stdout)
        .to_string();
    assert_eq!(ours.lines().count(), 1, "{ours}");
    assert!(ours.starts_with(&format!("{b_subnet} ")), "{ours}");
    let neigh = String::from_utf8_lossy(
        &ns0.ip(&["neigh", "show", "dev", "flannel.1"])
            .unwrap()
            .stdout,
    )
    .to_string();
    for (_, cidr, _, mac, _) in &colliders {
        if *mac != b_mac {
            assert!(!neigh.contains(mac.as_str()), "{mac} in\n{neigh}");
        }
        let net: ipnet::Ipv4Net = cidr.parse().unwrap();
        if net != b_subnet {
            assert!(
                !neigh.contains(&net.network().to_string()),
                "{cidr} in\n{neigh}"
            );
        }
    }
    if device == "tap" {
        assert_eq!(
            neigh.trim(),
            format!("{} lladdr {b_mac} PERMANENT", b_subnet.network()),
            "{neigh}"
        );
    }
    let fdb = fdb_of(ns0);
    for mac in ["0e:00:00:00:00:fa", "0e:00:00:00:00:fb"] {
        assert!(!fdb.contains(mac), "{mac} in\n{fdb}");
    }
    let status = weft_status(ns0);
    assert!(status.contains("rejected leases (3)"), "{status}");
    for (.., r) in &colliders {
        assert!(status.contains(r), "{r} not in\n{status}");
    }

    // The incumbent leaves; its lease goes. The newcomers are admitted, and
    // node 1's host comes back as the one that claimed its PublicIP.
    assert!(c.nodes[1].stop().unwrap().success());
    claims.release(c, 1);
    let admitted = Cluster::wait_for(Duration::from_secs(5), || {
        !route_of(&c.nodes[0].ns, "10.244.250.0/24").is_empty()
    });
    assert!(admitted, "{}", c.nodes[0].log_text());
    claims.become_holder(c, "evil-ip");
    c.nodes[1].ns.ip(&["link", "del", "cni0"]).unwrap();
    c.start(1, weft(), &["--device", device]).unwrap();
    assert_eq!(c.nodes[1].subnet().unwrap().to_string(), "10.244.250.0/24");
    c.nodes[1].add_pod_bridge().unwrap();
    let b2 = c.nodes[1].pod_ip().unwrap();
    assert!(
        wait_ping(&c.nodes[0].ns, b2),
        "{}\n{}",
        c.nodes[0].log_text(),
        c.nodes[1].log_text()
    );
    assert!(ping(&c.nodes[1].ns, a, 3), "{}", c.nodes[1].log_text());
    for i in 0..2 {
        assert!(c.nodes[i].stop().unwrap().success());
    }
}

/// The subnet key a claim of `cidr` is written under where a key names a
/// lease (files, etcd): the plain key, or for a subnet a node of `c` holds
/// already, a dual-stack key that repeats it.
pub fn claim_key(c: &Cluster, cidr: &str) -> String {
    let net: ipnet::Ipv4Net = cidr.parse().unwrap();
    let key = format!("{}-{}", net.network(), net.prefix_len());
    match c.nodes.iter().any(|n| n.subnet() == Some(net)) {
        true => key + "&fd00:9::-64",
        false => key,
    }
}

/// The file registry's claims: a lease file each.
pub struct FileClaims;

impl Claims for FileClaims {
    fn claim(&self, c: &Cluster, _name: &str, cidr: &str, public_ip: &str, mac: &str) {
        let key = claim_key(c, cidr);
        std::fs::write(
            c.registry.join("subnets").join(key),
            vxlan_lease(public_ip, mac),
        )
        .unwrap();
    }

    fn release(&self, c: &Cluster, i: usize) {
        std::fs::remove_file(c.lease_path(i).unwrap()).unwrap();
    }
}
