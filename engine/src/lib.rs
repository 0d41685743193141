//! weft's engine: where bytes meet the kernel. The tunnel core (`tunnel`:
//! every per-packet decision, no I/O), the TUN/TAP device (`device`), UDP
//! sockets (`udp_io`), the worker loops around them (`worker`), netlink,
//! the control plane (`daemon`, `control`), masquerading (`masq`), metrics
//! and `weft status`: what the `weft` binary (`main.rs`, which also holds
//! `weft demo`) needs, and no more. The engine's `unsafe` lives in
//! `udp_io.rs`, each block with a `// SAFETY:` comment; the test bench
//! (`weft-testbed`) documents its own.

#![warn(missing_docs)]

pub mod bufs;
pub mod check;
pub mod control;
pub mod daemon;
pub mod device;
pub mod failures;
pub mod masq;
pub mod metrics;
pub mod netlink;
pub mod status;
pub mod tuning;
pub mod tunnel;
pub mod udp_io;
pub mod worker;
