//! weft's test bench. Test hosts on one machine: network namespaces joined
//! by a bridge, each able to run a weft node against a shared file registry,
//! etcd or a kube-apiserver; packet captures; certificates. `weft demo`, the
//! integration tests and the e2e harness build on this; the data plane does
//! not. Its `unsafe` (namespace entry, packet sockets, one ethtool ioctl,
//! `geteuid`) lives in this file, each block with a `// SAFETY:` line.
//!
//! Every namespace gets a unique name and is deleted on drop, and every
//! process started here is killed on drop, so a failing test cleans up too.
//! Topology plumbing uses `ip` (it is the harness, standing in for the
//! operator); weft itself only ever talks netlink.

use ipnet::Ipv4Net;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique, short name for a namespace or file of this process.
pub fn unique(tag: &str) -> String {
    format!(
        "wt{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Puts a `cni0` bridge with `<subnet>.1/<len>` up in `ns`, standing in for
/// the pods the CNI plugin would attach; returns that address.
pub fn pod_bridge(ns: &Netns, subnet: Ipv4Net) -> io::Result<Ipv4Addr> {
    let ip = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{ip}/{}", subnet.prefix_len()),
        "dev",
        "cni0",
    ])?;
    ns.ip(&["link", "set", "cni0", "up"])?;
    Ok(ip)
}

/// Receives one frame from the hub's packet socket that a host sent, i.e.
/// that entered the hub at one of the ports in `indices`; returns its
/// length (with MSG_TRUNC in `flags`, the frame's full length). None for
/// anything else, and on an error.
fn recv_from_hosts(
    fd: &std::os::fd::OwnedFd,
    buf: &mut [u8],
    flags: libc::c_int,
    indices: &[i32],
) -> Option<usize> {
    // SAFETY: zeroed sockaddr_ll is a valid out-parameter.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and from are valid for the sizes given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    };
    let ours = from.sll_pkttype != libc::PACKET_OUTGOING && indices.contains(&from.sll_ifindex);
    (n > 0 && ours).then_some(n as usize)
}

fn check(out: Output, what: &str) -> io::Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs a command and fails with its stderr if it exits non-zero.
pub fn sh(program: &str, args: &[&str]) -> io::Result<Output> {
    let out = Command::new(program).args(args).output()?;
    check(out, &format!("{program} {}", args.join(" ")))
}

/// A network namespace, deleted on drop by the handle that created it.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
    owned: bool,
}

impl Netns {
    /// Creates a namespace with a unique name from `tag`, loopback up.
    pub fn create(tag: &str) -> io::Result<Netns> {
        let name = unique(tag);
        sh("ip", &["netns", "add", &name])?;
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A second handle on the same namespace, for another thread; it does
    /// not delete the namespace when dropped.
    pub fn handle(&self) -> Netns {
        Netns {
            name: self.name.clone(),
            owned: false,
        }
    }

    /// `ip -n <ns> ARGS…`.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program ARGS…` inside the namespace; fails on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        let out = self.command(program).args(args).output()?;
        check(
            out,
            &format!("{program} {} in {}", args.join(" "), self.name),
        )
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens
    /// live there. The caller's thread is untouched.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path)?;
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd only changes the calling
            // thread's network namespace; `file` outlives the call.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// One host of a `Cluster`.
pub struct Node {
    /// Its namespace.
    pub ns: Netns,
    /// Its underlay address on `eth0`.
    pub underlay: Ipv4Addr,
    /// Its weft process, if running.
    pub daemon: Option<Child>,
    /// Where its subnet.env goes.
    pub subnet_file: PathBuf,
    /// weft's log.
    pub log: PathBuf,
}

impl Node {
    /// This node's subnet, from the subnet.env weft wrote.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        weft_routes::subnet_env::previous_subnet(&self.subnet_file)
    }

    /// The subnet's `.1`: the pod gateway address `add_pod_bridge` puts up.
    pub fn pod_ip(&self) -> Option<Ipv4Addr> {
        self.subnet()
            .map(|s| Ipv4Addr::from(u32::from(s.network()) + 1))
    }

    /// What weft logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to 10 s) for weft to exit.
    pub fn stop(&mut self) -> io::Result<std::process::ExitStatus> {
        let Some(mut child) = self.daemon.take() else {
            return Err(io::Error::other("not running"));
        };
        sh("kill", &["-TERM", &child.id().to_string()])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(io::Error::other("weft did not exit within 10 s of SIGTERM"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many routes the node's main table has through `dev`.
    pub fn routes_via(&self, dev: &str) -> usize {
        self.ns
            .ip(&["route", "show", "dev", dev])
            .map(|o| {
                o.stdout
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .unwrap_or(0)
    }

    /// The daemon's resident memory (`VmRSS` of /proc/<pid>/status).
    pub fn rss(&self) -> io::Result<String> {
        let pid = self
            .daemon
            .as_ref()
            .map(|d| d.id())
            .ok_or_else(|| io::Error::other("not running"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Ok(status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap_or("?")
            .trim()
            .to_string())
    }

    /// Kills weft with SIGKILL (no cleanup), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Puts a `cni0` bridge with `<subnet>.1/<len>` up, standing in for the
    /// pods the CNI plugin would attach.
    pub fn add_pod_bridge(&self) -> io::Result<Ipv4Addr> {
        let subnet = self
            .subnet()
            .ok_or_else(|| io::Error::other("no subnet.env yet"))?;
        pod_bridge(&self.ns, subnet)
    }
}

/// The VtepMAC the kernel-VXLAN stand-in of a test uses.
pub const KERNEL_VTEP_MAC: &str = "0e:6b:65:72:6e:01";

impl Node {
    /// Makes this node a flanneld-style kernel VXLAN node on `subnet`, as
    /// flanneld's vxlan backend would: `flannel.1` (VNI 1, dstport 8472,
    /// nolearning, local = underlay), MTU 1450, `<subnet>.0/32`, its lease in
    /// the registry, and subnet.env. Returns the lease file's path.
    pub fn become_kernel_vxlan(&self, registry: &Path, subnet: Ipv4Net) -> io::Result<PathBuf> {
        let local = self.underlay.to_string();
        self.ns.ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &local,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ])?;
        self.ns.ip(&[
            "link",
            "set",
            "flannel.1",
            "address",
            KERNEL_VTEP_MAC,
            "mtu",
            "1450",
            "up",
        ])?;
        self.ns.ip(&[
            "addr",
            "add",
            &format!("{}/32", subnet.network()),
            "dev",
            "flannel.1",
        ])?;
        let lease =
            registry
                .join("subnets")
                .join(format!("{}-{}", subnet.network(), subnet.prefix_len()));
        std::fs::write(
            &lease,
            format!(
                r#"{{"PublicIP":"{local}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{KERNEL_VTEP_MAC}"}}}}"#
            ),
        )?;
        weft_routes::subnet_env::SubnetEnv {
            network: "10.244.0.0/16".parse().expect("literal"),
            subnet,
            mtu: 1450,
            ipmasq: false,
        }
        .write(&self.subnet_file)?;
        Ok(lease)
    }

    /// Makes this node's underlay veth finish checksums like a wire does
    /// (`ethtool -K eth0 tx off`).
    ///
    /// On a wire inner checksums are always complete: the NIC or the kernel
    /// finishes them. Across a veth left at its defaults the kernel's VXLAN
    /// hands over CHECKSUM_PARTIAL skbs with the inner L4 checksum
    /// unfinished, and TCP super-packets unsegmented; weft handles both, and
    /// the tests use this only for the wire-like case.
    pub fn emulate_wire_checksums(&self) -> io::Result<()> {
        self.ns.enter(|| set_tx_checksum("eth0", false))?
    }

    /// On a kernel VXLAN node, programs a remote lease exactly as flanneld
    /// does: neighbor, then FDB, then the onlink route.
    pub fn kernel_add_peer(
        &self,
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        mac: &str,
    ) -> io::Result<()> {
        let gw = subnet.network().to_string();
        self.ns.ip(&[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ])?;
        sh(
            "bridge",
            &[
                "-n",
                &self.ns.name,
                "fdb",
                "replace",
                mac,
                "dev",
                "flannel.1",
                "dst",
                &public_ip.to_string(),
                "self",
                "permanent",
            ],
        )?;
        self.ns.ip(&[
            "route",
            "replace",
            &subnet.to_string(),
            "via",
            &gw,
            "dev",
            "flannel.1",
            "onlink",
        ])?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

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

/// A kube-apiserver in the hub, on the test etcd, as envtest starts one:
/// its own CA and serving certificate, static bearer tokens, RBAC.
#[derive(Debug)]
pub struct KubeApi {
    /// `https://192.168.100.250:6443`.
    pub url: String,
    /// A kubeconfig for `system:masters`.
    pub admin_kubeconfig: PathBuf,
    /// A kubeconfig for user `weft`, who has only what RBAC grants.
    pub weft_kubeconfig: PathBuf,
    /// net-conf.json for the nodes' `--net-config-path`.
    pub net_conf: PathBuf,
    /// Its log.
    pub log: PathBuf,
    process: Option<Child>,
    binary: PathBuf,
    args: Vec<String>,
}

impl KubeApi {
    /// Stops the API server (SIGKILL), as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// What the API server logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway CA and the certificates a TLS etcd test uses.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA certificate.
    pub ca: PathBuf,
    /// etcd's certificate (SANs 192.168.100.250 and 127.0.0.1) and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key signed by the CA.
    pub client: (PathBuf, PathBuf),
}

/// Where the test etcd listens: the hub's own address on the bridge.
pub const ETCD_URL: &str = "http://192.168.100.250:2379";
/// The test etcd's address inside the hub namespace, for `etcdctl`.
const ETCD_LOCAL: &str = "http://127.0.0.1:2379";
/// flannel's key prefix, which the test etcd uses.
pub const ETCD_PREFIX: &str = weft_routes::registry::DEFAULT_PREFIX;

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
            daemon: None,
            subnet_file,
            log,
        });
        Ok(i)
    }

    /// Starts etcd in the hub namespace at `ETCD_URL` (its data survives a
    /// `stop_etcd`), and the first time, stores net-conf.json at
    /// `<prefix>/config`. From then on `start` points nodes at etcd.
    pub fn start_etcd(&mut self) -> io::Result<()> {
        self.start_etcd_on(true)
    }

    /// Starts etcd listening on the hub's loopback only: the nodes cannot
    /// reach it, `etcdctl` here can (to change things behind their back).
    pub fn start_etcd_hidden(&mut self) -> io::Result<()> {
        self.start_etcd_on(false)
    }

    /// Makes etcd serve TLS and require client certificates (call before
    /// `start_etcd`): creates a CA, a server and a client certificate with
    /// openssl.
    pub fn enable_etcd_tls(&mut self) -> io::Result<EtcdTls> {
        let d = self.dir.path().join("pki");
        std::fs::create_dir_all(&d)?;
        issue_pki(
            &d,
            "weft-test-ca",
            &[
                (
                    "server",
                    "weft-server",
                    "subjectAltName=IP:192.168.100.250,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
                ),
                ("client", "weft-client", "extendedKeyUsage=clientAuth\n"),
            ],
        )?;
        let tls = EtcdTls {
            ca: d.join("ca.crt"),
            server: (d.join("server.crt"), d.join("server.key")),
            client: (d.join("client.crt"), d.join("client.key")),
        };
        self.etcd_tls = Some(tls.clone());
        Ok(tls)
    }

    /// The URL nodes reach etcd at.
    pub fn etcd_url(&self) -> String {
        self.etcd_scheme(ETCD_URL)
    }

    fn etcd_scheme(&self, url: &str) -> String {
        match self.etcd_tls {
            Some(_) => url.replace("http://", "https://"),
            None => url.to_string(),
        }
    }

    fn start_etcd_on(&mut self, reachable: bool) -> io::Result<()> {
        let data = self.dir.path().join("etcd-data");
        let first = !data.exists();
        if first {
            self.hub
                .ip(&["addr", "add", "192.168.100.250/24", "dev", "br0"])?;
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let (public, local) = (self.etcd_scheme(ETCD_URL), self.etcd_scheme(ETCD_LOCAL));
        let mut cmd = self.hub.command("etcd");
        if let Some(t) = &self.etcd_tls {
            cmd.arg(format!("--cert-file={}", t.server.0.display()))
                .arg(format!("--key-file={}", t.server.1.display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name=weft-test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(if reachable {
                format!("--listen-client-urls={public},{local}")
            } else {
                format!("--listen-client-urls={local}")
            })
            .arg(format!("--advertise-client-urls={public}"))
            .arg("--listen-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-cluster=weft-test=http://127.0.0.1:2380")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.etcd = Some(child);
        let up = Cluster::wait_for(Duration::from_secs(15), || {
            self.etcdctl(&["endpoint", "health"]).is_ok()
        });
        if !up {
            return Err(io::Error::other(format!(
                "etcd did not come up:\n{}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            )));
        }
        if first {
            let conf = self.net_conf.clone();
            self.etcdctl(&["put", &format!("{ETCD_PREFIX}/config"), &conf])?;
        }
        Ok(())
    }

    /// Kills etcd (its data stays for a restart).
    pub fn stop_etcd(&mut self) {
        if let Some(mut e) = self.etcd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
    }

    /// Runs `etcdctl ARGS…` against the test etcd.
    pub fn etcdctl(&self, args: &[&str]) -> io::Result<Output> {
        let mut a = vec![
            format!("--endpoints={}", self.etcd_scheme(ETCD_LOCAL)),
            "--dial-timeout=2s".to_string(),
            "--command-timeout=5s".to_string(),
        ];
        if let Some(t) = &self.etcd_tls {
            a.push(format!("--cacert={}", t.ca.display()));
            a.push(format!("--cert={}", t.client.0.display()));
            a.push(format!("--key={}", t.client.1.display()));
        }
        a.extend(args.iter().map(|s| s.to_string()));
        let out = self
            .hub
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(&a)
            .output()?;
        check(out, &format!("etcdctl {}", args.join(" ")))
    }

    /// The etcd key of node `i`'s lease.
    pub fn etcd_key(&self, i: usize) -> Option<String> {
        let s = self.nodes[i].subnet()?;
        Some(format!(
            "{ETCD_PREFIX}/subnets/{}-{}",
            s.network(),
            s.prefix_len()
        ))
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
            cmd.arg("--kube-subnet-mgr")
                .arg("--kubeconfig-file")
                .arg(&k.weft_kubeconfig)
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

    /// Starts a real kube-apiserver (`binary`, see `.ci/peers.sh`) in the
    /// hub on this cluster's etcd (started here if it is not), with a
    /// throwaway CA, static tokens for `admin` (system:masters) and `weft`,
    /// and RBAC. Returns once it answers; nodes started afterwards run
    /// with `--kube-subnet-mgr` as node `node<i>`.
    pub fn start_kube_apiserver(&mut self, binary: &Path) -> io::Result<()> {
        if self.etcd.is_none() {
            self.start_etcd()?;
        }
        let d = self.dir.path().join("kube");
        std::fs::create_dir_all(&d)?;
        let p = |n: &str| d.join(n).to_string_lossy().to_string();
        issue_pki(
            &d,
            "weft-kube-ca",
            &[(
                "server",
                "kube-apiserver",
                "subjectAltName=IP:192.168.100.250,IP:127.0.0.1,DNS:kubernetes\nextendedKeyUsage=serverAuth\n",
            )],
        )?;
        sh("openssl", &["genrsa", "-out", &p("sa.key"), "2048"])?;
        sh(
            "openssl",
            &["rsa", "-in", &p("sa.key"), "-pubout", "-out", &p("sa.pub")],
        )?;
        let admin = format!("admin-{:016x}", rand::random::<u64>());
        let weft = format!("weft-{:016x}", rand::random::<u64>());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{admin},admin,1,\"system:masters\"\n{weft},weft,2\n"),
        )?;
        let url = "https://192.168.100.250:6443".to_string();
        let ca = p("ca.crt");
        let kubeconfig = |user: &str, token: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: test\n"
            )
        };
        std::fs::write(d.join("admin.kubeconfig"), kubeconfig("admin", &admin))?;
        std::fs::write(d.join("weft.kubeconfig"), kubeconfig("weft", &weft))?;
        std::fs::write(d.join("net-conf.json"), &self.net_conf)?;
        let args: Vec<String> = [
            format!("--etcd-servers={}", self.etcd_url()),
            "--etcd-prefix=/registry".into(),
            "--bind-address=192.168.100.250".into(),
            "--advertise-address=192.168.100.250".into(),
            "--secure-port=6443".into(),
            format!("--tls-cert-file={}", p("server.crt")),
            format!("--tls-private-key-file={}", p("server.key")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--enable-priority-and-fairness=false".into(),
            format!("--cert-dir={}", p("certs")),
        ]
        .into();
        let mut api = KubeApi {
            url,
            admin_kubeconfig: d.join("admin.kubeconfig"),
            weft_kubeconfig: d.join("weft.kubeconfig"),
            net_conf: d.join("net-conf.json"),
            log: d.join("kube-apiserver.log"),
            process: None,
            binary: binary.to_path_buf(),
            args,
        };
        self.run_kube_apiserver(&mut api)?;
        self.kube = Some(api);
        Ok(())
    }

    /// (Re)starts the API server process and waits (up to 60 s) for its
    /// port.
    fn run_kube_apiserver(&self, api: &mut KubeApi) -> io::Result<()> {
        let log = File::options().create(true).append(true).open(&api.log)?;
        let child = self
            .hub
            .command(&api.binary)
            .args(&api.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        api.process = Some(child);
        let up = Cluster::wait_for(Duration::from_secs(60), || {
            self.hub
                .enter(|| std::net::TcpStream::connect(("192.168.100.250", 6443)).is_ok())
                .unwrap_or(false)
        });
        if !up {
            return Err(io::Error::other(format!(
                "kube-apiserver did not listen within 60 s:\n{}",
                api.log_text()
            )));
        }
        Ok(())
    }

    /// Starts the API server again after `KubeApi::stop`.
    pub fn restart_kube_apiserver(&mut self) -> io::Result<()> {
        let mut api = self
            .kube
            .take()
            .ok_or_else(|| io::Error::other("no API server"))?;
        let r = self.run_kube_apiserver(&mut api);
        self.kube = Some(api);
        r
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
                format!("--kubeconfig-file={}", k.weft_kubeconfig.display()),
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

    /// The lease file of node `i`'s subnet.
    pub fn lease_path(&self, i: usize) -> Option<PathBuf> {
        let s = self.nodes[i].subnet()?;
        Some(
            self.registry
                .join("subnets")
                .join(format!("{}-{}", s.network(), s.prefix_len())),
        )
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

/// Sends `len` bytes of a deterministic pattern over TCP from namespace
/// `from` to `to_ip:port` in namespace `to`, and returns (bytes, hash) as
/// seen by the sender and by the receiver. Also returns the elapsed time.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    to_ip: Ipv4Addr,
    port: u16,
    len: usize,
) -> io::Result<TransferResult> {
    tcp_transfer_from(from, None, to, to_ip, port, len)
}

/// `tcp_transfer` with the sender bound to `src` (a pod address, say)
/// rather than the address the route picks.
pub fn tcp_transfer_from(
    from: &Netns,
    src: Option<Ipv4Addr>,
    to: &Netns,
    to_ip: Ipv4Addr,
    port: u16,
    len: usize,
) -> io::Result<TransferResult> {
    use std::io::{Read, Write};
    let listener = to.enter(move || std::net::TcpListener::bind((to_ip, port)))??;
    let server = std::thread::spawn(move || -> io::Result<(u64, u64)> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut h = Fnv::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.write(&buf[..n]);
            total += n as u64;
        }
        Ok((total, h.0))
    });
    let start = Instant::now();
    let sent = from.enter(move || -> io::Result<(u64, u64)> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if let Some(src) = src {
            sock.bind(&std::net::SocketAddr::from((src, 0)).into())?;
        }
        sock.connect_timeout(
            &std::net::SocketAddr::from((to_ip, port)).into(),
            Duration::from_secs(5),
        )?;
        let mut s: std::net::TcpStream = sock.into();
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut h = Fnv::default();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = len;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while left > 0 {
            for b in chunk.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            h.write(&chunk[..n]);
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok((len as u64, h.0))
    })??;
    let received = server
        .join()
        .map_err(|_| io::Error::other("receiver panicked"))??;
    Ok(TransferResult {
        sent,
        received,
        elapsed: start.elapsed(),
    })
}

/// What `tcp_transfer` saw.
#[derive(Debug)]
pub struct TransferResult {
    /// (bytes, FNV-1a hash) written by the sender.
    pub sent: (u64, u64),
    /// (bytes, FNV-1a hash) read by the receiver.
    pub received: (u64, u64),
    /// Wall time from connect to the receiver's EOF.
    pub elapsed: Duration,
}

impl TransferResult {
    /// Goodput in Gbit/s.
    pub fn gbits(&self) -> f64 {
        self.received.0 as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// FNV-1a, 64-bit: a stable hash for comparing transferred bytes.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Sends a TCP stream from `from` to `to_ip:port` (listening in `to`) for
/// `duration`, or until `stop` is set, and returns the receiver's goodput
/// in Gbit/s. Either side gives up after 10 s without progress.
pub fn tcp_stream(
    from: &Netns,
    to: &Netns,
    to_ip: Ipv4Addr,
    port: u16,
    duration: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> io::Result<f64> {
    use std::io::{Read, Write};
    const TICK: Duration = Duration::from_millis(200);
    const STALL: Duration = Duration::from_secs(10);
    let stalled = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        )
    };
    let listener = to.enter(move || std::net::TcpListener::bind((to_ip, port)))??;
    let rx_stop = stop.clone();
    let server = std::thread::spawn(move || -> io::Result<(u64, Duration)> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(TICK))?;
        let start = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut progress = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    progress = Instant::now();
                }
                Err(e) if stalled(&e) => {
                    if rx_stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if progress.elapsed() > STALL {
                        return Err(io::Error::other("the TCP stream stalled for 10 s"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok((total, start.elapsed()))
    });
    let sent = from.enter(move || -> io::Result<()> {
        let mut s =
            std::net::TcpStream::connect_timeout(&(to_ip, port).into(), Duration::from_secs(5))?;
        s.set_write_timeout(Some(TICK))?;
        let chunk = vec![0x5au8; 256 * 1024];
        let end = Instant::now() + duration;
        let mut progress = Instant::now();
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            match s.write(&chunk) {
                Ok(_) => progress = Instant::now(),
                Err(e) if stalled(&e) => {
                    if progress.elapsed() > STALL {
                        return Err(io::Error::other("the TCP stream stalled for 10 s"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        s.shutdown(std::net::Shutdown::Write)
    });
    let received = server
        .join()
        .map_err(|_| io::Error::other("receiver panicked"))?;
    sent??;
    let (bytes, elapsed) = received?;
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}

/// What came back for one ICMP echo request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpReply {
    /// An echo reply, after this long.
    Echo(Duration),
    /// An ICMP error about our request: (from, type, code).
    Error(Ipv4Addr, u8, u8),
}

/// Sends ICMP echo requests from `ns` to `ip` over a raw socket (no ping
/// binary needed): `count` probes, `interval` apart, each waiting up to
/// 500 ms. Returns one entry per probe that got an answer.
pub fn ping_probe(
    ns: &Netns,
    ip: Ipv4Addr,
    count: u16,
    interval: Duration,
) -> io::Result<Vec<IcmpReply>> {
    ns.enter(move || -> io::Result<Vec<IcmpReply>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let dst: socket2::SockAddr = std::net::SocketAddr::from((ip, 0)).into();
        let id = (COUNTER.fetch_add(1, Ordering::Relaxed) as u16) ^ (std::process::id() as u16);
        let mut out = Vec::new();
        for seq in 0..count {
            let mut req = [0u8; 64];
            req[0] = 8;
            req[4..6].copy_from_slice(&id.to_be_bytes());
            req[6..8].copy_from_slice(&seq.to_be_bytes());
            let c = weft_encap::checksum::checksum(&req);
            req[2..4].copy_from_slice(&c.to_be_bytes());
            let sent = Instant::now();
            s.send_to(&req, &dst)?;
            let deadline = sent + Duration::from_millis(500);
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                let Ok(n) = std::io::Read::read(&mut &s, &mut buf) else {
                    continue;
                };
                if let Some(r) = match_reply(&buf[..n], id, seq, sent) {
                    out.push(r);
                    break;
                }
            }
            std::thread::sleep(interval);
        }
        Ok(out)
    })?
}

/// Matches a raw ICMP datagram (IP header included) against our request.
fn match_reply(b: &[u8], id: u16, seq: u16, sent: Instant) -> Option<IcmpReply> {
    let hl = usize::from(b.first()? & 0x0f) * 4;
    let from = Ipv4Addr::new(*b.get(12)?, b[13], b[14], b[15]);
    let icmp = b.get(hl..hl + 8)?;
    let ours = |h: &[u8]| {
        h.get(4..6) == Some(&id.to_be_bytes()[..]) && h.get(6..8) == Some(&seq.to_be_bytes()[..])
    };
    match icmp[0] {
        0 if ours(icmp) => Some(IcmpReply::Echo(sent.elapsed())),
        3 | 11 => {
            // The error quotes our request's IP header and first 8 bytes.
            let quoted = b.get(hl + 8..)?;
            let qhl = usize::from(quoted.first()? & 0x0f) * 4;
            let q = quoted.get(qhl..qhl + 8)?;
            (q[0] == 8 && ours(q)).then_some(IcmpReply::Error(from, icmp[0], icmp[1]))
        }
        _ => None,
    }
}

/// Echo round-trip times from `ns` to `ip` (lost probes left out).
pub fn ping_rtts(
    ns: &Netns,
    ip: Ipv4Addr,
    count: u16,
    interval: Duration,
) -> io::Result<Vec<Duration>> {
    Ok(ping_probe(ns, ip, count, interval)?
        .into_iter()
        .filter_map(|r| match r {
            IcmpReply::Echo(d) => Some(d),
            IcmpReply::Error(..) => None,
        })
        .collect())
}

/// Turns TX checksum offload on a link of the calling thread's namespace on
/// or off: `ethtool -K <dev> tx on|off` without the ethtool binary.
fn set_tx_checksum(dev: &str, on: bool) -> io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    let mut req = Ifreq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    let n = dev.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&dev.as_bytes()[..n]);
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: SIOCETHTOOL reads an ifreq whose data field points at a live
    // ethtool_value; both outlive the call, and the fd is a valid socket.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req as *mut Ifreq) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where a frame on the test wire went: between two hosts of a segment
/// (bridged), or to the hub's router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Bridged from one host to another on the same segment.
    Bridged,
    /// Sent to the router (its destination MAC is the router's).
    Routed,
}

/// A throwaway CA in `d` (`ca.crt`, `ca.key`), and for each (file name,
/// common name, openssl extensions) a key and a certificate it signed
/// (`<name>.key`, `<name>.crt`), valid for a day.
fn issue_pki(d: &Path, ca_cn: &str, certs: &[(&str, &str, &str)]) -> io::Result<()> {
    let p = |n: &str| d.join(n).to_string_lossy().to_string();
    let subj = |cn: &str| format!("/CN={cn}");
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &subj(ca_cn),
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ],
    )?;
    for (name, cn, ext) in certs {
        let f = |suffix: &str| p(&format!("{name}.{suffix}"));
        std::fs::write(f("ext"), ext)?;
        sh(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &subj(cn),
                "-keyout",
                &f("key"),
                "-out",
                &f("csr"),
            ],
        )?;
        sh(
            "openssl",
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &f("csr"),
                "-CA",
                &p("ca.crt"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &f("ext"),
                "-out",
                &f("crt"),
            ],
        )?;
    }
    Ok(())
}

/// An admin client from `kubeconfig` (`KubeApi::admin_kubeconfig`), once
/// the API server serves: it answers its port a while before it does.
/// Call it from inside the hub (`Cluster::hub.enter`).
pub async fn kube_admin(kubeconfig: &Path) -> Result<kube::Client, Box<dyn std::error::Error>> {
    use k8s_openapi::api::core::v1::Node;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    for _ in 0..120 {
        if nodes.list(&Default::default()).await.is_ok() {
            return Ok(client);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err("the API server did not serve within 60 s".into())
}

/// Binds flannel's ClusterRole (pods get; nodes get/list/watch;
/// nodes/status patch) and nothing else to user `weft`.
pub async fn grant_flannel_role(client: &kube::Client) -> Result<(), Box<dyn std::error::Error>> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "flannel"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}
        ]
    }))?;
    kube::Api::<ClusterRole>::all(client.clone())
        .create(&Default::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "flannel"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
        "subjects": [{"kind": "User", "name": "weft", "apiGroup": "rbac.authorization.k8s.io"}]
    }))?;
    kube::Api::<ClusterRoleBinding>::all(client.clone())
        .create(&Default::default(), &binding)
        .await?;
    Ok(())
}

/// A Node object as a kubelet registers one: `name`, `pod_cidr`, and an
/// annotation (flanneld v0.28 panics on a node without any).
pub fn node_object(name: &str, pod_cidr: &str) -> k8s_openapi::api::core::v1::Node {
    let v = serde_json::json!({
        "metadata": {"name": name, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    });
    // A literal of the Node schema: it always deserializes.
    serde_json::from_value(v).unwrap_or_default()
}

/// What a frame on the test wire carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// UDP to port 8472: VXLAN.
    Vxlan,
    /// IPv4 to the pod network, unencapsulated.
    Plain,
}

/// Counts what the hosts put on the test wire, seen from the hub with a
/// packet socket: every frame a host sends into its bridge port, by `Hop`
/// and `Carried`, in frames and bytes. Needs no tool beyond the kernel.
/// One frame on a veth can be a 64 KiB TCP super-segment (offloads), so
/// compare bytes for volume. Stops on drop.
pub struct WireTap {
    // [hop][carried] = (frames, bytes)
    counts: std::sync::Arc<[[(AtomicU64, AtomicU64); 2]; 2]>,
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WireTap {
    /// Starts counting on the ports of `c`'s hosts; `pods` is the pod
    /// network (net-conf.json's Network).
    pub fn start(c: &Cluster, pods: Ipv4Net) -> io::Result<WireTap> {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let mut router_macs = Vec::new();
        for br in ["br0", "br1"] {
            if let Ok(o) = c.hub.ip(&["-o", "link", "show", br]) {
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                if let Some(mac) = text
                    .split_whitespace()
                    .skip_while(|w| *w != "link/ether")
                    .nth(1)
                    .and_then(|m| m.parse::<weft_encap::MacAddr>().ok())
                {
                    router_macs.push(mac.octets());
                }
            }
        }
        let (fd, indices) = hub_packet_socket(c)?;
        let fd = Arc::new(fd);
        let counts: Arc<[[(AtomicU64, AtomicU64); 2]; 2]> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (fd, counts, stop) = (fd.clone(), counts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    // MSG_TRUNC: the frame's full length, with its head in buf.
                    let Some(n) = recv_from_hosts(&fd, &mut buf, libc::MSG_TRUNC, &indices) else {
                        continue;
                    };
                    let got = n.min(buf.len());
                    if let Some((hop, what)) = classify(&buf[..got], &router_macs, pods) {
                        let c = &counts[hop as usize][what as usize];
                        c.0.fetch_add(1, Ordering::Relaxed);
                        c.1.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            })
        };
        Ok(WireTap {
            counts,
            fd,
            stop,
            thread: Some(thread),
        })
    }

    /// Frames counted so far.
    pub fn frames(&self, hop: Hop, what: Carried) -> u64 {
        self.check_drops();
        self.counts[hop as usize][what as usize]
            .0
            .load(Ordering::Relaxed)
    }

    /// Bytes (whole frames) counted so far.
    pub fn bytes(&self, hop: Hop, what: Carried) -> u64 {
        self.check_drops();
        self.counts[hop as usize][what as usize]
            .1
            .load(Ordering::Relaxed)
    }

    /// A count the socket dropped would make "none seen" meaningless.
    fn check_drops(&self) {
        // SAFETY: tpacket_stats is plain data; the size is passed.
        let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: valid fd and out-parameter of the given size.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        // PACKET_STATISTICS resets on read, so a drop is reported once: fail.
        assert!(
            r == 0 && st.tp_drops == 0,
            "the wire tap dropped {} frames",
            st.tp_drops
        );
    }
}

impl Drop for WireTap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A packet socket in `c`'s hub (all protocols, 50 ms receive timeout, a
/// 32 MiB buffer) and the interface indices of the hosts' bridge ports.
fn hub_packet_socket(c: &Cluster) -> io::Result<(std::os::fd::OwnedFd, Vec<i32>)> {
    use std::os::fd::FromRawFd;
    let ports: Vec<String> = (0..c.nodes.len()).map(|i| format!("p{i}")).collect();
    c.hub.enter(move || -> io::Result<_> {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let sock = socket2::SockRef::from(&fd);
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = sock.set_recv_buffer_size(32 << 20);
        let mut indices = Vec::new();
        for p in &ports {
            let name = std::ffi::CString::new(p.as_str()).map_err(io::Error::other)?;
            // SAFETY: a valid NUL-terminated name.
            let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if i != 0 {
                indices.push(i as i32);
            }
        }
        Ok((fd, indices))
    })?
}

/// Sorts one Ethernet frame (at least its first 64 bytes) for `WireTap`.
fn classify(f: &[u8], router_macs: &[[u8; 6]], pods: Ipv4Net) -> Option<(Hop, Carried)> {
    if f.len() < 14 + 20 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let hop = if router_macs.iter().any(|m| f[..6] == *m) {
        Hop::Routed
    } else {
        Hop::Bridged
    };
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    if ip[9] == 17 && ip.len() >= ihl + 4 && ip[ihl + 2..ihl + 4] == 8472u16.to_be_bytes() {
        Some((hop, Carried::Vxlan))
    } else if pods.contains(&dst) {
        Some((hop, Carried::Plain))
    } else {
        None
    }
}

/// Captures whole UDP datagrams to one port as the hosts put them on the
/// test wire (entering the hub at their bridge ports), for tests that look
/// inside them. A datagram sent with UDP GSO crosses a veth unsegmented, so
/// one capture may hold many datagrams' payloads back to back.
pub struct UdpCapture {
    frames: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpCapture {
    /// Starts capturing IPv4 UDP frames to `port` from `c`'s hosts, up to
    /// `max` frames.
    pub fn start(c: &Cluster, port: u16, max: usize) -> io::Result<UdpCapture> {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let (fd, indices) = hub_packet_socket(c)?;
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (frames, stop) = (frames.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 17];
                while !stop.load(Ordering::Relaxed) {
                    let Some(n) = recv_from_hosts(&fd, &mut buf, 0, &indices) else {
                        continue;
                    };
                    let f = &buf[..n.min(buf.len())];
                    if f.len() < 14 + 28 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
                        continue;
                    }
                    let ihl = usize::from(f[14] & 0x0f) * 4;
                    if f.len() >= 14 + ihl + 8
                        && f[14 + ihl + 2..14 + ihl + 4] == port.to_be_bytes()
                    {
                        let mut v = frames.lock().unwrap();
                        if v.len() < max {
                            v.push(f.to_vec());
                        }
                    }
                }
            })
        };
        Ok(UdpCapture {
            frames,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns the frames (Ethernet onwards).
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.frames.lock().unwrap())
    }
}

impl Drop for UdpCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// True when this process runs as root (the bench creates namespaces and
/// devices).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst_mac: [u8; 6], proto: u8, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[9] = proto;
        ip[16..20].copy_from_slice(&dst);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x80, 0x00]);
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        f
    }

    #[test]
    fn wire_tap_sorts_frames() {
        let router = [2, 0xaa, 0, 0, 0, 1];
        let host = [2, 0xbb, 0, 0, 0, 2];
        let pods: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let sort = |f: Vec<u8>| classify(&f, &[router], pods);
        let underlay = [192, 168, 100, 2];
        assert_eq!(
            sort(frame(host, 17, underlay, 8472)),
            Some((Hop::Bridged, Carried::Vxlan))
        );
        assert_eq!(
            sort(frame(router, 17, underlay, 8472)),
            Some((Hop::Routed, Carried::Vxlan))
        );
        assert_eq!(
            sort(frame(host, 6, [10, 244, 3, 1], 80)),
            Some((Hop::Bridged, Carried::Plain))
        );
        assert_eq!(
            sort(frame(router, 1, [10, 244, 3, 1], 0)),
            Some((Hop::Routed, Carried::Plain))
        );
        assert_eq!(sort(frame(host, 17, underlay, 8285)), None);
        assert_eq!(sort(frame(host, 6, underlay, 8472)), None);
        let mut arp = frame(host, 0, underlay, 0);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(sort(arp), None);
    }
}
