//! Why a packet was dropped. Every reason is a metric label
//! (`weft_dropped_packets_total{reason="…"}`) and a test case.

/// A reason to drop a packet, on either direction of the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Datagram shorter than the 8-byte VXLAN header.
    ShortHeader,
    /// VXLAN I flag (0x08) clear (RFC 7348 §5; Linux drops these).
    FlagsInvalid,
    /// A reserved VXLAN bit set: Linux drops these on purpose.
    ReservedBits,
    /// VNI other than ours.
    VniMismatch,
    /// Inner Ethernet frame shorter than its 14-byte header.
    InnerTruncated,
    /// Inner destination MAC is not our VtepMAC (the kernel's "other host").
    OtherHost,
    /// Inner source MAC is our own VtepMAC: a loop or a reflection.
    LoopedFrame,
    /// Inner EtherType is a VLAN tag or not IPv4/IPv6 (RFC 7348 §6.1).
    EtherType,
    /// Inner IPv4 header: bad version, IHL < 5, or total length beyond the data.
    Ipv4Malformed,
    /// Inner IPv4 header checksum wrong.
    Ipv4Checksum,
    /// Inner IPv6 header truncated.
    Ipv6Malformed,
    /// Datagram larger than the device MTU or the receive buffer (flannel
    /// truncates these silently).
    Oversize,
    /// TTL reached 0 while forwarding (answered with ICMP time exceeded).
    TtlExpired,
    /// No peer subnet covers the inner destination.
    NoRoute,
    /// Frame from the TAP device to a MAC no peer owns (broadcast, ND, …).
    UnknownMac,
    /// The UDP socket refused the datagram (buffer full, unreachable, …).
    SendError,
    /// The TUN/TAP device refused the packet.
    DeviceError,
    /// Encapsulated traffic from an address that holds no lease.
    UnknownSender,
    /// Inner source outside the sending node's subnet: spoofed.
    SpoofedSource,
    /// Inner destination outside our subnet, or our subnet's network or
    /// broadcast address, or multicast: not ours to deliver.
    NotForUs,
    /// Inner TCP or UDP checksum wrong, and not the partial sum a kernel
    /// peer leaves for the device to finish (`l4`).
    L4Checksum,
    /// An inner IPv6 packet through the IPv4 tunnel (`flannel.<VNI>`),
    /// which carries IPv4 only: a dual-stack node's IPv6 pods are carried
    /// by its IPv6 tunnel.
    Ipv6Unsupported,
    /// An inner IPv4 packet through the IPv6 tunnel
    /// (`flannel-v6.<VNI>`), which carries IPv6 only.
    Ipv4Unsupported,
}

impl DropReason {
    /// Every reason, in label order, for metric exposition.
    pub const ALL: [DropReason; 23] = [
        DropReason::ShortHeader,
        DropReason::FlagsInvalid,
        DropReason::ReservedBits,
        DropReason::VniMismatch,
        DropReason::InnerTruncated,
        DropReason::OtherHost,
        DropReason::LoopedFrame,
        DropReason::EtherType,
        DropReason::Ipv4Malformed,
        DropReason::Ipv4Checksum,
        DropReason::Ipv6Malformed,
        DropReason::Oversize,
        DropReason::TtlExpired,
        DropReason::NoRoute,
        DropReason::UnknownMac,
        DropReason::SendError,
        DropReason::DeviceError,
        DropReason::UnknownSender,
        DropReason::SpoofedSource,
        DropReason::NotForUs,
        DropReason::L4Checksum,
        DropReason::Ipv6Unsupported,
        DropReason::Ipv4Unsupported,
    ];

    /// Number of reasons, for counter arrays.
    pub const COUNT: usize = Self::ALL.len();

    /// Index into a counter array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::ShortHeader => "short_header",
            DropReason::FlagsInvalid => "flags_invalid",
            DropReason::ReservedBits => "reserved_bits",
            DropReason::VniMismatch => "vni_mismatch",
            DropReason::InnerTruncated => "inner_truncated",
            DropReason::OtherHost => "other_host",
            DropReason::LoopedFrame => "looped_frame",
            DropReason::EtherType => "ethertype",
            DropReason::Ipv4Malformed => "ipv4_malformed",
            DropReason::Ipv4Checksum => "ipv4_checksum",
            DropReason::Ipv6Malformed => "ipv6_malformed",
            DropReason::Oversize => "oversize",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoRoute => "no_route",
            DropReason::UnknownMac => "unknown_mac",
            DropReason::SendError => "send_error",
            DropReason::DeviceError => "device_error",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotForUs => "not_for_us",
            DropReason::L4Checksum => "l4_checksum",
            DropReason::Ipv6Unsupported => "ipv6_unsupported",
            DropReason::Ipv4Unsupported => "ipv4_unsupported",
        }
    }
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_labels_are_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
    }
}
