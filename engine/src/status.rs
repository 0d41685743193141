//! `weft status`: a running node's lease, peers, counters and drops, read
//! from its `/metrics` endpoint and laid out as tables. The demo's live
//! table reads the same samples.

use crate::metrics::name;
use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// Where `weft run` serves `/metrics` unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9474";

/// One series of a Prometheus text exposition: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label names to values.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A parsed `/metrics` answer: every series by metric name.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Metric name to its series, in the order they came.
    pub metrics: BTreeMap<String, Vec<Series>>,
}

/// One peer's row, from `weft_peer_info` and the per-peer counters.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRow {
    /// Its subnet.
    pub subnet: String,
    /// Its PublicIP.
    pub public_ip: String,
    /// Its VtepMAC ("" outside vxlan).
    pub vtep_mac: String,
    /// tunnel, direct or unreachable.
    pub via: String,
    /// Packets and bytes received from it and sent to it.
    pub rx_packets: u64,
    /// See `rx_packets`.
    pub rx_bytes: u64,
    /// See `rx_packets`.
    pub tx_packets: u64,
    /// See `rx_packets`.
    pub tx_bytes: u64,
}

impl Sample {
    /// Parses the Prometheus text format as weft writes it. Lines it cannot
    /// read are skipped.
    pub fn parse(text: &str) -> Sample {
        let mut metrics: BTreeMap<String, Vec<Series>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((name, series)) = parse_line(line) {
                metrics.entry(name).or_default().push(series);
            }
        }
        Sample { metrics }
    }

    /// The value of an unlabelled metric.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.metrics
            .get(name)?
            .iter()
            .find(|s| s.labels.is_empty())
            .map(|s| s.value)
    }

    /// The value of the series of `name` whose label `key` is `val`.
    pub fn labelled(&self, name: &str, key: &str, val: &str) -> Option<f64> {
        self.metrics
            .get(name)?
            .iter()
            .find(|s| s.labels.get(key).map(String::as_str) == Some(val))
            .map(|s| s.value)
    }

    /// The labels of `weft_node_info`, if the node has a lease.
    pub fn node(&self) -> Option<&BTreeMap<String, String>> {
        self.metrics
            .get(name::NODE_INFO)?
            .first()
            .map(|s| &s.labels)
    }

    /// The labels of `weft_node_ipv6_info`, if the node has an IPv6 half.
    pub fn node6(&self) -> Option<&BTreeMap<String, String>> {
        self.metrics
            .get(name::NODE_IPV6_INFO)?
            .first()
            .map(|s| &s.labels)
    }

    /// The peers, by subnet.
    pub fn peers(&self) -> Vec<PeerRow> {
        let Some(info) = self.metrics.get(name::PEER_INFO) else {
            return Vec::new();
        };
        let count =
            |name: &str, subnet: &str| self.labelled(name, "subnet", subnet).unwrap_or(0.0) as u64;
        info.iter()
            .map(|s| {
                let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
                let subnet = l("subnet");
                PeerRow {
                    rx_packets: count(name::PEER_RX_PACKETS, &subnet),
                    rx_bytes: count(name::PEER_RX_BYTES, &subnet),
                    tx_packets: count(name::PEER_TX_PACKETS, &subnet),
                    tx_bytes: count(name::PEER_TX_BYTES, &subnet),
                    public_ip: l("public_ip"),
                    vtep_mac: l("vtep_mac"),
                    via: l("via"),
                    subnet,
                }
            })
            .collect()
    }

    /// The leases refused now: (key, node, PublicIP, reason), by key. The
    /// node is the holder's name in Kubernetes, else empty.
    pub fn rejected(&self) -> Vec<(String, String, String, String)> {
        let mut v: Vec<_> = self
            .metrics
            .get(name::LEASE_REJECTED)
            .into_iter()
            .flatten()
            .map(|s| {
                let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
                let reason = match l("family").as_str() {
                    "ipv6" => format!("{} (its IPv6 half only)", l("reason")),
                    _ => l("reason"),
                };
                (l("key"), l("node"), l("public_ip"), reason)
            })
            .collect();
        v.sort();
        v
    }

    /// The non-zero series of a counter labelled by `key` (drops by
    /// reason, OS errors by errno), largest first.
    pub fn nonzero(&self, name: &str, key: &str) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .metrics
            .get(name)
            .into_iter()
            .flatten()
            .filter(|s| s.value > 0.0)
            .map(|s| {
                (
                    s.labels.get(key).cloned().unwrap_or_default(),
                    s.value as u64,
                )
            })
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// `name{k="v",…} value` or `name value`.
fn parse_line(line: &str) -> Option<(String, Series)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some((name, Series { labels, value }))
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut val = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => val.push(match chars.next()?.1 {
                    'n' => '\n',
                    c => c,
                }),
                (_, c) => val.push(c),
            }
        };
        out.insert(key.trim().to_string(), val);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

/// The most `fetch` reads: a scrape of 100 000 peers is ~60 MB less.
const MAX_RESPONSE: u64 = 16 << 20;

/// How long `fetch` waits to connect, and for the whole answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches `/metrics` from `addr` (HTTP/1.1 with hyper; a 2 s connect
/// timeout, 10 s for the whole answer, at most `MAX_RESPONSE` bytes:
/// whatever listens there is not trusted to stop).
pub fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fetch_async(addr))
}

async fn fetch_async(addr: SocketAddr) -> std::io::Result<String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;
    use std::io::{Error, ErrorKind};
    let timed_out =
        |what: &str| Error::new(ErrorKind::TimedOut, format!("{what} {addr} timed out"));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connecting to"))??;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(Error::other)?;
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, "weft")
        .body(Empty::<Bytes>::new())
        .map_err(Error::other)?;
    let answer = async {
        let response = sender.send_request(request).await.map_err(Error::other)?;
        if response.status() != hyper::StatusCode::OK {
            return Err(Error::other(format!(
                "unexpected answer from {addr}: {}",
                response.status()
            )));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE as usize)
            .collect()
            .await
            .map_err(|e| {
                Error::other(format!(
                    "reading the answer from {addr}: {e} (at most {MAX_RESPONSE} bytes)"
                ))
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|e| Error::new(ErrorKind::InvalidData, e))
    };
    // The connection is driven by its own task, dropped with the runtime.
    tokio::spawn(conn);
    tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .map_err(|_| timed_out("reading from"))?
}

/// `weft status`: fetches and prints the tables.
pub fn run(addr: SocketAddr) -> anyhow::Result<()> {
    let text = fetch(addr).with_context(|| {
        format!(
            "cannot read weft's metrics at {addr}: is `weft run` running here, \
             with this --metrics-addr?"
        )
    })?;
    print!(
        "{}",
        render(&Sample::parse(&text), std::time::SystemTime::now())
    );
    Ok(())
}

/// The tables `weft status` prints.
pub fn render(s: &Sample, now: std::time::SystemTime) -> String {
    let mut o = String::new();
    let ready = s.value(name::READY) == Some(1.0);
    match s.node() {
        Some(n) => {
            let l = |k: &str| n.get(k).map(String::as_str).unwrap_or("");
            let _ = writeln!(o, "node");
            // An IPv6-only node has no IPv4 half, and no IPv4 device.
            let v6_only = l("subnet").is_empty();
            let or_none = |v: &str| match v6_only {
                true => "none (IPv6-only)".to_string(),
                false => v.to_string(),
            };
            let _ = writeln!(o, "  subnet     {}", or_none(l("subnet")));
            let _ = writeln!(o, "  PublicIP   {}", or_none(l("public_ip")));
            let device = match (l("device"), v6_only) {
                ("", true) => "none for IPv4",
                ("", false) => "none (routes only)",
                (d, _) => d,
            };
            let _ = writeln!(
                o,
                "  backend    {} (device {device}, MTU {})",
                l("backend"),
                l("mtu")
            );
            if let Some(n6) = s.node6() {
                let l = |k: &str| n6.get(k).map(String::as_str).unwrap_or("");
                let _ = writeln!(o, "  subnet6    {}", l("subnet"));
                let _ = writeln!(o, "  PublicIPv6 {}", l("public_ip"));
                if !l("device").is_empty() {
                    let _ = writeln!(o, "  device6    {} (MTU {})", l("device"), l("mtu"));
                }
            }
        }
        None => {
            let _ = writeln!(o, "node         no lease yet");
        }
    }
    let _ = writeln!(o, "  ready      {}", if ready { "yes" } else { "no" });
    if let Some(exp) = s.value(name::LEASE_EXPIRY).filter(|v| *v > 0.0) {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let left = (exp - now).max(0.0) as u64;
        let _ = writeln!(
            o,
            "  lease      expires in {}h{:02}m",
            left / 3600,
            left % 3600 / 60
        );
    } else if s.node().is_some() {
        let _ = writeln!(o, "  lease      a reservation (never expires)");
    }
    let peers = s.peers();
    let _ = writeln!(o, "\npeers ({})", peers.len());
    if !peers.is_empty() {
        // IPv6 subnets and addresses widen their columns.
        let sw = peers
            .iter()
            .map(|p| p.subnet.len())
            .max()
            .unwrap_or(0)
            .max(18);
        let iw = peers
            .iter()
            .map(|p| p.public_ip.len())
            .max()
            .unwrap_or(0)
            .max(15);
        let _ = writeln!(
            o,
            "  {:<sw$} {:<iw$} {:<17} {:<11} {:>10} {:>10} {:>10} {:>10}",
            "SUBNET", "PUBLIC IP", "VTEP MAC", "VIA", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES"
        );
        for p in &peers {
            let _ = writeln!(
                o,
                "  {:<sw$} {:<iw$} {:<17} {:<11} {:>10} {:>10} {:>10} {:>10}",
                p.subnet,
                p.public_ip,
                if p.vtep_mac.is_empty() {
                    "-"
                } else {
                    &p.vtep_mac
                },
                p.via,
                p.rx_packets,
                human_bytes(p.rx_bytes),
                p.tx_packets,
                human_bytes(p.tx_bytes)
            );
        }
    }
    let rejected = s.rejected();
    if !rejected.is_empty() {
        let _ = writeln!(o, "\nrejected leases ({})", rejected.len());
        let width = rejected.iter().map(|r| r.1.len()).max().unwrap_or(0);
        let node = |n: &str| match width {
            0 => String::new(),
            w => format!("{n:<w$} ", w = w.max(4)),
        };
        let _ = writeln!(
            o,
            "  {:<30} {}{:<15} REASON",
            "KEY",
            node("NODE"),
            "PUBLIC IP"
        );
        for (key, n, ip, reason) in &rejected {
            let _ = writeln!(o, "  {key:<30} {}{ip:<15} {reason}", node(n));
        }
    }
    let count = |name: &str| s.value(name).unwrap_or(0.0) as u64;
    let _ = writeln!(o, "\ncounters");
    let _ = writeln!(
        o,
        "  received   {} packets, {}",
        count(name::RX_PACKETS),
        human_bytes(count(name::RX_BYTES))
    );
    let _ = writeln!(
        o,
        "  sent       {} packets, {}",
        count(name::TX_PACKETS),
        human_bytes(count(name::TX_BYTES))
    );
    let _ = writeln!(
        o,
        "  routes put back {}, device recreated {} times",
        count(name::ROUTES_RECOVERED),
        count(name::DEVICE_RECREATIONS)
    );
    let _ = writeln!(
        o,
        "  routes refused (prefix routed by someone else) {}, partial checksums completed {}, ICMP errors held back {}",
        count(name::ROUTES_REFUSED),
        count(name::CHECKSUMS_COMPLETED),
        count(name::ICMP_SUPPRESSED)
    );
    let internal = count(name::INTERNAL_ERRORS);
    if internal > 0 {
        let _ = writeln!(
            o,
            "  internal errors {internal} (a bug in weft, not the network: please report it)"
        );
    }
    let list = |o: &mut String, title: &str, items: Vec<(String, u64)>| {
        if items.is_empty() {
            let _ = writeln!(o, "\n{title}: none");
        } else {
            let _ = writeln!(o, "\n{title}");
            for (k, v) in items {
                let _ = writeln!(o, "  {k:<18} {v}");
            }
        }
    };
    list(&mut o, "drops", s.nonzero(name::DROPPED, "reason"));
    list(&mut o, "OS errors", s.nonzero(name::OS_ERRORS, "errno"));
    o
}

/// `1.2 MB`, `340 kB`, `17 B`.
pub fn human_bytes(b: u64) -> String {
    let f = b as f64;
    match b {
        0..1_000 => format!("{b} B"),
        1_000..1_000_000 => format!("{:.1} kB", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", f / 1e6),
        _ => format!("{:.2} GB", f / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, NodeView, PeerView, WorkerStats};
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use weft_encap::{DropReason, MacAddr};

    /// What weft renders, `status` reads back.
    #[test]
    fn renders_what_the_metrics_endpoint_serves() {
        let w = Arc::new(WorkerStats::default());
        w.rx_packets.store(5, Relaxed);
        w.drops[DropReason::UnknownSender.index()].store(3, Relaxed);
        let m = Metrics {
            workers: vec![w],
            ..Default::default()
        };
        m.ready.store(true, Relaxed);
        m.lease_expiry.store(3600 * 24, Relaxed);
        m.node
            .set(NodeView {
                subnet: "10.244.1.0/24".parse().ok(),
                public_ip: Some([192, 0, 2, 1].into()),
                backend: "vxlan",
                device: "flannel.1".into(),
                mtu: 1450,
                ipv6: Some(crate::metrics::NodeView6 {
                    subnet: "fd00:10:244:1::/64".parse().unwrap(),
                    public_ip: Some("fd00:192::1".parse().unwrap()),
                    device: "flannel-v6.1".into(),
                    mtu: 1430,
                }),
            })
            .unwrap();
        let c = Arc::new(weft_routes::PeerCounters::default());
        c.tx_bytes.store(2_500_000, Relaxed);
        c.tx_packets.store(1800, Relaxed);
        *m.peer_views.lock().unwrap() = vec![PeerView {
            subnet: "10.244.2.0/24".parse().unwrap(),
            public_ip: [192, 0, 2, 2].into(),
            vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
            via: "tunnel",
            counters: c,
            counted: true,
        }];
        let s = Sample::parse(&m.render());
        assert_eq!(
            s.peers(),
            vec![PeerRow {
                subnet: "10.244.2.0/24".into(),
                public_ip: "192.0.2.2".into(),
                vtep_mac: "02:00:00:00:00:02".into(),
                via: "tunnel".into(),
                rx_packets: 0,
                rx_bytes: 0,
                tx_packets: 1800,
                tx_bytes: 2_500_000,
            }]
        );
        assert_eq!(
            s.nonzero("weft_dropped_packets_total", "reason"),
            vec![("unknown_sender".to_string(), 3)]
        );
        let now = std::time::UNIX_EPOCH + Duration::from_secs(3600 * 2 + 60 * 30);
        let text = render(&s, now);
        for want in [
            "subnet     10.244.1.0/24",
            "backend    vxlan (device flannel.1, MTU 1450)",
            "subnet6    fd00:10:244:1::/64",
            "PublicIPv6 fd00:192::1",
            "device6    flannel-v6.1 (MTU 1430)",
            "ready      yes",
            "expires in 21h30m",
            "10.244.2.0/24      192.0.2.2       02:00:00:00:00:02 tunnel",
            "2.5 MB",
            "received   5 packets",
            "unknown_sender     3",
            "OS errors: none",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert!(!text.contains("internal errors"), "{text}");
        m.workers[0].internal_errors.store(2, Relaxed);
        let text = render(&Sample::parse(&m.render()), now);
        assert!(text.contains("internal errors 2 (a bug in weft"), "{text}");
    }

    /// An IPv6-only node: no IPv4 subnet, PublicIP or device; its
    /// lease's counters on its IPv6 row.
    #[test]
    fn renders_an_ipv6_only_node() {
        let m = Metrics::default();
        m.node
            .set(NodeView {
                subnet: None,
                public_ip: None,
                backend: "vxlan",
                device: String::new(),
                mtu: 1450,
                ipv6: Some(crate::metrics::NodeView6 {
                    subnet: "fd00:10:244:1::/64".parse().unwrap(),
                    public_ip: Some("fd00:192::1".parse().unwrap()),
                    device: "flannel-v6.1".into(),
                    mtu: 1430,
                }),
            })
            .unwrap();
        let c = Arc::new(weft_routes::PeerCounters::default());
        c.rx_packets.store(9, Relaxed);
        *m.peer_views.lock().unwrap() = vec![PeerView {
            subnet: "fd00:10:244:2::/64".parse().unwrap(),
            public_ip: "fd00:192::2".parse().unwrap(),
            vtep_mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
            via: "tunnel",
            counters: c,
            counted: true,
        }];
        let s = Sample::parse(&m.render());
        assert_eq!(s.peers()[0].rx_packets, 9);
        let text = render(&s, std::time::UNIX_EPOCH);
        for want in [
            "subnet     none (IPv6-only)",
            "PublicIP   none (IPv6-only)",
            "backend    vxlan (device none for IPv4, MTU 1450)",
            "subnet6    fd00:10:244:1::/64",
            "device6    flannel-v6.1 (MTU 1430)",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }

    #[test]
    fn labels_with_escapes_and_odd_lines() {
        let s =
            Sample::parse("# HELP x y\nx{a=\"1\\\"2\",b=\"\"} 3\nbroken{a=\"1\" 4\ny 7\n\nz{} 1\n");
        assert_eq!(s.labelled("x", "a", "1\"2"), Some(3.0));
        assert_eq!(s.labelled("x", "b", ""), Some(3.0));
        assert_eq!(s.value("y"), Some(7.0));
        assert_eq!(s.value("z"), Some(1.0));
        assert!(!s.metrics.contains_key("broken"));
    }
}
