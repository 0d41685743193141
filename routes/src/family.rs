//! The address families the overlay carries, as their address types:
//! `Ipv4Addr` and `Ipv6Addr`. What the forwarding table and the tunnel
//! core need of a family (its prefixes, its socket addresses, its
//! addresses as integers for masking) is here once, so each of them is
//! one piece of code for both families, monomorphized for each.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::BitAnd;

/// An address family: IPv4 (`Ipv4Addr`) or IPv6 (`Ipv6Addr`).
pub trait Family:
    Copy + Eq + Ord + Hash + Debug + Display + Into<IpAddr> + Send + Sync + 'static
{
    /// Its prefixes.
    type Net: Copy + Eq + Hash + Debug + Display + Into<IpNet> + Send + Sync + 'static;
    /// Its socket addresses.
    type SocketAddr: Copy + Eq + Hash + Debug + Display + Into<SocketAddr> + Send + Sync + 'static;
    /// An address as an integer, for prefix masks.
    type Bits: Copy + Eq + Hash + Debug + BitAnd<Output = Self::Bits> + Send + Sync + 'static;

    /// The IP version number (4 or 6).
    const VERSION: u8;
    /// The unspecified address (`0.0.0.0`, `::`): a wildcard bind.
    const UNSPECIFIED: Self;
    /// The length of a prefix of one address (32, 128).
    const BITS: u8;

    /// The address as an integer.
    fn bits(self) -> Self::Bits;
    /// The mask of a prefix of `len` bits.
    fn prefix_mask(len: u8) -> Self::Bits;
    /// A prefix's first address.
    fn network(net: &Self::Net) -> Self;
    /// A prefix's length.
    fn prefix_len(net: &Self::Net) -> u8;
    /// True when `ip` lies in `net`.
    fn contains(net: &Self::Net, ip: Self) -> bool;
    /// A socket address's IP.
    fn ip_of(addr: &Self::SocketAddr) -> Self;
    /// The socket address `ip:port`.
    fn socket_addr(ip: Self, port: u16) -> Self::SocketAddr;
    /// `net`, when it is of this family.
    fn net_of(net: IpNet) -> Option<Self::Net>;
    /// `ip`, when it is of this family.
    fn ip_of_any(ip: IpAddr) -> Option<Self>;
}

impl Family for Ipv4Addr {
    type Net = Ipv4Net;
    type SocketAddr = SocketAddrV4;
    type Bits = u32;

    const VERSION: u8 = 4;
    const UNSPECIFIED: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
    const BITS: u8 = 32;

    #[inline]
    fn bits(self) -> u32 {
        u32::from(self)
    }

    #[inline]
    fn prefix_mask(len: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0)
    }

    #[inline]
    fn network(net: &Ipv4Net) -> Ipv4Addr {
        net.network()
    }

    #[inline]
    fn prefix_len(net: &Ipv4Net) -> u8 {
        net.prefix_len()
    }

    #[inline]
    fn contains(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
        net.contains(&ip)
    }

    #[inline]
    fn ip_of(addr: &SocketAddrV4) -> Ipv4Addr {
        *addr.ip()
    }

    #[inline]
    fn socket_addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(ip, port)
    }

    #[inline]
    fn net_of(net: IpNet) -> Option<Ipv4Net> {
        match net {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        }
    }

    #[inline]
    fn ip_of_any(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl Family for Ipv6Addr {
    type Net = Ipv6Net;
    type SocketAddr = SocketAddrV6;
    type Bits = u128;

    const VERSION: u8 = 6;
    const UNSPECIFIED: Ipv6Addr = Ipv6Addr::UNSPECIFIED;
    const BITS: u8 = 128;

    #[inline]
    fn bits(self) -> u128 {
        u128::from(self)
    }

    #[inline]
    fn prefix_mask(len: u8) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(len.min(128)))
            .unwrap_or(0)
    }

    #[inline]
    fn network(net: &Ipv6Net) -> Ipv6Addr {
        net.network()
    }

    #[inline]
    fn prefix_len(net: &Ipv6Net) -> u8 {
        net.prefix_len()
    }

    #[inline]
    fn contains(net: &Ipv6Net, ip: Ipv6Addr) -> bool {
        net.contains(&ip)
    }

    #[inline]
    fn ip_of(addr: &SocketAddrV6) -> Ipv6Addr {
        *addr.ip()
    }

    #[inline]
    fn socket_addr(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(ip, port, 0, 0)
    }

    #[inline]
    fn net_of(net: IpNet) -> Option<Ipv6Net> {
        match net {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => None,
        }
    }

    #[inline]
    fn ip_of_any(ip: IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_every_length() {
        assert_eq!(Ipv4Addr::prefix_mask(0), 0);
        assert_eq!(Ipv4Addr::prefix_mask(24), 0xffff_ff00);
        assert_eq!(Ipv4Addr::prefix_mask(32), u32::MAX);
        assert_eq!(Ipv6Addr::prefix_mask(0), 0);
        assert_eq!(Ipv6Addr::prefix_mask(64), u128::MAX << 64);
        assert_eq!(Ipv6Addr::prefix_mask(128), u128::MAX);
        // Lengths past the family's width are the full mask, never a panic.
        assert_eq!(Ipv4Addr::prefix_mask(40), u32::MAX);
        assert_eq!(Ipv6Addr::prefix_mask(200), u128::MAX);
    }
}
