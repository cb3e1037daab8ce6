//! `ledger-core`: the pure, deterministic ledger state machine.
//!
//! Commands and a timestamp go in; outcomes and the set of changed keys come out. Every
//! accept/reject decision of the ledger is taken here, at apply time, in log order, identically
//! on every replica.
//!
//! **Boundary:** this crate does no I/O, reads no clock, spawns nothing and is not async. It must
//! never depend on openraft, RocksDB, actix, tokio, axum or any serialization format (it only
//! derives `serde` traits so that the layers above can choose one).
//!
//! **Invariants** (asserted after every apply, also in release builds; a replica that breaks one
//! stops): per account, `granted + overage == Σ remaining + consumed + expired` (conservation)
//! and `overage <= overdraft_limit` (no overspend). Every debit key and every grant id is
//! decided once, accepted or rejected, and every retry gets that decision back as a replay
//! (exactly-once; rejections that depend on state or time are recorded for that, see
//! `DebitRecord` and `GrantRecord`). The same commands at the same stamps give the same state
//! and `Ledger::digest` (determinism).
//!
//! Code map:
//! - `types.rs`: the vocabulary: `Command`, `Outcome`, `Rejection` (stable codes, in order of
//!   precedence), `Account`, `Grant`, `DebitRecord`, `GrantRecord`, the bounds (`AMOUNT_MAX`,
//!   ...).
//! - `ledger.rs`: `Ledger::apply`, the only place a decision is taken; lazy settlement of expiry
//!   and overage repayment; `view`, `digest`, `restore`, `ChangeSet`.
//! - `shard.rs`: `shard_for_account`, the placement of an account, fixed forever.
//! - `tests/table`: state-machine tables, one command per line with its expected outcome.
//! - `tests/model.rs`: property tests against an independent reference model.

mod ledger;
mod shard;
mod types;

pub use ledger::{validate_identifier, AccountView, ChangeSet, Ledger};
pub use shard::{shard_for_account, DEFAULT_SHARD_COUNT};
pub use types::*;
