//! UDP sockets for the data path and batched I/O on them: `recvmmsg` and
//! `sendmmsg`, one syscall per batch instead of one per packet.
//!
//! Sockets are blocking with a short send timeout: `sendmmsg` waits briefly
//! for buffer space (backpressure instead of loss), and a full buffer that
//! stays full becomes a counted drop, never a spin. Receives always pass
//! `MSG_DONTWAIT`, so the poll loop never blocks on them.

use crate::bufs::PacketBufs;
use crate::failures::Failures;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Socket buffer size asked for (the `*FORCE` variant first, as root may).
const SOCKET_BUFFER: usize = 4 << 20;
/// How long a send waits for buffer space before the batch's rest is dropped.
const SEND_TIMEOUT: Duration = Duration::from_millis(10);

/// Opens a UDP socket bound to `addr`. `reuse_port` lets every worker bind
/// the same port (the kernel spreads flows across them).
///
/// Never `SO_REUSEADDR`: with it, any process could bind the same port on
/// the node's own address and, being more specific than our wildcard,
/// receive the overlay's inbound traffic. `SO_REUSEPORT` alone shares the
/// port only with sockets of the same user (`udp_lib_lport_inuse` in the
/// kernel), so no other user can bind it at all.
///
/// An IPv6 socket is IPv6-only (`IPV6_V6ONLY`): the IPv4 underlay has its
/// own socket on the same port, as the kernel's `flannel.1` and
/// `flannel-v6.1` share theirs. Its UDP checksums are always computed, as
/// IPv6 requires (RFC 8200 §8.1).
///
/// `big_buffers` asks for multi-megabyte socket buffers (`Tuning`).
pub fn bind<A: SockAddr>(addr: A, reuse_port: bool, big_buffers: bool) -> io::Result<UdpSocket> {
    let addr: SocketAddr = addr.into();
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if big_buffers {
        set_buffers(&s);
    }
    s.set_write_timeout(Some(SEND_TIMEOUT))?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A socket address of one family, as the batch calls carry it: written
/// into and read from a `sockaddr_in6`-sized slot, which holds either
/// family's (`sockaddr_in` is the smaller).
pub trait SockAddr: Copy + Eq + Into<SocketAddr> + Send + 'static {
    /// Writes the address into `slot`: the length the kernel is to read.
    fn write(self, slot: &mut libc::sockaddr_in6) -> libc::socklen_t;
    /// The address the kernel wrote into `slot`.
    fn read(slot: &libc::sockaddr_in6) -> Self;
}

impl SockAddr for SocketAddrV4 {
    #[inline]
    fn write(self, slot: &mut libc::sockaddr_in6) -> libc::socklen_t {
        let v4 = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: self.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*self.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a sockaddr_in (16 bytes, 4-aligned) fits at the start of
        // a sockaddr_in6 (28 bytes, 4-aligned), as in a sockaddr_storage.
        unsafe {
            (slot as *mut libc::sockaddr_in6)
                .cast::<libc::sockaddr_in>()
                .write(v4)
        };
        size_of::<libc::sockaddr_in>() as libc::socklen_t
    }

    #[inline]
    fn read(slot: &libc::sockaddr_in6) -> SocketAddrV4 {
        // SAFETY: as in `write`; any bytes are a valid sockaddr_in.
        let v4 = unsafe { &*(slot as *const libc::sockaddr_in6).cast::<libc::sockaddr_in>() };
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
            u16::from_be(v4.sin_port),
        )
    }
}

impl SockAddr for SocketAddrV6 {
    #[inline]
    fn write(self, slot: &mut libc::sockaddr_in6) -> libc::socklen_t {
        *slot = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: self.port().to_be(),
            sin6_flowinfo: self.flowinfo().to_be(),
            sin6_addr: libc::in6_addr {
                s6_addr: self.ip().octets(),
            },
            sin6_scope_id: self.scope_id(),
        };
        size_of::<libc::sockaddr_in6>() as libc::socklen_t
    }

    #[inline]
    fn read(slot: &libc::sockaddr_in6) -> SocketAddrV6 {
        SocketAddrV6::new(
            Ipv6Addr::from(slot.sin6_addr.s6_addr),
            u16::from_be(slot.sin6_port),
            u32::from_be(slot.sin6_flowinfo),
            slot.sin6_scope_id,
        )
    }
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
pub struct RecvMeta<A = SocketAddrV4> {
    /// Bytes received (the datagram's full length when `truncated`).
    pub len: usize,
    /// Who sent it.
    pub src: A,
    /// The datagram did not fit the slot (MSG_TRUNC).
    pub truncated: bool,
    /// With UDP GRO on the socket: the size of each of the datagrams
    /// coalesced into this one (the last may be shorter); 0 for one
    /// datagram.
    pub segment: usize,
}

/// Asks the kernel to hand over runs of datagrams from one sender as one
/// buffer (`UDP_GRO`), each run with its segment size. Needs receive
/// buffers of 64 KiB. False when the kernel refuses (before Linux 5.0).
pub fn enable_gro(sock: &UdpSocket) -> bool {
    set_udp_option(sock, libc::UDP_GRO, 1)
}

/// Whether the kernel segments UDP sends (`UDP_SEGMENT`, Linux 4.18): the
/// socket option is set to 0, which changes nothing where it exists. An
/// emulator or an older kernel that lacks it refuses the option
/// (`ENOPROTOOPT`), and would refuse or ignore the per-send control message
/// the same way, so the data path sends without GSO there.
pub fn gso_supported(sock: &UdpSocket) -> bool {
    set_udp_option(sock, libc::UDP_SEGMENT, 0)
}

/// Sets a `SOL_UDP` option to a c_int value; false when it is refused.
fn set_udp_option(sock: &UdpSocket, option: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: sock is a live socket; the value is a c_int whose size is
    // passed alongside it.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// The arrays `recvmmsg`/`sendmmsg` take: one header, one iovec and one
/// address slot (of either family, `SockAddr`) per datagram, allocated
/// once and reused every batch.
struct Mmsg {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in6>,
}

// SAFETY: the raw pointers inside the mmsghdr/iovec arrays are rebuilt before
// every call and never dereferenced outside it, so moving the arrays to
// another thread is sound.
unsafe impl Send for Mmsg {}

impl Mmsg {
    fn new(n: usize) -> Mmsg {
        // SAFETY: mmsghdr, iovec and sockaddr_in6 are plain C structs for
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
        h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in6).cast();
        h.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
    }
}

/// Reusable `recvmmsg` state for one socket (of the family of `A`) and one
/// buffer set.
pub struct Receiver<A = SocketAddrV4> {
    msgs: Mmsg,
    /// A control buffer per message, for the `UDP_GRO` segment size.
    cmsgs: Vec<[u64; 4]>,
    /// Per-datagram results of the last `recv`.
    pub meta: Vec<RecvMeta<A>>,
}

impl<A: SockAddr> Receiver<A> {
    /// State for batches of up to `n` datagrams.
    pub fn new(n: usize) -> Receiver<A> {
        Receiver {
            msgs: Mmsg::new(n),
            cmsgs: vec![[0; 4]; n],
            meta: Vec::with_capacity(n),
        }
    }

    /// The most datagrams one `recv` returns: a full batch means more may
    /// be waiting.
    pub fn capacity(&self) -> usize {
        self.msgs.len()
    }

    /// Receives up to `bufs.len()` datagrams (at most `capacity()`)
    /// without blocking, each into its buffer from `offset` to its end.
    /// Returns how many; `meta` describes them.
    pub fn recv_into<B: AsMut<[u8]>>(
        &mut self,
        sock: &UdpSocket,
        bufs: &mut [B],
        offset: usize,
    ) -> io::Result<usize> {
        let n = bufs.len().min(self.msgs.len());
        for (i, b) in bufs[..n].iter_mut().enumerate() {
            let room = &mut b.as_mut()[offset..];
            self.msgs.set(i, room.as_mut_ptr().cast(), room.len());
            let h = &mut self.msgs.hdrs[i].msg_hdr;
            h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = size_of::<[u64; 4]>() as _;
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
                src: A::read(a),
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                segment: gro_segment(&h.msg_hdr),
            });
        }
        Ok(r)
    }
}

/// One datagram to send: a byte range of a buffer slot and its destination.
#[derive(Debug, Clone, Copy)]
pub struct OutMsg<A = SocketAddrV4> {
    /// Slot index.
    pub slot: u32,
    /// Start of the payload within the slot.
    pub start: u32,
    /// Payload length.
    pub len: u32,
    /// Destination.
    pub dst: A,
}

/// What a `send` achieved.
#[derive(Debug, Default, Clone, Copy)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Bytes in those datagrams.
    pub bytes: u64,
    /// Datagrams dropped on an error.
    pub failed: Failures,
}

/// The most segments one UDP GSO send carries (the kernel's older limit).
const GSO_MAX_SEGMENTS: usize = 64;
/// The most payload bytes one UDP GSO send carries (an IPv4 datagram's
/// 65535 less the IPv4 and UDP headers).
const GSO_MAX_BYTES: usize = 65535 - 20 - 8;
/// Room for one `UDP_SEGMENT` control message.
type SegmentCmsg = [u64; 4];

impl SendOutcome {
    fn add(&mut self, o: SendOutcome) {
        self.sent += o.sent;
        self.bytes += o.bytes;
        self.failed.add(&o.failed);
    }
}

/// Reusable `sendmmsg` state.
pub struct Sender {
    msgs: Mmsg,
    /// Datagrams (or GSO runs) per `sendmmsg` call.
    per_call: usize,
    /// Send runs of equal-size datagrams to one destination as one UDP GSO
    /// message; cleared for good when the kernel refuses it.
    gso: bool,
    cmsgs: Vec<SegmentCmsg>,
    /// (first message, count) of each run.
    runs: Vec<(usize, usize)>,
}

impl Sender {
    /// State for batches of up to `n` datagrams; `gso` tries UDP GSO;
    /// without `batched`, one datagram (or GSO run) per syscall.
    pub fn new(n: usize, gso: bool, batched: bool) -> Sender {
        Sender {
            msgs: Mmsg::new(n),
            per_call: if batched { n } else { 1 },
            gso,
            cmsgs: vec![[0; 4]; n],
            runs: Vec::with_capacity(n),
        }
    }

    /// Whether sends still use UDP GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Sends `msgs` (at most `n` of them) from `sock`. An error on one
    /// datagram drops that datagram and the rest go on; a send timeout
    /// (buffer full for `SEND_TIMEOUT`) drops what is left.
    ///
    /// With GSO, consecutive datagrams to one destination with one size
    /// (the last may be shorter) go as one message with a `UDP_SEGMENT`
    /// control message: the kernel segments them, one traversal of the
    /// stack for up to 64. `EIO` (an egress device without checksum
    /// offload) turns GSO off and resends without it.
    pub fn send<A: SockAddr>(
        &mut self,
        sock: &UdpSocket,
        bufs: &PacketBufs,
        msgs: &[OutMsg<A>],
    ) -> SendOutcome {
        if !self.gso {
            return self.send_each(sock, bufs, msgs);
        }
        let n = msgs.len().min(self.msgs.len());
        let msgs = &msgs[..n];
        self.runs.clear();
        let mut i = 0;
        while i < n {
            let (start, size, dst) = (i, msgs[i].len, msgs[i].dst);
            let mut total = size as usize;
            i += 1;
            while i < n
                && i - start < GSO_MAX_SEGMENTS
                && msgs[i].dst == dst
                && msgs[i].len <= size
                && total + msgs[i].len as usize <= GSO_MAX_BYTES
            {
                total += msgs[i].len as usize;
                i += 1;
                if msgs[i - 1].len < size {
                    break; // only the last segment may be shorter
                }
            }
            self.runs.push((start, i - start));
        }
        for (k, &(start, count)) in self.runs.iter().enumerate() {
            for (j, m) in msgs[start..start + count].iter().enumerate() {
                let payload =
                    &bufs.slot(m.slot as usize)[m.start as usize..(m.start + m.len) as usize];
                self.msgs.iovs[start + j] = libc::iovec {
                    iov_base: payload.as_ptr() as *mut libc::c_void,
                    iov_len: payload.len(),
                };
            }
            let namelen = msgs[start].dst.write(&mut self.msgs.addrs[k]);
            let h = &mut self.msgs.hdrs[k].msg_hdr;
            h.msg_name = (&mut self.msgs.addrs[k] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = namelen;
            h.msg_iov = &mut self.msgs.iovs[start];
            h.msg_iovlen = count as _;
            h.msg_flags = 0;
            if count > 1 {
                let buf = &mut self.cmsgs[k];
                // SAFETY: the CMSG_* helpers only compute sizes; the
                // control buffer holds CMSG_SPACE(2) bytes (24 <= 32) and is
                // 8-byte aligned, as a cmsghdr needs.
                unsafe {
                    let c = buf.as_mut_ptr().cast::<libc::cmsghdr>();
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    libc::CMSG_DATA(c)
                        .cast::<u16>()
                        .write_unaligned(msgs[start].len as u16);
                    h.msg_control = c.cast();
                    h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        let runs = self.runs.len();
        let mut out = SendOutcome::default();
        let mut k = 0;
        while k < runs {
            // SAFETY: hdrs[k..runs] point at iovecs, sockaddrs and control
            // buffers owned by self and at slots of `bufs`, alive for the call.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.msgs.hdrs[k..].as_mut_ptr(),
                    (runs - k).min(self.per_call) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                for &(start, count) in &self.runs[k..k + r as usize] {
                    out.sent += count;
                    out.bytes += msgs[start..start + count]
                        .iter()
                        .map(|m| u64::from(m.len))
                        .sum::<u64>();
                }
                k += r as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            let (start, count) = self.runs[k];
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EIO) if count > 1 => {
                    tracing::warn!("the kernel refuses UDP GSO on this path (EIO); sending datagrams one by one from now on");
                    self.gso = false;
                    out.add(self.send_each(sock, bufs, &msgs[start..]));
                    return out;
                }
                Some(libc::EAGAIN) => {
                    // Buffer full for the whole send timeout: drop the rest.
                    out.failed.record(err.raw_os_error(), (n - start) as u64);
                    break;
                }
                _ => {
                    // This run is refused (EMSGSIZE, ENETUNREACH,
                    // ECONNREFUSED from an earlier ICMP, …): drop it alone.
                    out.failed.record(err.raw_os_error(), count as u64);
                    k += 1;
                }
            }
        }
        out
    }

    /// `send` without GSO: one datagram per message.
    fn send_each<A: SockAddr>(
        &mut self,
        sock: &UdpSocket,
        bufs: &PacketBufs,
        msgs: &[OutMsg<A>],
    ) -> SendOutcome {
        let n = msgs.len().min(self.msgs.len());
        for (i, m) in msgs[..n].iter().enumerate() {
            let slot = bufs.slot(m.slot as usize);
            let payload = &slot[m.start as usize..(m.start + m.len) as usize];
            // sendmmsg only reads through this pointer.
            self.msgs
                .set(i, payload.as_ptr() as *mut libc::c_void, payload.len());
            self.msgs.hdrs[i].msg_hdr.msg_namelen = m.dst.write(&mut self.msgs.addrs[i]);
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
                    (n - i).min(self.per_call) as libc::c_uint,
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
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    // Buffer full for the whole send timeout: drop the rest.
                    out.failed.record(err.raw_os_error(), (n - i) as u64);
                    break;
                }
                _ => {
                    // This datagram is refused (EMSGSIZE, ENETUNREACH,
                    // ECONNREFUSED from an earlier ICMP, …): drop it alone.
                    out.failed.record(err.raw_os_error(), 1);
                    i += 1;
                }
            }
        }
        out
    }
}

/// The `UDP_GRO` segment size in a received message's control data, or 0.
fn gro_segment(h: &libc::msghdr) -> usize {
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed cmsgs; the CMSG_* walkers stay within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned();
                return usize::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}
