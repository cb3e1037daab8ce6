//! Commands, outcomes and business rejections: the vocabulary of the state machine.

use serde::{Deserialize, Serialize};

/// Largest amount of credits a single command may carry (10^18 credit units). Totals are kept in
/// `u64`/`i64` with checked arithmetic; this bound leaves head room so that a realistic ledger
/// never reaches an overflow, and an unrealistic one is rejected with `amount_overflow`.
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000_000;

/// Longest account id, grant id or idempotency key, in bytes.
pub const IDENTIFIER_LENGTH_MAX: usize = 128;

/// Lowest and highest grant priority; lower is drawn first.
pub const PRIORITY_MIN: u8 = 0;
pub const PRIORITY_MAX: u8 = 100;
pub const PRIORITY_DEFAULT: u8 = 50;

/// Where a block of credits came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GrantSource {
    Plan,
    Purchase,
    Promo,
    Seat,
    Manual,
}

impl GrantSource {
    /// The stable snake_case name used by the public API.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantSource::Plan => "plan",
            GrantSource::Purchase => "purchase",
            GrantSource::Promo => "promo",
            GrantSource::Seat => "seat",
            GrantSource::Manual => "manual",
        }
    }

    /// Parses the public API name; `None` for anything else.
    pub fn parse(name: &str) -> Option<GrantSource> {
        match name {
            "plan" => Some(GrantSource::Plan),
            "purchase" => Some(GrantSource::Purchase),
            "promo" => Some(GrantSource::Promo),
            "seat" => Some(GrantSource::Seat),
            "manual" => Some(GrantSource::Manual),
            _ => None,
        }
    }
}

/// A command for the state machine. Every mutating command names its client key (account id,
/// grant id, idempotency key) so that its outcome is decided once and replayed on every retry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create an account. Same id and same parameters again: replay. Different: `account_conflict`.
    CreateAccount {
        account_id: String,
        overdraft_limit: u64,
    },
    /// Add a block of credits to an account. The grant id is decided once: accepted (the grant
    /// is added) or rejected for a reason of state or time (a `GrantRecord` is kept). Same grant
    /// id and same parameters again: that decision, replayed. Same grant id, different
    /// parameters: `grant_conflict`.
    Grant(GrantCommand),
    /// Draw `amount` credits from the account's grants (priority, then earliest expiry with
    /// none last, then creation order), going negative down to `-overdraft_limit` at most.
    Debit {
        account_id: String,
        idempotency_key: String,
        amount: u64,
    },
}

impl Command {
    /// The account this command touches: all of an account's data lives on one shard.
    pub fn account_id(&self) -> &str {
        match self {
            Command::CreateAccount { account_id, .. } => account_id,
            Command::Grant(grant) => &grant.account_id,
            Command::Debit { account_id, .. } => account_id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantCommand {
    pub account_id: String,
    pub grant_id: String,
    pub amount: u64,
    pub source: GrantSource,
    pub priority: u8,
    /// The grant is drawable from this instant on; `None` = from the instant it is applied.
    pub effective_at_ms: Option<u64>,
    /// The grant's remainder expires at this instant; `None` = never.
    pub expires_at_ms: Option<u64>,
}

/// A business rejection: a value with a stable code, never an error of the infrastructure.
///
/// The discriminants are stable forever (they are stored in debit and grant records) and the
/// order of the variants is the order of precedence in which the state machine checks them:
/// first the checks of the command alone (identifiers, amount, priority, an expiry not after an
/// explicit `effective_at`), then the checks against state. Two exceptions keep retries exact:
/// the client key (debit idempotency key, grant id) is looked up right after the checks of the
/// command alone, so that a decided key answers with its decision (or a conflict) before
/// anything else; and a grant whose `expires_at` is already past at apply time is
/// `InvalidExpiry`, but only after that lookup, so that a late retry of an accepted grant is
/// still its replay.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    thiserror::Error,
)]
#[repr(u16)]
pub enum Rejection {
    /// An identifier is empty, longer than `IDENTIFIER_LENGTH_MAX` or has forbidden characters.
    #[error("an identifier is empty, too long or has characters outside [A-Za-z0-9._:-]")]
    InvalidIdentifier = 1,
    /// An amount is zero or above `AMOUNT_MAX` (an overdraft limit may be zero).
    #[error("an amount is zero or above the largest amount allowed")]
    InvalidAmount = 2,
    /// Priority above `PRIORITY_MAX`.
    #[error("the priority is above 100")]
    InvalidPriority = 3,
    /// `expires_at` is not after `effective_at`, or is not after the time the grant is applied.
    #[error("expires_at is not after effective_at or is already past")]
    InvalidExpiry = 4,
    /// The account does not exist.
    #[error("the account does not exist")]
    AccountNotFound = 5,
    /// The account exists with different parameters.
    #[error("the account exists with other parameters")]
    AccountConflict = 6,
    /// The grant id was decided on this account (accepted or rejected) for other parameters.
    #[error("the grant id was decided on this account for a request with other parameters")]
    GrantConflict = 7,
    /// The idempotency key was decided for a different request (other amount).
    #[error("the idempotency key was used for a request with another amount")]
    IdempotencyConflict = 8,
    /// A total of the account would exceed `i64::MAX` (see `AMOUNT_MAX`).
    #[error("a total of the account would overflow")]
    AmountOverflow = 9,
    /// Available credits plus the overdraft allowance do not cover the debit.
    #[error("available credits and the overdraft allowance do not cover the debit")]
    InsufficientCredits = 10,
}

impl Rejection {
    /// Every rejection, in order of precedence.
    pub const ALL: [Rejection; 10] = [
        Rejection::InvalidIdentifier,
        Rejection::InvalidAmount,
        Rejection::InvalidPriority,
        Rejection::InvalidExpiry,
        Rejection::AccountNotFound,
        Rejection::AccountConflict,
        Rejection::GrantConflict,
        Rejection::IdempotencyConflict,
        Rejection::AmountOverflow,
        Rejection::InsufficientCredits,
    ];

    /// The stable snake_case code used by the public API.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::InvalidIdentifier => "invalid_identifier",
            Rejection::InvalidAmount => "invalid_amount",
            Rejection::InvalidPriority => "invalid_priority",
            Rejection::InvalidExpiry => "invalid_expiry",
            Rejection::AccountNotFound => "account_not_found",
            Rejection::AccountConflict => "account_conflict",
            Rejection::GrantConflict => "grant_conflict",
            Rejection::IdempotencyConflict => "idempotency_conflict",
            Rejection::AmountOverflow => "amount_overflow",
            Rejection::InsufficientCredits => "insufficient_credits",
        }
    }

    /// Parses a stable code back; `None` for anything else.
    pub fn from_code(code: &str) -> Option<Rejection> {
        Rejection::ALL
            .into_iter()
            .find(|rejection| rejection.code() == code)
    }
}

/// What an accepted command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Accepted {
    /// The account was created by this command.
    AccountCreated,
    /// The account already existed with the same parameters (a replay).
    AccountExists,
    /// The grant was added (or is a replay of the same grant).
    Granted,
    /// The debit drew `amount`; `available` is the account's available balance right after it.
    Debited { amount: u64, available: i64 },
}

/// The decided outcome of one command. `replayed` is true when the client key had already been
/// decided and this is that same decision returned again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub result: Result<Accepted, Rejection>,
    pub replayed: bool,
}

/// The decision recorded under a debit's idempotency key, accepted or rejected, kept forever so
/// that every retry gets the same answer. A debit that fails the checks of the command alone
/// (`invalid_identifier`, `invalid_amount`) records nothing: a retry of it fails the same way
/// without any record, and a corrected request may still use the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebitRecord {
    /// The amount the request asked for (a retry with another amount is `idempotency_conflict`).
    pub requested_amount: u64,
    pub result: Result<Accepted, Rejection>,
    /// Leader time stamp of the entry that decided it.
    pub decided_at_ms: u64,
}

/// The decision recorded under a grant id whose grant was rejected for a reason that depends on
/// the ledger's state or on time (`account_not_found`, `invalid_expiry` for an expiry already
/// past, `amount_overflow`; the reasons are argued in `Ledger::grant`), kept forever, keyed by
/// (account id, grant id), so that every retry gets the same rejection back and the grant never
/// applies later. An accepted grant needs no record: the `Grant` on its account is its decision.
/// A grant that fails the checks of the command alone records nothing, like such a debit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// The parameters of the request, stored as an accepted grant would store them: a retry
    /// is the same request under the same rule (see `Ledger::grant`), anything else is
    /// `grant_conflict`.
    pub amount: u64,
    pub source: GrantSource,
    pub priority: u8,
    /// The instant the request named, or the stamp of its decision when it named none.
    pub effective_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Why the grant was rejected, the answer every retry gets.
    pub rejection: Rejection,
    /// Leader time stamp of the entry that decided it.
    pub decided_at_ms: u64,
}

/// One block of credits on an account. It is drawable in `[effective_at_ms, expires_at_ms)`: a
/// grant expiring at instant `t` is no longer drawable by a command stamped `t`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub amount: u64,
    pub remaining: u64,
    pub source: GrantSource,
    pub priority: u8,
    pub effective_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Creation order on the account, the last tie breaker of draw-down.
    pub sequence: u64,
    /// True once its remainder was moved to the account's `expired` total (then `remaining` is 0).
    pub expired: bool,
}

/// An account and its grants. All totals are in credit units.
///
/// The stored state is settled lazily: grant expiry and the repayment of overage by grants that
/// became effective are brought up to date whenever a command changes the account, and
/// `Ledger::view` computes them for the instant it is asked about. The result does not depend on
/// when the account was touched (see `Ledger::apply`).
///
/// **Invariant (conservation):** `granted + overage == Σ remaining (grants not expired) + consumed
/// + expired`, and `granted == Σ amount`, checked after every apply (also in release builds).
/// **Invariant (no overspend):** `overage <= overdraft_limit`, so available never goes below
/// `-overdraft_limit`.
/// **Invariant (bounded totals):** `granted` and `consumed` are at most `i64::MAX`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub account_id: String,
    pub overdraft_limit: u64,
    /// Grants in creation order (also exhausted and expired ones: they are history).
    pub grants: Vec<Grant>,
    /// Sum of all grant amounts ever added.
    pub granted: u64,
    /// Sum of all accepted debits.
    pub consumed: u64,
    /// Sum of the remainders of grants that expired.
    pub expired: u64,
    /// Credits debited beyond the grants (negative available), at most `overdraft_limit`.
    pub overage: u64,
}
