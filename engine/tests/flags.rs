//! flanneld's command line, understood by weft: every flanneld flag weft
//! shares can come from `FLANNELD_<FLAG>` as flanneld allows, the
//! underlay is chosen as `--iface` (repeatable, name or address),
//! `--iface-regex` and `--iface-can-reach` choose it, and
//! `--healthz-ip`/`--healthz-port` serve `/healthz` and `/readyz`.

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::Duration;
use weft_routes::LeaseAttrs;
use weft_testbed::Cluster;

/// The status line of `GET path` on 127.0.0.1:`port` in node 0.
fn get(c: &Cluster, port: u16, path: &'static str) -> String {
    c.nodes[0]
        .ns
        .enter(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.lines().next().unwrap_or("").to_string()
        })
        .unwrap()
}

#[test]
fn flanneld_environment_variables_configure_weft() {
    let mut c = Cluster::new("fe", 1, &net_conf("vxlan")).unwrap();
    for (k, v) in [
        ("FLANNELD_IP_MASQ", "true"),
        ("FLANNELD_IPTABLES_FORWARD_RULES", "false"),
        ("FLANNELD_HEALTHZ_PORT", "8081"),
        ("FLANNELD_HEALTHZ_IP", "127.0.0.1"),
        ("FLANNELD_IFACE", "192.168.100.1"),
    ] {
        c.env.push((k.into(), v.into()));
    }
    c.start(0, weft(), &["--metrics-addr", "127.0.0.1:9153"])
        .unwrap();
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");
    let rules = c.nodes[0].ns.exec("iptables-save", &[]).unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains("FLANNEL-POSTRTG"), "{rules}");
    assert!(!rules.contains("FLANNEL-FWD"), "{rules}");
    assert_eq!(get(&c, 8081, "/healthz"), "HTTP/1.1 200 OK");
    assert_eq!(get(&c, 8081, "/readyz"), "HTTP/1.1 200 OK");
    // The counters stay on the metrics address.
    assert_eq!(get(&c, 8081, "/metrics"), "HTTP/1.1 404 Not Found");
    assert_eq!(get(&c, 9153, "/metrics"), "HTTP/1.1 200 OK");
    // The command line wins over the environment, as with flanneld.
    assert!(c.nodes[0].stop().unwrap().success());
    c.start(0, weft(), &["--ip-masq=false"]).unwrap();
    let env = std::fs::read_to_string(&c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=false\n"), "{env}");
    assert!(c.nodes[0].stop().unwrap().success());
}

#[test]
fn the_underlay_is_chosen_as_flanneld_chooses_it() {
    let mut c = Cluster::new("fi", 2, &net_conf("vxlan")).unwrap();
    let ns = &c.nodes[0].ns;
    // A second interface (a veth pair: this kernel has no dummy module).
    ns.ip(&[
        "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "dummy0"])
        .unwrap();
    ns.ip(&["link", "set", "dummy0", "up"]).unwrap();
    ns.ip(&["link", "set", "dummy1", "up"]).unwrap();
    for (args, want) in [
        (
            vec!["--iface", "nope", "--iface", "10.99.0.1", "--iface", "eth0"],
            "10.99.0.1",
        ),
        (vec!["--iface", "eth0"], "192.168.100.1"),
        (vec!["--iface-regex", "^dum"], "10.99.0.1"),
        (vec!["--iface-regex", "^10\\.99\\."], "10.99.0.1"),
        (
            vec!["--iface", "nope", "--iface-regex", "eth"],
            "192.168.100.1",
        ),
        (vec!["--iface-can-reach", "192.168.100.2"], "192.168.100.1"),
        (vec!["--iface-can-reach", "10.99.0.7"], "10.99.0.1"),
    ] {
        c.start(0, weft(), &args).unwrap();
        let lease = std::fs::read(c.lease_path(0).unwrap()).unwrap();
        let ip = LeaseAttrs::from_json(&lease).unwrap().public_ip.unwrap();
        assert_eq!(ip.to_string(), want, "{args:?}\n{}", c.nodes[0].log_text());
        assert!(c.nodes[0].stop().unwrap().success());
    }
    c.spawn(0, weft(), &["--iface", "nope", "--iface-regex", "nomatch"])
        .unwrap();
    let said = Cluster::wait_for(Duration::from_secs(5), || {
        c.nodes[0]
            .log_text()
            .contains("no interface matches --iface nope, --iface-regex nomatch")
    });
    assert!(said, "{}", c.nodes[0].log_text());
}

/// `--ip-blackhole-route`: our subnet is blackholed (no bridge plugin
/// here), put back within the resync period, and removed on exit.
#[test]
fn blackhole_route_for_our_subnet() {
    let mut c = Cluster::new("fb", 1, &net_conf("vxlan")).unwrap();
    c.start(
        0,
        weft(),
        &["--ip-blackhole-route", "--iptables-resync", "1"],
    )
    .unwrap();
    let subnet = c.nodes[0].subnet().unwrap().to_string();
    let ns = c.nodes[0].ns.handle();
    let blackholes = || {
        let o = ns.ip(&["route", "show", "type", "blackhole"]).unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let want = format!("blackhole {subnet} proto 87");
    assert_eq!(blackholes(), want);
    ns.ip(&["route", "del", "blackhole", &subnet]).unwrap();
    assert!(
        Cluster::wait_for(Duration::from_secs(4), || blackholes() == want),
        "not put back: {}",
        blackholes()
    );
    assert!(c.nodes[0].stop().unwrap().success());
    assert_eq!(blackholes(), "");
}

/// Each Kubernetes start-up failure says what is wrong once, and what to
/// do; `EVENT_QUEUE_DEPTH` (kube-flannel.yml's) is taken when flanneld would
/// take it and refused, with why, when not.
#[test]
fn kubernetes_start_up_failures_say_what_is_wrong_once() {
    let c = Cluster::new("kf", 1, &net_conf("vxlan")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("net-conf.json");
    let run = |env: &[(&str, &str)], net_conf: &std::path::Path| {
        let out = c.nodes[0]
            .ns
            .command(weft())
            .args(["run", "--kube-subnet-mgr", "--metrics-addr", "off"])
            .arg("--net-config-path")
            .arg(net_conf)
            .args(["--kubeconfig-file", "/nonexistent/kubeconfig"])
            .env_remove("NODE_NAME")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success());
        strip_ansi(&String::from_utf8_lossy(&out.stderr))
    };
    let err = run(&[], &missing);
    assert!(err.contains("cannot read net-conf.json at"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!err.contains("no network config"), "{err}");

    std::fs::write(&missing, net_conf("vxlan")).unwrap();
    let err = run(&[], &missing);
    assert!(
        err.contains("cannot use the kubeconfig /nonexistent/kubeconfig"),
        "{err}"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let err = run(&[("EVENT_QUEUE_DEPTH", "lots")], &missing);
    assert!(
        err.contains("EVENT_QUEUE_DEPTH=\"lots\" is not a positive whole number"),
        "{err}"
    );
    // A value flanneld takes gets past it, to the next failure.
    let err = run(&[("EVENT_QUEUE_DEPTH", "5000")], &missing);
    assert!(
        err.contains("EVENT_QUEUE_DEPTH has nothing to size"),
        "{err}"
    );
    assert!(err.contains("cannot use the kubeconfig"), "{err}");
}
