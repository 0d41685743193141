//! The device's write side: packets received from peers, left where they
//! were received, written in batches. With offloads, runs of one TCP flow
//! go as one super-packet whose payloads are gathered from their receive
//! buffers (`encap::gro`: no copy in userspace), and a kernel peer's
//! super-packet as one GSO packet behind its own virtio header. Without
//! offloads, one write per packet, a super-packet cut to the device MTU
//! first, as the kernel's GSO would.

use super::Queue;
use crate::bufs::PacketBufs;
use crate::failures::Failures;
use std::io;
use weft_encap::gro;

/// One packet waiting in a receive buffer.
#[derive(Clone, Copy)]
struct Entry {
    buf: u32,
    start: u32,
    end: u32,
    /// A super-packet's GSO header's index in `gso_hdrs`, plus one; 0 for
    /// an ordinary packet.
    gso: u32,
    /// A super-packet larger than the MTU.
    whole: bool,
    /// `ready` was asked about it (`ok`: and said yes).
    asked: bool,
    ok: bool,
}

/// What a `write_batch` did, for the caller to count.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Writes the device refused (each a packet or a merged run).
    pub failed: Failures,
    /// Super-packets that could not be segmented: dropped.
    pub unsplittable: u64,
}

/// Packets bound for the device, as ranges of the caller's receive
/// buffers, and the scratch their writing needs. Preallocated once per
/// worker; nothing here allocates per packet.
pub struct WriteBatch {
    /// Bytes of link-layer header in front of each IP packet (a TAP's
    /// Ethernet header; 0 on a TUN).
    l2: usize,
    /// Device MTU.
    mtu: usize,
    offload: bool,
    entries: Vec<Entry>,
    gso_hdrs: Vec<[u8; gro::VNET_HDR_LEN]>,
    gro_hdr: [u8; gro::SUPER_HEADER_MAX],
    /// Without offloads: a super-packet cut into device-sized packets.
    split: PacketBufs,
    split_sizes: Vec<usize>,
}

/// Room for the segments of one super-packet cut to the MTU.
const SPLIT_ROOM: usize = 128;

impl WriteBatch {
    /// Room for `capacity` packets for `queue`, which says how much
    /// link-layer header sits in front of each IP packet and its MTU.
    pub fn new(queue: &Queue, capacity: usize) -> WriteBatch {
        let (l2, mtu) = (queue.l2_len(), queue.mtu());
        let offload = queue.offload();
        let split_room = if offload { 0 } else { SPLIT_ROOM };
        WriteBatch {
            l2,
            mtu,
            offload,
            entries: Vec::with_capacity(capacity),
            gso_hdrs: Vec::with_capacity(capacity),
            gro_hdr: [0; gro::SUPER_HEADER_MAX],
            split: PacketBufs::new(split_room, mtu + l2),
            split_sizes: vec![0; split_room],
        }
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no packet is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `push` has no room left: write the batch first.
    pub fn is_full(&self) -> bool {
        self.entries.len() == self.entries.capacity()
    }

    /// Holds the packet (or on a TAP, the frame) at `bufs[buf][range]` for
    /// the next `write_batch`. A `whole` super-packet (a kernel peer's TCP
    /// super-packet, larger than the MTU) must have a valid TCP checksum
    /// already: its GSO header is built now. With offloads that header
    /// goes to the device, with `mss` as the segment size (0: as many bytes
    /// as fit the MTU), and hands the checksum to the kernel; without, it
    /// tells our own splitter (which sees the IP packet, not the frame) to
    /// cut MTU-sized packets. False, and nothing held, when it is not a
    /// TCP super-packet (IPv4 or IPv6) that can be handed over.
    pub fn push(
        &mut self,
        bufs: &mut [Vec<u8>],
        buf: usize,
        range: std::ops::Range<usize>,
        whole: bool,
        mss: usize,
    ) -> bool {
        let mut gso = 0;
        if whole {
            let ip = &mut bufs[buf][range.start + self.l2..range.end];
            let header = match self.offload {
                true => gro::gso_header(self.l2, ip, mss, self.mtu),
                false => gro::gso_header(0, ip, 0, self.mtu),
            };
            match header {
                Some(h) => {
                    self.gso_hdrs.push(h);
                    gso = self.gso_hdrs.len() as u32;
                }
                None => return false,
            }
        }
        self.entries.push(Entry {
            buf: buf as u32,
            start: range.start as u32,
            end: range.end as u32,
            gso,
            whole,
            asked: false,
            ok: false,
        });
        true
    }

    /// The bytes of entry `e`.
    #[inline]
    fn bytes(bufs: &[Vec<u8>], e: Entry) -> &[u8] {
        &bufs[e.buf as usize][e.start as usize..e.end as usize]
    }

    /// Asks `ready` about entry `k` once; its answer after that.
    #[inline]
    fn ask(
        &mut self,
        bufs: &mut [Vec<u8>],
        k: usize,
        ready: &mut impl FnMut(usize, &mut [u8], bool) -> bool,
    ) -> bool {
        let e = self.entries[k];
        if !e.asked {
            let bytes = &mut bufs[e.buf as usize][e.start as usize..e.end as usize];
            self.entries[k].asked = true;
            self.entries[k].ok = ready(k, bytes, e.whole);
        }
        self.entries[k].ok
    }
}

impl Queue {
    /// Writes the packets held in `batch` and empties it. Right before a
    /// packet goes into a write, `ready(k, packet, whole)` is called once
    /// for it (`k`: its place in push order; `packet`: its bytes, with any
    /// link-layer header, writable): it checks and counts the packet while
    /// its bytes are in cache for the kernel's copy, and a packet it says
    /// no to is left out.
    pub fn write_batch(
        &self,
        batch: &mut WriteBatch,
        bufs: &mut [Vec<u8>],
        mut ready: impl FnMut(usize, &mut [u8], bool) -> bool,
    ) -> WriteOutcome {
        let mut out = WriteOutcome::default();
        if batch.offload {
            self.write_runs(batch, bufs, &mut ready, &mut out);
        } else {
            self.write_each(batch, bufs, &mut ready, &mut out);
        }
        batch.entries.clear();
        batch.gso_hdrs.clear();
        out
    }

    /// Without offloads: one write per packet, a super-packet cut first.
    fn write_each(
        &self,
        b: &mut WriteBatch,
        bufs: &mut [Vec<u8>],
        ready: &mut impl FnMut(usize, &mut [u8], bool) -> bool,
        out: &mut WriteOutcome,
    ) {
        for k in 0..b.entries.len() {
            if !b.ask(bufs, k, ready) {
                continue;
            }
            let e = b.entries[k];
            let written = if e.whole {
                self.write_split(b, bufs, e)
            } else {
                self.send(WriteBatch::bytes(bufs, e)).map(|_| true)
            };
            match written {
                Ok(true) => {}
                Ok(false) => out.unsplittable += 1,
                Err(err) => out.failed.record(err.raw_os_error(), 1),
            }
        }
    }

    /// Cuts the TCP super-packet of entry `e` into packets that fit the
    /// device, as the kernel's GSO would, by the header `push` built, and
    /// writes each (behind a copy of its frame's Ethernet header on a
    /// TAP). False when the splitter refuses it (more segments than
    /// `SPLIT_ROOM`).
    fn write_split(&self, b: &mut WriteBatch, bufs: &mut [Vec<u8>], e: Entry) -> io::Result<bool> {
        let l2 = b.l2;
        let frame = &mut bufs[e.buf as usize][e.start as usize..e.end as usize];
        let (eth, ip) = frame.split_at_mut(l2);
        let header = e.gso.checked_sub(1).map(|h| b.gso_hdrs[h as usize]);
        let n = header
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
            .and_then(|h| tun_rs::VirtioNetHdr::decode(&h))
            .and_then(|hdr| {
                let v6 = weft_encap::ip_version(ip) == Some(6);
                tun_rs::gso_split(ip, hdr, b.split.slots_mut(0), &mut b.split_sizes, l2, v6)
            });
        let Ok(n) = n else {
            return Ok(false);
        };
        for j in 0..n {
            let seg = b.split.slot_mut(j);
            seg[..l2].copy_from_slice(eth);
            self.send(&seg[..l2 + b.split_sizes[j]])?;
        }
        Ok(true)
    }

    /// With offloads: each run of mergeable TCP segments as one
    /// super-packet. On a TAP each entry is a frame: frames merge only
    /// behind identical Ethernet headers, and the super-packet goes behind
    /// the first one's.
    fn write_runs(
        &self,
        b: &mut WriteBatch,
        bufs: &mut [Vec<u8>],
        ready: &mut impl FnMut(usize, &mut [u8], bool) -> bool,
        out: &mut WriteOutcome,
    ) {
        const EMPTY_VNET_HDR: [u8; gro::VNET_HDR_LEN] = [0; gro::VNET_HDR_LEN];
        let l2 = b.l2;
        // The IP packet inside an entry (a frame on a TAP).
        fn behind(p: &[u8], l2: usize) -> &[u8] {
            p.get(l2..).unwrap_or(&[])
        }
        let mut k = 0;
        // The next packet's Segment, when the previous run already parsed it.
        let mut next_seg: Option<Option<gro::Segment>> = None;
        while k < b.entries.len() {
            if !b.ask(bufs, k, ready) {
                k += 1;
                continue;
            }
            let first_entry = b.entries[k];
            if let Some(h) = first_entry.gso.checked_sub(1) {
                // A super-packet goes as it came, behind its own header.
                let iov = [
                    io::IoSlice::new(&b.gso_hdrs[h as usize]),
                    io::IoSlice::new(WriteBatch::bytes(bufs, first_entry)),
                ];
                if let Err(e) = self.writev(&iov) {
                    out.failed.record(e.raw_os_error(), 1);
                }
                k += 1;
                continue;
            }
            let seg = next_seg.take().unwrap_or_else(|| {
                gro::segment_unverified(behind(WriteBatch::bytes(bufs, first_entry), l2))
            });
            let mut end = k + 1;
            let mut run = seg.map(gro::Run::new);
            if let Some(run) = run.as_mut() {
                while end < b.entries.len() && b.entries[end].gso == 0 {
                    if !b.ask(bufs, end, ready) {
                        break;
                    }
                    let (first, last, p) = (
                        WriteBatch::bytes(bufs, first_entry),
                        WriteBatch::bytes(bufs, b.entries[end - 1]),
                        WriteBatch::bytes(bufs, b.entries[end]),
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
            let first = WriteBatch::bytes(bufs, first_entry);
            let mut iov = [io::IoSlice::new(&[]); 2 + gro::MAX_SEGMENTS];
            let parts = match (run, seg) {
                (Some(run), Some(s)) => {
                    let eth = first.get(..l2).unwrap_or(&[]);
                    let h = run.super_header_after(eth, behind(first, l2), &mut b.gro_hdr);
                    iov[0] = io::IoSlice::new(&b.gro_hdr[..h]);
                    if run.count() == 1 {
                        iov[1] = io::IoSlice::new(first);
                        2
                    } else {
                        let hl = l2 + s.header_len();
                        for (j, m) in (k..end).enumerate() {
                            iov[1 + j] =
                                io::IoSlice::new(&WriteBatch::bytes(bufs, b.entries[m])[hl..]);
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
            if let Err(e) = self.writev(&iov[..parts]) {
                out.failed.record(e.raw_os_error(), 1);
            }
            k = end;
        }
    }
}
