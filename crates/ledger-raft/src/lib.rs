//! `ledger-raft`: multi-Raft for the ledger.
//!
//! One openraft group per shard; the openraft type configuration ([`TypeConfig`]); the
//! node-to-node transport (one multiplexed TCP connection per peer, length-prefixed bincode
//! frames tagged with the shard id); the [`election_gate`] (PreVote, which openraft 0.9 lacks);
//! the per-shard [`proposer`] that packs many ledger commands
//! into one Raft entry; batched linearizable [`reads`]; the [`placement`] of shard replicas on
//! nodes; leadership [`transfer`], which openraft 0.9 lacks.
//!
//! **Boundary:** generic over storage through openraft's `RaftLogStorage`/`RaftStateMachine`
//! traits; it must never depend on RocksDB, actix, axum or JSON.

pub mod config;
pub mod election_gate;
pub mod network;
pub mod placement;
pub mod proposer;
pub mod reads;
pub mod transfer;
pub mod types;

pub use types::*;
