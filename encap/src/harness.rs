//! Fuzz harnesses: one function per target, each asserting properties, not
//! just "no crash". The cargo-fuzz targets in `fuzz/` call these, and so
//! does a unit test over the committed seeds (`fuzz/seeds/`) and every
//! input that ever failed (`fuzz/regressions/`), so targets cannot rot.

use crate::ipv4::Packet;
use crate::vxlan::{Endpoint, Vni, HEADER_LEN};
use crate::{udp, MacAddr, HEADROOM};

/// The endpoint the VXLAN harness decapsulates for: VNI 1 and the VtepMAC
/// of node B in `vectors`, so the captured kernel datagrams are accepted.
pub const ENDPOINT: Endpoint = Endpoint {
    vni: Vni::DEFAULT,
    mac: MacAddr(crate::vectors::MAC_B),
};

/// VXLAN decapsulation never panics; whatever it accepts lies inside the
/// datagram, and re-encapsulating the accepted frame reproduces the
/// datagram's header exactly (an accepted header has no freedom left).
pub fn vxlan_decap(data: &[u8]) {
    let Ok(inner) = ENDPOINT.decapsulate(data) else {
        return;
    };
    assert!(inner.frame.start == HEADER_LEN && inner.frame.end <= data.len());
    assert!(inner.ip.start == inner.frame.start + 14 && inner.ip.end == inner.frame.end);
    let frame = &data[inner.frame.clone()];
    let mut buf = vec![0xeeu8; HEADROOM + frame.len()];
    buf[HEADROOM..].copy_from_slice(frame);
    let out = ENDPOINT
        .encapsulate_frame(&mut buf, HEADROOM..HEADROOM + frame.len())
        .expect("HEADROOM is larger than the VXLAN header");
    assert_eq!(&buf[out], &data[..inner.frame.end]);
}

/// flannel-udp decapsulation never panics; what it accepts is a valid IPv4
/// packet with a correct checksum and a TTL one lower than it arrived with.
pub fn udp_decap(data: &[u8]) {
    let mut buf = data.to_vec();
    let Ok(len) = udp::decapsulate(&mut buf) else {
        return;
    };
    assert!(len <= data.len());
    let before = Packet::new_checked(data).expect("accepted input parses");
    let after = Packet::new_checked(&buf[..len]).expect("accepted output parses");
    assert!(after.verify_checksum());
    assert_eq!(after.ttl() + 1, before.ttl());
}

/// Runs `f` over every file in `fuzz/seeds/<target>` and
/// `fuzz/regressions/<target>` under `fuzz_dir`; returns how many. Unit
/// tests call this so the committed inputs are replayed by `cargo test`.
pub fn replay(fuzz_dir: &std::path::Path, target: &str, f: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in [
        fuzz_dir.join("seeds").join(target),
        fuzz_dir.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path())
                .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            f(&data);
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    fn replay(target: &str, f: fn(&[u8])) {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        assert!(super::replay(&fuzz, target, f) > 0, "no seeds for {target}");
    }

    #[test]
    fn vxlan_corpus() {
        replay("vxlan_decap", super::vxlan_decap);
    }

    #[test]
    fn udp_corpus() {
        replay("udp_decap", super::udp_decap);
    }
}
