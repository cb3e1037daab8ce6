//! One trait for every system under test, so that the ledger and its peers run the very same
//! workload through the very same loops and measurements.
//!
//! A driver turns the load generator's operations into its system's requests: the ledger's HTTP
//! API ([`ledger::LedgerDriver`]), PostgreSQL transactions ([`postgres::PostgresDriver`]) or
//! Redis Lua scripts ([`redis::RedisDriver`]). Every driver implements the same semantics: a
//! debit is decided once per idempotency key (accepted, or rejected with
//! `insufficient_credits`), durably, before it is answered.

pub mod ledger;
pub mod postgres;
pub mod redis;

use std::future::Future;

use crate::workload::OperationKind;

/// One debit of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebitItem {
    pub account_id: String,
    pub idempotency_key: String,
    pub amount: u64,
}

/// A reservation followed by its commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationItem {
    pub account_id: String,
    pub reservation_id: String,
    /// Credits held.
    pub amount: u64,
    /// Credits drawn by the commit (at most `amount`; the rest is released).
    pub commit_amount: u64,
    pub ttl_ms: u64,
}

/// What became of one item of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Decided and accepted (for a read: answered; for a reservation: held and committed).
    Accepted,
    /// Decided and refused, with the stable code (e.g. `insufficient_credits`).
    Rejected { code: String },
    /// Nothing decided, or the outcome is unknown: `kind` names the failure for the summary's
    /// `errors_by_kind` (e.g. `http_503_no_leader`, `timeout`, `postgres_40001`).
    Failed { kind: String },
}

impl ItemOutcome {
    pub fn failed(kind: impl Into<String>) -> ItemOutcome {
        ItemOutcome::Failed { kind: kind.into() }
    }

    pub fn rejected(code: impl Into<String>) -> ItemOutcome {
        ItemOutcome::Rejected { code: code.into() }
    }
}

/// The result of one operation: one outcome per item, in order, and how many requests it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationResult {
    pub kind: OperationKind,
    pub outcomes: Vec<ItemOutcome>,
    pub requests: u32,
}

/// A failure to prepare a system for a run (connect, create accounts). Failures of single
/// operations during the run are not errors but [`ItemOutcome::Failed`] values, counted by kind.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot reach {system} at {address}: {reason}")]
    Connect {
        system: &'static str,
        address: String,
        reason: String,
    },
    #[error("{system} did not become ready within {waited_ms} ms: {reason}")]
    NotReady {
        system: &'static str,
        waited_ms: u64,
        reason: String,
    },
    #[error("setting up account {account_id} on {system} failed: {reason}")]
    Setup {
        system: &'static str,
        account_id: String,
        reason: String,
    },
}

/// A system under test. Implementations are shared by all workers (`Arc`), so every method
/// takes `&self` and must be safe to call concurrently.
pub trait Driver: Send + Sync + 'static {
    /// A short description for logs, e.g. `ledger: 3 nodes, 16 shards, route leader`.
    fn describe(&self) -> String;

    /// Creates accounts `0..accounts` (ids from [`crate::workload::account_id`]) with
    /// `credits_per_account` credits each, `concurrency` at a time where that applies.
    /// Idempotent: running it again on the same system changes nothing.
    fn setup(
        &self,
        accounts: u64,
        credits_per_account: u64,
        concurrency: usize,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// One debit, one request.
    fn debit(&self, item: DebitItem) -> impl Future<Output = OperationResult> + Send;

    /// Several debits in as few requests as the system allows; one outcome per item, in order.
    fn debit_batch(&self, items: Vec<DebitItem>) -> impl Future<Output = OperationResult> + Send;

    /// A linearizable (or, for the peers, committed) read of one account's balance.
    fn read(&self, account_id: String) -> impl Future<Output = OperationResult> + Send;

    /// Reserve, then commit.
    fn reserve_and_commit(
        &self,
        reservation: ReservationItem,
    ) -> impl Future<Output = OperationResult> + Send;
}

/// An operation whose every item failed the same way.
pub(crate) fn all_failed(kind: OperationKind, items: usize, failure: &str) -> OperationResult {
    OperationResult {
        kind,
        outcomes: vec![ItemOutcome::failed(failure); items],
        requests: 1,
    }
}
