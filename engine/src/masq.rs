//! Masquerading and forwarding rules, as flanneld's `--ip-masq` and
//! `--iptables-forward-rules` install them: in iptables (flannel's
//! `pkg/trafficmngr/iptables/iptables.go`) the same chains, rules,
//! comments and order, so a node's `iptables-save` reads the same under
//! weft as under flanneld; in nftables (`EnableNFTables`, module `nft`)
//! the same tables, chains and rules as flanneld's knftables writes.
//!
//! Like flanneld (through go-iptables), weft drives the `iptables` and
//! `iptables-restore` programs: they choose the kernel interface (legacy or
//! nf_tables) the rest of the node uses. A missing rule found by a resync
//! makes the whole set be written again in one `iptables-restore
//! --noflush` transaction, in order, as flanneld does.

mod iptables;
pub mod nft;
mod traffic;

pub use iptables::{forward_rules, masq_rules, restore_payload, Iptables, Rule, FWD, POSTRTG};
pub use traffic::TrafficOptions;
pub(crate) use traffic::{FamilyNets, Traffic};

/// An iptables failure.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// The program could not be run.
    #[error("cannot run {program}: {error} (is iptables installed?)")]
    Spawn {
        /// `iptables` or `iptables-restore`.
        program: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// It ran and failed.
    #[error("{what} failed: {stderr}")]
    Failed {
        /// The command.
        what: String,
        /// What it said.
        stderr: String,
    },
}
