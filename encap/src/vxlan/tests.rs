use super::*;
use crate::vectors::{KERNEL_REPLY, KERNEL_REQUEST, MAC_A, MAC_B};

fn node_b() -> Endpoint {
    Endpoint {
        vni: Vni::DEFAULT,
        mac: MacAddr(MAC_B),
    }
}

#[test]
fn vni_is_24_bits() {
    assert_eq!(Vni::new(0xff_ffff).map(Vni::get), Some(0xff_ffff));
    assert!(Vni::new(1 << 24).is_none());
}

#[test]
fn parses_the_kernels_header() {
    let h = Header::new_checked(&KERNEL_REQUEST[..]).unwrap();
    assert_eq!(Repr::parse(&h), Ok(Repr { vni: Vni::DEFAULT }));
    assert_eq!(h.flags(), FLAG_I);
    assert!(!h.reserved_bits_set());
}

#[test]
fn emit_over_junk_matches_the_kernel() {
    let mut junk = [0xa5u8; HEADER_LEN];
    Repr { vni: Vni::DEFAULT }.emit(&mut Header::new_unchecked(&mut junk[..]));
    assert_eq!(junk, KERNEL_REQUEST[..HEADER_LEN]);
}

#[test]
fn decapsulates_kernel_traffic_addressed_to_us() {
    let inner = node_b().decapsulate(&KERNEL_REQUEST).unwrap();
    assert_eq!(inner.frame, 8..KERNEL_REQUEST.len());
    assert_eq!(inner.ip, 22..KERNEL_REQUEST.len());
    assert_eq!(inner.ethertype, ethertype::IPV4);
}

#[test]
fn encapsulation_reproduces_the_kernels_bytes() {
    // Node A's side of the captured request: the IP packet as A's TUN would
    // hand it over, placed behind headroom filled with junk.
    let ip = &KERNEL_REQUEST[ENCAP_LEN..];
    let mut buf = vec![0x5au8; crate::HEADROOM + ip.len()];
    buf[crate::HEADROOM..].copy_from_slice(ip);
    let a = Endpoint {
        vni: Vni::DEFAULT,
        mac: MacAddr(MAC_A),
    };
    let out = a
        .encapsulate_ip(
            &mut buf,
            crate::HEADROOM..crate::HEADROOM + ip.len(),
            MacAddr(MAC_B),
        )
        .unwrap();
    assert_eq!(&buf[out], &KERNEL_REQUEST[..]);

    // The same through the TAP path: the frame already carries Ethernet.
    let frame = &KERNEL_REQUEST[HEADER_LEN..];
    let mut buf = vec![0x5au8; crate::HEADROOM + frame.len()];
    buf[crate::HEADROOM..].copy_from_slice(frame);
    let out = a
        .encapsulate_frame(&mut buf, crate::HEADROOM..crate::HEADROOM + frame.len())
        .unwrap();
    assert_eq!(&buf[out], &KERNEL_REQUEST[..]);
}

#[test]
fn reply_round_trips() {
    let a = Endpoint {
        vni: Vni::DEFAULT,
        mac: MacAddr(MAC_A),
    };
    let inner = a.decapsulate(&KERNEL_REPLY).unwrap();
    let mut buf = vec![0u8; crate::HEADROOM + inner.ip.len()];
    buf[crate::HEADROOM..].copy_from_slice(&KERNEL_REPLY[inner.ip.clone()]);
    let n = buf.len();
    let out = node_b()
        .encapsulate_ip(&mut buf, crate::HEADROOM..n, MacAddr(MAC_A))
        .unwrap();
    assert_eq!(&buf[out], &KERNEL_REPLY[..]);
}

/// Every malformed-packet case a VXLAN decapsulator can see, as the Linux
/// receiver (`vxlan_rcv` in vxlan_core.c) drops them (source
/// authentication is the worker's, `engine/src/worker.rs`).
#[test]
fn drops_every_malformed_case_with_its_reason() {
    let b = node_b();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = KERNEL_REQUEST.to_vec();
        f(&mut v);
        b.decapsulate(&v)
    };
    let cases: Vec<(&str, Result<Inner, DropReason>, DropReason)> = vec![
        (
            "short header",
            b.decapsulate(&KERNEL_REQUEST[..7]),
            DropReason::ShortHeader,
        ),
        ("empty", b.decapsulate(&[]), DropReason::ShortHeader),
        (
            "I flag clear",
            with(&|v| v[0] = 0x00),
            DropReason::FlagsInvalid,
        ),
        ("G bit", with(&|v| v[0] = 0x88), DropReason::ReservedBits),
        (
            "reserved flag bit",
            with(&|v| v[0] = 0x0c),
            DropReason::ReservedBits,
        ),
        (
            "reserved byte 1",
            with(&|v| v[1] = 0x01),
            DropReason::ReservedBits,
        ),
        (
            "reserved byte 3",
            with(&|v| v[3] = 0x80),
            DropReason::ReservedBits,
        ),
        (
            "reserved byte 7",
            with(&|v| v[7] = 0x01),
            DropReason::ReservedBits,
        ),
        ("other VNI", with(&|v| v[6] = 2), DropReason::VniMismatch),
        (
            "inner < 14",
            b.decapsulate(&KERNEL_REQUEST[..8 + 13]),
            DropReason::InnerTruncated,
        ),
        (
            "src is us",
            with(&|v| v[14..20].copy_from_slice(&MAC_B)),
            DropReason::LoopedFrame,
        ),
        ("dst not us", with(&|v| v[8] ^= 0x02), DropReason::OtherHost),
        (
            "dst broadcast",
            with(&|v| v[8..14].fill(0xff)),
            DropReason::OtherHost,
        ),
        (
            "VLAN tag",
            with(&|v| v[20..22].copy_from_slice(&[0x81, 0x00])),
            DropReason::EtherType,
        ),
        (
            "ARP",
            with(&|v| v[20..22].copy_from_slice(&[0x08, 0x06])),
            DropReason::EtherType,
        ),
        (
            "IPv4 version 5",
            with(&|v| v[22] = 0x55),
            DropReason::Ipv4Malformed,
        ),
        ("IHL 4", with(&|v| v[22] = 0x44), DropReason::Ipv4Malformed),
        (
            "total > frame",
            with(&|v| v[25] = 0x2d),
            DropReason::Ipv4Malformed,
        ),
        (
            "truncated IPv4",
            b.decapsulate(&KERNEL_REQUEST[..22 + 19]),
            DropReason::Ipv4Malformed,
        ),
        (
            "bad checksum",
            with(&|v| v[33] ^= 0x01),
            DropReason::Ipv4Checksum,
        ),
        (
            "IPv6 truncated",
            with(&|v| {
                v[20..22].copy_from_slice(&[0x86, 0xdd]);
                v[22] = 0x60
            }),
            DropReason::Ipv6Malformed,
        ),
    ];
    for (name, got, want) in cases {
        assert_eq!(got, Err(want), "{name}");
    }
}

#[test]
fn trailing_bytes_are_trimmed_to_the_ip_length() {
    let mut v = KERNEL_REQUEST.to_vec();
    v.extend_from_slice(&[0u8; 10]);
    let inner = node_b().decapsulate(&v).unwrap();
    assert_eq!(inner.ip.end, KERNEL_REQUEST.len());
}

/// Missing headroom is the caller's mistake, reported as such (not as a
/// drop of the packet), and never a panic.
#[test]
fn no_headroom_is_an_error_not_a_panic() {
    let mut buf = KERNEL_REQUEST[22..].to_vec();
    let n = buf.len();
    let b = node_b();
    assert_eq!(
        b.encapsulate_ip(&mut buf, 0..n, MacAddr(MAC_A)),
        Err(EncapError::NoHeadroom)
    );
    assert_eq!(
        b.encapsulate_frame(&mut buf, 0..n),
        Err(EncapError::NoHeadroom)
    );
    buf[0] = 0x15;
    assert_eq!(
        b.encapsulate_ip(&mut buf, 0..n, MacAddr(MAC_A)),
        Err(EncapError::Drop(DropReason::EtherType))
    );
}

/// A kernel peer's super-datagram carrying a TCP/IPv6 super-packet is
/// told apart from a GRO run by the inner IPv6 header's length, as for
/// IPv4.
#[test]
fn carried_len_reads_an_inner_ipv6_header() {
    let ip = crate::vectors::tcp_segment6(1, 20_000, 0x10);
    let mut d = vec![0u8; HEADER_LEN + ethernet::HEADER_LEN];
    d[HEADER_LEN + 12..HEADER_LEN + 14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
    d.extend_from_slice(&ip);
    assert_eq!(carried_len(&d), Some(d.len()));
    // A GRO run: the first datagram ends where its packet does.
    let whole = d.len();
    d.extend_from_slice(&d.clone()[..100]);
    assert_eq!(carried_len(&d), Some(whole));
    // The version must match the EtherType.
    d[HEADER_LEN + ethernet::HEADER_LEN] = 0x45;
    assert_eq!(carried_len(&d), None);
}
