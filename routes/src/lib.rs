//! What a weft node knows about the cluster: the network config
//! (net-conf.json), subnet leases and their registries, subnet allocation,
//! the forwarding table the data path reads, and subnet.env for the CNI
//! plugin. No packets and no kernel state live here.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alloc;
pub mod config;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod family;
#[doc(hidden)]
pub mod harness;
mod json;
#[cfg(feature = "kube")]
pub mod kube;
pub mod lease;
pub mod registry;
pub mod subnet_env;
pub mod table;
pub mod validate;

pub use config::{Backend, NetConf};
pub use family::Family;
pub use lease::{Lease, LeaseAttrs, SubnetKey};
pub use registry::{EtcdConfig, FileRegistry, Registry, RegistryError};
pub use table::{Direction, ForwardingTable, Peer, PeerCounters, PeerId, PeerTally, Sender};
pub use validate::{Claim, LeasePolicy, Rejection};
