//! `ledger-storage`: the RocksDB storage of a ledger node.
//!
//! One RocksDB per node ([`NodeStorage`]) holds every shard it hosts, in column families by
//! purpose (`raft_log`, `raft_state`, `snapshot`) with keys prefixed by the shard id.
//! [`NodeStorage::open_shard`] gives a shard's openraft stores:
//!
//! - [`LogStore`] (`RaftLogStorage`): appends are written at once and acknowledged after the WAL
//!   is fsynced by one syncer thread per node, which serves the appends of all shards with one
//!   fsync (group commit). The vote is fsynced before `save_vote` returns. The newest entries
//!   also stay in memory (`log_tail.rs`), so replication and apply read what was just appended
//!   without a RocksDB scan and a decode.
//! - [`StateMachineStore`] (`RaftStateMachine`): the shard's `ledger_core::Ledger` in memory,
//!   shared with readers as a `SharedShardState`. `apply` changes memory only: the Raft log is
//!   the state machine's write-ahead log, and the state is checkpointed as the shard's current
//!   snapshot (built by openraft's snapshot policy or installed): its bytes in a synced file of
//!   their own beside the database, then its meta in one fsynced batch. A shard opens with its
//!   snapshot's state and openraft re-applies the committed log after it.
//!
//! The on-disk layout is described in `keys.rs`; the durability argument of every unsynced
//! write is next to it, in `log_store.rs` and `state_machine.rs`.
//!
//! **Boundary:** this is the only crate that knows RocksDB. It must not depend on actix, axum,
//! JSON or the network; it sees the ledger only through `ledger-core`'s public API and Raft only
//! through openraft's storage traits and `ledger-raft`'s type configuration.

mod codec;
mod error;
mod fail_points;
mod keys;
mod log_store;
mod log_tail;
mod node;
mod snapshot_files;
mod state_machine;
mod syncer;

pub use error::StorageError;
pub use fail_points::FailPoints;
pub use log_store::{LogReader, LogStore};
pub use node::NodeStorage;
pub use state_machine::{ShardSnapshotBuilder, StateMachineStore};
pub use syncer::LogSyncStats;
