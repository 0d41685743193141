//! The data-path worker: one thread that owns one device queue, its sockets
//! and its buffers, and moves packets in batches both ways.
//!
//! Per wakeup it alternates one batch from the device (encapsulate, then one
//! `sendmmsg`) and one batch from the socket (one `recvmmsg`, decapsulate,
//! write to the device) until both are drained, so neither direction can
//! starve the other. The forwarding table is an immutable snapshot loaded
//! once per batch; nothing on this path locks or allocates.

use crate::bufs::PacketBufs;
use crate::device::Queue;
use crate::device::VIRTIO_NET_HDR_LEN;
use crate::metrics::{BatchStats, WorkerStats};
use crate::udp_io::{OutMsg, Receiver, Sender};
use arc_swap::ArcSwap;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_encap::ethernet::{self, Frame};
use weft_encap::icmp::{self, ErrorKind};
use weft_encap::ipv4::Packet;
use weft_encap::{flow, gro, l4, udp, vxlan, DropReason, HEADROOM};
use weft_routes::{Direction, ForwardingTable, PeerId, PeerTally};

/// Packets per batch in each direction.
pub const BATCH: usize = 64;
/// Packet slots on the device-read side with offloads: one 64 KiB TCP
/// super-packet splits into up to ~47 MTU-sized packets (more with a small
/// MSS), so reads go on while this many slots are free.
const SPLIT_ROOM: usize = 128;
/// Slots on the device-read side with offloads: a few super-packets each.
const OFFLOAD_SLOTS: usize = 256;
/// With offloads, where received datagrams start in their buffers.
const RX_OFFSET: usize = 0;
/// Receive buffers with offloads hold a UDP GRO run: up to 64 KiB.
const RX_CAP: usize = 65536;
/// Inner packets tracked per receive batch with offloads (a batch of GRO
/// runs); more are written out in several rounds.
const INNER_SLOTS: usize = 1024;

const DEVICE: Token = Token(0);
const SOCKET: Token = Token(1);

/// What the worker does with packets.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// flannel's udp backend on a TUN device.
    Udp,
    /// VXLAN on an L3 TUN device: weft writes the inner Ethernet header.
    VxlanTun(vxlan::Endpoint),
    /// VXLAN on an Ethernet TAP device: frames carry their own header.
    VxlanTap(vxlan::Endpoint),
}

/// Everything a worker owns.
pub struct Worker {
    /// Worker number, for logs.
    pub id: usize,
    /// The mode.
    pub mode: Mode,
    /// Our tunnel address (`<subnet>.0`): the source of ICMP errors sent to
    /// peers.
    pub local: Ipv4Addr,
    /// The source of ICMP errors written into our own device: the Network's
    /// first address, which no node holds. An error from a local address
    /// (as flannel's proxy sends it) is dropped by the kernel as a martian.
    pub gateway: Ipv4Addr,
    /// Our subnet: inner destinations of received packets must lie in it.
    pub subnet: ipnet::Ipv4Net,
    /// Accept encapsulated traffic from any outer source whose inner
    /// source lies in some lease's subnet (peers behind NAT).
    pub allow_nat_peers: bool,
    /// Device MTU; larger received packets are dropped as oversize.
    pub mtu: usize,
    /// Our device queue.
    pub queue: Queue,
    /// The socket bound to the backend port: receives, and sends for udp.
    pub socket: UdpSocket,
    /// VXLAN send sockets on ephemeral ports, picked by flow hash so each
    /// inner flow keeps one outer source port and flows spread across ports.
    pub tx_sockets: Vec<UdpSocket>,
    /// The forwarding table snapshot.
    pub table: Arc<ArcSwap<ForwardingTable>>,
    /// Our counters.
    pub stats: Arc<WorkerStats>,
    /// Set to stop the loop.
    pub stop: Arc<AtomicBool>,
}

/// A log line at most once per second per kind, with a count of the rest.
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    const fn new() -> Self {
        RateLimited {
            last: None,
            suppressed: 0,
        }
    }

    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The budget for ICMP errors weft generates, a token bucket like the
/// kernel's `icmp_ratelimit`/`icmp_msgs_per_sec`: `RATE` a second with
/// bursts of `BURST`, per worker. A flood of expired or unroutable packets
/// must not turn weft into an ICMP amplifier.
struct IcmpBudget {
    tokens: u32,
    last: Instant,
}

impl IcmpBudget {
    const RATE: u32 = 1000;
    const BURST: u32 = 50;

    fn new() -> Self {
        IcmpBudget {
            tokens: Self::BURST,
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self) -> bool {
        if self.tokens == 0 {
            let now = Instant::now();
            let earned =
                now.duration_since(self.last).as_micros() * u128::from(Self::RATE) / 1_000_000;
            if earned == 0 {
                return false;
            }
            self.tokens = earned.min(u128::from(Self::BURST)) as u32;
            self.last = now;
        }
        self.tokens -= 1;
        true
    }
}

/// One inner packet waiting in a received buffer: which buffer, where,
/// for a super-packet its vnet header's index in `gso_hdrs` plus one (0
/// for an ordinary packet), the sender, and how far `settle` got: its L4
/// checksum verified already, the entry counted, or dropped.
#[derive(Clone, Copy)]
struct Inner {
    buf: u32,
    start: u32,
    end: u32,
    gso: u32,
    peer: Option<PeerId>,
    checked: bool,
    settled: bool,
    dead: bool,
}

/// The bytes of entry `e` in the receive buffers.
#[inline]
fn entry(rx_vecs: &[Vec<u8>], e: Inner) -> &[u8] {
    &rx_vecs[e.buf as usize][e.start as usize..e.end as usize]
}

struct State {
    txbufs: PacketBufs,
    rxbufs: PacketBufs,
    /// With offloads: the device read buffer (virtio_net_hdr + 64 KiB).
    vnet_in: Vec<u8>,
    /// With offloads: the size of each packet split into `txbufs`.
    sizes: Vec<usize>,
    /// With offloads: receive buffers for UDP GRO runs, where each inner
    /// packet sits after decapsulation (buffer, start, end), and the
    /// scratch for a merged packet's headers.
    rx_vecs: Vec<Vec<u8>>,
    inner: Vec<Inner>,
    /// With offloads: the vnet headers of the super-packets in `inner`.
    gso_hdrs: Vec<[u8; gro::VNET_HDR_LEN]>,
    /// Without offloads: a received super-packet cut into device-sized
    /// packets.
    split: PacketBufs,
    split_sizes: Vec<usize>,
    gro_hdr: [u8; gro::SUPER_HEADER_MAX],
    out: Vec<OutMsg>,
    /// Socket index of each entry of `out` (VXLAN only).
    out_sock: Vec<u8>,
    grouped: Vec<OutMsg>,
    receiver: Receiver,
    sender: Sender,
    scratch: [u8; icmp::MAX_ERROR_LEN],
    icmp_budget: IcmpBudget,
    batch: BatchStats,
    /// Per-peer counts for the batch in progress, flushed before the
    /// table snapshot they index is let go.
    rx_peer: PeerTally,
    tx_peer: PeerTally,
    send_log: RateLimited,
    device_log: RateLimited,
}

impl Worker {
    /// Runs until `stop` is set. Errors only if the poller cannot be set up.
    pub fn run(self) -> io::Result<()> {
        let mut poll = Poll::new()?;
        let dev_fd = self.queue.as_raw_fd();
        let sock_fd = self.socket.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&dev_fd), DEVICE, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&sock_fd), SOCKET, Interest::READABLE)?;
        // Room for the largest datagram the underlay carries, plus a frame
        // header; larger datagrams are detected with MSG_TRUNC and dropped.
        let payload = self.mtu + vxlan::IPV4_OVERHEAD + ethernet::HEADER_LEN;
        let offload = self.queue.offload();
        let tuning = crate::tuning::get();
        if offload && tuning.gro && !crate::udp_io::enable_gro(&self.socket) {
            tracing::info!(
                worker = self.id,
                "the kernel has no UDP GRO; receiving datagrams one by one"
            );
        }
        let mut st = State {
            txbufs: PacketBufs::new(if offload { OFFLOAD_SLOTS } else { BATCH }, payload),
            // Room for a kernel peer's unsegmented super-datagram.
            rxbufs: PacketBufs::new(if offload { 0 } else { BATCH }, RX_CAP),
            vnet_in: vec![
                0;
                if offload {
                    VIRTIO_NET_HDR_LEN + 65536
                } else {
                    0
                }
            ],
            sizes: vec![0; if offload { OFFLOAD_SLOTS } else { 0 }],
            rx_vecs: (0..if offload { BATCH } else { 0 })
                .map(|_| vec![0; RX_CAP])
                .collect(),
            inner: Vec::with_capacity(if offload { INNER_SLOTS } else { 0 }),
            gso_hdrs: Vec::with_capacity(if offload { INNER_SLOTS } else { 0 }),
            split: PacketBufs::new(if offload { 0 } else { SPLIT_ROOM }, payload),
            split_sizes: vec![0; if offload { 0 } else { SPLIT_ROOM }],
            gro_hdr: [0; gro::SUPER_HEADER_MAX],
            out: Vec::with_capacity(OFFLOAD_SLOTS),
            out_sock: Vec::with_capacity(OFFLOAD_SLOTS),
            grouped: Vec::with_capacity(OFFLOAD_SLOTS),
            receiver: Receiver::new(if tuning.mmsg { BATCH } else { 1 }),
            sender: Sender::new(OFFLOAD_SLOTS, offload && tuning.gso),
            scratch: [0; icmp::MAX_ERROR_LEN],
            icmp_budget: IcmpBudget::new(),
            batch: BatchStats::default(),
            rx_peer: PeerTally::default(),
            tx_peer: PeerTally::default(),
            send_log: RateLimited::new(),
            device_log: RateLimited::new(),
        };
        let mut events = Events::with_capacity(16);
        // Edge-triggered: a side stays "ready" until a read finds it empty.
        let (mut dev_ready, mut sock_ready) = (true, true);
        while !self.stop.load(Ordering::Relaxed) {
            if !dev_ready && !sock_ready {
                match poll.poll(&mut events, Some(Duration::from_millis(200))) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                for ev in events.iter() {
                    match ev.token() {
                        DEVICE => dev_ready = true,
                        _ => sock_ready = true,
                    }
                }
                continue;
            }
            if dev_ready {
                dev_ready = if offload {
                    self.device_to_peers_offload(&mut st)
                } else {
                    self.device_to_peers(&mut st)
                };
            }
            if sock_ready {
                sock_ready = if offload {
                    self.peers_to_device_offload(&mut st)
                } else {
                    self.peers_to_device(&mut st)
                };
            }
            st.batch.flush(&self.stats);
        }
        Ok(())
    }

    /// Reads a batch from the device, encapsulates and sends it. Returns
    /// true when the batch was full (more may be waiting).
    fn device_to_peers(&self, st: &mut State) -> bool {
        let table = self.table.load();
        st.out.clear();
        st.out_sock.clear();
        let mut n = 0;
        let mut more = false;
        while n < BATCH {
            let slot = st.txbufs.slot_mut(n);
            let len = match self.queue.recv(&mut slot[HEADROOM..]) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.device_error(st, "read", &e);
                    break;
                }
            };
            self.stage(st, &table, n, HEADROOM..HEADROOM + len);
            n += 1;
            more = n == BATCH;
        }
        st.tx_peer.flush(&table, Direction::Tx);
        self.send_batch(st);
        more
    }

    /// `device_to_peers` with offloads: each read returns a super-packet,
    /// split into MTU-sized packets with complete checksums; reads go on
    /// while `SPLIT_ROOM` slots are free, and the sends use UDP GSO.
    fn device_to_peers_offload(&self, st: &mut State) -> bool {
        let table = self.table.load();
        st.out.clear();
        st.out_sock.clear();
        let mut n = 0;
        let mut more = false;
        let tap = matches!(self.mode, Mode::VxlanTap(_));
        while n + SPLIT_ROOM <= st.txbufs.count() {
            let (slots, sizes) = (st.txbufs.slots_mut(n), &mut st.sizes[n..]);
            let read = if tap {
                self.queue
                    .recv_frames(&mut st.vnet_in, slots, sizes, HEADROOM)
            } else {
                self.queue
                    .recv_multiple(&mut st.vnet_in, slots, sizes, HEADROOM)
            };
            let k = match read {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A super-packet the splitter refuses (too many segments,
                // bad header): drop it, keep reading.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput || e.raw_os_error().is_none() => {
                    st.batch.drop(DropReason::DeviceError);
                    if let Some(suppressed) = st.device_log.allow() {
                        tracing::warn!(worker = self.id, suppressed, error = %e, "cannot split a packet from the device");
                    }
                    continue;
                }
                Err(e) => {
                    self.device_error(st, "read", &e);
                    break;
                }
            };
            for j in n..n + k {
                self.stage(st, &table, j, HEADROOM..HEADROOM + st.sizes[j]);
            }
            n += k;
            more = n + SPLIT_ROOM > st.txbufs.count();
        }
        st.tx_peer.flush(&table, Direction::Tx);
        self.send_batch(st);
        more
    }

    /// `peers_to_device` with offloads. The socket runs UDP GRO, so one
    /// received buffer can hold a run of datagrams from one peer. Each is
    /// decapsulated in place; then runs of one TCP flow are written to the
    /// device as one super-packet (`gro`), their payloads gathered from
    /// where they were received: no copy in userspace.
    fn peers_to_device_offload(&self, st: &mut State) -> bool {
        let n = match st
            .receiver
            .recv_into(&self.socket, &mut st.rx_vecs, RX_OFFSET)
        {
            Ok(n) => n,
            Err(e) => return self.receive_error(st, &e),
        };
        let max_datagram = self.mtu + vxlan::IPV4_OVERHEAD + ethernet::HEADER_LEN;
        let table = self.table.load();
        st.inner.clear();
        for i in 0..n {
            let meta = st.receiver.meta[i];
            if meta.truncated {
                st.batch.drop(DropReason::Oversize);
                continue;
            }
            let whole = self.super_datagram(&st.rx_vecs[i][RX_OFFSET..RX_OFFSET + meta.len]);
            let seg = if meta.segment == 0 || whole {
                meta.len
            } else {
                meta.segment
            };
            let mut off = 0;
            while off < meta.len {
                let len = seg.min(meta.len - off);
                let at = RX_OFFSET + off;
                off += len;
                if len > max_datagram && !whole {
                    st.batch.drop(DropReason::Oversize);
                    continue;
                }
                let Some((inner, peer)) =
                    self.decapsulate_offload(st, &table, i, at..at + len, meta.src)
                else {
                    continue;
                };
                if st.inner.len() == INNER_SLOTS {
                    self.write_runs(st, &table);
                    st.inner.clear();
                    st.gso_hdrs.clear();
                }
                let (start, end) = (at + inner.start, at + inner.end);
                let mut gso = 0;
                if whole {
                    // Checked now: its vnet header hands the checksum to
                    // the kernel. The inner MSS is the GRO segment size
                    // the kernel reports for a tunnel super-datagram.
                    let l2 = self.l2_len();
                    let ip = &mut st.rx_vecs[i][start + l2..end];
                    match l4::verify_or_complete(ip) {
                        Ok(l4::Verdict::Completed) => st.batch.checksum_completed(),
                        Ok(_) => {}
                        Err(r) => {
                            st.batch.drop(r);
                            continue;
                        }
                    }
                    match gro::gso_header(l2, ip, meta.segment, self.mtu) {
                        Some(h) => {
                            st.gso_hdrs.push(h);
                            gso = st.gso_hdrs.len() as u32;
                        }
                        None => {
                            st.batch.drop(DropReason::Oversize);
                            continue;
                        }
                    }
                }
                st.inner.push(Inner {
                    buf: i as u32,
                    start: start as u32,
                    end: end as u32,
                    gso,
                    peer,
                    checked: whole,
                    settled: false,
                    dead: false,
                });
            }
        }
        self.write_runs(st, &table);
        st.gso_hdrs.clear();
        st.rx_peer.flush(&table, Direction::Rx);
        n == st.receiver.capacity()
    }

    /// True when `datagram` is one datagram longer than the underlay MTU
    /// that carries exactly one whole inner IPv4 packet: a kernel peer's
    /// TCP super-packet, sent unsegmented across a veth or virtio link
    /// (see `vxlan::carried_len`), not a UDP GRO run.
    fn super_datagram(&self, datagram: &[u8]) -> bool {
        let max = self.mtu + vxlan::IPV4_OVERHEAD + ethernet::HEADER_LEN;
        let carried = match self.mode {
            Mode::Udp => return false,
            Mode::VxlanTun(_) | Mode::VxlanTap(_) => vxlan::carried_len(datagram),
        };
        datagram.len() > max && carried == Some(datagram.len())
    }

    /// Bytes of link-layer header in front of each IP packet on the device.
    fn l2_len(&self) -> usize {
        match self.mode {
            Mode::VxlanTap(_) => ethernet::HEADER_LEN,
            _ => 0,
        }
    }

    /// Decapsulates the datagram at `rx_vecs[i][range]` in place; returns
    /// the range of what goes to the device (the inner IP packet, or for a
    /// TAP the inner frame) and the sending peer (none for an accepted NAT
    /// peer), or counts the drop.
    fn decapsulate_offload(
        &self,
        st: &mut State,
        table: &ForwardingTable,
        i: usize,
        range: std::ops::Range<usize>,
        src: SocketAddrV4,
    ) -> Option<(std::ops::Range<usize>, Option<PeerId>)> {
        let datagram = &mut st.rx_vecs[i][range.clone()];
        // (what goes to the device, the inner IP packet)
        let r = match self.mode {
            Mode::Udp => {
                if datagram.len() > self.mtu {
                    Err(DropReason::Oversize)
                } else {
                    udp::decapsulate(datagram).map(|len| (0..len, 0..len))
                }
            }
            Mode::VxlanTun(ep) => ep
                .decapsulate(datagram)
                .map(|inner| (inner.ip.clone(), inner.ip)),
            Mode::VxlanTap(ep) => ep
                .decapsulate(datagram)
                .map(|inner| (inner.frame, inner.ip)),
        };
        // The L4 checksum is checked later, in `write_runs`, right before
        // the packet is written: its bytes are then still in cache for the
        // kernel's copy.
        let r = r.and_then(|(deliver, ip)| {
            let ip = range.start + ip.start..range.start + ip.end;
            self.authorize(table, *src.ip(), &st.rx_vecs[i][ip])
                .map(|peer| (deliver, peer))
        });
        match r {
            Ok(r) => Some(r),
            Err(DropReason::TtlExpired) => {
                // Answer only lease holders we accept: never reflect.
                let v = std::mem::take(&mut st.rx_vecs[i]);
                match self.authorize(table, *src.ip(), &v[range.clone()]) {
                    Ok(peer) => {
                        if peer.is_some() {
                            self.icmp_to_peer_from(st, &v[range], src);
                        }
                        st.batch.drop(DropReason::TtlExpired);
                    }
                    Err(r) => st.batch.drop(r),
                }
                st.rx_vecs[i] = v;
                None
            }
            Err(r) => {
                st.batch.drop(r);
                None
            }
        }
    }

    /// Everything a received inner packet must pass before it reaches the
    /// device: `authorize`, then its TCP or UDP checksum, completed in
    /// place when a kernel peer left it partial (`l4`).
    #[inline]
    fn admit(
        &self,
        table: &ForwardingTable,
        from: Ipv4Addr,
        ip: &mut [u8],
    ) -> Result<(Option<PeerId>, l4::Verdict), DropReason> {
        let peer = self.authorize(table, from, ip)?;
        Ok((peer, l4::verify_or_complete(ip)?))
    }

    /// Source authentication, before anything reaches the device: the outer
    /// source must hold a lease (unless `allow_nat_peers`), the inner
    /// source must lie in that node's subnet (with `allow_nat_peers`: in
    /// some node's), and the inner destination in ours, and not be our
    /// subnet's broadcast address or multicast. IPv6 inner packets are
    /// dropped: there is no IPv6 overlay to authenticate them against.
    /// `ip` is the inner packet, an IPv4 header the decapsulator checked.
    /// Returns the sender, when it holds a lease.
    #[inline]
    fn authorize(
        &self,
        table: &ForwardingTable,
        from: Ipv4Addr,
        ip: &[u8],
    ) -> Result<Option<PeerId>, DropReason> {
        let entry = table.sender_entry(from);
        if entry.is_none() && !self.allow_nat_peers {
            return Err(DropReason::UnknownSender);
        }
        let (sender, id) = match entry {
            Some((net, id)) => (Some(net), Some(id)),
            None => (None, None),
        };
        if ip.first().is_some_and(|b| b >> 4 == 6) {
            return Err(DropReason::Ipv6Unsupported);
        }
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return Ok(id);
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let src_ok = match sender {
            Some(net) => net.contains(&src),
            None => table.is_sender_subnet(src),
        };
        if !src_ok {
            return Err(DropReason::SpoofedSource);
        }
        // Our `.0` stays: it is the device's own address, the source the
        // kernel picks for this host's traffic to remote pods, so replies
        // come back to it (as they do with flannel).
        if !self.subnet.contains(&dst) || dst == self.subnet.broadcast() || dst.is_multicast() {
            return Err(DropReason::NotForUs);
        }
        Ok(id)
    }

    /// Writes the inner packets in `st.inner` to the device, each run of
    /// mergeable TCP segments as one super-packet. On a TAP each entry is a
    /// frame: frames merge only behind identical Ethernet headers, and the
    /// super-packet goes behind the first one's. Each entry's L4 checksum
    /// is checked (`settle`) just before the run that holds it is built.
    fn write_runs(&self, st: &mut State, table: &ForwardingTable) {
        const EMPTY_VNET_HDR: [u8; gro::VNET_HDR_LEN] = [0; gro::VNET_HDR_LEN];
        let l2 = self.l2_len();
        // The IP packet inside an entry (a frame on a TAP).
        fn behind(p: &[u8], l2: usize) -> &[u8] {
            p.get(l2..).unwrap_or(&[])
        }
        let mut k = 0;
        // The next packet's Segment, when the previous run already parsed it.
        let mut next_seg: Option<Option<gro::Segment>> = None;
        while k < st.inner.len() {
            if !self.settle(st, table, k) {
                k += 1;
                continue;
            }
            if let Some(h) = st.inner[k].gso.checked_sub(1) {
                // A super-packet goes as it came, behind its own header.
                let iov = [
                    io::IoSlice::new(&st.gso_hdrs[h as usize]),
                    io::IoSlice::new(entry(&st.rx_vecs, st.inner[k])),
                ];
                self.write_device(&iov, &mut st.batch, &mut st.device_log);
                k += 1;
                continue;
            }
            let seg = next_seg.take().unwrap_or_else(|| {
                gro::segment_unverified(behind(entry(&st.rx_vecs, st.inner[k]), l2))
            });
            let mut end = k + 1;
            let mut run = seg.map(gro::Run::new);
            if let Some(run) = run.as_mut() {
                while end < st.inner.len() && st.inner[end].gso == 0 {
                    if !self.settle(st, table, end) {
                        break;
                    }
                    let (first, last, p) = (
                        entry(&st.rx_vecs, st.inner[k]),
                        entry(&st.rx_vecs, st.inner[end - 1]),
                        entry(&st.rx_vecs, st.inner[end]),
                    );
                    let sp = gro::segment_unverified(behind(p, l2));
                    match sp {
                        Some(sn)
                            if p.get(..l2) == first.get(..l2)
                                && run.push(behind(last, l2), sn, behind(p, l2)) =>
                        {
                            end += 1;
                        }
                        _ => {
                            next_seg = Some(sp);
                            break;
                        }
                    }
                }
            }
            let first = entry(&st.rx_vecs, st.inner[k]);
            let mut iov = [io::IoSlice::new(&[]); 2 + gro::MAX_SEGMENTS];
            let parts = match (run, seg) {
                (Some(run), Some(s)) => {
                    let eth = first.get(..l2).unwrap_or(&[]);
                    let h = run.super_header_after(eth, behind(first, l2), &mut st.gro_hdr);
                    iov[0] = io::IoSlice::new(&st.gro_hdr[..h]);
                    if run.count() == 1 {
                        iov[1] = io::IoSlice::new(first);
                        2
                    } else {
                        let hl = l2 + s.header_len();
                        for (j, m) in (k..end).enumerate() {
                            iov[1 + j] = io::IoSlice::new(&entry(&st.rx_vecs, st.inner[m])[hl..]);
                        }
                        1 + (end - k)
                    }
                }
                _ => {
                    iov[0] = io::IoSlice::new(&EMPTY_VNET_HDR);
                    iov[1] = io::IoSlice::new(first);
                    2
                }
            };
            self.write_device(&iov[..parts], &mut st.batch, &mut st.device_log);
            k = end;
        }
    }

    /// Readies entry `k` of `st.inner` for the device, once: checks its L4
    /// checksum (completing a partial one) unless that was done, and counts
    /// it as received. False if the check dropped it.
    fn settle(&self, st: &mut State, table: &ForwardingTable, k: usize) -> bool {
        let e = st.inner[k];
        if e.dead {
            return false;
        }
        if e.settled {
            return true;
        }
        st.inner[k].settled = true;
        if !e.checked {
            let at = e.start as usize + self.l2_len();
            match l4::verify_or_complete(&mut st.rx_vecs[e.buf as usize][at..e.end as usize]) {
                Ok(l4::Verdict::Completed) => st.batch.checksum_completed(),
                Ok(_) => {}
                Err(r) => {
                    st.batch.drop(r);
                    st.inner[k].dead = true;
                    return false;
                }
            }
        }
        let len = (e.end - e.start) as usize;
        st.batch.rx(len);
        if let Some(p) = e.peer {
            st.rx_peer.add(table, Direction::Rx, p, len);
        }
        true
    }

    /// One `writev` to the device, its failure counted and logged.
    fn write_device(&self, iov: &[io::IoSlice<'_>], batch: &mut BatchStats, log: &mut RateLimited) {
        if let Err(e) = self.queue.writev(iov) {
            batch.drop(DropReason::DeviceError);
            batch.os_error(e.raw_os_error(), 1);
            if let Some(suppressed) = log.allow() {
                tracing::warn!(worker = self.id, suppressed, error = %e, "device write failed");
            }
            if matches!(e.raw_os_error(), Some(libc::EIO | libc::EBADFD)) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Encapsulates the packet at `txbufs[slot][pkt]` and queues it for
    /// `send_batch`, counting it against its peer; or counts the drop.
    #[inline]
    fn stage(
        &self,
        st: &mut State,
        table: &ForwardingTable,
        slot: usize,
        pkt: std::ops::Range<usize>,
    ) {
        match self.encapsulate(st, table, slot, pkt) {
            Ok((msg, sock, peer)) => {
                st.tx_peer.add(table, Direction::Tx, peer, msg.len as usize);
                st.out.push(msg);
                st.out_sock.push(sock);
            }
            Err(r) => st.batch.drop(r),
        }
    }

    /// Turns the packet at `slot[pkt]` into a datagram, or says why not.
    fn encapsulate(
        &self,
        st: &mut State,
        table: &ForwardingTable,
        slot: usize,
        pkt: std::ops::Range<usize>,
    ) -> Result<(OutMsg, u8, PeerId), DropReason> {
        let msg = |range: std::ops::Range<usize>, dst: SocketAddrV4| OutMsg {
            slot: slot as u32,
            start: range.start as u32,
            len: range.len() as u32,
            dst,
        };
        match self.mode {
            Mode::Udp => {
                let buf = &mut st.txbufs.slot_mut(slot)[pkt.clone()];
                if buf.first().map(|b| b >> 4) != Some(4) {
                    // The udp backend carries IPv4 only: nothing routes this.
                    return Err(DropReason::NoRoute);
                }
                let dst = Packet::new_checked(&buf[..])
                    .map_err(|_| DropReason::Ipv4Malformed)?
                    .dst();
                let Some((peer, id)) = table.route(dst) else {
                    self.icmp_to_device(st, ErrorKind::NetUnreachable, slot, pkt);
                    return Err(DropReason::NoRoute);
                };
                let endpoint = peer.endpoint;
                match udp::prepare_send(buf) {
                    Ok(len) => Ok((msg(pkt.start..pkt.start + len, endpoint), 0, id)),
                    Err(DropReason::TtlExpired) => {
                        self.icmp_to_device(st, ErrorKind::TtlExceeded, slot, pkt);
                        Err(DropReason::TtlExpired)
                    }
                    Err(r) => Err(r),
                }
            }
            Mode::VxlanTun(ep) => {
                let buf = st.txbufs.slot_mut(slot);
                let ip = &buf[pkt.clone()];
                if ip.first().map(|b| b >> 4) != Some(4) {
                    // No IPv6 overlay yet: nothing can route it.
                    return Err(DropReason::NoRoute);
                }
                let dst = Packet::new_checked(ip)
                    .map_err(|_| DropReason::Ipv4Malformed)?
                    .dst();
                let Some((peer, id)) = table.route(dst) else {
                    self.icmp_to_device(st, ErrorKind::NetUnreachable, slot, pkt);
                    return Err(DropReason::NoRoute);
                };
                let mac = peer.vtep_mac.ok_or(DropReason::NoRoute)?;
                let sock = self.pick_socket(&buf[pkt.clone()]);
                let endpoint = peer.endpoint;
                let range = ep.encapsulate_ip(buf, pkt, mac)?;
                Ok((msg(range, endpoint), sock, id))
            }
            Mode::VxlanTap(ep) => {
                let buf = st.txbufs.slot_mut(slot);
                let frame = Frame::new_checked(&buf[pkt.clone()])
                    .map_err(|_| DropReason::InnerTruncated)?;
                let (peer, id) = table.route_mac(frame.dst()).ok_or(DropReason::UnknownMac)?;
                let endpoint = peer.endpoint;
                let sock = self.pick_socket(&buf[pkt.start + ethernet::HEADER_LEN..pkt.end]);
                let range = ep.encapsulate_frame(buf, pkt)?;
                Ok((msg(range, endpoint), sock, id))
            }
        }
    }

    fn pick_socket(&self, inner_ip: &[u8]) -> u8 {
        match self.tx_sockets.len() {
            0 | 1 => 0,
            n => (flow::hash(inner_ip) as usize % n) as u8,
        }
    }

    /// Sends `st.out`, grouped by send socket.
    fn send_batch(&self, st: &mut State) {
        if st.out.is_empty() {
            return;
        }
        if self.tx_sockets.len() <= 1 {
            let sock = self.tx_sockets.first().unwrap_or(&self.socket);
            let o = st.sender.send(sock, &st.txbufs, &st.out);
            self.account_send(st, o);
            return;
        }
        for (i, sock) in self.tx_sockets.iter().enumerate() {
            st.grouped.clear();
            st.grouped.extend(
                st.out
                    .iter()
                    .zip(&st.out_sock)
                    .filter(|(_, &s)| usize::from(s) == i)
                    .map(|(m, _)| *m),
            );
            if !st.grouped.is_empty() {
                let o = st.sender.send(sock, &st.txbufs, &st.grouped);
                self.account_send(st, o);
            }
        }
    }

    fn account_send(&self, st: &mut State, o: crate::udp_io::SendOutcome) {
        st.batch.tx(o.sent, o.bytes);
        if o.failed > 0 {
            st.batch.drops[DropReason::SendError.index()] += o.failed as u64;
            st.batch.os_errors(&o.errors);
            if let Some(suppressed) = st.send_log.allow() {
                let err = o.last_error.map(io::Error::from_raw_os_error);
                tracing::warn!(worker = self.id, dropped = o.failed, suppressed, error = ?err, "UDP send failed");
            }
        }
    }

    /// Receives a batch from the socket, decapsulates it and writes it to
    /// the device. Returns true when the batch was full.
    fn peers_to_device(&self, st: &mut State) -> bool {
        let n = match st.receiver.recv(&self.socket, &mut st.rxbufs, 0) {
            Ok(n) => n,
            Err(e) => return self.receive_error(st, &e),
        };
        let table = self.table.load();
        for i in 0..n {
            let meta = st.receiver.meta[i];
            if meta.truncated {
                st.batch.drop(DropReason::Oversize);
                continue;
            }
            let slot = st.rxbufs.slot_mut(i);
            let datagram = &mut slot[..meta.len];
            let whole = self.super_datagram(datagram);
            let (inner, ip) = match self.mode {
                Mode::Udp => {
                    if meta.len > self.mtu {
                        st.batch.drop(DropReason::Oversize);
                        continue;
                    }
                    match udp::decapsulate(datagram) {
                        Ok(len) => (0..len, 0..len),
                        Err(DropReason::TtlExpired) => {
                            // Answer only lease holders we accept: never reflect.
                            let r = self.authorize(&table, *meta.src.ip(), datagram);
                            match r {
                                Ok(peer) => {
                                    if peer.is_some() {
                                        self.icmp_to_peer(st, i, meta.len, meta.src);
                                    }
                                    st.batch.drop(DropReason::TtlExpired);
                                }
                                Err(r) => st.batch.drop(r),
                            }
                            continue;
                        }
                        Err(r) => {
                            st.batch.drop(r);
                            continue;
                        }
                    }
                }
                Mode::VxlanTun(ep) => match ep.decapsulate(datagram) {
                    Ok(inner) => (inner.ip.clone(), inner.ip),
                    Err(r) => {
                        st.batch.drop(r);
                        continue;
                    }
                },
                Mode::VxlanTap(ep) => match ep.decapsulate(datagram) {
                    Ok(inner) => (inner.frame, inner.ip),
                    Err(r) => {
                        st.batch.drop(r);
                        continue;
                    }
                },
            };
            if ip.len() > self.mtu && !whole {
                st.batch.drop(DropReason::Oversize);
                continue;
            }
            let peer = match self.admit(
                &table,
                *meta.src.ip(),
                &mut st.rxbufs.slot_mut(i)[ip.clone()],
            ) {
                Ok((peer, verdict)) => {
                    if verdict == l4::Verdict::Completed {
                        st.batch.checksum_completed();
                    }
                    peer
                }
                Err(r) => {
                    st.batch.drop(r);
                    continue;
                }
            };
            let len = inner.len();
            let written = if whole {
                self.write_split(st, i, inner, ip)
            } else {
                self.queue.send(&st.rxbufs.slot(i)[inner]).map(|_| true)
            };
            match written {
                Ok(false) => st.batch.drop(DropReason::Oversize),
                Ok(true) => {
                    st.batch.rx(len);
                    if let Some(p) = peer {
                        st.rx_peer.add(&table, Direction::Rx, p, len);
                    }
                }
                Err(e) => self.device_error(st, "write", &e),
            }
        }
        st.rx_peer.flush(&table, Direction::Rx);
        n == st.receiver.capacity()
    }

    /// Without offloads: cuts the TCP super-packet at `rxbufs[i][ip]` (in
    /// the frame `rxbufs[i][frame]`) into packets that fit the device, as
    /// the kernel's GSO would, and writes each. A super-packet that is not
    /// TCP/IPv4 is dropped as oversize.
    fn write_split(
        &self,
        st: &mut State,
        i: usize,
        frame: std::ops::Range<usize>,
        ip: std::ops::Range<usize>,
    ) -> io::Result<bool> {
        let l2 = self.l2_len();
        let slot = st.rxbufs.slot_mut(i);
        let hdr = gro::gso_header(0, &mut slot[ip.clone()], 0, self.mtu)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
            .and_then(|h| tun_rs::VirtioNetHdr::decode(&h));
        let n = hdr.and_then(|hdr| {
            tun_rs::gso_split(
                &mut slot[ip],
                hdr,
                st.split.slots_mut(0),
                &mut st.split_sizes,
                l2,
                false,
            )
        });
        let n = match n {
            Ok(n) => n,
            Err(_) => return Ok(false),
        };
        for j in 0..n {
            let out = st.split.slot_mut(j);
            out[..l2].copy_from_slice(&slot[frame.start..frame.start + l2]);
            self.queue.send(&out[..l2 + st.split_sizes[j]])?;
        }
        Ok(true)
    }

    /// Writes an ICMP error about the packet in `txbufs[slot][pkt]` back
    /// into the device, from our tunnel address.
    fn icmp_to_device(
        &self,
        st: &mut State,
        kind: ErrorKind,
        slot: usize,
        pkt: std::ops::Range<usize>,
    ) {
        let Ok(off) = Packet::new_checked(&st.txbufs.slot(slot)[pkt]) else {
            return;
        };
        if matches!(self.mode, Mode::VxlanTap(_)) {
            return; // a TAP needs a frame; it never lacks a route
        }
        if !st.icmp_budget.take() {
            st.batch.icmp_suppressed();
            return;
        }
        let Some(len) = icmp::emit_error(kind, &off, self.gateway, &mut st.scratch) else {
            return;
        };
        if let Err(e) = self.queue.send(&st.scratch[..len]) {
            self.device_error(st, "write ICMP", &e);
        }
    }

    /// Answers a received packet whose TTL ran out with ICMP time exceeded,
    /// sent back to the peer it came from (udp backend).
    fn icmp_to_peer(&self, st: &mut State, slot: usize, len: usize, to: SocketAddrV4) {
        let rx = std::mem::replace(&mut st.rxbufs, PacketBufs::new(0, 0));
        self.icmp_to_peer_from(st, &rx.slot(slot)[..len], to);
        st.rxbufs = rx;
    }

    fn icmp_to_peer_from(&self, st: &mut State, packet: &[u8], to: SocketAddrV4) {
        let Ok(off) = Packet::new_checked(packet) else {
            return;
        };
        if !st.icmp_budget.take() {
            st.batch.icmp_suppressed();
            return;
        }
        if let Some(n) = icmp::emit_error(ErrorKind::TtlExceeded, &off, self.local, &mut st.scratch)
        {
            if self.socket.send_to(&st.scratch[..n], to).is_err() {
                st.batch.drop(DropReason::SendError);
            }
        }
    }

    /// Sorts a failed receive: true if the socket may have more to read.
    /// `WouldBlock` means drained. ECONNREFUSED and friends are
    /// per-datagram reports queued on the socket, and reading them clears
    /// them: count, keep going.
    fn receive_error(&self, st: &mut State, e: &io::Error) -> bool {
        match e.kind() {
            io::ErrorKind::WouldBlock => false,
            io::ErrorKind::Interrupted => true,
            _ => {
                st.batch.drop(DropReason::SendError);
                st.batch.os_error(e.raw_os_error(), 1);
                if let Some(suppressed) = st.send_log.allow() {
                    tracing::warn!(worker = self.id, suppressed, error = %e, "UDP receive error");
                }
                true
            }
        }
    }

    fn device_error(&self, st: &mut State, what: &str, e: &io::Error) {
        st.batch.drop(DropReason::DeviceError);
        st.batch.os_error(e.raw_os_error(), 1);
        if let Some(suppressed) = st.device_log.allow() {
            tracing::warn!(worker = self.id, suppressed, error = %e, "device {what} failed");
        }
        // EIO (link down) and EBADFD (device gone) repeat at once: back off
        // instead of spinning. The control plane notices a deleted device
        // within 500 ms and recreates it (`daemon.rs`, `DataPlane::watch`).
        if matches!(e.raw_os_error(), Some(libc::EIO | libc::EBADFD)) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
