//! Counters and the Prometheus endpoint.
//!
//! Each worker owns one `WorkerStats` and is its only writer: it adds a
//! batch's counts once per batch with plain relaxed load+store (no locked
//! read-modify-write), and the scraper sums the workers.
//!
//! `counters` holds the numbers, `exposition` renders them, `http` serves
//! them; the OS-error tallies the I/O layers report are `crate::failures`'.

mod counters;
mod exposition;
mod http;

pub use crate::failures::{errno_slot, Failures, ERRNOS, ERRNO_SLOTS};
pub use counters::{BatchStats, Metrics, NodeView, NodeView6, PeerView, RejectedView, WorkerStats};
pub use exposition::name;
pub use http::{serve, serve_health, MAX_CONNECTIONS};
