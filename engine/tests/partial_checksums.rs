//! Crafted VXLAN datagrams whose inner UDP checksum is partial (the
//! pseudo-header sum a kernel peer leaves for its NIC) or plainly wrong.
//! The partial one must reach weft's device with a complete, valid checksum
//! (captured on the device with a packet socket, and received by a socket
//! on the node); the wrong one must be dropped and counted as
//! `l4_checksum`. The leases are pinned as in `malformed.rs`: weft holds
//! 10.244.2.0/24, the sender 10.244.1.0/24.

mod common;
use common::*;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use weft_encap::{checksum, l4, vectors::KERNEL_REQUEST};
use weft_routes::LeaseAttrs;
use weft_testbed::{Cluster, Netns};

const PORT: u16 = 7777;

/// A VXLAN payload to `mac` carrying UDP 10.244.1.5:4000 → 10.244.2.0:PORT
/// with `payload`; `partial` leaves the checksum as CHECKSUM_PARTIAL does,
/// `corrupt` flips a bit of the complete one.
fn datagram(mac: [u8; 6], payload: &[u8], partial: bool, corrupt: bool) -> Vec<u8> {
    let mut d = KERNEL_REQUEST[..22].to_vec();
    d[8..14].copy_from_slice(&mac);
    let total = 28 + payload.len();
    let mut ip = vec![0u8; total];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 244, 1, 5]);
    ip[16..20].copy_from_slice(&[10, 244, 2, 0]);
    let c = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip[20..22].copy_from_slice(&4000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&PORT.to_be_bytes());
    ip[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    ip[28..].copy_from_slice(payload);
    let pseudo = l4::pseudo_header_sum(
        [10, 244, 1, 5],
        [10, 244, 2, 0],
        17,
        (8 + payload.len()) as u16,
    );
    let full = !checksum::fold(checksum::sum(&ip[20..], pseudo));
    let field = if partial {
        checksum::fold(pseudo)
    } else if corrupt {
        full ^ 0x0101
    } else {
        full
    };
    ip[26..28].copy_from_slice(&field.to_be_bytes());
    d.extend_from_slice(&ip);
    d
}

/// A packet socket on `dev` in `ns`: it sees every IPv4 packet weft writes
/// into the device, as the kernel receives it (SOCK_DGRAM: from the IP
/// header on, for a TUN and a TAP alike).
fn device_capture(ns: &Netns, dev: &'static str) -> OwnedFd {
    ns.enter(move || {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
        assert!(raw >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index != 0, "no device {dev}");
        // SAFETY: sockaddr_ll is plain data, fully initialised here.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: a valid fd and a sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        socket2::SockRef::from(&fd)
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        fd
    })
    .unwrap()
}

/// The UDP packets to PORT the capture saw within `wait`.
fn captured(fd: &OwnedFd, wait: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: a valid fd and a buffer of the length passed.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let p = &buf[..n as usize];
        if p.len() >= 28 && p[9] == 17 && p[22..24] == PORT.to_be_bytes() {
            out.push(p.to_vec());
        }
    }
    out
}

fn partial_checksum_is_completed(tag: &str, device: &str, offload: &str) {
    let mut c = Cluster::new(tag, 2, &net_conf("vxlan")).unwrap();
    let dir = c.registry.join("subnets");
    let lease = vxlan_lease;
    std::fs::write(
        dir.join("10.244.2.0-24"),
        lease("192.168.100.1", "0e:11:22:33:44:55"),
    )
    .unwrap();
    std::fs::write(
        dir.join("10.244.1.0-24"),
        lease("192.168.100.2", "c6:d2:32:6f:8f:44"),
    )
    .unwrap();
    c.start(
        0,
        weft(),
        &[
            "--device",
            device,
            "--offload",
            offload,
            "--metrics-addr",
            "127.0.0.1:9153",
        ],
    )
    .unwrap();
    let attrs = LeaseAttrs::from_json(&std::fs::read(c.lease_path(0).unwrap()).unwrap()).unwrap();
    let mac = attrs.vxlan_data().unwrap().vtep_mac.octets();
    let cap = device_capture(&c.nodes[0].ns, "flannel.1");
    let listener = c.nodes[0]
        .ns
        .enter(|| {
            let s = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        })
        .unwrap();
    let to: SocketAddr = "192.168.100.1:8472".parse().unwrap();
    let sender = c.nodes[1].ns.handle();
    let send = move |d: Vec<u8>| {
        sender
            .enter(move || {
                UdpSocket::bind("0.0.0.0:0")
                    .unwrap()
                    .send_to(&d, to)
                    .unwrap();
            })
            .unwrap();
    };

    // Neither right nor partial: dropped before the device.
    send(datagram(mac, b"corrupt", false, true));
    assert!(
        captured(&cap, Duration::from_millis(500)).is_empty(),
        "a wrong checksum reached the device"
    );
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(
        metric(&m, r#"weft_dropped_packets_total{reason="l4_checksum"}"#),
        Some(1),
        "{m}"
    );

    // Partial: delivered, complete and valid.
    let payload = b"a partial checksum, completed by weft";
    let sent = datagram(mac, payload, true, false);
    let want = datagram(mac, payload, false, false);
    send(sent.clone());
    let got = captured(&cap, Duration::from_millis(500));
    assert_eq!(
        got.len(),
        1,
        "the partial-checksum datagram did not reach the device once"
    );
    let mut p = got[0].clone();
    assert_eq!(
        &p[26..28],
        &want[22 + 26..22 + 28],
        "the checksum on the device is not the complete one"
    );
    assert_ne!(&p[26..28], &sent[22 + 26..22 + 28]);
    assert_eq!(l4::verify_or_complete(&mut p), Ok(l4::Verdict::Valid));
    let mut buf = [0u8; 128];
    let (n, from) = listener
        .recv_from(&mut buf)
        .expect("the node's stack accepted the datagram");
    assert_eq!(&buf[..n], payload);
    assert_eq!(from, SocketAddr::from((Ipv4Addr::new(10, 244, 1, 5), 4000)));
    let m = metrics(&c.nodes[0].ns, 9153);
    assert_eq!(metric(&m, "weft_checksums_completed_total"), Some(1), "{m}");
    assert_eq!(
        metric(&m, r#"weft_dropped_packets_total{reason="l4_checksum"}"#),
        Some(1),
        "{m}"
    );
}

#[test]
fn partial_checksum_completed_tun() {
    partial_checksum_is_completed("pcu", "tun", "on");
}

#[test]
fn partial_checksum_completed_tap() {
    partial_checksum_is_completed("pca", "tap", "on");
}

#[test]
fn partial_checksum_completed_tun_without_offloads() {
    partial_checksum_is_completed("pcuo", "tun", "off");
}
