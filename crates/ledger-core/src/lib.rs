//! `ledger-core`: the pure, deterministic ledger state machine.
//!
//! Commands and a timestamp go in; outcomes and the set of changed keys come out. Every
//! accept/reject decision of the ledger is taken here, at apply time, in log order, identically
//! on every replica.
//!
//! **Boundary:** this crate does no I/O, reads no clock, spawns nothing and is not async. It must
//! never depend on openraft, RocksDB, actix, tokio, axum or any serialization format (it only
//! derives `serde` traits so that the layers above can choose one).

mod ledger;
mod shard;
mod types;

pub use ledger::{validate_identifier, AccountView, ChangeSet, Ledger};
pub use shard::{shard_for_account, DEFAULT_SHARD_COUNT};
pub use types::*;
