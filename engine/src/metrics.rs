//! Counters and the Prometheus endpoint.
//!
//! Each worker owns one `WorkerStats` and is its only writer: it adds a
//! batch's counts once per batch with plain relaxed load+store (no locked
//! read-modify-write), and the scraper sums the workers.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use weft_encap::{DropReason, MacAddr};
use weft_routes::{PeerCounters, Rejection, SubnetKey};

/// The OS errors counted by name in `weft_os_errors_total`; any other is
/// counted as "other".
pub const ERRNOS: [(i32, &str); 9] = [
    (libc::ECONNREFUSED, "ECONNREFUSED"),
    (libc::ENOBUFS, "ENOBUFS"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::EMSGSIZE, "EMSGSIZE"),
    (libc::EPERM, "EPERM"),
    (libc::ENETUNREACH, "ENETUNREACH"),
    (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    (libc::EIO, "EIO"),
    (libc::EBADFD, "EBADFD"),
];
/// Counter slots for OS errors: the named ones, then "other".
pub const ERRNO_SLOTS: usize = ERRNOS.len() + 1;

/// The counter slot of an OS error.
#[inline]
pub fn errno_slot(e: Option<i32>) -> usize {
    e.and_then(|e| ERRNOS.iter().position(|(n, _)| *n == e))
        .unwrap_or(ERRNOS.len())
}

/// Calls that failed, by OS error: what a batch send (`udp_io::Sender`)
/// or a device write (`Queue::write_batch`) reports, for the worker to
/// count with `BatchStats::failed`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Failures {
    /// Packets lost to the failed calls.
    pub packets: u64,
    /// Those packets by `errno_slot`.
    pub by_errno: [u64; ERRNO_SLOTS],
    /// The last OS error, for the log.
    pub last: Option<i32>,
}

impl Failures {
    /// Records `packets` lost to OS error `errno`.
    #[inline]
    pub fn record(&mut self, errno: Option<i32>, packets: u64) {
        self.packets += packets;
        self.by_errno[errno_slot(errno)] += packets;
        self.last = errno.or(self.last);
    }

    /// Adds another call's failures.
    pub fn add(&mut self, o: &Failures) {
        self.packets += o.packets;
        for (c, n) in self.by_errno.iter_mut().zip(o.by_errno) {
            *c += n;
        }
        self.last = o.last.or(self.last);
    }
}

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
    /// `weft_lease_expiry_seconds`.
    pub const LEASE_EXPIRY: &str = "weft_lease_expiry_seconds";
    /// `weft_ready`.
    pub const READY: &str = "weft_ready";
    /// `weft_leases_rejected_total`.
    pub const LEASES_REJECTED: &str = "weft_leases_rejected_total";
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
    /// Its subnet.
    pub subnet: ipnet::Ipv4Net,
    /// Its PublicIP.
    pub public_ip: std::net::Ipv4Addr,
    /// Its VtepMAC (vxlan).
    pub vtep_mac: Option<MacAddr>,
    /// How it is reached: "tunnel", "direct" or "unreachable".
    pub via: &'static str,
    /// Its traffic.
    pub counters: Arc<PeerCounters>,
}

/// A lease weft refuses, as `/metrics` shows it.
pub struct RejectedView {
    /// Its registry key.
    pub key: SubnetKey,
    /// Its holder's name (the Node, in Kubernetes), else empty.
    pub node: String,
    /// The PublicIP it claims.
    pub public_ip: std::net::Ipv4Addr,
    /// Why it is refused.
    pub reason: Rejection,
}

/// This node, as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Our subnet.
    pub subnet: ipnet::Ipv4Net,
    /// Our PublicIP.
    pub public_ip: std::net::Ipv4Addr,
    /// The backend's name as flannel spells it ("udp", "vxlan", "host-gw").
    pub backend: &'static str,
    /// weft's device ("" for host-gw).
    pub device: String,
    /// The MTU in subnet.env.
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
                n.subnet,
                n.public_ip,
                n.backend,
                n.device,
                n.mtu
            );
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
        family(
            s,
            name::LEASES_REJECTED,
            "counter",
            "Peer leases refused, by reason, counted once per change of a lease.",
        );
        for r in Rejection::ALL {
            let _ = writeln!(
                s,
                "{}{{reason=\"{}\"}} {}",
                name::LEASES_REJECTED,
                r.label(),
                self.leases_rejected[r.index()].load(Relaxed)
            );
        }
        family(
            s,
            name::LEASE_REJECTED,
            "gauge",
            "A lease refused now: its key, its holder's name (the Node, in Kubernetes), the PublicIP it claims and why.",
        );
        let views = self
            .rejected_views
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for v in views.iter() {
            let _ = writeln!(
                s,
                "{}{{key=\"{}\",node=\"{}\",public_ip=\"{}\",reason=\"{}\"}} 1",
                name::LEASE_REJECTED,
                v.key,
                escape(&v.node),
                v.public_ip,
                v.reason
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
            for v in views.iter() {
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

/// Connections `serve` holds at once; a new one beyond them closes the
/// oldest.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request, and to take the answer.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task
/// is dropped. A slow or broken client only ever holds its own connection,
/// for at most `CLIENT_TIMEOUT` each way, and at most `MAX_CONNECTIONS`
/// are held at once: a flood of connections cannot exhaust memory or file
/// descriptors. When all are held, a new connection closes the oldest,
/// never itself: whoever keeps connections open cannot lock the kubelet's
/// liveness probe out (which would restart weft, and every restart removes
/// the routes), because the probe's connection is always the newest and
/// is answered at once.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    serve_paths(listener, metrics, true).await
}

/// `serve` with `/healthz` and `/readyz` only, for flanneld's
/// `--healthz-ip`/`--healthz-port`, which listens on every address by
/// default: the counters stay on the metrics address.
pub async fn serve_health(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    serve_paths(listener, metrics, false).await
}

async fn serve_paths(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, with_metrics: bool) {
    // The connections being served, oldest first.
    let mut held = std::collections::VecDeque::<tokio::task::AbortHandle>::new();
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        held.retain(|h| !h.is_finished());
        if held.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = held.pop_front() {
                oldest.abort();
            }
        }
        let metrics = metrics.clone();
        let task = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = respond(&metrics, req.uri().path(), with_metrics);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .keep_alive(false);
            let served = http.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            // The request has `CLIENT_TIMEOUT` to arrive (the header read
            // timeout), the answer as long again to be taken.
            let _ = tokio::time::timeout(2 * CLIENT_TIMEOUT, served).await;
        });
        held.push_back(task.abort_handle());
        // Let the new connection be read and answered before the next
        // accept: a backlog of connections accepted in one go would
        // otherwise close it before it was ever polled.
        tokio::task::yield_now().await;
    }
}

/// The answer to a request for `path`.
fn respond(metrics: &Metrics, path: &str, with_metrics: bool) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" if with_metrics => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if metrics.ready.load(Relaxed) => {
            (StatusCode::OK, "text/plain", "ready\n".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attacker holds twice `MAX_CONNECTIONS` idle connections open,
    /// reopening each one the server closes; the liveness probe (a new
    /// connection each time, as the kubelet's) is answered every time.
    #[test]
    fn idle_connections_cannot_starve_the_health_probe() {
        use std::io::{Read, Write};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            rt.block_on(async move {
                let serving = tokio::spawn(serve_health(listener, metrics));
                let _ = finished.await;
                serving.abort();
            })
        });
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut conns: Vec<std::net::TcpStream> = Vec::new();
                let mut opened = 0u64;
                while !stop.load(Relaxed) {
                    // Drop what the server closed (a read of 0 bytes), then
                    // top up to 64 open connections.
                    conns.retain(|c| {
                        c.set_nonblocking(true).unwrap();
                        let idle = (&*c).read(&mut [0u8; 1]);
                        matches!(idle, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    });
                    while conns.len() < 2 * MAX_CONNECTIONS {
                        conns.push(std::net::TcpStream::connect(addr).unwrap());
                        opened += 1;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                opened
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        for i in 0..20 {
            let mut probe = std::net::TcpStream::connect(addr).unwrap();
            probe
                .set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .unwrap();
            probe
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = probe.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 200"), "probe {i}: {answer:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        stop.store(true, Relaxed);
        let opened = attacker.join().unwrap();
        // The attacker really held the server full: it had to reopen
        // connections the server closed to make room for the probes.
        assert!(opened > 2 * MAX_CONNECTIONS as u64, "{opened}");
        let _ = done.send(());
        server.join().unwrap();
    }

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
        }];
        *m.rejected_views.lock().unwrap() = vec![RejectedView {
            key: "10.244.9.0-24".parse().unwrap(),
            node: "node-\"9\"\\".into(),
            public_ip: [192, 0, 2, 9].into(),
            reason: Rejection::ALL[0],
        }];
        let _ = m.node.set(NodeView {
            subnet: "10.244.1.0/24".parse().unwrap(),
            public_ip: [192, 0, 2, 1].into(),
            backend: "vxlan",
            device: "flannel.1".into(),
            mtu: 1450,
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
            name::LEASE_EXPIRY,
            name::READY,
            name::LEASES_REJECTED,
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
