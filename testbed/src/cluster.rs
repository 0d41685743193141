//! Hosts on one bridge sharing one registry: making them (segments, a
//! router), starting weft or a real flanneld on them, waiting for them.

use crate::*;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Hosts on one bridge (in a hub namespace) sharing one file registry.
pub struct Cluster {
    /// The nodes, in creation order.
    pub nodes: Vec<Node>,
    /// The hub namespace holding the bridge.
    pub hub: Netns,
    /// The shared registry directory.
    pub registry: PathBuf,
    /// Scratch space for logs and subnet.env files, removed on drop.
    pub dir: tempfile::TempDir,
    /// net-conf.json, as given to `new`.
    pub net_conf: String,
    /// The etcd server, once `start_etcd` ran: nodes then use it instead
    /// of the file registry.
    pub etcd: Option<Child>,
    /// PEM files when etcd serves TLS with client certificates.
    pub etcd_tls: Option<EtcdTls>,
    /// Environment variables every weft started here gets.
    pub env: Vec<(String, String)>,
    /// A real kube-apiserver, once `start_kube_apiserver` ran: nodes then
    /// run with `--kube-subnet-mgr` against it.
    pub kube: Option<KubeApi>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.kube.take());
        if let Some(mut e) = self.etcd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
    }
}

impl Cluster {
    /// `n` hosts at 192.168.<net>.1…n/24 on a bridge, a registry holding
    /// `net_conf`, and an MTU of 1500 on every link.
    pub fn new(tag: &str, n: usize, net_conf: &str) -> io::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("weft-testbed").tempdir()?;
        let registry = dir.path().join("registry");
        std::fs::create_dir_all(registry.join("subnets"))?;
        std::fs::write(registry.join("config"), net_conf)?;
        let hub = Netns::create(&format!("{tag}h"))?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        let mut c = Cluster {
            nodes: Vec::new(),
            hub,
            registry,
            dir,
            net_conf: net_conf.to_string(),
            etcd: None,
            etcd_tls: None,
            env: Vec::new(),
            kube: None,
        };
        for _ in 0..n {
            c.add_node(tag)?;
        }
        Ok(c)
    }

    /// Adds one more host to the bridge.
    pub fn add_node(&mut self, tag: &str) -> io::Result<usize> {
        self.add_node_on(tag, 0)
    }

    /// Turns the hub into a router between the first segment (`br0`,
    /// 192.168.100.0/24, the router at .254) and a second one (`br1`,
    /// 192.168.101.0/24, the router at .254), for `add_node_on(tag, 1)`.
    /// The first segment's hosts already route everything via .254.
    pub fn add_router(&mut self) -> io::Result<()> {
        let hub = &self.hub;
        hub.ip(&["addr", "add", "192.168.100.254/24", "dev", "br0"])?;
        hub.ip(&["link", "add", "br1", "type", "bridge"])?;
        hub.ip(&["addr", "add", "192.168.101.254/24", "dev", "br1"])?;
        hub.ip(&["link", "set", "br1", "up"])?;
        // A router that sends no ICMP redirects: hosts keep the routes the
        // tests give them.
        for kv in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.br0.send_redirects=0",
            "net.ipv4.conf.br1.send_redirects=0",
        ] {
            hub.exec("sysctl", &["-qw", kv])?;
        }
        Ok(())
    }

    /// Adds a host on segment `segment` (0: 192.168.100.0/24 on `br0`; 1:
    /// 192.168.101.0/24 on `br1`, which needs `add_router` first). The host
    /// is `.N` where N is its index + 1, and routes everything via `.254`.
    pub fn add_node_on(&mut self, tag: &str, segment: u8) -> io::Result<usize> {
        let i = self.nodes.len();
        let ns = Netns::create(&format!("{tag}{i}"))?;
        let port = format!("p{i}");
        sh(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.hub.name,
            ],
        )?;
        let bridge = format!("br{segment}");
        self.hub
            .ip(&["link", "set", &port, "master", &bridge, "up"])?;
        let net = 100 + segment;
        let underlay = Ipv4Addr::new(192, 168, net, i as u8 + 1);
        ns.ip(&["addr", "add", &format!("{underlay}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        // A default route, so weft's interface autodetection has one to find.
        // Its gateway does not exist, or is a router that knows no pod
        // network: pod traffic must never bypass the tunnel by being ARPed
        // for directly on the underlay.
        let gateway = format!("192.168.{net}.254");
        ns.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
        let subnet_file = self.dir.path().join(format!("node{i}/subnet.env"));
        let log = self.dir.path().join(format!("node{i}.log"));
        self.nodes.push(Node {
            ns,
            underlay,
            underlay6: None,
            daemon: None,
            subnet_file,
            log,
            ipv6_only: false,
        });
        Ok(i)
    }

    /// Makes the hosts dual-stack: each host on the first segment gets
    /// `2001:db8:100::<N>/64` on `eth0` (N as for IPv4), each on the second
    /// (after `add_router`) `2001:db8:101::<N>/64`, with duplicate address
    /// detection off so they are usable at once, and an IPv6 default route
    /// via `::fe` of its segment. That is the router's address on each
    /// bridge when there is a router (it then forwards IPv6 too), and
    /// nothing otherwise, as with IPv4. Hosts added later get none.
    pub fn add_ipv6(&mut self) -> io::Result<()> {
        let routed = self
            .hub
            .command("ip")
            .args(["link", "show", "br1"])
            .output()?
            .status
            .success();
        if routed {
            for (bridge, addr) in [
                ("br0", "2001:db8:100::fe/64"),
                ("br1", "2001:db8:101::fe/64"),
            ] {
                self.hub
                    .ip(&["-6", "addr", "add", addr, "dev", bridge, "nodad"])?;
            }
            self.hub
                .exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        }
        for (i, n) in self.nodes.iter_mut().enumerate() {
            // 192.168.100.0/24 pairs with 2001:db8:100::/64, 101 with 101.
            let segment = u128::from(n.underlay.octets()[2] - 100);
            let net = 0x2001_0db8_0100_u128 + segment;
            let ip = Ipv6Addr::from(net << 80 | (i as u128 + 1));
            let gateway = Ipv6Addr::from(net << 80 | 0xfe).to_string();
            n.ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            n.ns.ip(&[
                "-6", "route", "add", "default", "via", &gateway, "dev", "eth0",
            ])?;
            n.underlay6 = Some(ip);
        }
        // Neighbour discovery answers only once the link-local addresses
        // passed duplicate address detection (about a second after the
        // link came up): wait for that, as a booted host would have.
        let settled = Cluster::wait_for(Duration::from_secs(5), || {
            self.nodes.iter().all(|n| {
                n.ns.ip(&["-6", "addr", "show", "dev", "eth0", "tentative"])
                    .is_ok_and(|o| o.stdout.is_empty())
            })
        });
        if !settled {
            return Err(io::Error::other("IPv6 addresses still tentative after 5 s"));
        }
        Ok(())
    }

    /// Makes node `i` a host without IPv4 (after `add_ipv6` and
    /// `start_kube_apiserver`): its IPv4 address and routes go, and weft
    /// and flanneld there reach the API server at `[2001:db8:100::fa]`.
    pub fn drop_ipv4(&mut self, i: usize) -> io::Result<()> {
        let has = self.hub.ip(&["-6", "addr", "show", "dev", "br0"])?;
        if !String::from_utf8_lossy(&has.stdout).contains("2001:db8:100::fa/") {
            self.hub.ip(&[
                "-6",
                "addr",
                "add",
                "2001:db8:100::fa/64",
                "dev",
                "br0",
                "nodad",
            ])?;
        }
        let n = &mut self.nodes[i];
        n.ns.ip(&["-4", "addr", "flush", "dev", "eth0"])?;
        n.ipv6_only = true;
        Ok(())
    }

    /// Starts weft on node `i` and waits (up to 15 s) until it is ready
    /// (subnet.env written).
    pub fn start(&mut self, i: usize, weft: &Path, extra: &[&str]) -> io::Result<()> {
        self.spawn(i, weft, extra)?;
        self.wait_ready(i)
    }

    /// Starts weft on node `i` without waiting for it.
    pub fn spawn(&mut self, i: usize, weft: &Path, extra: &[&str]) -> io::Result<()> {
        let etcd_url = self.etcd_url();
        let node = &mut self.nodes[i];
        let _ = std::fs::remove_file(&node.subnet_file);
        let log = File::create(&node.log)?;
        let mut cmd = node.ns.command(weft);
        cmd.arg("run");
        if let Some(k) = &self.kube {
            let kubeconfig = match node.ipv6_only {
                true => &k.weft6_kubeconfig,
                false => &k.weft_kubeconfig,
            };
            cmd.arg("--kube-subnet-mgr")
                .arg("--kubeconfig-file")
                .arg(kubeconfig)
                .arg("--net-config-path")
                .arg(&k.net_conf)
                .env("NODE_NAME", format!("node{i}"));
        // etcd mode once etcd was started, even while it is stopped.
        } else if self.dir.path().join("etcd-data").exists() {
            cmd.arg("--etcd-endpoints").arg(etcd_url);
            if let Some(t) = &self.etcd_tls {
                cmd.arg("--etcd-cafile").arg(&t.ca);
                cmd.arg("--etcd-certfile").arg(&t.client.0);
                cmd.arg("--etcd-keyfile").arg(&t.client.1);
            }
        } else {
            cmd.arg("--registry-dir").arg(&self.registry);
        }
        let child = cmd
            .arg("--subnet-file")
            .arg(&node.subnet_file)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        node.daemon = Some(child);
        Ok(())
    }

    /// Starts a real flanneld on node `i` against this cluster's etcd (or
    /// its API server, with `--kube-subnet-mgr` as node `node<i>`), as a
    /// flannel node of the cluster: `--iface eth0`, the node's subnet.env,
    /// flanneld's own defaults otherwise (`extra` adds flags).
    /// It runs as the node's daemon: `wait_ready`, `stop` and the node's
    /// drop work on it as on weft, and it logs to the node's log.
    pub fn spawn_flanneld(&mut self, i: usize, flanneld: &Path, extra: &[&str]) -> io::Result<()> {
        let etcd_url = self.etcd_url();
        let registry: Vec<String> = match &self.kube {
            Some(k) => vec![
                "--kube-subnet-mgr".into(),
                format!(
                    "--kubeconfig-file={}",
                    match self.nodes[i].ipv6_only {
                        true => &k.weft6_kubeconfig,
                        false => &k.weft_kubeconfig,
                    }
                    .display()
                ),
                format!("--net-config-path={}", k.net_conf.display()),
            ],
            None => vec![
                format!("--etcd-endpoints={etcd_url}"),
                format!("--etcd-prefix={ETCD_PREFIX}"),
            ],
        };
        let node = &mut self.nodes[i];
        let _ = std::fs::remove_file(&node.subnet_file);
        let log = File::create(&node.log)?;
        let child = node
            .ns
            .command(flanneld)
            .args(&registry)
            .env("NODE_NAME", format!("node{i}"))
            .arg("--iface=eth0")
            .arg(format!("--subnet-file={}", node.subnet_file.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        node.daemon = Some(child);
        Ok(())
    }

    /// Waits (up to 15 s) until weft on node `i` is ready (subnet.env
    /// written); fails with its log if it exits first.
    pub fn wait_ready(&mut self, i: usize) -> io::Result<()> {
        let node = &mut self.nodes[i];
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if node.subnet_file.exists() {
                return Ok(());
            }
            if let Some(c) = node.daemon.as_mut() {
                if let Some(status) = c.try_wait()? {
                    node.daemon = None;
                    return Err(io::Error::other(format!(
                        "weft on node {i} exited with {status}:\n{}",
                        node.log_text()
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other(format!(
            "weft on node {i} not ready within 15 s:\n{}",
            node.log_text()
        )))
    }

    /// The lease file of node `i`'s subnet (and IPv6 subnet: flanneld's
    /// `<v4>-<len>&<v6>-<len>`).
    pub fn lease_path(&self, i: usize) -> Option<PathBuf> {
        let s = self.nodes[i].subnet()?;
        let mut name = format!("{}-{}", s.network(), s.prefix_len());
        if let Some(s6) = self.nodes[i].subnet6() {
            name += &format!("&{}-{}", s6.network(), s6.prefix_len());
        }
        Some(self.registry.join("subnets").join(name))
    }

    /// Waits up to `timeout` for `cond`; true if it held.
    pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}
