//! weft's engine: where bytes meet the kernel. TUN/TAP devices, UDP
//! sockets, netlink, the worker loops, metrics, and the `weft` binary's
//! commands. All `unsafe` in weft lives here, in `udp_io.rs`, each block
//! with a `// SAFETY:` comment.

#![warn(missing_docs)]

pub mod bufs;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod device;
pub mod masq;
pub mod metrics;
pub mod netlink;
pub mod status;
pub mod testbed;
pub mod tuning;
pub mod udp_io;
pub mod worker;
