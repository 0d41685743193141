//! Wire formats for weft: typed, zero-copy views over packet buffers and the
//! encapsulations flannel puts on the wire.
//!
//! Promises, for everything in this crate:
//! - no I/O, no threads, no clock, no `unsafe`;
//! - untrusted bytes enter through a `new_checked` constructor or a
//!   `decapsulate` function; once those succeed no accessor can panic;
//! - nothing allocates: output is written into the caller's buffer, in the
//!   headroom in front of the packet, and the written range is returned.
//!
//! The fuzz targets and the criterion benches call into this crate only.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checksum;
pub mod drop;
pub mod ethernet;
pub mod flow;
pub mod gro;
#[doc(hidden)]
pub mod harness;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod l4;
pub mod tcp;
pub mod udp;
pub mod vectors;
pub mod virtio;
pub mod vxlan;

pub use drop::DropReason;
pub use ethernet::MacAddr;
pub use vxlan::Vni;

/// Bytes reserved in front of every packet buffer so that outer headers can be
/// written in place. VXLAN needs 8 + 14 = 22; the rest is spare.
pub const HEADROOM: usize = 64;

/// The IP version of the packet in `packet` (the high nibble of its first
/// byte, where IPv4 and IPv6 both keep it), read before choosing which
/// header view to parse it with. `None` for an empty buffer.
#[inline]
pub fn ip_version(packet: &[u8]) -> Option<u8> {
    packet.first().map(|b| b >> 4)
}

/// Error for a buffer too short for what it is supposed to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl core::fmt::Display for Truncated {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("buffer too short for its header")
    }
}

impl std::error::Error for Truncated {}
