//! The TUN or TAP device the kernel hands pod traffic to, one queue per
//! worker (`IFF_MULTI_QUEUE` when there is more than one worker).

use std::os::fd::{AsRawFd, RawFd};
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
pub struct Queue(SyncDevice);

impl Queue {
    /// Reads one packet (TUN) or frame (TAP); `WouldBlock` when none is ready.
    #[inline]
    pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }

    /// Writes one packet or frame.
    #[inline]
    pub fn send(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf)
    }
}

impl AsRawFd for Queue {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Creates the device `name` with `queues` non-blocking queues. The device is
/// not persistent: it disappears, with its addresses and routes, when the
/// last queue closes (so a crashed weft leaves nothing behind).
pub fn create(name: &str, kind: DeviceKind, queues: usize) -> Result<Vec<Queue>, DeviceError> {
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
                .offload(false);
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
            Ok(Queue(d))
        })
        .collect()
}
