//! What crossed the test wire: frames on the hub's bridge sorted by hop
//! and payload, and UDP datagrams captured on a port.

use crate::*;
use ipnet::Ipv4Net;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where a frame on the test wire went: between two hosts of a segment
/// (bridged), or to the hub's router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Bridged from one host to another on the same segment.
    Bridged,
    /// Sent to the router (its destination MAC is the router's).
    Routed,
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
        UdpCapture::start_family(c, port, max, udp4_dport)
    }

    /// The same for IPv6 UDP frames (no extension headers).
    pub fn start6(c: &Cluster, port: u16, max: usize) -> io::Result<UdpCapture> {
        UdpCapture::start_family(c, port, max, udp6_dport)
    }

    fn start_family(
        c: &Cluster,
        port: u16,
        max: usize,
        dport: fn(&[u8]) -> Option<u16>,
    ) -> io::Result<UdpCapture> {
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
                    if dport(f) == Some(port) {
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

/// The UDP destination port of an Ethernet frame carrying IPv4 UDP.
fn udp4_dport(f: &[u8]) -> Option<u16> {
    if f.len() < 14 + 28 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
        return None;
    }
    let at = 14 + usize::from(f[14] & 0x0f) * 4;
    Some(u16::from_be_bytes(f.get(at + 2..at + 4)?.try_into().ok()?))
}

/// The UDP destination port of an Ethernet frame carrying IPv6 UDP right
/// behind the fixed header.
fn udp6_dport(f: &[u8]) -> Option<u16> {
    if f.len() < 14 + 48 || f[12..14] != [0x86, 0xdd] || f[14 + 6] != 17 {
        return None;
    }
    Some(u16::from_be_bytes([f[14 + 42], f[14 + 43]]))
}

/// Receives one frame from the hub's packet socket that a host sent, i.e.
/// that entered the hub at one of the ports in `indices`; returns its
/// length (with MSG_TRUNC in `flags`, the frame's full length). None for
/// anything else, and on an error.
pub(crate) fn recv_from_hosts(
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
