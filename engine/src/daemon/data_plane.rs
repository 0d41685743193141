//! weft's device and the workers that move its packets: built from the
//! plan at start, watched, and built again from the same plan when someone
//! deletes the device.

use super::plan::DevicePlan;
use crate::control::Programming;
use crate::device::{self, DeviceKind};
use crate::metrics::WorkerStats;
use crate::netlink::Netlink;
use crate::tunnel::{Inner, Tunnel, TunnelConfig};
use crate::udp_io;
use crate::worker::Worker;
use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_routes::ForwardingTable;

/// VXLAN send sockets per worker (outer source ports picked by flow hash).
const VXLAN_TX_SOCKETS: usize = 4;
/// Backoff between tries to recreate a deleted device: 1 s doubling to 30 s.
const RECREATE_FIRST: Duration = Duration::from_secs(1);
const RECREATE_MAX: Duration = Duration::from_secs(30);

/// What a data plane is built from, at start and on every recreation. It
/// carries one family `F`: the pods' and the underlay's.
pub(super) struct DataPlaneSpec<F: Inner = Ipv4Addr> {
    pub device: DevicePlan,
    pub mtu: u32,
    pub port: u16,
    pub programming: Programming,
    pub subnet: F::Net,
    pub public_ip: F,
    pub network: F::Net,
    pub table: Arc<ArcSwap<ForwardingTable<F>>>,
    pub offload: bool,
    pub tuning: crate::tuning::Tuning,
    pub allow_nat_peers: bool,
    /// One per worker, kept across recreations; its length is the number
    /// of workers.
    pub stats: Vec<Arc<WorkerStats>>,
}

/// A device and its workers, running.
pub(super) struct DataPlane<F: Inner = Ipv4Addr> {
    spec: DataPlaneSpec<F>,
    pub index: u32,
    workers: Workers,
    /// Set once the device was found deleted: when, and the next try to
    /// recreate it.
    lost: Option<(std::time::Instant, std::time::Instant)>,
    /// The wait after the next failed try.
    backoff: Duration,
}

/// What one look at the data plane found.
pub(super) enum Tended {
    /// Nothing to do (or nothing that could be done yet).
    Unchanged,
    /// The device was deleted and is back (with a new index).
    Recreated,
}

impl<F: Inner> DataPlane<F> {
    /// Creates the device (one queue per worker), configures it and starts
    /// the workers.
    pub async fn start(nl: &Netlink, spec: DataPlaneSpec<F>) -> anyhow::Result<DataPlane<F>> {
        let (index, workers) = build(nl, &spec).await?;
        Ok(DataPlane {
            spec,
            index,
            workers,
            lost: None,
            backoff: RECREATE_FIRST,
        })
    }

    /// Whether the device is in place (not deleted and awaiting its
    /// recreation).
    pub fn is_up(&self) -> bool {
        self.lost.is_none()
    }

    /// One poll's look: an error when a worker stopped; the device
    /// recreated from the plan when it was deleted and a try is due.
    pub async fn tend(&mut self, nl: &Netlink) -> anyhow::Result<Tended> {
        if let Some((i, r)) = self.workers.finished() {
            bail!("worker {i} stopped: {r:?}");
        }
        let Some(old_index) = self.watch(nl).await else {
            return Ok(Tended::Unchanged);
        };
        let name = &self.spec.device.name;
        match build(nl, &self.spec).await {
            Ok((index, workers)) => {
                tracing::warn!(device = %name, old_index, index, "device recreated; restoring routes");
                self.index = index;
                self.workers = workers;
                self.lost = None;
                self.backoff = RECREATE_FIRST;
                Ok(Tended::Recreated)
            }
            Err(e) => {
                tracing::warn!(device = %name, error = format!("{e:#}"), retry_in = ?self.backoff, "cannot recreate the device");
                self.retry_later();
                Ok(Tended::Unchanged)
            }
        }
    }

    /// Stops the workers and deletes the device (unless it is gone
    /// already), with the udp backend's route for the whole Network.
    pub async fn remove(mut self, nl: &Netlink) {
        self.workers.stop();
        if !self.is_up() {
            return;
        }
        if self.spec.programming == Programming::NetworkRoute {
            let _ = nl.delete_route(self.spec.network.into(), self.index).await;
        }
        // Dropping the queues would delete it too, but only when the last
        // one closes; deleting it here means it is gone before we say we
        // are done.
        if let Err(e) = nl.delete_link(self.index).await {
            tracing::warn!(error = %e, "cannot delete the device");
        }
    }

    /// Stops the workers only (the device stays until `remove`).
    pub fn stop_workers(&mut self) {
        self.workers.stop();
    }

    /// Checks that our device still exists. Once it has been deleted (or
    /// replaced by another link of its name), stops the workers and returns
    /// the old index whenever a try to recreate it is due.
    async fn watch(&mut self, nl: &Netlink) -> Option<u32> {
        let now = std::time::Instant::now();
        let name = &self.spec.device.name;
        if self.lost.is_none() {
            match nl.link(name).await {
                Ok(Some((index, _))) if index == self.index => return None,
                Ok(_) => {
                    tracing::warn!(device = %name, index = self.index, "the device was deleted; recreating it");
                    self.workers.stop();
                    self.lost = Some((now, now));
                    self.backoff = RECREATE_FIRST;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot check the device");
                    return None;
                }
            }
        }
        match self.lost {
            Some((_, next)) if now >= next => Some(self.index),
            _ => None,
        }
    }

    /// Schedules the next try after a failed one, doubling the wait.
    fn retry_later(&mut self) {
        if let Some((_, next)) = self.lost.as_mut() {
            *next = std::time::Instant::now() + self.backoff;
        }
        self.backoff = (self.backoff * 2).min(RECREATE_MAX);
    }
}

/// The worker threads of one device, each owning one of its queues; a
/// guard that stops and joins them when dropped. Whatever drops it (a clean
/// stop, the device found deleted, a start that failed after its first
/// workers were running), no worker outlives its data plane. Once the last
/// queue is closed the kernel deletes the device, which is not persistent,
/// with its addresses and routes.
struct Workers {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Workers {
    fn new() -> Self {
        Workers {
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
        }
    }

    /// Sets the stop flag and waits for every worker: each checks the flag
    /// at least once per poll timeout.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }

    /// A worker that has returned (with the error that ended it), taken out.
    fn finished(&mut self) -> Option<(usize, std::thread::Result<std::io::Result<()>>)> {
        let i = self.handles.iter().position(|h| h.is_finished())?;
        Some((i, self.handles.remove(i).join()))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates and configures the device, and starts its workers: the device's
/// index and the running workers.
async fn build<F: Inner>(nl: &Netlink, spec: &DataPlaneSpec<F>) -> anyhow::Result<(u32, Workers)> {
    let DevicePlan { name, kind, mode } = &spec.device;
    let queues = device::create(
        name,
        *kind,
        spec.stats.len(),
        spec.offload,
        spec.mtu as usize,
    )?;
    let (index, _) = nl
        .link(name)
        .await?
        .with_context(|| format!("device {name} vanished after creation"))?;
    if F::VERSION == 4 {
        disable_ipv6(name);
    }
    let tap_mac = match kind {
        DeviceKind::Tap => spec.device.vtep().map(|v| v.mac),
        DeviceKind::Tun => None,
    };
    nl.configure_link(index, spec.mtu, tap_mac).await?;
    // `<subnet>.0/32`, `<subnet>::/128`, as flanneld addresses its devices.
    let local = F::network(&spec.subnet);
    nl.add_address(index, local.into(), F::BITS).await?;
    if spec.programming == Programming::NetworkRoute {
        // weft replaces only its own routes: a Network that the kernel
        // routes already (the LAN's own prefix, the default route's
        // 0.0.0.0/0, a static route) would be taken from under the host.
        let routes = nl.main_routes().await?;
        if let Some(r) = routes
            .iter()
            .find(|r| r.dst == spec.network.into() && !r.ours)
        {
            bail!(
                "refusing to route the Network {} into {name}: the kernel routes it already with a route weft did not install ({}); \
                 the udp backend routes the whole Network into its device, which would replace that route. \
                 Choose a Network that no interface or route of this host uses",
                spec.network,
                describe_route(r)
            );
        }
        nl.replace_route(spec.network.into(), index, None, false)
            .await?;
    }
    // From here on, returning early stops the workers already started.
    let mut workers = Workers::new();
    let tuning = spec.tuning;
    for (id, (queue, s)) in queues.into_iter().zip(&spec.stats).enumerate() {
        let any = F::socket_addr(F::UNSPECIFIED, spec.port);
        let socket = udp_io::bind(any, true, tuning.socket_buffers)
            .with_context(|| format!("cannot bind UDP port {}", spec.port))?;
        let tx_sockets = if spec.device.vtep().is_some() {
            let n = if tuning.flow_ports {
                VXLAN_TX_SOCKETS
            } else {
                1
            };
            (0..n)
                .map(|_| bind_tx(spec.public_ip, tuning.socket_buffers))
                .collect::<std::io::Result<Vec<_>>>()
                .context("cannot open VXLAN send sockets")?
        } else {
            Vec::new()
        };
        let tunnel = Tunnel::new(TunnelConfig {
            mode: *mode,
            local,
            gateway: F::network(&spec.network),
            subnet: spec.subnet,
            allow_nat_peers: spec.allow_nat_peers,
            mtu: spec.mtu as usize,
            send_sockets: tx_sockets.len(),
        });
        let w = Worker {
            id,
            tunnel,
            queue,
            socket,
            tx_sockets,
            tuning,
            table: spec.table.clone(),
            stats: s.clone(),
            stop: workers.stop.clone(),
        };
        workers.handles.push(
            std::thread::Builder::new()
                .name(format!("weft-worker-{id}"))
                .spawn(move || w.run())
                .context("cannot spawn a worker thread")?,
        );
    }
    Ok((index, workers))
}

/// A route as `ip route` would show its gist.
fn describe_route(r: &crate::netlink::RouteEntry) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = r.oif {
        s += &format!(" dev index {oif}");
    }
    s
}

/// Turns IPv6 off on our IPv4 device: IPv6 pods have a device of their
/// own, and without this the kernel sends router solicitations and MLD
/// reports into it. Best effort: a kernel without IPv6 has nothing to turn
/// off.
fn disable_ipv6(device: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(path, error = %e, "cannot disable IPv6 on the device");
    }
}

/// A send socket on an ephemeral port, sourced from our PublicIP (or
/// PublicIPv6) when it is a local address (it is not behind NAT).
fn bind_tx<F: Inner>(public_ip: F, big_buffers: bool) -> std::io::Result<UdpSocket> {
    udp_io::bind(F::socket_addr(public_ip, 0), false, big_buffers)
        .or_else(|_| udp_io::bind(F::socket_addr(F::UNSPECIFIED, 0), false, big_buffers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A start that fails after its first workers are running (the second
    /// socket cannot be bound, say) leaves none of them running: they would
    /// keep the device's queues open and forward with a stale table.
    #[test]
    fn workers_stop_when_a_start_fails_half_way() {
        let exited = Arc::new(AtomicUsize::new(0));
        let start = |exited: Arc<AtomicUsize>| -> anyhow::Result<Workers> {
            let mut workers = Workers::new();
            for _ in 0..2 {
                let stop = workers.stop.clone();
                let exited = exited.clone();
                workers.handles.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    exited.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }));
            }
            bail!("cannot bind UDP port 8472")
        };
        assert!(start(exited.clone()).is_err());
        assert_eq!(exited.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_finished_worker_is_reported_with_its_error() {
        let mut workers = Workers::new();
        workers
            .handles
            .push(std::thread::spawn(|| Err(std::io::Error::other("epoll"))));
        let stop = workers.stop.clone();
        workers.handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (i, r) = loop {
            if let Some(f) = workers.finished() {
                break f;
            }
            assert!(std::time::Instant::now() < deadline, "no worker finished");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(i, 0);
        assert_eq!(r.unwrap().unwrap_err().to_string(), "epoll");
        assert_eq!(workers.handles.len(), 1);
    }
}
