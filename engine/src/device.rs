//! The TUN or TAP device the kernel hands pod traffic to, one queue per
//! worker (`IFF_MULTI_QUEUE` when there is more than one worker).

use std::os::fd::{AsRawFd, RawFd};
pub use tun_rs::VIRTIO_NET_HDR_LEN;
use tun_rs::{DeviceBuilder, Layer, SyncDevice};

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
        "cannot create {kind} device {name} (is /dev/net/tun there and are we root?): {source}"
    )]
    Create {
        /// Device name.
        name: String,
        /// tun or tap.
        kind: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A queue could not be added.
    #[error("cannot open queue {queue} of {name}: {source}")]
    Queue {
        /// Device name.
        name: String,
        /// Queue number.
        queue: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One queue of the device, owned by one worker.
pub struct Queue {
    dev: SyncDevice,
    offload: bool,
}

impl Queue {
    /// True when the queue was opened with `IFF_VNET_HDR` and TSO: reads
    /// return super-packets (use `recv_multiple`) and writes take a
    /// `virtio_net_hdr` (use `send_multiple`, or `send`, which adds an
    /// empty one).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Reads one packet (TUN) or frame (TAP); `WouldBlock` when none is
    /// ready. Without offloads only.
    #[inline]
    pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.dev.recv(buf)
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

    /// Reads one (super-)packet and splits it into MTU-sized packets with
    /// complete checksums, each written into `bufs[i][offset..]` with its
    /// length in `sizes[i]`. Returns how many. With offloads only.
    #[inline]
    pub fn recv_multiple(
        &self,
        scratch: &mut [u8],
        bufs: &mut [Box<[u8]>],
        sizes: &mut [usize],
        offset: usize,
    ) -> std::io::Result<usize> {
        self.dev.recv_multiple(scratch, bufs, sizes, offset)
    }
}

impl AsRawFd for Queue {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

/// Creates the device `name` with `queues` non-blocking queues. The device is
/// not persistent: it disappears, with its addresses and routes, when the
/// last queue closes (so a crashed weft leaves nothing behind).
///
/// With `offload` a TUN device is opened with `IFF_VNET_HDR` and TSO4/6
/// (and USO where the kernel has it); a kernel that refuses gets a plain
/// device and a log line. TAP devices never use offloads.
pub fn create(
    name: &str,
    kind: DeviceKind,
    queues: usize,
    offload: bool,
) -> Result<Vec<Queue>, DeviceError> {
    if offload && kind == DeviceKind::Tun {
        match create_with(name, kind, queues, true) {
            Ok(q) => return Ok(q),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the device with offloads; trying a plain device")
            }
        }
    }
    create_with(name, kind, queues, false)
}

fn create_with(
    name: &str,
    kind: DeviceKind,
    queues: usize,
    offload: bool,
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
        .map_err(|source| DeviceError::Create {
            name: name.to_string(),
            kind: kind_name,
            source,
        })?;
    let mut out = Vec::with_capacity(queues);
    for q in 1..queues {
        let extra = first.try_clone().map_err(|source| DeviceError::Queue {
            name: name.to_string(),
            queue: q,
            source,
        })?;
        out.push(extra);
    }
    out.insert(0, first);
    out.into_iter()
        .enumerate()
        .map(|(queue, d)| {
            d.set_nonblocking(true)
                .map_err(|source| DeviceError::Queue {
                    name: name.to_string(),
                    queue,
                    source,
                })?;
            Ok(Queue {
                offload: offload && d.tcp_gso(),
                dev: d,
            })
        })
        .collect()
}
