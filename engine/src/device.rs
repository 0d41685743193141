//! The TUN or TAP device the kernel hands pod traffic to, one queue per
//! worker (`IFF_MULTI_QUEUE` when there is more than one worker), read and
//! written in batches: `Queue::read_batch` and `Queue::write_batch`
//! (`write.rs`) keep the virtio offload header, TAP framing, segmentation
//! on read and coalescing on write in here.

use std::os::fd::{AsRawFd, RawFd};
pub use tun_rs::VIRTIO_NET_HDR_LEN;
pub use write::{WriteBatch, WriteOutcome};

mod write;
use tun_rs::{DeviceBuilder, Layer, SyncDevice};
use weft_encap::ethernet::{ethertype, Frame};

/// Which kind of device weft reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// An Ethernet (L2) device carrying the VtepMAC, like the kernel's
    /// flannel.1; weft does the FDB lookup.
    Tap,
    /// An L3 device; weft synthesizes the inner Ethernet header.
    Tun,
}

/// Why a device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The kernel refused the device.
    #[error(
        "cannot create {kind} device {name} (is /dev/net/tun there and are we root?): {error}"
    )]
    Create {
        /// Device name.
        name: String,
        /// tun or tap.
        kind: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// A queue could not be added.
    #[error("cannot open queue {queue} of {name}: {error}")]
    Queue {
        /// Device name.
        name: String,
        /// Queue number.
        queue: usize,
        /// The OS error.
        error: std::io::Error,
    },
}

/// Why `Queue::read_batch` returned no packets.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing is waiting: the queue is drained until the next wakeup.
    Drained,
    /// The kernel handed over a (super-)packet that cannot be split (too
    /// many segments, a bad virtio header): it is gone, to be counted as a
    /// drop for this reason, with the splitter's complaint for the log;
    /// read on.
    Malformed(weft_encap::DropReason, std::io::Error),
    /// The read failed (EIO when the link is down, EBADFD when the device
    /// was deleted, …).
    Os(std::io::Error),
}

/// One queue of the device, owned by one worker.
pub struct Queue {
    dev: SyncDevice,
    kind: DeviceKind,
    offload: bool,
    /// The MTU the device is configured with.
    mtu: usize,
}

impl Queue {
    /// True when the queue was opened with `IFF_VNET_HDR` and TSO: reads
    /// return super-packets (`read_batch` splits them) and writes take a
    /// `virtio_net_hdr` (`writev`; `send` adds an empty one).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Bytes of link-layer header in front of each IP packet: a TAP's
    /// Ethernet header, none on a TUN.
    pub fn l2_len(&self) -> usize {
        match self.kind {
            DeviceKind::Tap => weft_encap::ethernet::HEADER_LEN,
            DeviceKind::Tun => 0,
        }
    }

    /// The largest IP packet the device takes (its MTU).
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Reads what one device read yields, as whole packets (TUN) or frames
    /// (TAP), each into `bufs[i][offset..]` with its length in `sizes[i]`,
    /// and returns how many. Without offloads that is one packet. With
    /// offloads it is a super-packet split into MTU-sized packets with
    /// complete checksums: `bufs` needs room for the most segments one
    /// super-packet holds, and `scratch` for the largest (virtio header
    /// plus 64 KiB). The offload header and TAP framing stay in here.
    #[inline]
    pub fn read_batch(
        &self,
        scratch: &mut [u8],
        bufs: &mut [Box<[u8]>],
        sizes: &mut [usize],
        offset: usize,
    ) -> Result<usize, ReadError> {
        use std::io::ErrorKind;
        loop {
            let read = match (self.offload, self.kind) {
                (false, _) => match (bufs.first_mut(), sizes.first_mut()) {
                    (Some(buf), Some(size)) => self.dev.recv(&mut buf[offset..]).map(|n| {
                        *size = n;
                        1
                    }),
                    _ => Ok(0),
                },
                (true, DeviceKind::Tun) => self.dev.recv_multiple(scratch, bufs, sizes, offset),
                (true, DeviceKind::Tap) => self.recv_frames(scratch, bufs, sizes, offset),
            };
            return match read {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Err(ReadError::Drained),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // tun-rs reports what its splitter refuses as InvalidInput
                // or as an error without an OS code.
                Err(e)
                    if self.offload
                        && (e.kind() == ErrorKind::InvalidInput || e.raw_os_error().is_none()) =>
                {
                    Err(ReadError::Malformed(weft_encap::DropReason::DeviceError, e))
                }
                Err(e) => Err(ReadError::Os(e)),
            };
        }
    }

    /// Writes one packet or frame (behind an empty `virtio_net_hdr` when
    /// offloads are on).
    #[inline]
    pub fn send(&self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.offload {
            return self.dev.send(buf);
        }
        let hdr = [0u8; VIRTIO_NET_HDR_LEN];
        let iov = [std::io::IoSlice::new(&hdr), std::io::IoSlice::new(buf)];
        self.dev
            .send_vectored(&iov)
            .map(|n| n.saturating_sub(VIRTIO_NET_HDR_LEN))
    }

    /// Writes one packet made of `parts` (with offloads, the first part
    /// must be its `virtio_net_hdr`).
    #[inline]
    pub fn writev(&self, parts: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.dev.send_vectored(parts)
    }

    /// `read_batch` for a TAP device with offloads: reads one Ethernet frame, and if it
    /// carries a TCP super-packet splits that into MTU-sized frames with
    /// complete checksums, each behind a copy of the frame's Ethernet
    /// header. A frame the kernel left with a partial checksum gets it
    /// completed. With offloads only.
    fn recv_frames(
        &self,
        scratch: &mut [u8],
        bufs: &mut [Box<[u8]>],
        sizes: &mut [usize],
        offset: usize,
    ) -> std::io::Result<usize> {
        const ETH: usize = weft_encap::ethernet::HEADER_LEN;
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let len = self.dev.recv(scratch)?;
        let (Some(raw), Some(out0)) = (scratch.get_mut(..len), bufs.first_mut()) else {
            return Err(invalid("no buffers"));
        };
        if len <= VIRTIO_NET_HDR_LEN + ETH {
            return Err(invalid("frame shorter than its headers"));
        }
        let hdr = tun_rs::VirtioNetHdr::decode(&raw[..VIRTIO_NET_HDR_LEN])?;
        let frame = &mut raw[VIRTIO_NET_HDR_LEN..];
        if hdr.gso_type == 0 {
            if hdr.flags & 1 != 0 {
                complete_checksum(frame, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            let dst = out0
                .get_mut(offset..offset + frame.len())
                .ok_or_else(|| invalid("frame larger than the buffer"))?;
            dst.copy_from_slice(frame);
            sizes[0] = frame.len();
            return Ok(1);
        }
        // Split the IP super-packet behind the Ethernet header, with the
        // header's offsets made relative to the IP header.
        let (csum_start, hdr_len) = (
            hdr.csum_start.checked_sub(ETH as u16),
            hdr.hdr_len.checked_sub(ETH as u16),
        );
        let (Some(csum_start), Some(hdr_len)) = (csum_start, hdr_len) else {
            return Err(invalid("offsets inside the Ethernet header"));
        };
        let ip_hdr = tun_rs::VirtioNetHdr {
            csum_start,
            hdr_len,
            ..hdr
        };
        let (eth, ip) = frame.split_at_mut(ETH);
        let is_v6 = Frame::new_unchecked(&*eth).ethertype() == ethertype::IPV6;
        let n = tun_rs::gso_split(ip, ip_hdr, bufs, sizes, offset + ETH, is_v6)?;
        for (b, size) in bufs.iter_mut().zip(sizes.iter_mut()).take(n) {
            b[offset..offset + ETH].copy_from_slice(eth);
            *size += ETH;
        }
        Ok(n)
    }
}

impl AsRawFd for Queue {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

/// Completes a partial (CHECKSUM_PARTIAL) checksum: the field at
/// `start + at` holds the pseudo-header sum; the checksum covers
/// everything from `start`.
fn complete_checksum(frame: &mut [u8], start: usize, at: usize) -> std::io::Result<()> {
    use weft_encap::checksum;
    let field = start + at;
    if start >= frame.len() || field + 2 > frame.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "checksum offsets outside the frame",
        ));
    }
    let c = !checksum::fold(checksum::sum(&frame[start..], 0));
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Creates the device `name` with `queues` non-blocking queues. The device is
/// not persistent: it disappears, with its addresses and routes, when the
/// last queue closes (so a crashed weft leaves nothing behind).
///
/// With `offload` the device is opened with `IFF_VNET_HDR` and TSO4/6
/// (and USO where the kernel has it); a kernel that refuses gets a plain
/// device and a log line.
pub fn create(
    name: &str,
    kind: DeviceKind,
    queues: usize,
    offload: bool,
    mtu: usize,
) -> Result<Vec<Queue>, DeviceError> {
    if offload {
        match create_with(name, kind, queues, true, mtu) {
            Ok(q) => return Ok(q),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the device with offloads; trying a plain device")
            }
        }
    }
    create_with(name, kind, queues, false, mtu)
}

fn create_with(
    name: &str,
    kind: DeviceKind,
    queues: usize,
    offload: bool,
    mtu: usize,
) -> Result<Vec<Queue>, DeviceError> {
    let (layer, kind_name) = match kind {
        DeviceKind::Tap => (Layer::L2, "tap"),
        DeviceKind::Tun => (Layer::L3, "tun"),
    };
    let multi = queues > 1;
    let first = DeviceBuilder::new()
        .name(name)
        .layer(layer)
        .with(|b| {
            b.packet_information(false)
                .multi_queue(multi)
                .offload(offload);
        })
        .build_sync()
        .map_err(|error| DeviceError::Create {
            name: name.to_string(),
            kind: kind_name,
            error,
        })?;
    let mut out = Vec::with_capacity(queues);
    for q in 1..queues {
        let extra = first.try_clone().map_err(|error| DeviceError::Queue {
            name: name.to_string(),
            queue: q,
            error,
        })?;
        out.push(extra);
    }
    out.insert(0, first);
    out.into_iter()
        .enumerate()
        .map(|(queue, d)| {
            d.set_nonblocking(true)
                .map_err(|error| DeviceError::Queue {
                    name: name.to_string(),
                    queue,
                    error,
                })?;
            Ok(Queue {
                offload: offload && d.tcp_gso(),
                kind,
                mtu,
                dev: d,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_encap::checksum;

    /// A UDP/IPv4 frame as a TAP with `IFF_VNET_HDR` hands it over for
    /// CHECKSUM_PARTIAL: the checksum field holds the pseudo-header sum.
    #[test]
    fn partial_checksums_are_completed() {
        let payload = b"weft partial checksum";
        let udp_len = 8 + payload.len();
        let mut f = vec![0u8; 14 + 20 + udp_len];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 244, 1, 2]);
        ip[16..20].copy_from_slice(&[10, 244, 2, 3]);
        let udp = &mut f[34..];
        udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&5000u16.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        udp[8..].copy_from_slice(payload);
        let pseudo =
            weft_encap::l4::pseudo_header_sum([10, 244, 1, 2], [10, 244, 2, 3], 17, udp_len as u16);
        let partial = checksum::fold(pseudo);
        f[34 + 6..34 + 8].copy_from_slice(&partial.to_be_bytes());
        complete_checksum(&mut f, 34, 6).unwrap();
        // Valid: the segment plus the pseudo-header sums to all ones.
        let total = checksum::fold(checksum::sum(&f[34..], pseudo));
        assert_eq!(total, 0xffff);
        // Offsets outside the frame are an error, not a panic.
        let len = f.len();
        assert!(complete_checksum(&mut f, len, 0).is_err());
        assert!(complete_checksum(&mut f, 34, len).is_err());
    }
}
