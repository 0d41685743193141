//! weft's test bench. Test hosts on one machine: network namespaces joined
//! by a bridge, each able to run a weft node against a shared file registry,
//! etcd or a kube-apiserver; packet captures; certificates. `weft demo`, the
//! integration tests and the e2e harness build on this; the data plane does
//! not. Its `unsafe` (namespace entry and `geteuid` in `netns`, packet
//! sockets in `capture`, one ethtool ioctl in `node`) has a `// SAFETY:`
//! line on each block.
//!
//! Every namespace gets a unique name and is deleted on drop, and every
//! process started here is killed on drop, so a failing test cleans up too.
//! Topology plumbing uses `ip` (it is the harness, standing in for the
//! operator); weft itself only ever talks netlink.
//!
//! One file per thing it starts: `netns`, `node`, `cluster`, `etcd`,
//! `apiserver` (kube-apiserver), `traffic`, `capture`.

mod apiserver;
mod capture;
mod cluster;
mod etcd;
mod netns;
mod node;
mod traffic;

pub use apiserver::*;
pub use capture::*;
pub use cluster::*;
pub use etcd::*;
pub use netns::*;
pub use node::*;
pub use traffic::*;
