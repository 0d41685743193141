//! UDP sockets for the data path and batched I/O on them: `recvmmsg` and
//! `sendmmsg`, one syscall per batch instead of one per packet.
//!
//! Sockets are blocking with a short send timeout: `sendmmsg` waits briefly
//! for buffer space (backpressure instead of loss), and a full buffer that
//! stays full becomes a counted drop, never a spin. Receives always pass
//! `MSG_DONTWAIT`, so the poll loop never blocks on them.

use crate::bufs::PacketBufs;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Socket buffer size asked for (the `*FORCE` variant first, as root may).
const SOCKET_BUFFER: usize = 4 << 20;
/// How long a send waits for buffer space before the batch's rest is dropped.
const SEND_TIMEOUT: Duration = Duration::from_millis(10);

/// Opens a UDP socket bound to `addr`. `reuse_port` lets every worker bind
/// the same port (the kernel spreads flows across them).
pub fn bind(addr: SocketAddrV4, reuse_port: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    set_buffers(&s);
    s.set_write_timeout(Some(SEND_TIMEOUT))?;
    s.bind(&SocketAddr::V4(addr).into())?;
    Ok(s.into())
}

fn set_buffers(s: &Socket) {
    let fd = s.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let v = SOCKET_BUFFER as libc::c_int;
        // SAFETY: fd is a live socket owned by `s`; the option value is a
        // c_int on the stack whose size is passed alongside it.
        let forced = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                force,
                (&v as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    plain,
                    (&v as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

/// What `recvmmsg` said about one datagram.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    /// Bytes received (the datagram's full length when `truncated`).
    pub len: usize,
    /// Who sent it.
    pub src: SocketAddrV4,
    /// The datagram did not fit the slot (MSG_TRUNC).
    pub truncated: bool,
}

/// The arrays `recvmmsg`/`sendmmsg` take: one header, one iovec and one
/// address per datagram, allocated once and reused every batch.
struct Mmsg {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
}

// SAFETY: the raw pointers inside the mmsghdr/iovec arrays are rebuilt before
// every call and never dereferenced outside it, so moving the arrays to
// another thread is sound.
unsafe impl Send for Mmsg {}

impl Mmsg {
    fn new(n: usize) -> Mmsg {
        // SAFETY: mmsghdr, iovec and sockaddr_in are plain C structs for
        // which all-zero bytes are a valid value.
        unsafe {
            Mmsg {
                hdrs: vec![zeroed(); n],
                iovs: vec![zeroed(); n],
                addrs: vec![zeroed(); n],
            }
        }
    }

    fn len(&self) -> usize {
        self.hdrs.len()
    }

    /// Points entry `i` at `len` bytes from `base` and at its own address
    /// slot. The pointers stay valid while `self` and the buffer do.
    fn set(&mut self, i: usize, base: *mut libc::c_void, len: usize) {
        self.iovs[i] = libc::iovec {
            iov_base: base,
            iov_len: len,
        };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
    }
}

/// Reusable `recvmmsg` state for one socket and one buffer set.
pub struct Receiver {
    msgs: Mmsg,
    /// Per-datagram results of the last `recv`.
    pub meta: Vec<RecvMeta>,
}

impl Receiver {
    /// State for batches of up to `n` datagrams.
    pub fn new(n: usize) -> Receiver {
        Receiver {
            msgs: Mmsg::new(n),
            meta: Vec::with_capacity(n),
        }
    }

    /// Receives up to `bufs.count()` datagrams without blocking, each into
    /// its slot from `offset` on. Returns how many; `meta` describes them.
    pub fn recv(
        &mut self,
        sock: &UdpSocket,
        bufs: &mut PacketBufs,
        offset: usize,
    ) -> io::Result<usize> {
        let n = bufs.count().min(self.msgs.len());
        let cap = bufs.slot_len() - offset;
        for i in 0..n {
            let base = bufs.slot_mut(i)[offset..].as_mut_ptr().cast();
            self.msgs.set(i, base, cap);
        }
        // SAFETY: hdrs[..n] point at iovecs and sockaddrs owned by self and
        // at slots of `bufs`, all alive and exclusively borrowed for the call.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.msgs.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        self.meta.clear();
        for (h, a) in self.msgs.hdrs[..r].iter().zip(&self.msgs.addrs) {
            self.meta.push(RecvMeta {
                len: h.msg_len as usize,
                src: SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ),
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(r)
    }
}

/// One datagram to send: a byte range of a buffer slot and its destination.
#[derive(Debug, Clone, Copy)]
pub struct OutMsg {
    /// Slot index.
    pub slot: u32,
    /// Start of the payload within the slot.
    pub start: u32,
    /// Payload length.
    pub len: u32,
    /// Destination.
    pub dst: SocketAddrV4,
}

/// What a `send` achieved.
#[derive(Debug, Default, Clone, Copy)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Bytes in those datagrams.
    pub bytes: u64,
    /// Datagrams dropped on an error.
    pub failed: usize,
    /// The last error seen, for the log.
    pub last_error: Option<i32>,
}

/// Reusable `sendmmsg` state.
pub struct Sender {
    msgs: Mmsg,
}

impl Sender {
    /// State for batches of up to `n` datagrams.
    pub fn new(n: usize) -> Sender {
        Sender { msgs: Mmsg::new(n) }
    }

    /// Sends `msgs` (at most `n` of them) from `sock`. An error on one
    /// datagram drops that datagram and the rest go on; a send timeout
    /// (buffer full for `SEND_TIMEOUT`) drops what is left.
    pub fn send(&mut self, sock: &UdpSocket, bufs: &PacketBufs, msgs: &[OutMsg]) -> SendOutcome {
        let n = msgs.len().min(self.msgs.len());
        for (i, m) in msgs[..n].iter().enumerate() {
            let slot = bufs.slot(m.slot as usize);
            let payload = &slot[m.start as usize..(m.start + m.len) as usize];
            // sendmmsg only reads through this pointer.
            self.msgs
                .set(i, payload.as_ptr() as *mut libc::c_void, payload.len());
            self.msgs.addrs[i] = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: m.dst.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*m.dst.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
        }
        let mut out = SendOutcome::default();
        let mut i = 0;
        while i < n {
            // SAFETY: hdrs[i..n] point at iovecs/sockaddrs owned by self and
            // at slots of `bufs`, alive for the call.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.msgs.hdrs[i..].as_mut_ptr(),
                    (n - i) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                for m in &msgs[i..i + r as usize] {
                    out.bytes += u64::from(m.len);
                }
                out.sent += r as usize;
                i += r as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            out.last_error = err.raw_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    // Buffer full for the whole send timeout: drop the rest.
                    out.failed += n - i;
                    break;
                }
                _ => {
                    // This datagram is refused (EMSGSIZE, ENETUNREACH,
                    // ECONNREFUSED from an earlier ICMP, …): drop it alone.
                    out.failed += 1;
                    i += 1;
                }
            }
        }
        out
    }
}
