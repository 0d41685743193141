//! Switches for measuring each data-path technique on and off with the
//! end-to-end harness (`WEFT_DISABLE=gso,gro,mmsg,flowports,sockbuf`).
//! Everything is on by default; nothing here is meant for production use,
//! so it is an environment variable rather than a flag.

use std::sync::OnceLock;

/// Which techniques are on.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// UDP GSO on sends.
    pub gso: bool,
    /// UDP GRO on receives (with offloads).
    pub gro: bool,
    /// Batched `recvmmsg`/`sendmmsg` (off: one datagram per syscall).
    pub mmsg: bool,
    /// Several VXLAN send sockets picked by flow hash (off: one).
    pub flow_ports: bool,
    /// Multi-megabyte socket buffers (off: the kernel's defaults).
    pub socket_buffers: bool,
}

/// The switches, read once from `WEFT_DISABLE`.
pub fn get() -> Tuning {
    static T: OnceLock<Tuning> = OnceLock::new();
    *T.get_or_init(|| {
        let off = std::env::var("WEFT_DISABLE").unwrap_or_default();
        let on = |name: &str| !off.split(',').any(|s| s.trim() == name);
        let t = Tuning {
            gso: on("gso"),
            gro: on("gro"),
            mmsg: on("mmsg"),
            flow_ports: on("flowports"),
            socket_buffers: on("sockbuf"),
        };
        if !off.is_empty() {
            tracing::warn!(
                ?t,
                "WEFT_DISABLE is set: some data-path techniques are off (benchmarking only)"
            );
        }
        t
    })
}
