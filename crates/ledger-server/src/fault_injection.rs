//! Named bugs for the chaos harness's self-test (`jepsen-tests --bug NAME`). A node built with
//! the `fault-injection` feature enables one at start from the `LEDGER_FAULT_INJECTION`
//! environment variable; a node built without it refuses to start when the variable is set, so
//! a self-test can never run against a binary that silently lacks the bug.
//!
//! - `skip-idempotency-check`: debits ignore their idempotency records (a retry applies again).
//! - `ack-before-commit`: a debit is answered "accepted" before it is decided.
//! - `stale-follower-reads`: reads are served from the local replica, leader or not, without
//!   confirming leadership.

use std::sync::OnceLock;

/// The environment variable naming the bug to enable.
pub const ENVIRONMENT_VARIABLE: &str = "LEDGER_FAULT_INJECTION";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    SkipIdempotencyCheck,
    AckBeforeCommit,
    StaleFollowerReads,
}

impl Bug {
    pub const ALL: [Bug; 3] = [
        Bug::SkipIdempotencyCheck,
        Bug::AckBeforeCommit,
        Bug::StaleFollowerReads,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipIdempotencyCheck => "skip-idempotency-check",
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::StaleFollowerReads => "stale-follower-reads",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultInjectionError {
    #[error("{ENVIRONMENT_VARIABLE}={name:?} names no bug; known: skip-idempotency-check, ack-before-commit, stale-follower-reads")]
    UnknownBug { name: String },
    #[error("{ENVIRONMENT_VARIABLE} is set, but this ledgerd was built without the fault-injection feature")]
    NotBuiltIn,
}

static ENABLED: OnceLock<Bug> = OnceLock::new();

/// Enables the bug named by `LEDGER_FAULT_INJECTION`, if set. Call once, before the node starts.
pub fn enable_from_environment() -> Result<Option<Bug>, FaultInjectionError> {
    let Ok(name) = std::env::var(ENVIRONMENT_VARIABLE) else {
        return Ok(None);
    };
    if name.is_empty() {
        return Ok(None);
    }
    let bug = Bug::ALL
        .into_iter()
        .find(|bug| bug.name() == name)
        .ok_or(FaultInjectionError::UnknownBug { name })?;
    if !cfg!(feature = "fault-injection") {
        return Err(FaultInjectionError::NotBuiltIn);
    }
    #[cfg(feature = "fault-injection")]
    if bug == Bug::SkipIdempotencyCheck {
        ledger_core::fault_injection::enable_skip_idempotency_check();
    }
    let _ = ENABLED.set(bug);
    Ok(Some(bug))
}

/// Whether `bug` is enabled (always false without the feature).
pub fn is_enabled(bug: Bug) -> bool {
    cfg!(feature = "fault-injection") && ENABLED.get() == Some(&bug)
}
