//! The data-path worker: one thread that owns one device queue, its sockets
//! and its buffers, and moves packets in batches both ways. What happens to
//! each packet is decided by the tunnel core (`tunnel.rs`), which does no
//! I/O; this file is the I/O around it.
//!
//! Device to peers (`device_to_peers`):
//!
//! 1. read from the device while a super-packet's worth of slots is free
//!    (`Queue::read_batch`: with offloads, each super-packet comes split
//!    into MTU-sized packets with complete checksums);
//! 2. per packet, `Tunnel::outbound`: route it and encapsulate it in place,
//!    or drop it (with an ICMP error written back into the device);
//! 3. send the batch, one `sendmmsg` per send socket, equal-size runs to
//!    one peer as one UDP GSO message (`udp_io::Sender`);
//! 4. count per peer (`PeerTally`) and per worker (`BatchStats`).
//!
//! Peers to device (`peers_to_device`):
//!
//! 1. receive a batch with one `recvmmsg` (`udp_io::Receiver`); with UDP
//!    GRO one buffer holds a run of datagrams from one peer;
//! 2. per datagram (each segment of a run), `Tunnel::inbound`: decapsulate
//!    in place and authenticate the sender, or drop it (with ICMP time
//!    exceeded sent back to a lease holder); what passes is held in the
//!    device's `WriteBatch` as a range of the buffer it arrived in;
//! 3. write the batch (`Queue::write_batch`: with offloads, runs of one TCP
//!    flow as one super-packet gathered from where they were received, a
//!    kernel peer's super-datagram as one GSO packet; without, one write
//!    per packet). Right before each packet goes into a write, its inner
//!    TCP/UDP checksum is checked (a kernel peer's partial one completed)
//!    and it is counted: the bytes are then still in cache for the
//!    kernel's copy;
//! 4. count per peer and per worker.
//!
//! Per wakeup the two directions alternate, a batch each, until both are
//! drained, so neither can starve the other.
//!
//! Owned by the worker: the queue, the sockets, every buffer in `State`,
//! the tunnel (with its ICMP budget). Shared: the forwarding table (an
//! immutable snapshot, loaded once per batch), the worker's counters
//! (written by this worker only, read by the metrics endpoint) and the stop
//! flag. Nothing on the per-packet path locks or allocates.

use crate::bufs::PacketBufs;
use crate::device::{Queue, ReadError, WriteBatch, WriteOutcome, VIRTIO_NET_HDR_LEN};
use crate::metrics::{BatchStats, WorkerStats};
use crate::tunnel::{Delivery, IcmpScratch, Inbound, Inner, Outbound, Reply, Tunnel};
use crate::udp_io::{OutMsg, Receiver, SendOutcome, Sender};
use arc_swap::ArcSwap;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_encap::{icmpv6, l4, DropReason, HEADROOM};
use weft_routes::{Direction, ForwardingTable, PeerId, PeerTally};

/// Packets per batch in each direction.
pub const BATCH: usize = 64;
/// Packet slots on the device-read side with offloads: one 64 KiB TCP
/// super-packet splits into up to ~47 MTU-sized packets (more with a small
/// MSS), so reads go on while this many slots are free.
const SPLIT_ROOM: usize = 128;
/// Slots on the device-read side with offloads: a few super-packets each.
const OFFLOAD_SLOTS: usize = 256;
/// Receive buffers hold a UDP GRO run, or a kernel peer's super-datagram:
/// up to 64 KiB.
const RX_CAP: usize = 65536;
/// Inner packets tracked per receive batch (a batch of GRO runs); more are
/// written out in several rounds.
const INNER_SLOTS: usize = 1024;

const DEVICE: Token = Token(0);
const SOCKET: Token = Token(1);

/// Everything a worker owns; it carries the pods of family `F` over an
/// underlay of the same family.
pub struct Worker<F: Inner = Ipv4Addr> {
    /// Worker number, for logs.
    pub id: usize,
    /// The per-packet decisions.
    pub tunnel: Tunnel<F>,
    /// Our device queue.
    pub queue: Queue,
    /// The socket bound to the backend port: receives, and sends for udp.
    pub socket: UdpSocket,
    /// VXLAN send sockets on ephemeral ports, picked by flow hash
    /// (`Tunnel::outbound` says which) so each inner flow keeps one outer
    /// source port and flows spread across ports.
    pub tx_sockets: Vec<UdpSocket>,
    /// Which batching and offload techniques are on.
    pub tuning: crate::tuning::Tuning,
    /// The forwarding table snapshot.
    pub table: Arc<ArcSwap<ForwardingTable<F>>>,
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

struct State<F: Inner> {
    /// Packets read from the device, with `HEADROOM` in front of each.
    txbufs: PacketBufs,
    /// The length of each packet read into `txbufs`.
    sizes: Vec<usize>,
    /// With offloads: the device read buffer (virtio_net_hdr + 64 KiB).
    vnet_in: Vec<u8>,
    /// Receive buffers (a datagram, a UDP GRO run or a super-datagram
    /// each), where each inner packet stays after decapsulation.
    rx_vecs: Vec<Vec<u8>>,
    /// The inner packets of the batch in progress, as ranges of `rx_vecs`,
    /// for the device to write.
    writes: WriteBatch,
    /// The sender of each packet in `writes`, in push order.
    senders: Vec<Option<PeerId>>,
    /// The datagrams of the batch in progress, and each one's send socket.
    out: Vec<OutMsg<F::SocketAddr>>,
    out_sock: Vec<u8>,
    /// `out`'s datagrams for one send socket.
    grouped: Vec<OutMsg<F::SocketAddr>>,
    receiver: Receiver<F::SocketAddr>,
    sender: Sender,
    /// Where the tunnel writes an ICMP error.
    scratch: IcmpScratch,
    batch: BatchStats,
    /// Per-peer counts for the batch in progress, flushed before the
    /// table snapshot they index is let go.
    rx_peer: PeerTally,
    tx_peer: PeerTally,
    send_log: RateLimited,
    recv_log: RateLimited,
    device_log: RateLimited,
}

impl<F: Inner> Worker<F> {
    /// Runs until `stop` is set. Errors only if the poller cannot be set up.
    pub fn run(self) -> io::Result<()> {
        let mut poll = Poll::new()?;
        let dev_fd = self.queue.as_raw_fd();
        let sock_fd = self.socket.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&dev_fd), DEVICE, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&sock_fd), SOCKET, Interest::READABLE)?;
        let mut st = self.state();
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
                dev_ready = self.device_to_peers(&mut st);
            }
            if sock_ready {
                sock_ready = self.peers_to_device(&mut st);
            }
            st.batch.flush(&self.stats);
        }
        Ok(())
    }

    /// The buffers, sized for the queue's offload setting.
    fn state(&self) -> State<F> {
        // Room for the largest datagram the underlay carries, plus a frame
        // header; larger datagrams are detected with MSG_TRUNC and dropped.
        let payload = self.tunnel.max_datagram();
        let offload = self.queue.offload();
        let tuning = self.tuning;
        if offload && tuning.gro && !crate::udp_io::enable_gro(&self.socket) {
            tracing::info!(
                worker = self.id,
                "the kernel has no UDP GRO; receiving datagrams one by one"
            );
        }
        let gso = offload && tuning.gso && crate::udp_io::gso_supported(&self.socket);
        if offload && tuning.gso && !gso {
            tracing::info!(
                worker = self.id,
                "the kernel has no UDP GSO (UDP_SEGMENT); sending datagrams one by one"
            );
        }
        let (tx_slots, vnet_len) = match offload {
            true => (OFFLOAD_SLOTS, VIRTIO_NET_HDR_LEN + 65536),
            false => (BATCH, 0),
        };
        State {
            txbufs: PacketBufs::new(tx_slots, payload),
            sizes: vec![0; tx_slots],
            vnet_in: vec![0; vnet_len],
            rx_vecs: (0..BATCH).map(|_| vec![0; RX_CAP]).collect(),
            writes: WriteBatch::new(&self.queue, INNER_SLOTS),
            senders: Vec::with_capacity(INNER_SLOTS),
            out: Vec::with_capacity(tx_slots),
            out_sock: Vec::with_capacity(tx_slots),
            grouped: Vec::with_capacity(tx_slots),
            receiver: Receiver::new(if tuning.mmsg { BATCH } else { 1 }),
            sender: Sender::new(tx_slots, gso, tuning.mmsg),
            scratch: [0; icmpv6::MAX_ERROR_LEN],
            batch: BatchStats::default(),
            rx_peer: PeerTally::default(),
            tx_peer: PeerTally::default(),
            send_log: RateLimited::new(),
            recv_log: RateLimited::new(),
            device_log: RateLimited::new(),
        }
    }

    /// Reads a batch from the device, encapsulates and sends it. Returns
    /// true when the batch filled up (more may be waiting).
    fn device_to_peers(&self, st: &mut State<F>) -> bool {
        let table = self.table.load();
        st.out.clear();
        st.out_sock.clear();
        // Slots one read may need: a whole super-packet's segments.
        let room = if self.queue.offload() { SPLIT_ROOM } else { 1 };
        let mut n = 0;
        let mut more = false;
        while n + room <= st.txbufs.count() {
            let read = self.queue.read_batch(
                &mut st.vnet_in,
                st.txbufs.slots_mut(n),
                &mut st.sizes[n..],
                HEADROOM,
            );
            let k = match read {
                Ok(k) => k,
                Err(ReadError::Drained) => break,
                Err(ReadError::Malformed(reason, e)) => {
                    st.batch.drop(reason);
                    if let Some(suppressed) = st.device_log.allow() {
                        tracing::warn!(worker = self.id, suppressed, error = %e, "cannot split a packet from the device");
                    }
                    continue;
                }
                Err(ReadError::Os(e)) => {
                    self.device_error(st, "read", &e);
                    break;
                }
            };
            for j in n..n + k {
                self.stage(st, &table, j, HEADROOM..HEADROOM + st.sizes[j]);
            }
            n += k;
            more = n + room > st.txbufs.count();
        }
        st.tx_peer.flush(&table, Direction::Tx);
        self.send_batch(st);
        more
    }

    /// Hands the packet at `txbufs[slot][pkt]` to the tunnel and queues the
    /// datagram it makes for `send_batch`, or counts the drop.
    #[inline]
    fn stage(
        &self,
        st: &mut State<F>,
        table: &ForwardingTable<F>,
        slot: usize,
        pkt: std::ops::Range<usize>,
    ) {
        let buf = st.txbufs.slot_mut(slot);
        match self.tunnel.outbound(table, buf, pkt, &mut st.scratch) {
            Outbound::Send {
                range,
                to,
                socket,
                peer,
            } => {
                st.tx_peer.add(table, Direction::Tx, peer, range.len());
                st.out.push(OutMsg {
                    slot: slot as u32,
                    start: range.start as u32,
                    len: range.len() as u32,
                    dst: to,
                });
                st.out_sock.push(socket);
            }
            Outbound::Bug(what) => {
                st.batch.internal_error();
                if let Some(suppressed) = st.device_log.allow() {
                    tracing::error!(worker = self.id, suppressed, "{what} (a bug in weft)");
                }
            }
            Outbound::Drop(reason, reply) => {
                st.batch.drop(reason);
                match reply {
                    Reply::None => {}
                    Reply::Suppressed => st.batch.icmp_suppressed(),
                    Reply::Icmp(n) => {
                        if let Err(e) = self.queue.send(&st.scratch[..n]) {
                            self.device_error(st, "write ICMP", &e);
                        }
                    }
                }
            }
        }
    }

    /// Sends `st.out`, grouped by send socket.
    fn send_batch(&self, st: &mut State<F>) {
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

    fn account_send(&self, st: &mut State<F>, o: SendOutcome) {
        st.batch.tx(o.sent, o.bytes);
        if o.failed.packets == 0 {
            return;
        }
        st.batch.failed(DropReason::SendError, &o.failed);
        if let Some(suppressed) = st.send_log.allow() {
            let err = o.failed.last.map(io::Error::from_raw_os_error);
            tracing::warn!(worker = self.id, dropped = o.failed.packets, suppressed, error = ?err, "UDP send failed");
        }
    }

    /// Receives a batch from the socket, decapsulates it and writes it to
    /// the device. Returns true when the batch was full.
    fn peers_to_device(&self, st: &mut State<F>) -> bool {
        let n = match st.receiver.recv_into(&self.socket, &mut st.rx_vecs, 0) {
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
            // A run of GRO segments, or one datagram (a super-datagram is
            // one, whatever segment size the kernel reports with it).
            let whole = self.tunnel.super_datagram(&st.rx_vecs[i][..meta.len]);
            let seg = match meta.segment {
                0 => meta.len,
                _ if whole => meta.len,
                s => s,
            };
            let mut at = 0;
            while at < meta.len {
                let range = at..at + seg.min(meta.len - at);
                at = range.end;
                let datagram = &mut st.rx_vecs[i][range.clone()];
                match self
                    .tunnel
                    .inbound(&table, datagram, meta.src, &mut st.scratch)
                {
                    Inbound::Deliver(d) => {
                        if st.writes.is_full() {
                            self.write_held(st, &table);
                        }
                        self.hold(st, i, range.start, d, meta.segment);
                    }
                    Inbound::Drop(reason, reply) => {
                        st.batch.drop(reason);
                        self.reply_to_sender(st, reply, meta.src);
                    }
                }
            }
        }
        self.write_held(st, &table);
        st.rx_peer.flush(&table, Direction::Rx);
        n == st.receiver.capacity()
    }

    /// Holds a decapsulated packet of buffer `buf` (its datagram starting
    /// at `base`) for the device's next batch write. A kernel peer's
    /// super-packet has its checksum checked now: with offloads the device
    /// hands the checksum to the kernel. `segment` is the GRO segment size
    /// the kernel reported with it: the super-packet's MSS.
    fn hold(&self, st: &mut State<F>, buf: usize, base: usize, d: Delivery, segment: usize) {
        if d.whole {
            let ip = &mut st.rx_vecs[buf][base + d.ip.start..base + d.ip.end];
            if !check_l4(&mut st.batch, ip) {
                return;
            }
        }
        let range = base + d.deliver.start..base + d.deliver.end;
        if st
            .writes
            .push(&mut st.rx_vecs, buf, range, d.whole, segment)
        {
            st.senders.push(d.peer);
        } else {
            st.batch.drop(DropReason::Oversize);
        }
    }

    /// Sends the ICMP error the tunnel wrote, if any, back to the sender.
    fn reply_to_sender(&self, st: &mut State<F>, reply: Reply, to: F::SocketAddr) {
        match reply {
            Reply::None => {}
            Reply::Suppressed => st.batch.icmp_suppressed(),
            Reply::Icmp(n) => {
                if self.socket.send_to(&st.scratch[..n], to.into()).is_err() {
                    st.batch.drop(DropReason::SendError);
                }
            }
        }
    }

    /// Writes the held packets to the device. Each one's TCP/UDP checksum
    /// is checked (a partial one completed) right before the write that
    /// takes it, and it is counted as received then.
    fn write_held(&self, st: &mut State<F>, table: &ForwardingTable<F>) {
        if st.writes.is_empty() {
            return;
        }
        let l2 = self.queue.l2_len();
        let State {
            writes,
            rx_vecs,
            senders,
            batch,
            rx_peer,
            ..
        } = st;
        let out = self
            .queue
            .write_batch(writes, rx_vecs, |k, packet, checked| {
                if !checked && !check_l4(batch, packet.get_mut(l2..).unwrap_or_default()) {
                    return false;
                }
                batch.rx(packet.len());
                if let Some(p) = senders[k] {
                    rx_peer.add(table, Direction::Rx, p, packet.len());
                }
                true
            });
        senders.clear();
        self.account_writes(st, out);
    }

    /// Counts what a batch write could not do.
    fn account_writes(&self, st: &mut State<F>, out: WriteOutcome) {
        st.batch.drops(DropReason::Oversize, out.unsplittable);
        if out.failed.packets == 0 {
            return;
        }
        st.batch.failed(DropReason::DeviceError, &out.failed);
        if let Some(suppressed) = st.device_log.allow() {
            let err = out.failed.last.map(io::Error::from_raw_os_error);
            tracing::warn!(worker = self.id, failed = out.failed.packets, suppressed, error = ?err, "device write failed");
        }
        Self::back_off(out.failed.last);
    }

    /// Sorts a failed receive: true if the socket may have more to read.
    /// `WouldBlock` means drained. ECONNREFUSED and friends are
    /// per-datagram reports queued on the socket (an earlier send's ICMP
    /// error), and reading them clears them: counted as OS errors, not as
    /// drops (no packet was lost here), and the loop goes on.
    fn receive_error(&self, st: &mut State<F>, e: &io::Error) -> bool {
        match e.kind() {
            io::ErrorKind::WouldBlock => false,
            io::ErrorKind::Interrupted => true,
            _ => {
                st.batch.os_error(e.raw_os_error(), 1);
                if let Some(suppressed) = st.recv_log.allow() {
                    tracing::warn!(worker = self.id, suppressed, error = %e, "UDP receive error");
                }
                true
            }
        }
    }

    fn device_error(&self, st: &mut State<F>, what: &str, e: &io::Error) {
        st.batch.drop(DropReason::DeviceError);
        st.batch.os_error(e.raw_os_error(), 1);
        if let Some(suppressed) = st.device_log.allow() {
            tracing::warn!(worker = self.id, suppressed, error = %e, "device {what} failed");
        }
        Self::back_off(e.raw_os_error());
    }

    /// EIO (link down) and EBADFD (device gone) repeat at once: back off
    /// instead of spinning. The control plane notices a deleted device
    /// within 500 ms and recreates it (`daemon/data_plane.rs`, `DataPlane::tend`).
    fn back_off(errno: Option<i32>) {
        if matches!(errno, Some(libc::EIO | libc::EBADFD)) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Checks (or completes) the inner packet's TCP/UDP checksum; false, with
/// the drop counted, when it is wrong.
#[inline]
fn check_l4(batch: &mut BatchStats, ip: &mut [u8]) -> bool {
    match l4::verify_or_complete(ip) {
        Ok(l4::Verdict::Completed) => {
            batch.checksum_completed();
            true
        }
        Ok(_) => true,
        Err(r) => {
            batch.drop(r);
            false
        }
    }
}
