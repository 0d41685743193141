//! `weft check`: what this kernel and host offer weft, for a user on a new
//! board before anything else. Every row is probed, not guessed: devices
//! are created (and vanish when closed), datagrams are sent through the
//! data path's own batched, segmented I/O on loopback, ports are bound.
//! Each row says what weft will use, what it will degrade to, or why it
//! cannot run; `weft check` fails only when weft cannot run at all.

use crate::bufs::PacketBufs;
use crate::device::{self, DeviceKind};
use crate::netlink::Netlink;
use crate::udp_io::{self, OutMsg, Receiver, Sender};
use ipnet::Ipv4Net;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use weft_encap::MacAddr;

/// The MTU the probe devices are opened with (they carry no traffic).
const PROBE_MTU: usize = 1500;

/// What a row means for weft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// weft uses it.
    Uses,
    /// For information: weft does not need it.
    Note,
    /// Missing or off: weft runs without it, slower or with less.
    Degrades,
    /// Something for the user to fix before pods can talk.
    Fix,
    /// weft cannot run.
    Blocks,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Uses => "ok",
            Verdict::Note => "note",
            Verdict::Degrades => "degraded",
            Verdict::Fix => "fix",
            Verdict::Blocks => "CANNOT RUN",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was probed.
    pub what: &'static str,
    /// What the probe found.
    pub found: String,
    /// What that means for weft.
    pub verdict: Verdict,
    /// What weft does about it, in words.
    pub says: String,
}

fn row(
    what: &'static str,
    found: impl Into<String>,
    verdict: Verdict,
    says: impl Into<String>,
) -> Row {
    Row {
        what,
        found: found.into(),
        verdict,
        says: says.into(),
    }
}

/// Runs every probe.
pub fn probe() -> Vec<Row> {
    let mut rows = vec![kernel(), vxlan_module()];
    let admin = net_admin();
    rows.push(match admin {
        Some(true) => row("CAP_NET_ADMIN", "held", Verdict::Uses, "creates the device, routes and neighbours"),
        Some(false) => row(
            "CAP_NET_ADMIN",
            "not held",
            Verdict::Blocks,
            "weft run needs it (run as root, or give the capability); the device rows below are not probed",
        ),
        None => row("CAP_NET_ADMIN", "unknown (no /proc/self/status)", Verdict::Note, "probing anyway"),
    });
    rows.push(tun_node());
    if admin != Some(false) {
        rows.extend(devices());
    }
    rows.extend(udp_io_rows());
    rows.extend(traffic_rules());
    rows.extend(sysctls());
    rows.extend(ports());
    rows
}

/// True when no row blocks weft.
pub fn can_run(rows: &[Row]) -> bool {
    rows.iter().all(|r| r.verdict != Verdict::Blocks)
}

/// The report as a table, with a verdict line under it.
pub fn render(rows: &[Row]) -> String {
    let w_what = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let w_found = rows
        .iter()
        .map(|r| r.found.chars().count())
        .max()
        .unwrap_or(0)
        .min(44);
    let w_verdict = rows
        .iter()
        .map(|r| r.verdict.label().len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(
            out,
            "{:w_what$}  {:w_found$}  {:w_verdict$}  {}",
            r.what,
            r.found,
            r.verdict.label(),
            r.says
        );
    }
    let blocking: Vec<&str> = rows
        .iter()
        .filter(|r| r.verdict == Verdict::Blocks)
        .map(|r| r.what)
        .collect();
    match blocking.as_slice() {
        [] => out.push_str("\nweft can run here.\n"),
        b => {
            let _ = writeln!(out, "\nweft cannot run here: {}.", b.join(", "));
        }
    }
    out
}

/// `weft check`: prints the report; an error when weft cannot run.
pub fn run() -> anyhow::Result<()> {
    let rows = probe();
    print!("{}", render(&rows));
    match can_run(&rows) {
        true => Ok(()),
        false => anyhow::bail!("this host lacks what weft needs (the rows marked CANNOT RUN)"),
    }
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn release() -> String {
    read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into())
}

fn kernel() -> Row {
    let arch = std::env::consts::ARCH;
    row(
        "kernel",
        format!("Linux {} ({arch})", release()),
        Verdict::Note,
        "weft needs TUN/TAP and UDP sockets; offloads from Linux 4.18 on",
    )
}

/// The `vxlan` module: loaded, built in, available, or absent. weft does
/// not need it; its absence is why flanneld's vxlan backend fails here.
fn vxlan_module() -> Row {
    let rel = release();
    let dir = Path::new("/lib/modules").join(&rel);
    let listed = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .map(|t| {
                t.lines().any(|l| {
                    l.split(':')
                        .next()
                        .is_some_and(|m| m.ends_with("/vxlan.ko") || m.contains("/vxlan.ko."))
                })
            })
            .unwrap_or(false)
    };
    let (found, says) = if Path::new("/sys/module/vxlan").exists() {
        (
            "loaded".to_string(),
            "not needed by weft; flanneld's vxlan backend would work too",
        )
    } else if listed("modules.builtin") {
        (
            "built in".to_string(),
            "not needed by weft; flanneld's vxlan backend would work too",
        )
    } else if listed("modules.dep") {
        (
            "available, not loaded".to_string(),
            "not needed by weft; `modprobe vxlan` would let flanneld's vxlan backend work",
        )
    } else if !dir.exists() {
        (
            format!("absent (no {})", dir.display()),
            "not needed by weft; flanneld's vxlan backend fails here (\"operation not supported\")",
        )
    } else {
        (
            "absent".to_string(),
            "not needed by weft; flanneld's vxlan backend fails here (\"operation not supported\")",
        )
    };
    row("vxlan module", found, Verdict::Note, says)
}

/// Whether this process holds CAP_NET_ADMIN (bit 12 of CapEff).
fn net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let caps = u64::from_str_radix(eff.trim(), 16).ok()?;
    Some(caps & (1 << 12) != 0)
}

fn tun_node() -> Row {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        Ok(_) => row("/dev/net/tun", "opens", Verdict::Uses, "TUN and TAP devices"),
        Err(e) => row(
            "/dev/net/tun",
            format!("{e}"),
            Verdict::Blocks,
            "weft's device is a TUN or TAP: load the `tun` module (`modprobe tun`) or build CONFIG_TUN",
        ),
    }
}

/// Creates a TUN with two queues and offloads, and a TAP, each under a
/// name of its own; both vanish when closed.
fn devices() -> Vec<Row> {
    let name = |k: &str| format!("weftchk{k}{}", std::process::id() % 100_000);
    let mut rows = Vec::new();
    // Two queues first; a kernel without multi-queue may still take one.
    let (tun, multi) = match device::create(&name("u"), DeviceKind::Tun, 2, true, PROBE_MTU) {
        Ok(q) => (Ok(q), Ok(())),
        Err(e) => (
            device::create(&name("u"), DeviceKind::Tun, 1, true, PROBE_MTU),
            Err(e.to_string()),
        ),
    };
    let offload = match &tun {
        Ok(q) => q[0].offload(),
        Err(e) => {
            rows.push(row(
                "TUN device",
                short(&e.to_string()),
                Verdict::Blocks,
                "weft needs a TUN (or a TAP)",
            ));
            return rows;
        }
    };
    rows.push(row(
        "TUN device",
        "created",
        Verdict::Uses,
        "--device tun (udp and vxlan backends)",
    ));
    drop(tun);
    rows.push(match multi {
        Ok(()) => row(
            "multi-queue",
            "yes",
            Verdict::Uses,
            "--threads N: one queue and socket per worker",
        ),
        Err(e) => row(
            "multi-queue",
            short(&e),
            Verdict::Degrades,
            "one worker (--threads 1)",
        ),
    });
    rows.push(match offload {
        true => row(
            "virtio offloads",
            "IFF_VNET_HDR, TSO4/6",
            Verdict::Uses,
            "reads 64 KiB super-packets and writes coalesced ones",
        ),
        false => row(
            "virtio offloads",
            "refused",
            Verdict::Degrades,
            "a plain device: one packet per read and write (about a third of the throughput)",
        ),
    });
    let tap_name = name("a");
    match device::create(&tap_name, DeviceKind::Tap, 1, true, PROBE_MTU) {
        Ok(tap) => {
            rows.push(row(
                "TAP device",
                "created",
                Verdict::Uses,
                "--device tap (flannel.1 as Ethernet)",
            ));
            rows.push(match tap_peer_entries(&tap_name) {
                Ok(()) => row(
                    "TAP peer entries",
                    "neighbour and onlink route set",
                    Verdict::Uses,
                    "a TAP node reaches each peer through them",
                ),
                Err((step, e)) => row(
                    "TAP peer entries",
                    format!("{step} refused"),
                    Verdict::Degrades,
                    format!("--device tap cannot program its peers here, use --device tun ({e})"),
                ),
            });
            drop(tap);
        }
        Err(e) => rows.push(row(
            "TAP device",
            short(&e.to_string()),
            Verdict::Degrades,
            "--device tun only",
        )),
    }
    rows
}

/// What a TAP node programs for each peer, on the probe TAP: a permanent
/// neighbour entry for the peer's gateway address and a route `via` it
/// `onlink` (as `control` does), in TEST-NET-1 (192.0.2.0/24). Both go
/// with the device. Some netlink translators refuse them (qemu-user 7.2
/// answers EOPNOTSUPP) while a TUN's device routes work.
fn tap_peer_entries(name: &str) -> Result<(), (&'static str, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ("a runtime", e.to_string()))?;
    rt.block_on(async {
        let failed = |step| move |e: crate::netlink::NetlinkError| (step, format!("{e:#}"));
        let nl = Netlink::open().map_err(failed("netlink"))?;
        let (index, _) = nl
            .link(name)
            .await
            .map_err(failed("link lookup"))?
            .ok_or(("link lookup", format!("{name} vanished")))?;
        let gw = Ipv4Addr::new(192, 0, 2, 0);
        let net = Ipv4Net::new(gw, 24).expect("a /24");
        nl.configure_link(index, 1450, None)
            .await
            .map_err(failed("link up"))?;
        nl.replace_neighbor(index, gw.into(), MacAddr([0x02, 0, 0, 0, 0, 1]))
            .await
            .map_err(failed("neighbour"))?;
        nl.replace_route(net.into(), index, Some(gw.into()), true)
            .await
            .map_err(failed("onlink route"))
    })
}

/// The data path's UDP I/O on loopback: batches of datagrams with
/// `sendmmsg` as one UDP GSO run, received with `recvmmsg` and UDP GRO.
fn udp_io_rows() -> Vec<Row> {
    let probe = || -> std::io::Result<(bool, bool, bool)> {
        let any = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let rx = udp_io::bind(any, false, false)?;
        let tx = udp_io::bind(any, false, false)?;
        let gro = udp_io::enable_gro(&rx);
        let gso = udp_io::gso_supported(&tx);
        let to = match rx.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        };
        const N: usize = 4;
        const LEN: u32 = 1000;
        let mut bufs = PacketBufs::new(N, 65536);
        for i in 0..N {
            bufs.slot_mut(i)[..LEN as usize].fill(i as u8 + 1);
        }
        let msgs: Vec<OutMsg> = (0..N as u32)
            .map(|slot| OutMsg {
                slot,
                start: 0,
                len: LEN,
                dst: to,
            })
            .collect();
        let mut sender = Sender::new(N, gso, true);
        let sent = sender.send(&tx, &bufs, &msgs);
        let mut receiver = Receiver::<SocketAddrV4>::new(N);
        let mut got = 0;
        let mut coalesced = false;
        let deadline = Instant::now() + Duration::from_secs(2);
        while got < N * LEN as usize && Instant::now() < deadline {
            match receiver.recv_into(&rx, bufs.slots_mut(0), 0) {
                Ok(n) => {
                    for m in &receiver.meta[..n] {
                        got += m.len;
                        coalesced |= m.segment != 0 && m.len > m.segment;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e),
            }
        }
        if sent.sent != N || got != N * LEN as usize {
            return Err(std::io::Error::other(format!(
                "sent {} of {N} datagrams, received {got} of {} bytes",
                sent.sent,
                N * LEN as usize
            )));
        }
        Ok((gso && sender.gso(), gro, coalesced))
    };
    match probe() {
        Ok((gso, gro, coalesced)) => vec![
            row(
                "sendmmsg/recvmmsg",
                "yes",
                Verdict::Uses,
                "one syscall per batch of datagrams",
            ),
            match gso {
                true => row(
                    "UDP GSO",
                    "yes",
                    Verdict::Uses,
                    "a run of datagrams to a peer leaves as one send",
                ),
                false => row(
                    "UDP GSO",
                    "refused",
                    Verdict::Degrades,
                    "datagrams sent one by one in each batch",
                ),
            },
            match (gro, coalesced) {
                (true, true) => row(
                    "UDP GRO",
                    "yes",
                    Verdict::Uses,
                    "a run of datagrams arrives as one buffer",
                ),
                (true, false) => row(
                    "UDP GRO",
                    "accepted, nothing coalesced on loopback",
                    Verdict::Uses,
                    "turned on; runs arrive as one buffer where the kernel coalesces them",
                ),
                (false, _) => row(
                    "UDP GRO",
                    "refused",
                    Verdict::Degrades,
                    "datagrams received one by one in each batch",
                ),
            },
        ],
        Err(e) => vec![row(
            "UDP sockets",
            short(&e.to_string()),
            Verdict::Blocks,
            "weft's tunnel is UDP: batched sends and receives on loopback failed",
        )],
    }
}

/// The first line a program prints for `args`, or None when it cannot run.
fn program(name: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(name).args(args).output().ok()?;
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .into_owned();
    out.status
        .success()
        .then(|| text.lines().next().unwrap_or("").trim().to_string())
}

fn traffic_rules() -> Vec<Row> {
    let iptables = match program("iptables", &["--version"]) {
        Some(v) => {
            let backend = if v.contains("nf_tables") {
                "nft backend"
            } else if v.contains("legacy") {
                "legacy backend"
            } else {
                "backend not named"
            };
            row(
                "iptables",
                format!(
                    "{}, {backend}",
                    v.split_whitespace().nth(1).unwrap_or("unknown version")
                ),
                Verdict::Uses,
                "--ip-masq and --iptables-forward-rules, written with iptables-restore",
            )
        }
        None => row(
            "iptables",
            "not installed",
            Verdict::Degrades,
            "no masquerading or forward rules (--ip-masq fails); install iptables",
        ),
    };
    let nft = match program("nft", &["--version"]) {
        Some(v) => row(
            "nftables",
            v,
            Verdict::Note,
            "used with EnableNFTables in net-conf.json",
        ),
        None => row(
            "nftables",
            "nft not installed",
            Verdict::Note,
            "needed only with EnableNFTables",
        ),
    };
    let br = match Path::new("/proc/sys/net/bridge").exists() {
        true => row(
            "br_netfilter",
            format!(
                "loaded (bridge-nf-call-iptables={})",
                read("/proc/sys/net/bridge/bridge-nf-call-iptables").unwrap_or_default()
            ),
            Verdict::Uses,
            "bridged pod traffic passes iptables, as Kubernetes Services need",
        ),
        false => row(
            "br_netfilter",
            "not loaded",
            Verdict::Fix,
            "Kubernetes Services need it on the CNI bridge: `modprobe br_netfilter`",
        ),
    };
    vec![iptables, nft, br]
}

fn sysctls() -> Vec<Row> {
    let forward = match read("/proc/sys/net/ipv4/ip_forward").as_deref() {
        Some("1") => row(
            "ip_forward",
            "1",
            Verdict::Uses,
            "the node forwards pod traffic",
        ),
        Some(v) => row(
            "ip_forward",
            v,
            Verdict::Fix,
            "pod traffic is not forwarded: set net.ipv4.ip_forward=1 (Kubernetes usually does)",
        ),
        None => row("ip_forward", "unreadable", Verdict::Note, "cannot tell"),
    };
    let all = read("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or_default();
    let default = read("/proc/sys/net/ipv4/conf/default/rp_filter").unwrap_or_default();
    let strict = all == "1" || default == "1";
    let rp = row(
        "rp_filter",
        format!("all={all} default={default}"),
        if strict { Verdict::Fix } else { Verdict::Uses },
        match strict {
            true => "strict: DirectRouting and host-gw replies may be dropped; set it to 2 (loose)",
            false => "loose or off: no reverse-path drops of overlay traffic",
        },
    );
    vec![forward, rp]
}

fn ports() -> Vec<Row> {
    let one = |what: &'static str, port: u16, backend: &str| match std::net::UdpSocket::bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
    ) {
        Ok(_) => row(
            what,
            "free",
            Verdict::Uses,
            format!("the {backend} backend's port"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => row(
            what,
            "in use",
            Verdict::Fix,
            format!(
                "the {backend} backend cannot bind it: a kernel VXLAN device or flanneld holds it?"
            ),
        ),
        Err(e) => row(
            what,
            short(&e.to_string()),
            Verdict::Fix,
            format!("the {backend} backend may not bind it"),
        ),
    };
    let mut rows = vec![
        one("UDP port 8472", 8472, "vxlan"),
        one("UDP port 8285", 8285, "udp"),
    ];
    if rows.iter().all(|r| r.verdict != Verdict::Uses) {
        for r in &mut rows {
            r.verdict = Verdict::Blocks;
        }
    }
    rows
}

/// An error message cut to fit the table.
fn short(s: &str) -> String {
    match s.char_indices().nth(44) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_line_names_what_blocks() {
        let rows = vec![
            row("a", "x", Verdict::Uses, "fine"),
            row("b", "y", Verdict::Blocks, "no"),
            row("c", "z", Verdict::Blocks, "no"),
        ];
        assert!(!can_run(&rows));
        assert!(render(&rows).ends_with("weft cannot run here: b, c.\n"));
        assert!(can_run(&rows[..1]));
        assert!(render(&rows[..1]).ends_with("weft can run here.\n"));
    }

    #[test]
    fn the_loopback_probe_finds_batched_udp() {
        // Needs no privilege: sockets on loopback only.
        let rows = udp_io_rows();
        assert_eq!(rows[0].what, "sendmmsg/recvmmsg", "{rows:?}");
        assert_eq!(rows[0].verdict, Verdict::Uses, "{rows:?}");
    }
}
