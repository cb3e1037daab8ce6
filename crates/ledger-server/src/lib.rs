//! `ledger-server`: a ledger node.
//!
//! Reads the node configuration ([`config`]), opens storage, starts one Raft group per hosted
//! shard with its proposer, the node-to-node transport, the account actors, and serves the HTTP
//! API ([`http`]) that forwards each request to the leader of its shard. The [`cluster`] module
//! forms or joins the cluster, follows the cluster map (opening and dropping replicas as it
//! places them) and, on the metadata group's leader, runs the controller that moves replicas.
//! The `leadership` module hands a shard's leadership over and balances leaders.
//!
//! **Boundary:** this is wiring and the HTTP edge. Business decisions belong to `ledger-core`,
//! consensus to `ledger-raft`, persistence to `ledger-storage`, ordering and admission to
//! `ledger-actors`; this crate must not re-implement any of them. JSON lives here and in
//! `ledger-api` only.

mod background;
pub mod cluster;
pub mod config;
pub mod fault_injection;
pub mod http;
mod leadership;
pub mod metrics;
pub mod node;

pub use background::{signature, EVENT_ID_HEADER, SIGNATURE_HEADER};
pub use config::NodeConfig;
pub use node::{NodeTuning, RunningNode};
