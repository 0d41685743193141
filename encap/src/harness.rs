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

#[cfg(test)]
mod tests {
    /// Replays every committed corpus and regression file of a target.
    pub fn replay(target: &str, f: fn(&[u8])) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut n = 0;
        for dir in [
            root.join("seeds").join(target),
            root.join("regressions").join(target),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                f(&std::fs::read(e.path()).unwrap());
                n += 1;
            }
        }
        assert!(n > 0, "no corpus for {target}");
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
