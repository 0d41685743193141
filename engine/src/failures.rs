//! Calls of the batched I/O that failed, by OS error: what a batch send
//! (`udp_io::Sender`) or a device write (`Queue::write_batch`) reports,
//! for the worker to count. Plain numbers, so the layers below the
//! worker need nothing of the metrics.

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
