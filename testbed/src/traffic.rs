//! Traffic between hosts: hash-checked TCP transfers and streams, and
//! ICMP echo probes.

use crate::*;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Sends `len` bytes of a deterministic pattern over TCP from namespace
/// `from` to `to_ip:port` in namespace `to`, and returns (bytes, hash) as
/// seen by the sender and by the receiver. Also returns the elapsed time.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    to_ip: Ipv4Addr,
    port: u16,
    len: usize,
) -> io::Result<TransferResult> {
    tcp_transfer_from(from, None, to, to_ip, port, len)
}

/// `tcp_transfer` with the sender bound to `src` (a pod address, say)
/// rather than the address the route picks.
pub fn tcp_transfer_from(
    from: &Netns,
    src: Option<Ipv4Addr>,
    to: &Netns,
    to_ip: Ipv4Addr,
    port: u16,
    len: usize,
) -> io::Result<TransferResult> {
    tcp_transfer_ip(from, src.map(IpAddr::from), to, to_ip.into(), port, len)
}

/// `tcp_transfer_from` in either family.
pub fn tcp_transfer_ip(
    from: &Netns,
    src: Option<IpAddr>,
    to: &Netns,
    to_ip: IpAddr,
    port: u16,
    len: usize,
) -> io::Result<TransferResult> {
    use std::io::{Read, Write};
    let listener = to.enter(move || std::net::TcpListener::bind((to_ip, port)))??;
    let server = std::thread::spawn(move || -> io::Result<(u64, u64)> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut h = Fnv::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.write(&buf[..n]);
            total += n as u64;
        }
        Ok((total, h.0))
    });
    let start = Instant::now();
    let sent = from.enter(move || -> io::Result<(u64, u64)> {
        let domain = socket2::Domain::for_address(std::net::SocketAddr::new(to_ip, port));
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        if let Some(src) = src {
            sock.bind(&std::net::SocketAddr::from((src, 0)).into())?;
        }
        sock.connect_timeout(
            &std::net::SocketAddr::from((to_ip, port)).into(),
            Duration::from_secs(5),
        )?;
        let mut s: std::net::TcpStream = sock.into();
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut h = Fnv::default();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = len;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while left > 0 {
            for b in chunk.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            h.write(&chunk[..n]);
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok((len as u64, h.0))
    })??;
    let received = server
        .join()
        .map_err(|_| io::Error::other("receiver panicked"))??;
    Ok(TransferResult {
        sent,
        received,
        elapsed: start.elapsed(),
    })
}

/// What `tcp_transfer` saw.
#[derive(Debug)]
pub struct TransferResult {
    /// (bytes, FNV-1a hash) written by the sender.
    pub sent: (u64, u64),
    /// (bytes, FNV-1a hash) read by the receiver.
    pub received: (u64, u64),
    /// Wall time from connect to the receiver's EOF.
    pub elapsed: Duration,
}

impl TransferResult {
    /// Goodput in Gbit/s.
    pub fn gbits(&self) -> f64 {
        self.received.0 as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// FNV-1a, 64-bit: a stable hash for comparing transferred bytes.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Sends a TCP stream from `from` to `to_ip:port` (listening in `to`) for
/// `duration`, or until `stop` is set, and returns the receiver's goodput
/// in Gbit/s. Either side gives up after 10 s without progress.
pub fn tcp_stream(
    from: &Netns,
    to: &Netns,
    to_ip: Ipv4Addr,
    port: u16,
    duration: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> io::Result<f64> {
    use std::io::{Read, Write};
    const TICK: Duration = Duration::from_millis(200);
    const STALL: Duration = Duration::from_secs(10);
    let stalled = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        )
    };
    let listener = to.enter(move || std::net::TcpListener::bind((to_ip, port)))??;
    let rx_stop = stop.clone();
    let server = std::thread::spawn(move || -> io::Result<(u64, Duration)> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(TICK))?;
        let start = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut progress = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    progress = Instant::now();
                }
                Err(e) if stalled(&e) => {
                    if rx_stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if progress.elapsed() > STALL {
                        return Err(io::Error::other("the TCP stream stalled for 10 s"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok((total, start.elapsed()))
    });
    let sent = from.enter(move || -> io::Result<()> {
        let mut s =
            std::net::TcpStream::connect_timeout(&(to_ip, port).into(), Duration::from_secs(5))?;
        s.set_write_timeout(Some(TICK))?;
        let chunk = vec![0x5au8; 256 * 1024];
        let end = Instant::now() + duration;
        let mut progress = Instant::now();
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            match s.write(&chunk) {
                Ok(_) => progress = Instant::now(),
                Err(e) if stalled(&e) => {
                    if progress.elapsed() > STALL {
                        return Err(io::Error::other("the TCP stream stalled for 10 s"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        s.shutdown(std::net::Shutdown::Write)
    });
    let received = server
        .join()
        .map_err(|_| io::Error::other("receiver panicked"))?;
    sent??;
    let (bytes, elapsed) = received?;
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}

/// What came back for one ICMP echo request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpReply {
    /// An echo reply, after this long.
    Echo(Duration),
    /// An ICMP error about our request: (from, type, code).
    Error(Ipv4Addr, u8, u8),
}

/// Sends ICMP echo requests from `ns` to `ip` over a raw socket (no ping
/// binary needed): `count` probes, `interval` apart, each waiting up to
/// 500 ms. Returns one entry per probe that got an answer.
pub fn ping_probe(
    ns: &Netns,
    ip: Ipv4Addr,
    count: u16,
    interval: Duration,
) -> io::Result<Vec<IcmpReply>> {
    ns.enter(move || -> io::Result<Vec<IcmpReply>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let dst: socket2::SockAddr = std::net::SocketAddr::from((ip, 0)).into();
        let id = (COUNTER.fetch_add(1, Ordering::Relaxed) as u16) ^ (std::process::id() as u16);
        let mut out = Vec::new();
        for seq in 0..count {
            let mut req = [0u8; 64];
            req[0] = 8;
            req[4..6].copy_from_slice(&id.to_be_bytes());
            req[6..8].copy_from_slice(&seq.to_be_bytes());
            let c = weft_encap::checksum::checksum(&req);
            req[2..4].copy_from_slice(&c.to_be_bytes());
            let sent = Instant::now();
            s.send_to(&req, &dst)?;
            let deadline = sent + Duration::from_millis(500);
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                let Ok(n) = std::io::Read::read(&mut &s, &mut buf) else {
                    continue;
                };
                if let Some(r) = match_reply(&buf[..n], id, seq, sent) {
                    out.push(r);
                    break;
                }
            }
            std::thread::sleep(interval);
        }
        Ok(out)
    })?
}

/// Sends `count` ICMPv6 echo requests from `ns` (from `src`, when given)
/// to `ip` over a raw socket, 50 ms apart, each waiting up to 500 ms;
/// returns how many were answered. The kernel fills in the ICMPv6
/// checksum, as it must for every raw ICMPv6 socket.
pub fn ping6(ns: &Netns, src: Option<Ipv6Addr>, ip: Ipv6Addr, count: u16) -> io::Result<usize> {
    Ok(ping6_rtts(ns, src, ip, count, Duration::from_millis(50))?.len())
}

/// Echo round-trip times from `ns` to `ip` over ICMPv6, `interval` apart
/// (lost probes, those unanswered within 500 ms, left out).
pub fn ping6_rtts(
    ns: &Netns,
    src: Option<Ipv6Addr>,
    ip: Ipv6Addr,
    count: u16,
    interval: Duration,
) -> io::Result<Vec<Duration>> {
    ns.enter(move || -> io::Result<Vec<Duration>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        if let Some(src) = src {
            s.bind(&std::net::SocketAddr::from((src, 0)).into())?;
        }
        let dst: socket2::SockAddr = std::net::SocketAddr::from((ip, 0)).into();
        let id = (COUNTER.fetch_add(1, Ordering::Relaxed) as u16) ^ (std::process::id() as u16);
        let mut rtts = Vec::new();
        for seq in 0..count {
            let mut req = [0u8; 64];
            req[0] = 128;
            req[4..6].copy_from_slice(&id.to_be_bytes());
            req[6..8].copy_from_slice(&seq.to_be_bytes());
            let sent = Instant::now();
            s.send_to(&req, &dst)?;
            let mut buf = [0u8; 512];
            while sent.elapsed() < Duration::from_millis(500) {
                let Ok(n) = std::io::Read::read(&mut &s, &mut buf) else {
                    continue;
                };
                // No IPv6 header on a raw ICMPv6 socket: type 129 is an
                // echo reply.
                let r = &buf[..n];
                if r.len() >= 8
                    && r[0] == 129
                    && r[4..6] == id.to_be_bytes()
                    && r[6..8] == seq.to_be_bytes()
                {
                    rtts.push(sent.elapsed());
                    break;
                }
            }
            std::thread::sleep(interval);
        }
        Ok(rtts)
    })?
}

/// Matches a raw ICMP datagram (IP header included) against our request.
fn match_reply(b: &[u8], id: u16, seq: u16, sent: Instant) -> Option<IcmpReply> {
    let hl = usize::from(b.first()? & 0x0f) * 4;
    let from = Ipv4Addr::new(*b.get(12)?, b[13], b[14], b[15]);
    let icmp = b.get(hl..hl + 8)?;
    let ours = |h: &[u8]| {
        h.get(4..6) == Some(&id.to_be_bytes()[..]) && h.get(6..8) == Some(&seq.to_be_bytes()[..])
    };
    match icmp[0] {
        0 if ours(icmp) => Some(IcmpReply::Echo(sent.elapsed())),
        3 | 11 => {
            // The error quotes our request's IP header and first 8 bytes.
            let quoted = b.get(hl + 8..)?;
            let qhl = usize::from(quoted.first()? & 0x0f) * 4;
            let q = quoted.get(qhl..qhl + 8)?;
            (q[0] == 8 && ours(q)).then_some(IcmpReply::Error(from, icmp[0], icmp[1]))
        }
        _ => None,
    }
}

/// Echo round-trip times from `ns` to `ip` (lost probes left out).
pub fn ping_rtts(
    ns: &Netns,
    ip: Ipv4Addr,
    count: u16,
    interval: Duration,
) -> io::Result<Vec<Duration>> {
    Ok(ping_probe(ns, ip, count, interval)?
        .into_iter()
        .filter_map(|r| match r {
            IcmpReply::Echo(d) => Some(d),
            IcmpReply::Error(..) => None,
        })
        .collect())
}
