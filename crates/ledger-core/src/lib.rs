//! `ledger-core`: the pure, deterministic ledger state machine.
//!
//! Commands and a timestamp go in; outcomes come out. Every accept/reject decision of the
//! ledger is taken here, at apply time, in log order, identically on every replica: grants,
//! debits priced by the rate card, reservations, expiry, voids, subscriptions and their period
//! resets, spend limits, alerts, and the journal they all write.
//!
//! **Boundary:** this crate does no I/O, reads no clock, spawns nothing and is not async. It must
//! never depend on openraft, RocksDB, actix, tokio, axum or any serialization format (it only
//! derives `serde` traits so that the layers above can choose one). Its one random input is the
//! key of `DebitRecords`' hash index, on which no outcome, order, equality or digest depends.
//!
//! **Invariants** (asserted after every apply, also in release builds; a replica that breaks one
//! stops): per account, `granted + overage == Σ remaining + reserved + consumed + expired +
//! voided` (conservation), `overage <= overdraft_limit` (no overspend), and the journal's
//! running balance equals the account's. Every debit key, grant id and reservation id is decided
//! once, accepted or rejected, and every retry gets that decision back as a replay
//! (exactly-once; rejections that depend on state or time are recorded for that). The same
//! commands at the same stamps give the same state and `Ledger::digest` (determinism).
//!
//! Code map:
//! - `types.rs`: the vocabulary: `Command`, `Outcome`, `Rejection` (stable codes), `Account`,
//!   `Grant`, `Reservation`, the catalog (rate card, plans, webhook), records, bounds.
//! - `ledger.rs`: `Ledger::apply`, the only entry point of a decision; records, the due index,
//!   `Tick`, the catalog, `view`, `digest`, `restore`.
//! - `account.rs`: the credit mechanics of one account and its lazy settlement in time order.
//! - `chunked.rs`: `Chunked`, an append-only list whose full chunks copies share (so a
//!   snapshot's copy does not walk what only grows).
//! - `journal.rs`: journal entries (an account's `Journal`, in chunks shared between copies),
//!   events, and the reports (usage, balance at, statement).
//! - `records.rs`: `DebitRecords`, every debit decision in the order decided, in chunks shared
//!   between copies, with a hash index (a snapshot's copy does not walk them).
//! - `period.rs`: ISO 8601 periods and calendar arithmetic.
//! - `cluster.rs`: the cluster map (nodes, shard placement, the move under way) that the
//!   metadata group sequences, and `next_step`, the pure planner of replica moves.
//! - `shard.rs`: `shard_for_account`, the placement of an account, fixed forever.
//! - `fault_injection.rs`: named bugs for the chaos harness's self-test (feature-gated).
//! - `tests/table`: state-machine tables, one command per line with its expected outcome.
//! - `tests/model.rs`: property tests against an independent reference model.

mod account;
mod chunked;
pub mod cluster;
pub mod fault_injection;
mod journal;
mod ledger;
mod period;
mod records;
mod shard;
mod types;

pub use journal::{
    balance_at, statement, usage, EntryKind, Event, EventKind, FeatureUsage, Journal, JournalEntry,
    Statement,
};
pub use ledger::{
    validate_identifier, AccountView, Ledger, LedgerParts, ShardMeta, TICK_ACCOUNTS_MAX,
    WEBHOOK_FIELD_LENGTH_MAX,
};
pub use period::{Period, PeriodError};
pub use shard::{shard_for_account, DEFAULT_SHARD_COUNT};
pub use types::*;

/// The shard that sequences the catalog (rate card, plans, webhook endpoint).
pub const CATALOG_SHARD: u32 = 0;
