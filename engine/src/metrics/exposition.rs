//! The Prometheus text exposition of the counters, and every series' name.

use super::Metrics;
use crate::failures::ERRNOS;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use weft_encap::DropReason;
use weft_routes::{PeerCounters, Rejection};

/// Every series' name, for the exposition and for its readers (`weft
/// status`, `weft demo`).
pub mod name {
    /// `weft_rx_packets_total`.
    pub const RX_PACKETS: &str = "weft_rx_packets_total";
    /// `weft_rx_bytes_total`.
    pub const RX_BYTES: &str = "weft_rx_bytes_total";
    /// `weft_tx_packets_total`.
    pub const TX_PACKETS: &str = "weft_tx_packets_total";
    /// `weft_tx_bytes_total`.
    pub const TX_BYTES: &str = "weft_tx_bytes_total";
    /// `weft_routes_recovered_total`.
    pub const ROUTES_RECOVERED: &str = "weft_routes_recovered_total";
    /// `weft_icmp_suppressed_total`.
    pub const ICMP_SUPPRESSED: &str = "weft_icmp_suppressed_total";
    /// `weft_checksums_completed_total`.
    pub const CHECKSUMS_COMPLETED: &str = "weft_checksums_completed_total";
    /// `weft_internal_errors_total`.
    pub const INTERNAL_ERRORS: &str = "weft_internal_errors_total";
    /// `weft_device_recreations_total`.
    pub const DEVICE_RECREATIONS: &str = "weft_device_recreations_total";
    /// `weft_routes_refused_total`.
    pub const ROUTES_REFUSED: &str = "weft_routes_refused_total";
    /// `weft_dropped_packets_total`.
    pub const DROPPED: &str = "weft_dropped_packets_total";
    /// `weft_os_errors_total`.
    pub const OS_ERRORS: &str = "weft_os_errors_total";
    /// `weft_peers`.
    pub const PEERS: &str = "weft_peers";
    /// `weft_peers_direct`.
    pub const PEERS_DIRECT: &str = "weft_peers_direct";
    /// `weft_peers_unreachable`.
    pub const PEERS_UNREACHABLE: &str = "weft_peers_unreachable";
    /// `weft_node_info`.
    pub const NODE_INFO: &str = "weft_node_info";
    /// `weft_node_ipv6_info`.
    pub const NODE_IPV6_INFO: &str = "weft_node_ipv6_info";
    /// `weft_lease_expiry_seconds`.
    pub const LEASE_EXPIRY: &str = "weft_lease_expiry_seconds";
    /// `weft_ready`.
    pub const READY: &str = "weft_ready";
    /// `weft_leases_rejected_total`.
    pub const LEASES_REJECTED: &str = "weft_leases_rejected_total";
    /// `weft_lease_ipv6_halves_rejected_total`.
    pub const IPV6_HALVES_REJECTED: &str = "weft_lease_ipv6_halves_rejected_total";
    /// `weft_lease_rejected`.
    pub const LEASE_REJECTED: &str = "weft_lease_rejected";
    /// `weft_peer_info`.
    pub const PEER_INFO: &str = "weft_peer_info";
    /// `weft_peer_rx_packets_total`.
    pub const PEER_RX_PACKETS: &str = "weft_peer_rx_packets_total";
    /// `weft_peer_rx_bytes_total`.
    pub const PEER_RX_BYTES: &str = "weft_peer_rx_bytes_total";
    /// `weft_peer_tx_packets_total`.
    pub const PEER_TX_PACKETS: &str = "weft_peer_tx_packets_total";
    /// `weft_peer_tx_bytes_total`.
    pub const PEER_TX_BYTES: &str = "weft_peer_tx_bytes_total";
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        counter(
            &mut s,
            name::RX_PACKETS,
            "Packets received from peers and delivered to the device.",
            self.sum(|w| &w.rx_packets),
        );
        counter(
            &mut s,
            name::RX_BYTES,
            "Bytes delivered to the device.",
            self.sum(|w| &w.rx_bytes),
        );
        counter(
            &mut s,
            name::TX_PACKETS,
            "Packets read from the device and sent to peers.",
            self.sum(|w| &w.tx_packets),
        );
        counter(
            &mut s,
            name::TX_BYTES,
            "UDP payload bytes sent to peers.",
            self.sum(|w| &w.tx_bytes),
        );
        counter(
            &mut s,
            name::ROUTES_RECOVERED,
            "Routes of ours found missing (deleted by someone else) and put back.",
            self.routes_recovered.load(Relaxed),
        );
        counter(
            &mut s,
            name::ICMP_SUPPRESSED,
            "ICMP errors weft did not send because their rate limit was reached.",
            self.sum(|w| &w.icmp_suppressed),
        );
        counter(
            &mut s,
            name::CHECKSUMS_COMPLETED,
            "Received inner TCP/UDP segments whose checksum a kernel peer left partial (CHECKSUM_PARTIAL across a veth or virtio link), completed by weft.",
            self.sum(|w| &w.checksums_completed),
        );
        counter(
            &mut s,
            name::INTERNAL_ERRORS,
            "Packets weft left unhandled because of a mistake in weft itself (a bug: the log says which); not drops of bad input.",
            self.sum(|w| &w.internal_errors),
        );
        counter(
            &mut s,
            name::DEVICE_RECREATIONS,
            "Times weft's device was found deleted and created again.",
            self.device_recreations.load(Relaxed),
        );
        counter(
            &mut s,
            name::ROUTES_REFUSED,
            "Peer routes not programmed because the kernel already routes the prefix with a route weft did not install.",
            self.routes_refused.load(Relaxed),
        );
        self.render_peers(&mut s);
        self.render_rejected(&mut s);
        family(
            &mut s,
            name::DROPPED,
            "counter",
            "Packets dropped, by reason.",
        );
        for r in DropReason::ALL {
            let _ = writeln!(
                s,
                "{}{{reason=\"{}\"}} {}",
                name::DROPPED,
                r.label(),
                self.dropped(r)
            );
        }
        family(
            &mut s,
            name::OS_ERRORS,
            "counter",
            "Failed socket and device calls, by OS error.",
        );
        for (i, name) in ERRNOS.iter().map(|(_, n)| *n).chain(["other"]).enumerate() {
            let _ = writeln!(
                s,
                "{}{{errno=\"{name}\"}} {}",
                name::OS_ERRORS,
                self.sum(|w| &w.os_errors[i])
            );
        }
        gauge(
            &mut s,
            name::PEERS,
            "Peers: other nodes' leases this node routes to.",
            self.peers.load(Relaxed),
        );
        gauge(
            &mut s,
            name::PEERS_DIRECT,
            "Peers reached by plain routing, without encapsulation (host-gw, DirectRouting).",
            self.peers_direct.load(Relaxed),
        );
        gauge(
            &mut s,
            name::PEERS_UNREACHABLE,
            "Peers whose routes the kernel refused (e.g. a host-gw gateway behind a router).",
            self.peers_unreachable.load(Relaxed),
        );
        if let Some(n) = self.node.get() {
            family(
                &mut s,
                name::NODE_INFO,
                "gauge",
                "This node: its subnet, PublicIP, backend, device and MTU.",
            );
            let _ = writeln!(
                s,
                "{}{{subnet=\"{}\",public_ip=\"{}\",backend=\"{}\",device=\"{}\",mtu=\"{}\"}} 1",
                name::NODE_INFO,
                n.subnet.map(|s| s.to_string()).unwrap_or_default(),
                n.public_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                n.backend,
                n.device,
                n.mtu
            );
            if let Some(v6) = &n.ipv6 {
                family(
                    &mut s,
                    name::NODE_IPV6_INFO,
                    "gauge",
                    "This node's IPv6 half: its subnet, PublicIPv6, device and that device's MTU.",
                );
                let public_ip = v6.public_ip.map(|ip| ip.to_string()).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "{}{{subnet=\"{}\",public_ip=\"{public_ip}\",device=\"{}\",mtu=\"{}\"}} 1",
                    name::NODE_IPV6_INFO,
                    v6.subnet,
                    v6.device,
                    v6.mtu
                );
            }
        }
        gauge(
            &mut s,
            name::LEASE_EXPIRY,
            "When our subnet lease expires (Unix time).",
            self.lease_expiry.load(Relaxed),
        );
        gauge(
            &mut s,
            name::READY,
            "1 when the lease, device, routes and subnet.env are in place.",
            u64::from(self.ready.load(Relaxed)),
        );
        s
    }

    /// Refused leases: counted by reason, and each refused now as a gauge
    /// labelled by its key, PublicIP and reason.
    fn render_rejected(&self, s: &mut String) {
        let by_reason = |s: &mut String, name: &str, help: &str, counts: &[AtomicU64]| {
            family(s, name, "counter", help);
            for r in Rejection::ALL {
                let n = counts[r.index()].load(Relaxed);
                let _ = writeln!(s, "{name}{{reason=\"{}\"}} {n}", r.label());
            }
        };
        by_reason(
            s,
            name::LEASES_REJECTED,
            "Peer leases refused, by reason, counted once per change of a lease.",
            &self.leases_rejected,
        );
        by_reason(
            s,
            name::IPV6_HALVES_REJECTED,
            "IPv6 halves of peer leases refused while the IPv4 half stands, by reason, counted once per change of a lease.",
            &self.ipv6_halves_rejected,
        );
        family(
            s,
            name::LEASE_REJECTED,
            "gauge",
            "A lease (family ipv4) or its IPv6 half alone (family ipv6) refused now: its key, its holder's name (the Node, in Kubernetes), the address it claims and why.",
        );
        let views = self
            .rejected_views
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for v in views.iter() {
            let _ = writeln!(
                s,
                "{}{{key=\"{}\",node=\"{}\",public_ip=\"{}\",reason=\"{}\",family=\"{}\"}} 1",
                name::LEASE_REJECTED,
                v.key,
                escape(&v.node),
                v.public_ip,
                v.reason,
                v.family
            );
        }
    }

    /// The per-peer series: one info gauge (how the peer is reached) and
    /// four counters per peer, labelled by subnet and PublicIP.
    fn render_peers(&self, s: &mut String) {
        let views = self.peer_views.lock().unwrap_or_else(|e| e.into_inner());
        family(
            s,
            name::PEER_INFO,
            "gauge",
            "A peer: its subnet, PublicIP, VtepMAC and how it is reached (tunnel, direct, unreachable).",
        );
        for v in views.iter() {
            let mac = v.vtep_mac.map(|m| m.to_string()).unwrap_or_default();
            let _ = writeln!(
                s,
                "{}{{subnet=\"{}\",public_ip=\"{}\",vtep_mac=\"{mac}\",via=\"{}\"}} 1",
                name::PEER_INFO,
                v.subnet,
                v.public_ip,
                v.via
            );
        }
        type Field = fn(&PeerCounters) -> &AtomicU64;
        let series: [(&str, &str, Field); 4] = [
            (
                name::PEER_RX_PACKETS,
                "Packets from the peer delivered to the device.",
                |c| &c.rx_packets,
            ),
            (
                name::PEER_RX_BYTES,
                "Bytes from the peer delivered to the device.",
                |c| &c.rx_bytes,
            ),
            (
                name::PEER_TX_PACKETS,
                "Packets encapsulated toward the peer and handed to the socket.",
                |c| &c.tx_packets,
            ),
            (
                name::PEER_TX_BYTES,
                "UDP payload bytes encapsulated toward the peer.",
                |c| &c.tx_bytes,
            ),
        ];
        for (name, help, field) in series {
            family(s, name, "counter", help);
            // A lease's counters once: its halves share them.
            for v in views.iter().filter(|v| v.counted) {
                let _ = writeln!(
                    s,
                    "{name}{{subnet=\"{}\",public_ip=\"{}\"}} {}",
                    v.subnet,
                    v.public_ip,
                    field(&v.counters).load(Relaxed)
                );
            }
        }
    }
}

/// A label value in the exposition format: backslash, double quote and
/// line feed escaped. A Node's name comes from the API server.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
fn family(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A counter family of one unlabelled sample.
fn counter(s: &mut String, name: &str, help: &str, v: u64) {
    family(s, name, "counter", help);
    let _ = writeln!(s, "{name} {v}");
}

/// A gauge family of one unlabelled sample.
fn gauge(s: &mut String, name: &str, help: &str, v: u64) {
    family(s, name, "gauge", help);
    let _ = writeln!(s, "{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{BatchStats, NodeView, NodeView6, PeerView, RejectedView, WorkerStats};
    use std::sync::Arc;
    use weft_encap::MacAddr;

    #[test]
    fn batches_publish_and_render() {
        let w = Arc::new(WorkerStats::default());
        let m = Metrics {
            workers: vec![w.clone(), Arc::new(WorkerStats::default())],
            ..Default::default()
        };
        let mut b = BatchStats::default();
        b.rx(100);
        b.tx(3, 300);
        b.drop(DropReason::VniMismatch);
        b.os_error(Some(libc::ECONNREFUSED), 2);
        b.os_error(Some(12345), 1);
        b.flush(&w);
        b.flush(&w);
        let text = m.render();
        assert!(text.contains("weft_rx_packets_total 1\n"), "{text}");
        assert!(text.contains("weft_tx_packets_total 3\n"));
        assert!(text.contains("weft_dropped_packets_total{reason=\"vni_mismatch\"} 1\n"));
        assert!(text.contains("weft_dropped_packets_total{reason=\"no_route\"} 0\n"));
        assert!(
            text.contains("weft_os_errors_total{errno=\"ECONNREFUSED\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("weft_os_errors_total{errno=\"other\"} 1\n"));
        assert!(text.contains("weft_os_errors_total{errno=\"EPERM\"} 0\n"));
        assert!(text.contains("weft_device_recreations_total 0\n"));
    }

    #[test]
    fn peers_render_with_labels() {
        let c = Arc::new(PeerCounters::default());
        c.rx_packets.store(7, Relaxed);
        c.tx_bytes.store(1400, Relaxed);
        let m = Metrics::default();
        *m.peer_views.lock().unwrap() = vec![PeerView {
            subnet: "10.244.2.0/24".parse().unwrap(),
            public_ip: [192, 0, 2, 2].into(),
            vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
            via: "tunnel",
            counters: c,
            counted: true,
        }];
        let text = m.render();
        for line in [
            "weft_peer_info{subnet=\"10.244.2.0/24\",public_ip=\"192.0.2.2\",vtep_mac=\"02:00:00:00:00:02\",via=\"tunnel\"} 1\n",
            "weft_peer_rx_packets_total{subnet=\"10.244.2.0/24\",public_ip=\"192.0.2.2\"} 7\n",
            "weft_peer_tx_bytes_total{subnet=\"10.244.2.0/24\",public_ip=\"192.0.2.2\"} 1400\n",
            "weft_peer_tx_packets_total{subnet=\"10.244.2.0/24\",public_ip=\"192.0.2.2\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    /// Every scrape, with every kind of series present, parses with an
    /// independent Prometheus text parser (prometheus-parse): one sample per
    /// sample line (it skips lines it cannot read), every family documented
    /// and typed (counters end in `_total`, the rest are gauges), every
    /// label readable, and every name one of `name::*`.
    #[test]
    fn the_exposition_parses_as_prometheus_text() {
        let w = Arc::new(WorkerStats::default());
        let m = Metrics {
            workers: vec![w.clone()],
            ..Default::default()
        };
        let mut b = BatchStats::default();
        b.rx(100);
        b.drop(DropReason::SpoofedSource);
        b.os_error(Some(libc::ENOBUFS), 1);
        b.flush(&w);
        *m.peer_views.lock().unwrap() = vec![PeerView {
            subnet: "10.244.2.0/24".parse().unwrap(),
            public_ip: [192, 0, 2, 2].into(),
            vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
            via: "tunnel",
            counters: Arc::default(),
            counted: true,
        }];
        *m.rejected_views.lock().unwrap() = vec![RejectedView {
            key: "10.244.9.0-24".parse().unwrap(),
            node: "node-\"9\"\\".into(),
            family: "ipv4",
            public_ip: [192, 0, 2, 9].into(),
            reason: Rejection::ALL[0],
        }];
        let _ = m.node.set(NodeView {
            subnet: "10.244.1.0/24".parse().ok(),
            public_ip: Some([192, 0, 2, 1].into()),
            backend: "vxlan",
            device: "flannel.1".into(),
            mtu: 1450,
            ipv6: Some(NodeView6 {
                subnet: "fd00:10:244:1::/64".parse().unwrap(),
                public_ip: Some("fd00:192::1".parse().unwrap()),
                device: "flannel-v6.1".into(),
                mtu: 1430,
            }),
        });
        let text = m.render();
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let sample_lines = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(scrape.samples.len(), sample_lines, "{text}");
        let known = [
            name::RX_PACKETS,
            name::RX_BYTES,
            name::TX_PACKETS,
            name::TX_BYTES,
            name::ROUTES_RECOVERED,
            name::ICMP_SUPPRESSED,
            name::CHECKSUMS_COMPLETED,
            name::INTERNAL_ERRORS,
            name::DEVICE_RECREATIONS,
            name::ROUTES_REFUSED,
            name::DROPPED,
            name::OS_ERRORS,
            name::PEERS,
            name::PEERS_DIRECT,
            name::PEERS_UNREACHABLE,
            name::NODE_INFO,
            name::NODE_IPV6_INFO,
            name::LEASE_EXPIRY,
            name::READY,
            name::LEASES_REJECTED,
            name::IPV6_HALVES_REJECTED,
            name::LEASE_REJECTED,
            name::PEER_INFO,
            name::PEER_RX_PACKETS,
            name::PEER_RX_BYTES,
            name::PEER_TX_PACKETS,
            name::PEER_TX_BYTES,
        ];
        let mut seen = std::collections::HashSet::new();
        for s in &scrape.samples {
            assert!(
                known.contains(&s.metric.as_str()),
                "{} is not in name::*",
                s.metric
            );
            assert!(
                scrape.docs.contains_key(&s.metric),
                "{} has no HELP",
                s.metric
            );
            match s.value {
                prometheus_parse::Value::Counter(_) => assert!(s.metric.ends_with("_total")),
                prometheus_parse::Value::Gauge(_) => assert!(!s.metric.ends_with("_total")),
                ref v => panic!("{} is neither a counter nor a gauge: {v:?}", s.metric),
            }
            seen.insert(s.metric.clone());
        }
        assert_eq!(seen.len(), known.len(), "a family is missing from\n{text}");
        let value = |metric: &str, label: &str, v: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == metric && s.labels.get(label) == Some(v))
                .map(|s| s.value.clone())
        };
        assert_eq!(
            value(name::NODE_IPV6_INFO, "device", "flannel-v6.1"),
            Some(prometheus_parse::Value::Gauge(1.0))
        );
        assert_eq!(
            value(name::DROPPED, "reason", "spoofed_source"),
            Some(prometheus_parse::Value::Counter(1.0))
        );
        assert_eq!(
            value(name::PEER_INFO, "vtep_mac", "02:00:00:00:00:02"),
            Some(prometheus_parse::Value::Gauge(1.0))
        );
        assert_eq!(
            value(name::NODE_INFO, "device", "flannel.1"),
            Some(prometheus_parse::Value::Gauge(1.0))
        );
    }
}
