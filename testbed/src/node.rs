//! A test host: a namespace that runs weft (or the kernel's VXLAN set up
//! as flanneld sets it up), with its log, subnet.env and pod bridge.

use crate::*;
use ipnet::{Ipv4Net, Ipv6Net};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// One host of a `Cluster`.
pub struct Node {
    /// Its namespace.
    pub ns: Netns,
    /// Its underlay address on `eth0`.
    pub underlay: Ipv4Addr,
    /// Its IPv6 underlay address on `eth0`, once `Cluster::add_ipv6` ran.
    pub underlay6: Option<Ipv6Addr>,
    /// Its weft process, if running.
    pub daemon: Option<Child>,
    /// Where its subnet.env goes.
    pub subnet_file: PathBuf,
    /// weft's log.
    pub log: PathBuf,
    /// `Cluster::drop_ipv4` took its IPv4 address away: it reaches the API
    /// server over IPv6.
    pub ipv6_only: bool,
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

    /// This node's IPv6 subnet, from the subnet.env weft wrote (with
    /// `EnableIPv6`).
    pub fn subnet6(&self) -> Option<Ipv6Net> {
        weft_routes::subnet_env::previous_ipv6_subnet(&self.subnet_file)
    }

    /// The IPv6 subnet's `::1`: the pod gateway address `add_pod_bridge`
    /// puts up with `EnableIPv6`.
    pub fn pod_ip6(&self) -> Option<Ipv6Addr> {
        self.subnet6()
            .map(|s| Ipv6Addr::from(u128::from(s.network()) + 1))
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
    /// With `EnableIPv6`, the bridge also gets `<IPv6 subnet>::1`.
    pub fn add_pod_bridge(&self) -> io::Result<Ipv4Addr> {
        let subnet = self
            .subnet()
            .ok_or_else(|| io::Error::other("no subnet.env yet"))?;
        let ip = pod_bridge(&self.ns, subnet)?;
        if let (Some(s), Some(ip6)) = (self.subnet6(), self.pod_ip6()) {
            let addr = format!("{ip6}/{}", s.prefix_len());
            self.ns
                .ip(&["-6", "addr", "add", &addr, "dev", "cni0", "nodad"])?;
        }
        Ok(ip)
    }

    /// `add_pod_bridge` for an IPv6-only node: `cni0` with the IPv6
    /// subnet's `::1` alone.
    pub fn add_pod_bridge6(&self) -> io::Result<Ipv6Addr> {
        let (s, ip6) = self
            .subnet6()
            .zip(self.pod_ip6())
            .ok_or_else(|| io::Error::other("no FLANNEL_IPV6_SUBNET in subnet.env yet"))?;
        self.ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
        let addr = format!("{ip6}/{}", s.prefix_len());
        self.ns
            .ip(&["-6", "addr", "add", &addr, "dev", "cni0", "nodad"])?;
        self.ns.ip(&["link", "set", "cni0", "up"])?;
        Ok(ip6)
    }
}

/// A pod as the flannel CNI plugin (bridge and host-local) attaches one: a
/// namespace whose `eth0` is a veth on the node's `cni0`, with the MTU of
/// subnet.env, `<subnet>.<host>` and `<IPv6 subnet>::<host>` (when the
/// node has one), and default routes via the bridge's `.1` and `::1`. Its
/// namespace is deleted with it (and the veth with that).
pub struct Pod {
    /// Its namespace.
    pub ns: Netns,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, with `EnableIPv6`.
    pub ip6: Option<Ipv6Addr>,
}

impl Node {
    /// Attaches a pod with host part `host` (≥ 2) to `cni0` (which
    /// `add_pod_bridge` put up), its link MTU `mtu`, and turns forwarding on
    /// in the node, as a Kubernetes node has it.
    pub fn add_pod(&self, host: u8, mtu: u32) -> io::Result<Pod> {
        let subnet = self
            .subnet()
            .ok_or_else(|| io::Error::other("no subnet.env yet"))?;
        let ns = Netns::create("pod")?;
        let outside = format!("vp{host}");
        let mtu = mtu.to_string();
        self.ns.ip(&[
            "link", "add", &outside, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
            &mtu, "netns", &ns.name,
        ])?;
        self.ns
            .ip(&["link", "set", &outside, "master", "cni0", "up"])?;
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            self.ns.exec("sysctl", &["-qw", &format!("{key}=1")])?;
        }
        let ip = Ipv4Addr::from(u32::from(subnet.network()) + u32::from(host));
        let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        ns.ip(&[
            "addr",
            "add",
            &format!("{ip}/{}", subnet.prefix_len()),
            "dev",
            "eth0",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &gw.to_string()])?;
        let ip6 = match (self.subnet6(), self.pod_ip6()) {
            (Some(s), Some(gw6)) => {
                let ip6 = Ipv6Addr::from(u128::from(s.network()) + u128::from(host));
                let addr = format!("{ip6}/{}", s.prefix_len());
                ns.ip(&["-6", "addr", "add", &addr, "dev", "eth0", "nodad"])?;
                ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
                Some(ip6)
            }
            _ => None,
        };
        Ok(Pod { ns, ip, ip6 })
    }
}

/// The VtepMAC the kernel-VXLAN stand-in of a test uses.
pub const KERNEL_VTEP_MAC: &str = "0e:6b:65:72:6e:01";
/// The VtepMAC of its `flannel-v6.1`.
pub const KERNEL_VTEP_MAC6: &str = "0e:6b:65:72:6e:06";

impl Node {
    /// Makes this node a flanneld-style kernel VXLAN node on `subnet`, as
    /// flanneld's vxlan backend would: `flannel.1` (VNI 1, dstport 8472,
    /// nolearning, local = underlay), MTU 1450, `<subnet>.0/32`, its lease in
    /// the registry, and subnet.env. Returns the lease file's path.
    pub fn become_kernel_vxlan(&self, registry: &Path, subnet: Ipv4Net) -> io::Result<PathBuf> {
        self.kernel_flannel_1(subnet)?;
        self.write_kernel_lease(registry, subnet, None)
    }

    /// flanneld's `flannel.1` on `subnet`.
    fn kernel_flannel_1(&self, subnet: Ipv4Net) -> io::Result<()> {
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
        Ok(())
    }

    /// The kernel node's lease, written by hand as flanneld writes it
    /// (independently of weft's serializer), with its IPv6 half
    /// (`subnet6` at `public_ip6`) when dual-stack, and its subnet.env.
    fn write_kernel_lease(
        &self,
        registry: &Path,
        subnet: Ipv4Net,
        v6: Option<(Ipv6Net, Ipv6Addr)>,
    ) -> io::Result<PathBuf> {
        let local = self.underlay;
        let (key6, ip6, data6) = match v6 {
            Some((s6, ip6)) => (
                format!("&{}-{}", s6.network(), s6.prefix_len()),
                format!("\"{ip6}\""),
                format!(r#","BackendV6Data":{{"VNI":1,"VtepMAC":"{KERNEL_VTEP_MAC6}"}}"#),
            ),
            None => (String::new(), "null".to_string(), String::new()),
        };
        let key = format!("{}-{}{key6}", subnet.network(), subnet.prefix_len());
        let lease = registry.join("subnets").join(key);
        std::fs::write(
            &lease,
            format!(
                r#"{{"PublicIP":"{local}","PublicIPv6":{ip6},"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{KERNEL_VTEP_MAC}"}}{data6}}}"#
            ),
        )?;
        weft_routes::subnet_env::SubnetEnv {
            ipv4: Some(("10.244.0.0/16".parse().expect("literal"), subnet)),
            mtu: 1450,
            ipmasq: false,
            ipv6: v6.map(|(s6, _)| ("fd00:10:244::/56".parse().expect("literal"), s6)),
        }
        .write(&self.subnet_file)?;
        Ok(lease)
    }

    /// `become_kernel_vxlan`, dual-stack (`EnableIPv6`): also flanneld's
    /// `flannel-v6.1` (VNI 1, dstport 8472, nolearning, local = the IPv6
    /// underlay; MTU asked 1450, which the kernel clamps to the underlay's
    /// − 70), `<subnet6>::/128`, and the dual-stack lease (the `&` key,
    /// PublicIPv6, BackendV6Data) and subnet.env. Needs `Cluster::add_ipv6`.
    pub fn become_kernel_vxlan_dual(
        &self,
        registry: &Path,
        subnet: Ipv4Net,
        subnet6: Ipv6Net,
    ) -> io::Result<PathBuf> {
        self.kernel_flannel_1(subnet)?;
        let local6 = self
            .underlay6
            .ok_or_else(|| io::Error::other("no IPv6 underlay: call Cluster::add_ipv6"))?;
        let dev = "flannel-v6.1";
        let local = local6.to_string();
        #[rustfmt::skip]
        self.ns.ip(&[
            "link", "add", dev, "mtu", "1450", "type", "vxlan", "id", "1", "local", &local,
            "dev", "eth0", "dstport", "8472", "nolearning",
        ])?;
        self.ns
            .ip(&["link", "set", dev, "address", KERNEL_VTEP_MAC6, "up"])?;
        let addr = format!("{}/128", subnet6.network());
        self.ns.ip(&["-6", "addr", "add", &addr, "dev", dev])?;
        self.write_kernel_lease(registry, subnet, Some((subnet6, local6)))
    }

    /// On a dual-stack kernel VXLAN node, programs a remote lease's IPv6
    /// half as flanneld does on `flannel-v6.1`: neighbor, FDB to its
    /// PublicIPv6, onlink route.
    pub fn kernel_add_peer6(
        &self,
        subnet6: Ipv6Net,
        public_ipv6: Ipv6Addr,
        mac: &str,
    ) -> io::Result<()> {
        let (gw, dev) = (subnet6.network().to_string(), "flannel-v6.1");
        #[rustfmt::skip]
        self.ns.ip(&[
            "-6", "neigh", "replace", &gw, "lladdr", mac, "dev", dev, "nud", "permanent",
        ])?;
        #[rustfmt::skip]
        sh("bridge", &[
            "-n", &self.ns.name, "fdb", "replace", mac, "dev", dev,
            "dst", &public_ipv6.to_string(), "self", "permanent",
        ])?;
        #[rustfmt::skip]
        self.ns.ip(&[
            "-6", "route", "replace", &subnet6.to_string(), "via", &gw, "dev", dev, "onlink",
        ])?;
        Ok(())
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
