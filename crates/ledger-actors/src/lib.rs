//! `ledger-actors`: per-account actix actors on shard leaders.
//!
//! Each active account on a shard this node leads has one account actor. It receives the
//! account's commands in arrival order, admits them against a bound (overload is an immediate
//! [`SubmitError::Overloaded`], never an unbounded queue), forwards them to the shard's proposer in
//! that order, keeps many in flight (it never waits for one commit before proposing the next), and
//! hands each admitted request the receiver of its outcome, which the proposer resolves when the
//! command is applied (the outcome does not pass through the actor's thread again). Actors are
//! created on demand and stop themselves when idle; they are never the balance of record (the
//! state machine is).
//!
//! actix runs on its own threads ([`ActorRuntime`]): a dedicated system thread and a few
//! single-threaded arbiters. Callers on any tokio runtime use [`AccountActors::submit`], which is
//! `Send` and awaitable; nothing outside this crate sees an actix type.
//!
//! **Boundary:** depends on `ledger-core` (commands) and `ledger-raft` (the proposer handle) only;
//! it must never depend on storage, HTTP or JSON, and nothing but this crate may depend on actix.

mod account;
mod runtime;

pub use account::{AccountActors, ActorLimits, SubmitError};
pub use runtime::{ActorRuntime, ActorRuntimeError};
