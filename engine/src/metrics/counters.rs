//! The counters: each worker's own, and the node's.

use crate::failures::{errno_slot, Failures, ERRNO_SLOTS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use weft_encap::{DropReason, MacAddr};
use weft_routes::{PeerCounters, Rejection, SubnetKey};

/// One worker's counters, on its own cache lines.
#[repr(align(64))]
#[derive(Default)]
pub struct WorkerStats {
    /// Packets delivered to the device.
    pub rx_packets: AtomicU64,
    /// Bytes delivered to the device.
    pub rx_bytes: AtomicU64,
    /// Datagrams sent to peers.
    pub tx_packets: AtomicU64,
    /// Bytes sent to peers (UDP payload).
    pub tx_bytes: AtomicU64,
    /// Drops by reason.
    pub drops: [AtomicU64; DropReason::COUNT],
    /// OS errors from socket and device calls, by `errno_slot`.
    pub os_errors: [AtomicU64; ERRNO_SLOTS],
    /// ICMP errors not sent because the rate limit was reached.
    pub icmp_suppressed: AtomicU64,
    /// Received inner segments whose partial checksum weft completed.
    pub checksums_completed: AtomicU64,
    /// Packets not handled because of a mistake in weft itself.
    pub internal_errors: AtomicU64,
}

/// A worker's counts for the batch in progress; published by `flush`.
/// Fields as in `WorkerStats`, written only through the methods, which
/// mark the batch for `flush`.
#[derive(Default)]
pub struct BatchStats {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    drops: [u64; DropReason::COUNT],
    os_errors: [u64; ERRNO_SLOTS],
    icmp_suppressed: u64,
    checksums_completed: u64,
    internal_errors: u64,
    dirty: bool,
}

impl BatchStats {
    /// Counts a drop.
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r.index()] += 1;
        self.dirty = true;
    }

    /// Counts `n` drops for one reason.
    #[inline]
    pub fn drops(&mut self, r: DropReason, n: u64) {
        if n > 0 {
            self.drops[r.index()] += n;
            self.dirty = true;
        }
    }

    /// Counts the packets lost to failed calls as drops for `reason`, and
    /// the calls' OS errors.
    #[inline]
    pub fn failed(&mut self, reason: DropReason, f: &Failures) {
        self.drops(reason, f.packets);
        for (c, n) in self.os_errors.iter_mut().zip(f.by_errno) {
            *c += n;
        }
    }

    /// Counts `n` failures with OS error `e`.
    #[inline]
    pub fn os_error(&mut self, e: Option<i32>, n: u64) {
        self.os_errors[errno_slot(e)] += n;
        self.dirty = true;
    }

    /// Counts an ICMP error the rate limit held back.
    #[inline]
    pub fn icmp_suppressed(&mut self) {
        self.icmp_suppressed += 1;
        self.dirty = true;
    }

    /// Counts a partial checksum completed.
    #[inline]
    pub fn checksum_completed(&mut self) {
        self.checksums_completed += 1;
        self.dirty = true;
    }

    /// Counts a packet a bug in weft left unhandled.
    #[inline]
    pub fn internal_error(&mut self) {
        self.internal_errors += 1;
        self.dirty = true;
    }

    /// Counts a packet delivered to the device.
    #[inline]
    pub fn rx(&mut self, bytes: usize) {
        self.rx_packets += 1;
        self.rx_bytes += bytes as u64;
        self.dirty = true;
    }

    /// Counts datagrams sent.
    #[inline]
    pub fn tx(&mut self, packets: usize, bytes: u64) {
        self.tx_packets += packets as u64;
        self.tx_bytes += bytes;
        self.dirty = true;
    }

    /// Publishes into the worker's shared counters and resets.
    pub fn flush(&mut self, to: &WorkerStats) {
        if !self.dirty {
            return;
        }
        // Single writer per WorkerStats: load+store is exact and avoids a
        // locked instruction per counter.
        let add = |c: &AtomicU64, n: u64| {
            if n != 0 {
                c.store(c.load(Relaxed) + n, Relaxed)
            }
        };
        add(&to.rx_packets, self.rx_packets);
        add(&to.rx_bytes, self.rx_bytes);
        add(&to.tx_packets, self.tx_packets);
        add(&to.tx_bytes, self.tx_bytes);
        add(&to.icmp_suppressed, self.icmp_suppressed);
        add(&to.checksums_completed, self.checksums_completed);
        add(&to.internal_errors, self.internal_errors);
        for (c, n) in to.drops.iter().zip(self.drops) {
            add(c, n);
        }
        for (c, n) in to.os_errors.iter().zip(self.os_errors) {
            add(c, n);
        }
        *self = BatchStats::default();
    }
}

/// One peer as `/metrics` shows it.
pub struct PeerView {
    /// Its subnet (one row per family a peer carries).
    pub subnet: ipnet::IpNet,
    /// Its PublicIP (or PublicIPv6, for its IPv6 subnet).
    pub public_ip: std::net::IpAddr,
    /// Its VtepMAC (vxlan).
    pub vtep_mac: Option<MacAddr>,
    /// How it is reached: "tunnel", "direct" or "unreachable".
    pub via: &'static str,
    /// Its traffic.
    pub counters: Arc<PeerCounters>,
    /// This row shows the lease's counters, which its halves share: its
    /// IPv4 row, or its IPv6 row when it has no IPv4 one (IPv6-only).
    pub counted: bool,
}

/// A lease weft refuses, as `/metrics` shows it.
pub struct RejectedView {
    /// Its registry key.
    pub key: SubnetKey,
    /// Its holder's name (the Node, in Kubernetes), else empty.
    pub node: String,
    /// "ipv4" for the lease, "ipv6" for its IPv6 half alone.
    pub family: &'static str,
    /// The PublicIP (or PublicIPv6) it claims.
    pub public_ip: std::net::IpAddr,
    /// Why it is refused.
    pub reason: Rejection,
}

/// This node, as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Our subnet; none in an IPv6-only cluster.
    pub subnet: Option<ipnet::Ipv4Net>,
    /// Our PublicIP; none in an IPv6-only cluster.
    pub public_ip: Option<std::net::Ipv4Addr>,
    /// The backend's name as flannel spells it ("udp", "vxlan", "host-gw").
    pub backend: &'static str,
    /// weft's device ("" for host-gw).
    pub device: String,
    /// The MTU in subnet.env.
    pub mtu: u32,
    /// Our IPv6 half, with `EnableIPv6`.
    pub ipv6: Option<NodeView6>,
}

/// This node's IPv6 half, as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct NodeView6 {
    /// Our IPv6 subnet.
    pub subnet: ipnet::Ipv6Net,
    /// Our PublicIPv6 (none with the udp backend, which carries no IPv6).
    pub public_ip: Option<std::net::Ipv6Addr>,
    /// weft's device for IPv6 pods ("" when none carries them).
    pub device: String,
    /// That device's MTU (0 without one).
    pub mtu: u32,
}

/// Everything `/metrics`, `/healthz` and `/readyz` report.
#[derive(Default)]
pub struct Metrics {
    /// Per-worker counters.
    pub workers: Vec<Arc<WorkerStats>>,
    /// Current number of peers (leases we route to).
    pub peers: AtomicU64,
    /// Of those, peers reached by plain routing (host-gw, DirectRouting).
    pub peers_direct: AtomicU64,
    /// Of those, peers we cannot route to (e.g. host-gw gateway off-link).
    pub peers_unreachable: AtomicU64,
    /// Routes of ours found missing and put back.
    pub routes_recovered: AtomicU64,
    /// Times the device was found deleted and created again.
    pub device_recreations: AtomicU64,
    /// Peer leases refused, by `Rejection` (once per change of a lease).
    pub leases_rejected: [AtomicU64; Rejection::ALL.len()],
    /// IPv6 halves refused while their leases' IPv4 halves stand, by
    /// `Rejection` (once per change of a lease).
    pub ipv6_halves_rejected: [AtomicU64; Rejection::ALL.len()],
    /// Peer routes not programmed because the kernel routes the prefix
    /// under another protocol (once per peer and cause).
    pub routes_refused: AtomicU64,
    /// The leases refused now. Locked by the control plane and the scraper
    /// only.
    pub rejected_views: Mutex<Vec<RejectedView>>,
    /// The peers, as the control plane last published them. Locked by the
    /// control plane and the scraper only, never by the data path.
    pub peer_views: Mutex<Vec<PeerView>>,
    /// Our lease's expiry, seconds since the epoch.
    pub lease_expiry: AtomicU64,
    /// Lease held, device and routes in place, subnet.env written.
    pub ready: AtomicBool,
    /// This node, once its lease is held.
    pub node: std::sync::OnceLock<NodeView>,
}

impl Metrics {
    /// Sum of one counter over the workers.
    pub fn sum(&self, f: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.workers.iter().map(|w| f(w).load(Relaxed)).sum()
    }

    /// Drops for one reason, summed over the workers.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.sum(|w| &w.drops[r.index()])
    }
}
