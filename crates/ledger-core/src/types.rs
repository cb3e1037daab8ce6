//! Commands, outcomes and business rejections: the vocabulary of the state machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::period::Period;

/// Largest amount of credits a single command may carry (10^18 credit units). Totals are kept in
/// `u64`/`i64` with checked arithmetic; this bound leaves head room so that a realistic ledger
/// never reaches an overflow, and an unrealistic one is rejected with `amount_overflow`.
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000_000;

/// Longest account id, grant id, idempotency key, reservation id, plan id or feature, in bytes.
pub const IDENTIFIER_LENGTH_MAX: usize = 128;

/// Lowest and highest grant priority; lower is drawn first.
pub const PRIORITY_MIN: u8 = 0;
pub const PRIORITY_MAX: u8 = 100;
pub const PRIORITY_DEFAULT: u8 = 50;

/// Longest reservation time to live: one day. A hold longer than that is a leak, not a hold.
pub const RESERVATION_TTL_MAX_MS: u64 = 24 * 60 * 60 * 1_000;

/// Most seats of a subscription, and most low-balance thresholds of an account.
pub const SEATS_MAX: u64 = 1_000_000;
pub const THRESHOLDS_MAX: usize = 16;

/// Most features in a rate card.
pub const FEATURES_MAX: usize = 10_000;

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
    pub const ALL: [GrantSource; 5] = [
        GrantSource::Plan,
        GrantSource::Purchase,
        GrantSource::Promo,
        GrantSource::Seat,
        GrantSource::Manual,
    ];

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
        GrantSource::ALL
            .into_iter()
            .find(|source| source.as_str() == name)
    }
}

/// What a debit (or the commit of a reservation) costs: credits directly, or a quantity of a
/// feature priced by the rate card in force when it is applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Charge {
    Credits(u64),
    Feature { feature: String, quantity: u64 },
}

/// Who set a spend limit. Both may be set; each is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LimitScope {
    /// The AI platform running the ledger (e.g. a plan's fair-use cap).
    Platform,
    /// The platform's customer (e.g. "never spend more than 5,000 credits a day").
    Customer,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Platform => "platform",
            LimitScope::Customer => "customer",
        }
    }

    pub fn parse(name: &str) -> Option<LimitScope> {
        match name {
            "platform" => Some(LimitScope::Platform),
            "customer" => Some(LimitScope::Customer),
            _ => None,
        }
    }
}

/// A spend limit: credits consumed per period window. Windows are anchored at the Unix epoch
/// (UTC): `P1D` windows are UTC days, `P1M` calendar months, `PT1H` hours.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpendLimitTerms {
    pub period: Period,
    /// Crossing it emits a `soft_limit_reached` event; spending goes on.
    pub soft: Option<u64>,
    /// Consumption in a window never goes above it: a debit, reservation or commit that would
    /// is rejected with `spend_limit_exceeded`.
    pub hard: Option<u64>,
}

/// The alert settings of an account. Every alert fires once per crossing, decided in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AlertSettings {
    /// `low_balance` fires when available credits go from at or above a threshold to below it.
    pub low_balance: Vec<i64>,
    /// `auto_top_up_wanted` fires when available credits go below this, so that the platform's
    /// billing charges once and posts a purchase grant.
    pub auto_top_up_below: Option<i64>,
    /// `grant_expiring` fires this long before a grant with credits left expires.
    pub grant_expiring_within_ms: Option<u64>,
}

/// A plan: credits per period, optionally per seat, reset every period with an optional
/// rollover cap. Tiers are plans; pay-as-you-go needs no plan (an overdraft limit instead).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlanTerms {
    pub credits_per_period: u64,
    pub period: Period,
    pub per_seat: bool,
    /// Most unused allowance carried into the next period; `None` carries nothing.
    pub rollover_max: Option<u64>,
}

/// Where signed webhooks go.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub url: String,
    pub secret: String,
}

/// A change of the catalog (rate card, plans, webhook endpoint): global settings, sequenced by
/// the catalog shard and installed on every other shard (see `Command::UpdateCatalog`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CatalogChange {
    /// Replaces the rate card (feature → credits per unit). The same features again is a replay.
    RateCard { features: BTreeMap<String, u64> },
    /// Creates or changes a plan. The same terms again is a replay.
    Plan { plan_id: String, terms: PlanTerms },
    /// Sets (or with `None` removes) the webhook endpoint.
    Webhook { endpoint: Option<WebhookEndpoint> },
}

/// One version of the rate card.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateCard {
    /// 0 = the empty card no one set; then 1, 2, ...
    pub version: u64,
    pub features: BTreeMap<String, u64>,
    /// Stamp of the entry that created this version on the catalog shard.
    pub created_at_ms: u64,
}

/// A plan as stored, with its version (1 on creation, +1 on each change).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Plan {
    pub plan_id: String,
    pub terms: PlanTerms,
    pub version: u64,
}

/// The global settings every shard needs to decide: the rate card (and its history, so the
/// journal's version numbers can be looked up), the plans, the webhook endpoint. `version`
/// orders the installs: a shard installs a catalog only if it is newer than its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Catalog {
    pub version: u64,
    /// Every rate card version, oldest first; the last one is in force. Empty until one is set.
    pub rate_cards: Vec<RateCard>,
    pub plans: BTreeMap<String, Plan>,
    pub webhook: Option<WebhookEndpoint>,
}

impl Catalog {
    /// The rate card in force (version 0, empty, when none was ever set).
    pub fn rate_card(&self) -> RateCard {
        self.rate_cards.last().cloned().unwrap_or_default()
    }

    pub fn rate_card_version(&self) -> u64 {
        self.rate_cards.last().map_or(0, |card| card.version)
    }

    pub fn price(&self, feature: &str) -> Option<u64> {
        self.rate_cards.last()?.features.get(feature).copied()
    }
}

/// A command for the state machine. Every mutating command names its client key (account id,
/// grant id, idempotency key, reservation id) or sets a value (policies, catalog), so that its
/// outcome is decided once and a retry gets that decision back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create an account. Same id and same parameters again: replay. Different: `account_conflict`.
    CreateAccount {
        account_id: String,
        overdraft_limit: u64,
    },
    /// Change an account's policy (`PATCH /v1/accounts/{id}`). Setting the same values again is
    /// a replay.
    UpdateAccount {
        account_id: String,
        overdraft_limit: Option<u64>,
    },
    /// Add a block of credits to an account. The grant id is decided once: accepted (the grant
    /// is added) or rejected for a reason of state or time (a `GrantRecord` is kept). Same grant
    /// id and same parameters again: that decision, replayed. Same grant id, different
    /// parameters: `grant_conflict`.
    Grant(GrantCommand),
    /// Void what is left of a grant (its remainder leaves the account as `voided`). Again: replay.
    VoidGrant {
        account_id: String,
        grant_id: String,
    },
    /// Draw credits from the account's grants (priority, then earliest expiry with none last,
    /// then creation order), going negative down to `-overdraft_limit` at most.
    Debit {
        account_id: String,
        idempotency_key: String,
        charge: Charge,
    },
    /// Hold up to `amount` credits for `ttl_ms` (before a long or streaming AI call).
    Reserve {
        account_id: String,
        reservation_id: String,
        amount: u64,
        ttl_ms: u64,
    },
    /// Consume what the call really cost; the rest of the hold is released. More than reserved
    /// draws the extra from available credits, if they cover it.
    Commit {
        account_id: String,
        reservation_id: String,
        charge: Charge,
    },
    /// Give the whole hold back.
    Release {
        account_id: String,
        reservation_id: String,
    },
    /// Subscribe the account to a plan (or change its seats, or switch plans).
    Subscribe {
        account_id: String,
        plan_id: String,
        seats: u64,
    },
    /// End the account's subscription: no further allowance; the current one stays drawable
    /// until its period ends.
    Unsubscribe { account_id: String },
    /// Set (`Some`) or remove (`None`) one scope's spend limit.
    SetSpendLimit {
        account_id: String,
        scope: LimitScope,
        limit: Option<SpendLimitTerms>,
    },
    /// Replace the account's alert settings.
    SetAlerts {
        account_id: String,
        alerts: AlertSettings,
    },
    /// Change the catalog. Sent to the catalog shard only, which sequences every change and
    /// answers with the new catalog; the node then installs it on every other shard.
    UpdateCatalog(CatalogChange),
    /// Install a catalog sequenced by the catalog shard, if it is newer than this shard's.
    InstallCatalog(Catalog),
    /// Change the cluster map. Sent to the metadata group only, which sequences every change.
    UpdateCluster(crate::cluster::ClusterChange),
    /// Settle the accounts with something due by the entry's stamp (expiries, reservation TTLs,
    /// period resets, alerts), at most `TICK_ACCOUNTS_MAX` of them. Proposed by the leader when
    /// its state says something is due; applying it twice is harmless.
    Tick,
    /// Webhook delivery reached this shard's event `seq` (every event up to it was acknowledged
    /// by the receiver): a new leader resumes after it.
    AcknowledgeEvents { through_seq: u64 },
}

impl Command {
    /// The account this command touches (all of an account's data lives on one shard), or
    /// `None` for the shard-level commands (catalog, tick, event acknowledgements).
    pub fn account_id(&self) -> Option<&str> {
        match self {
            Command::CreateAccount { account_id, .. }
            | Command::UpdateAccount { account_id, .. }
            | Command::VoidGrant { account_id, .. }
            | Command::Debit { account_id, .. }
            | Command::Reserve { account_id, .. }
            | Command::Commit { account_id, .. }
            | Command::Release { account_id, .. }
            | Command::Subscribe { account_id, .. }
            | Command::Unsubscribe { account_id }
            | Command::SetSpendLimit { account_id, .. }
            | Command::SetAlerts { account_id, .. } => Some(account_id),
            Command::Grant(grant) => Some(&grant.account_id),
            Command::UpdateCatalog(_)
            | Command::InstallCatalog(_)
            | Command::UpdateCluster(_)
            | Command::Tick
            | Command::AcknowledgeEvents { .. } => None,
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
/// The discriminants are stable forever (they are stored in records). Each command checks
/// first what depends on the command alone (identifiers, amounts, priority, periods), then looks
/// up its client key (so that a decided key answers with its decision, or a conflict, before
/// anything else), then checks against state and time.
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
    /// An amount or quantity is zero or above `AMOUNT_MAX` (an overdraft limit may be zero).
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
    /// The idempotency key was decided for a different request (other amount or feature).
    #[error("the idempotency key was used for a request with another charge")]
    IdempotencyConflict = 8,
    /// A total of the account would exceed `i64::MAX` (see `AMOUNT_MAX`).
    #[error("a total of the account would overflow")]
    AmountOverflow = 9,
    /// Available credits plus the overdraft allowance do not cover the debit.
    #[error("available credits and the overdraft allowance do not cover the debit")]
    InsufficientCredits = 10,
    /// The feature is not on the rate card in force.
    #[error("the feature is not on the rate card")]
    UnknownFeature = 11,
    /// The charge would take consumption in the current window above a hard spend limit.
    #[error("the charge would exceed a hard spend limit")]
    SpendLimitExceeded = 12,
    /// No reservation with this id on the account.
    #[error("no reservation with this id on the account")]
    ReservationNotFound = 13,
    /// The reservation id was decided for another amount or time to live, or committed with
    /// another charge.
    #[error("the reservation id was used with other parameters")]
    ReservationConflict = 14,
    /// The reservation reached its time to live and was released.
    #[error("the reservation expired and its credits were released")]
    ReservationExpired = 15,
    /// The reservation was released.
    #[error("the reservation was released")]
    ReservationReleased = 16,
    /// The reservation was committed.
    #[error("the reservation was already committed")]
    ReservationCommitted = 17,
    /// The time to live is zero or above `RESERVATION_TTL_MAX_MS`.
    #[error("the time to live is zero or longer than a day")]
    InvalidTtl = 18,
    /// No grant with this id on the account.
    #[error("no grant with this id on the account")]
    GrantNotFound = 19,
    /// No plan with this id in the catalog.
    #[error("no plan with this id")]
    PlanNotFound = 20,
    /// A period is out of bounds (shorter than a second, longer than 100 years).
    #[error("the period is shorter than a second or longer than 100 years")]
    InvalidPeriod = 21,
    /// Seats are zero or above `SEATS_MAX`.
    #[error("seats must be between 1 and 1,000,000")]
    InvalidSeats = 22,
    /// The new overdraft limit is below the overage the account already owes.
    #[error("the overdraft limit is below the account's current overage")]
    OverdraftInUse = 23,
    /// Alert or limit settings are inconsistent (soft above hard, too many thresholds).
    #[error("the settings are inconsistent")]
    InvalidSettings = 24,
    /// A catalog change was sent to a shard that does not sequence the catalog, or an install
    /// carried a catalog that is not newer (internal; never reaches a client).
    #[error("the catalog is sequenced by the catalog shard")]
    StaleCatalog = 25,
    /// A controller's change of the cluster map was planned against an older version of it
    /// (another controller changed it since); it replans from the current map.
    #[error("the cluster map changed since this change was planned")]
    ClusterVersionConflict = 26,
    /// A change of the cluster map that cannot be served: fewer nodes than the replicas a
    /// shard keeps, an address used twice or changed, a move that does not fit the map.
    #[error("the cluster change is invalid")]
    InvalidClusterChange = 27,
    /// The declared node set names a node that was removed from the cluster: a removed node
    /// never comes back under its id (start it on an empty data dir under a new id).
    #[error("a removed node cannot rejoin")]
    NodeRemoved = 28,
}

impl Rejection {
    /// Every rejection, in code order.
    pub const ALL: [Rejection; 28] = [
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
        Rejection::UnknownFeature,
        Rejection::SpendLimitExceeded,
        Rejection::ReservationNotFound,
        Rejection::ReservationConflict,
        Rejection::ReservationExpired,
        Rejection::ReservationReleased,
        Rejection::ReservationCommitted,
        Rejection::InvalidTtl,
        Rejection::GrantNotFound,
        Rejection::PlanNotFound,
        Rejection::InvalidPeriod,
        Rejection::InvalidSeats,
        Rejection::OverdraftInUse,
        Rejection::InvalidSettings,
        Rejection::StaleCatalog,
        Rejection::ClusterVersionConflict,
        Rejection::InvalidClusterChange,
        Rejection::NodeRemoved,
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
            Rejection::UnknownFeature => "unknown_feature",
            Rejection::SpendLimitExceeded => "spend_limit_exceeded",
            Rejection::ReservationNotFound => "reservation_not_found",
            Rejection::ReservationConflict => "reservation_conflict",
            Rejection::ReservationExpired => "reservation_expired",
            Rejection::ReservationReleased => "reservation_released",
            Rejection::ReservationCommitted => "reservation_committed",
            Rejection::InvalidTtl => "invalid_ttl",
            Rejection::GrantNotFound => "grant_not_found",
            Rejection::PlanNotFound => "plan_not_found",
            Rejection::InvalidPeriod => "invalid_period",
            Rejection::InvalidSeats => "invalid_seats",
            Rejection::OverdraftInUse => "overdraft_in_use",
            Rejection::InvalidSettings => "invalid_settings",
            Rejection::StaleCatalog => "stale_catalog",
            Rejection::ClusterVersionConflict => "cluster_version_conflict",
            Rejection::InvalidClusterChange => "invalid_cluster_change",
            Rejection::NodeRemoved => "node_removed",
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Accepted {
    /// The account was created by this command.
    AccountCreated,
    /// The account already existed with the same parameters (a replay).
    AccountExists,
    /// An account's policy, spend limit, alerts or subscription was set.
    Updated,
    /// The grant was added (or is a replay of the same grant).
    Granted,
    /// What was left of the grant was voided.
    Voided { voided: u64 },
    /// The debit drew `amount`; `available` is the account's available balance right after it;
    /// `rate_card_version` is the version that priced a feature debit.
    Debited {
        amount: u64,
        available: i64,
        rate_card_version: Option<u64>,
    },
    /// Credits are held until `expires_at_ms`.
    Reserved {
        amount: u64,
        expires_at_ms: u64,
        available: i64,
    },
    /// The reservation was committed: `amount` consumed, `released` given back.
    Committed {
        amount: u64,
        released: u64,
        available: i64,
        rate_card_version: Option<u64>,
    },
    /// The reservation was released (by this command, or earlier by its time to live:
    /// `expired`).
    Released {
        released: u64,
        available: i64,
        expired: bool,
    },
    /// The catalog shard sequenced a change: the catalog version and, for a rate card, its
    /// version; for a plan, the plan's version.
    CatalogUpdated {
        catalog_version: u64,
        item_version: u64,
    },
    /// A catalog was installed (or this shard already had it or a newer one).
    CatalogInstalled { catalog_version: u64 },
    /// A tick settled this many accounts.
    Ticked { accounts_settled: u64 },
    /// The cluster map is at `version` (changed by this command, or a replay).
    ClusterUpdated { version: u64 },
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DebitRecord {
    /// What the request asked for (a retry with another charge is `idempotency_conflict`).
    pub charge: Charge,
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
///
/// **Invariant:** `amount == remaining + held + drawn + expired + voided`, where `held` is the
/// part of it held by active reservations and `drawn` what debits and commits consumed of it
/// (tracked per account, not per grant: `Account::assert_invariants` checks the sums).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub amount: u64,
    /// Credits left to draw.
    pub remaining: u64,
    pub source: GrantSource,
    pub priority: u8,
    pub effective_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Creation order on the account, the last tie breaker of draw-down.
    pub sequence: u64,
    /// True once the grant reached its expiry (its remainder then moved to `expired_amount`;
    /// credits held from it that come back later expire too).
    pub expired: bool,
    /// True once voided (the remainder moved to `voided_amount`; held credits that come back
    /// later are voided too).
    pub voided: bool,
    pub expired_amount: u64,
    pub voided_amount: u64,
    /// Whether the `grant_expiring` alert was emitted for it.
    pub expiry_warned: bool,
    /// What the void voided when it was applied (its replays answer this; credits a hold gives
    /// back later are voided too, and counted in `voided_amount` only).
    pub voided_by_void: u64,
}

impl Grant {
    /// Whether credits can still be drawn from it (or given back to it).
    pub fn is_live(&self) -> bool {
        !self.expired && !self.voided
    }
}

/// Part of a reservation's hold: credits taken from one grant (by its sequence), or overage.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HoldPart {
    /// `None`: held as overage (beyond the grants, within the overdraft limit).
    pub grant_sequence: Option<u64>,
    pub amount: u64,
}

/// An active reservation's hold on an account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hold {
    pub reservation_id: String,
    pub amount: u64,
    pub expires_at_ms: u64,
    pub parts: Vec<HoldPart>,
}

/// Where a reservation stands.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReservationState {
    /// Holding credits (see the account's `holds`).
    Active,
    Committed {
        charge: Charge,
        amount: u64,
        released: u64,
        /// Available credits right after the commit (the answer every retry gets).
        available: i64,
        rate_card_version: Option<u64>,
        at_ms: u64,
    },
    Released {
        at_ms: u64,
        available: i64,
    },
    /// Released by its time to live.
    Expired {
        at_ms: u64,
        available: i64,
    },
    /// The reservation itself was rejected (insufficient credits, spend limit, unknown account):
    /// every retry gets this rejection back.
    Rejected {
        rejection: Rejection,
    },
}

/// The record of a reservation id, kept forever, so that reserve, commit and release are
/// idempotent on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reservation {
    pub amount: u64,
    pub ttl_ms: u64,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub state: ReservationState,
    /// The decision of the reserve itself, the answer every retry of it gets.
    pub reserve_result: Result<Accepted, Rejection>,
    /// Commits rejected for a reason of state, with their charge: a retry of one gets its
    /// rejection back (see `Ledger::commit`).
    pub failed_commits: Vec<(Charge, Rejection)>,
}

/// An account's subscription to a plan. Period `k` is `[start(k), start(k + 1))` with
/// `start(k) = terms.period.boundary(anchor_ms, k - anchor_index)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subscription {
    pub plan_id: String,
    pub seats: u64,
    /// Period `anchor_index` starts at `anchor_ms`; later periods follow with `terms.period`.
    /// A change of the plan's period re-anchors the subscription at the reset that applies it.
    pub anchor_ms: u64,
    pub anchor_index: u64,
    /// The period the subscription is in (its allowance was granted).
    pub period_index: u64,
    /// Start of the next period, when the allowance resets.
    pub next_reset_ms: u64,
    /// The plan's terms the current period was granted with.
    pub terms: PlanTerms,
    /// Number of the subscription on this account (1, 2, ...): part of its grant ids, so that
    /// re-subscribing never collides with an earlier subscription's grants.
    pub number: u64,
    /// Grants added in the current period for seats added mid-period (part of their ids).
    pub seat_changes_in_period: u64,
}

/// One scope's spend limit and its current window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpendLimit {
    pub terms: SpendLimitTerms,
    /// Start of the window `spent` counts, and its end.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    pub spent: u64,
    pub soft_alerted: bool,
    pub hard_alerted: bool,
}

/// An account and its grants. All totals are in credit units.
///
/// The stored state is settled lazily: expiry, reservation time-outs, period resets and the
/// repayment of overage by grants that became effective are brought up to date (in time order)
/// whenever a command touches the account or a `Tick` finds it due, and `Ledger::view` computes
/// them for the instant it is asked about. The result does not depend on when the account was
/// touched.
///
/// **Invariant (conservation):** `granted + overage == Σ remaining (live grants) + reserved +
/// consumed + expired + voided`, and `granted == Σ amount`, checked after every apply (also in
/// release builds). **No overspend:** `overage <= overdraft_limit`, so available never goes
/// below `-overdraft_limit`; a hard spend limit's window never counts more than the limit.
/// **Bounded totals:** `granted` and `consumed` are at most `i64::MAX`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Account {
    pub account_id: String,
    pub overdraft_limit: u64,
    /// The limit the account was created with: a retry of the creation is compared with it,
    /// so that it stays a replay after the limit was changed.
    pub created_overdraft_limit: u64,
    /// Grants in creation order (also exhausted and expired ones: they are history).
    pub grants: Vec<Grant>,
    /// Sum of all grant amounts ever added.
    pub granted: u64,
    /// Sum of everything debits and commits consumed.
    pub consumed: u64,
    /// Sum of the credits that expired with their grants.
    pub expired: u64,
    /// Sum of the credits voided.
    pub voided: u64,
    /// Credits held by active reservations.
    pub reserved: u64,
    /// Credits spent or held beyond the grants (negative available), at most `overdraft_limit`.
    pub overage: u64,
    /// Active reservations, in creation order.
    pub holds: Vec<Hold>,
    pub subscription: Option<Subscription>,
    /// Subscriptions this account ever had (numbers the next one).
    pub subscriptions_started: u64,
    pub limits: BTreeMap<LimitScope, SpendLimit>,
    pub alerts: AlertSettings,
    /// The low-balance thresholds currently crossed (available below them), and whether the
    /// auto top-up threshold is: an alert fires only on the crossing.
    pub low_balance_crossed: Vec<i64>,
    pub auto_top_up_crossed: bool,
    /// The instant through which the account is settled; instants before it are history.
    pub settled_ms: u64,
    /// Sequence of the last journal entry, and the balance after it.
    pub journal_sequence: u64,
    pub journal_balance: i64,
    /// The key of the account in the ledger's due index: `next_due()` when it was last
    /// indexed (derived from the rest; kept here so that the index is updated only on change).
    pub due_ms: Option<u64>,
}
