//! `ledger-api`: the public HTTP contract of the ledger, as Rust types.
//!
//! Request and response bodies of every endpoint (JSON via serde) and the stable error codes.
//! The server and the Rust client both use these types, so the contract is written once.
//!
//! **Boundary:** plain data and serde only. It must never depend on the ledger's internals
//! (core, raft, storage, actors) nor on any HTTP framework: the contract outlives them.

use serde::{Deserialize, Serialize};

/// `POST /v1/accounts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateAccountRequest {
    pub account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdraft_limit: Option<u64>,
}

/// One grant as shown on an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    pub grant_id: String,
    pub amount: u64,
    pub remaining: u64,
    pub priority: u8,
    /// RFC 3339 instant, or null for grants that never expire.
    pub expires_at: Option<String>,
    /// RFC 3339 instant from which the grant is drawable.
    pub effective_at: String,
    pub source: String,
}

/// `GET /v1/accounts/{id}` (linearizable) and the answer of `POST /v1/accounts`.
///
/// Conservation: `granted + overage == Σ remaining + reserved + consumed + expired + voided`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountResponse {
    pub account_id: String,
    /// Credits a debit can draw now (may be negative down to `-overdraft_limit`).
    pub available: i64,
    pub reserved: u64,
    pub consumed: u64,
    pub overdraft_limit: u64,
    pub grants: Vec<GrantView>,
    /// The journal's running balance: credits in live grants (effective or not yet) minus
    /// overage.
    #[serde(default)]
    pub balance: i64,
    #[serde(default)]
    pub granted: u64,
    #[serde(default)]
    pub expired: u64,
    #[serde(default)]
    pub voided: u64,
    /// Credits spent beyond the grants, owed (billed in arrears or repaid by later grants).
    #[serde(default)]
    pub overage: u64,
    /// The subscription, spend limits and alert settings, as JSON objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<serde_json::Value>,
}

/// `POST /v1/accounts/{id}/reservations`: hold `amount` credits for `ttl_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    pub reservation_id: String,
    pub amount: u64,
    pub ttl_ms: u64,
}

/// `POST .../reservations/{rid}/commit`: `amount` (0 allowed), or `feature` and `quantity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u64>,
}

/// The answer of reserve, commit, release and `GET .../reservations/{rid}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationResponse {
    pub account_id: String,
    pub reservation_id: String,
    /// `active`, `committed`, `released`, `expired` (released by its time to live) or
    /// `rejected`.
    pub status: String,
    /// Credits reserved.
    pub amount: u64,
    /// RFC 3339 instant at which an active reservation is released by itself.
    pub expires_at: String,
    /// Credits consumed by the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    /// Credits given back (commit of less than reserved, release, expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<u64>,
    /// Available credits right after the operation that decided this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_card_version: Option<u64>,
    /// The rejection code of a rejected reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub replayed: bool,
}

/// `POST /v1/accounts/{id}/grants`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGrantRequest {
    pub grant_id: String,
    pub amount: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// RFC 3339 instant; default: when the grant is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<String>,
    /// RFC 3339 instant; default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl CreateGrantRequest {
    /// A grant of `amount` credits from `source` with the defaults for everything else
    /// (priority 50, drawable now, never expires).
    pub fn new(grant_id: &str, amount: u64, source: &str) -> CreateGrantRequest {
        CreateGrantRequest {
            grant_id: grant_id.to_owned(),
            amount,
            source: Some(source.to_owned()),
            priority: None,
            effective_at: None,
            expires_at: None,
        }
    }
}

/// Answer of `POST /v1/accounts/{id}/grants`: 201, or 200 with `replayed: true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantResponse {
    pub account_id: String,
    pub grant_id: String,
    pub replayed: bool,
}

/// `POST /v1/accounts/{id}/debits`: either `amount`, or `feature` and `quantity` priced by the
/// rate card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebitRequest {
    pub idempotency_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u64>,
}

/// The decided outcome of a debit key: `POST .../debits` (200, or 402 for a rejection, in which
/// case the body is an [`ErrorResponse`] whose error carries `replayed`), and
/// `GET .../debits/{key}` (200 for both accepted and rejected decisions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebitResponse {
    /// `accepted` or `rejected`.
    pub status: String,
    pub account_id: String,
    pub idempotency_key: String,
    /// Credits drawn (accepted only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    /// Available balance right after the debit (accepted only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    /// The rejection code (rejected only), e.g. `insufficient_credits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The rate card version that priced a feature debit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_card_version: Option<u64>,
    /// True when the key had already been decided and this is that decision again.
    pub replayed: bool,
}

pub const STATUS_ACCEPTED: &str = "accepted";
pub const STATUS_REJECTED: &str = "rejected";

/// One item of `POST /v1/debits/batch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchDebitItem {
    pub account_id: String,
    #[serde(flatten)]
    pub debit: DebitRequest,
}

/// `POST /v1/debits/batch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchDebitRequest {
    pub debits: Vec<BatchDebitItem>,
}

/// One result of a batch, in the order of the request's items. Either a decided outcome
/// (`status` accepted/rejected) or an `error` that decided nothing (bad item, no leader,
/// overload): the client may retry such an item with the same key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchDebitResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<DebitResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// The HTTP status the item would have had as a single request.
    pub http_status: u16,
}

/// Answer of `POST /v1/debits/batch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchDebitResponse {
    pub results: Vec<BatchDebitResult>,
}

/// Every error: `{"error": {"code": "snake_case", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// Set on decided rejections of keyed requests (e.g. a 402 debit): true on a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
}

/// `POST /admin/backups`: a consistent copy of this node's database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    /// The backup's name: a directory `<data_dir>/backups/<name>` on the node.
    pub name: String,
}

/// Answer of `POST /admin/backups`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupResponse {
    pub node_id: u64,
    pub name: String,
    /// Where the node wrote it (on the node's machine).
    pub path: String,
    /// Per shard hosted by the node, the last applied log index at the time of the backup.
    pub shards: Vec<BackupShard>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupShard {
    pub shard_id: u32,
    pub last_applied: Option<u64>,
}

/// `GET /admin/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterResponse {
    pub node_id: u64,
    /// Every node of the cluster (from the cluster map; the config's list before the map is
    /// known).
    pub nodes: Vec<NodeInfo>,
    pub shards: Vec<ShardInfo>,
    /// The cluster map as this node knows it: version, declared nodes, the move under way.
    /// Absent until the node learned the map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<ClusterMapInfo>,
}

/// The cluster map's state, in `GET /admin/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMapInfo {
    pub version: u64,
    /// The node set declared by the last `cluster apply`.
    pub desired: Vec<u64>,
    /// Nodes drained and removed for good.
    pub removed: Vec<u64>,
    /// The metadata group (it holds the map; its replicas move like a shard's).
    pub metadata_group: ShardInfo,
    /// The replica move under way, if any.
    pub moving: Option<MoveInfo>,
    /// Replica moves still needed to reach the declared node set, counting the one under way
    /// (0 when the cluster is where the operator wants it).
    pub moves_remaining: u64,
}

/// A replica move, in `GET /admin/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveInfo {
    pub shard_id: u32,
    pub add: Option<u64>,
    pub remove: Option<u64>,
    /// Log entries the new replica holds, and the leader's last entry, when known (the
    /// controller runs on the metadata group's leader and reports it there).
    pub caught_up_to: Option<u64>,
    pub leader_last_index: Option<u64>,
}

/// `POST /admin/cluster/apply`: the node set the operator wants. Nodes missing from it are
/// drained, then removed; new ones receive replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyClusterRequest {
    pub nodes: Vec<NodeInfo>,
}

/// The answer to `POST /admin/cluster/apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyClusterResponse {
    /// The cluster map version with the declared node set.
    pub version: u64,
    /// False when the map already declared exactly this node set (a replay).
    pub changed: bool,
}

/// `POST /admin/shards/{shard}/transfer-leader`: hand the shard's leadership to its replica on
/// node `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderRequest {
    pub to: u64,
}

/// The answer to `POST /admin/shards/{shard}/transfer-leader`, once `leader` leads the shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderResponse {
    pub shard_id: u32,
    pub leader: u64,
}

/// `POST /admin/shards/{shard}/move`: move the shard's replica on node `from` to node `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveShardRequest {
    pub from: u64,
    pub to: u64,
}

/// The answer to `POST /admin/shards/{shard}/move`: the move is recorded in the cluster map at
/// `version`; the controller carries it out (`GET /admin/cluster` shows it under `map.moving`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveShardResponse {
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u64,
    pub http_addr: String,
    pub raft_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub shard_id: u32,
    /// The leader this node knows of, or null during an election.
    pub leader: Option<u64>,
    /// Voters of the shard's current membership.
    pub members: Vec<u64>,
    /// Index of the last applied log entry on this node (null before the first).
    pub last_applied: Option<u64>,
    /// Hex digest of this replica's state at `last_applied`.
    pub digest: String,
}

/// Stable error codes of the public API.
pub mod codes {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const MISSING_FIELD: &str = "missing_field";
    pub const INVALID_FIELD: &str = "invalid_field";
    pub const INVALID_AMOUNT: &str = "invalid_amount";
    pub const AMOUNT_TOO_LARGE: &str = "amount_too_large";
    pub const INVALID_IDENTIFIER: &str = "invalid_identifier";
    pub const INVALID_PRIORITY: &str = "invalid_priority";
    pub const INVALID_SOURCE: &str = "invalid_source";
    pub const INVALID_TIMESTAMP: &str = "invalid_timestamp";
    pub const INVALID_EXPIRY: &str = "invalid_expiry";
    pub const UNKNOWN_FEATURE: &str = "unknown_feature";
    pub const ACCOUNT_NOT_FOUND: &str = "account_not_found";
    pub const ACCOUNT_CONFLICT: &str = "account_conflict";
    pub const GRANT_CONFLICT: &str = "grant_conflict";
    pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";
    pub const DEBIT_NOT_FOUND: &str = "debit_not_found";
    pub const INSUFFICIENT_CREDITS: &str = "insufficient_credits";
    pub const AMOUNT_OVERFLOW: &str = "amount_overflow";
    pub const OVERLOADED: &str = "overloaded";
    pub const NO_LEADER: &str = "no_leader";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const NOT_FOUND: &str = "not_found";
    pub const INTERNAL: &str = "internal";
    pub const UNKNOWN_FIELD: &str = "unknown_field";
    pub const INVALID_TTL: &str = "invalid_ttl";
    pub const INVALID_PERIOD: &str = "invalid_period";
    pub const INVALID_SEATS: &str = "invalid_seats";
    pub const INVALID_SETTINGS: &str = "invalid_settings";
    pub const INVALID_CURSOR: &str = "invalid_cursor";
    pub const INVALID_QUERY: &str = "invalid_query";
    pub const RESERVATION_NOT_FOUND: &str = "reservation_not_found";
    pub const PLAN_NOT_FOUND: &str = "plan_not_found";
    pub const CATALOG_NOT_IN_FORCE: &str = "catalog_not_in_force";
    pub const BACKUP_EXISTS: &str = "backup_exists";
    pub const STORAGE_ERROR: &str = "storage_error";
    pub const INVALID_CLUSTER_CHANGE: &str = "invalid_cluster_change";
    pub const CLUSTER_VERSION_CONFLICT: &str = "cluster_version_conflict";
    pub const NODE_REMOVED: &str = "node_removed";
    pub const INVALID_LEADER_TRANSFER: &str = "invalid_leader_transfer";
}
